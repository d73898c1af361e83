"""The python grader's sandbox (service/evals/graders/sandbox.py), for real: bubblewrap.

Each test runs a grader that tries to get out (network, files, time, memory, the server's
environment) and checks both what the grade says and that nothing got out: the test's own
listening server saw no connection, the file is not there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.evals.graders import GradingTools, PythonSandbox, grade, make_sample, parse_grader
from service.evals.graders.sandbox import NOBODY, SandboxResult

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bwrap is not installed (`make setup` installs Debian's bubblewrap)"
)


def run_grader(
    source: str, sample: dict[str, Any] | None = None, item: dict[str, Any] | None = None, **limits: Any
) -> SandboxResult:
    sandbox = PythonSandbox(**limits)
    return asyncio.run(sandbox.run(source, sample if sample is not None else {"output_text": ""}, item or {}))


def test_returns_the_score_and_sees_sample_and_item() -> None:
    source = (
        "def grade(sample, item):\n"
        "    print('a grader may print; it does not spoil the answer')\n"
        "    return 1.0 if sample['output_text'] == item['label'] and sample['output_json'] == {'a': 1} else 0.25\n"
    )
    result = run_grader(source, make_sample('{"a": 1}'), {"label": '{"a": 1}'})
    assert result.score == 1.0 and result.runtime_error is None and result.server_error is None
    assert "a grader may print" in result.stderr
    assert run_grader(source, make_sample("other"), {"label": "x"}).score == 0.25


def test_runtime_errors_come_back_with_details() -> None:
    result = run_grader("def grade(sample, item):\n    return item['missing']\n")
    assert result.score is None and result.runtime_error is not None and "KeyError: 'missing'" in result.runtime_error
    result = run_grader("def grade(sample, item):\n    return 'high'\n")
    assert result.runtime_error is not None and "not a number" in result.runtime_error
    result = run_grader("def grade(sample, item):\n    return float('nan')\n")
    assert result.runtime_error is not None and "finite" in result.runtime_error
    result = run_grader("import sys\ndef grade(sample, item):\n    sys.exit(0)\n")
    assert result.score is None and result.runtime_error is not None


@pytest.fixture
def listening_server() -> Iterator[tuple[int, list[Any]]]:
    """A TCP server on 127.0.0.1 that records every connection it accepts."""
    accepted: list[Any] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(peer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


def test_cannot_open_a_socket(listening_server: tuple[int, list[Any]]) -> None:
    port, accepted = listening_server
    # The server answers from here: the test would notice a connection.
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    deadline = time.monotonic() + 2
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(accepted) == 1
    source = (
        "import socket\n"
        "def grade(sample, item):\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
        "    return 1.0\n"
    )
    result = run_grader(source)
    assert result.score != 1.0
    assert result.runtime_error is not None and (
        "ConnectionRefusedError" in result.runtime_error or "OSError" in result.runtime_error
    )
    time.sleep(0.3)
    assert len(accepted) == 1, "the sandboxed grader reached the test's server"


def test_cannot_write_outside(tmp_path: Path) -> None:
    outside = tmp_path / "escaped.txt"
    # A directory the sandbox does see (mounted read-only): the Python installation.
    visible = Path(sys.prefix) / f"escaped-{uuid.uuid4().hex}.txt"
    source = (
        "def grade(sample, item):\n"
        "    written = 0\n"
        "    for path in item['paths']:\n"
        "        try:\n"
        "            with open(path, 'w') as f:\n"
        "                f.write('out')\n"
        "            written += 1\n"
        "        except OSError as exc:\n"
        "            print(type(exc).__name__, exc)\n"
        "    open('/tmp/inside.txt', 'w').write('the private /tmp is writable')\n"
        "    return float(written)\n"
    )
    try:
        result = run_grader(source, item={"paths": [str(outside), str(visible), "/usr/escaped.txt"]})
        assert result.score == 0.0, result
        assert "Read-only file system" in result.stderr
        assert not outside.exists() and not visible.exists() and not Path("/usr/escaped.txt").exists()
    finally:
        visible.unlink(missing_ok=True)


def test_runs_as_nobody_without_the_servers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_SECRET_FOR_TEST", "do-not-leak")
    source = (
        "import os\n"
        "def grade(sample, item):\n"
        "    assert 'TAILOR_SECRET_FOR_TEST' not in os.environ, 'leaked'\n"
        "    assert not os.path.exists('/etc/passwd') and not os.path.exists('/root/.bashrc')\n"
        "    return float(os.getuid())\n"
    )
    result = run_grader(source)
    assert result.score == float(NOBODY), result


def test_killed_at_its_time_limit() -> None:
    started = time.monotonic()
    result = run_grader("def grade(sample, item):\n    while True:\n        pass\n", timeout_seconds=2)
    elapsed = time.monotonic() - started
    assert elapsed < 6, elapsed
    assert result.timed_out and result.score is None
    assert result.runtime_error is not None and "killed after 2 s" in result.runtime_error


def test_memory_limit() -> None:
    source = "def grade(sample, item):\n    block = bytearray(1024 * 1024 * 1024)\n    return 1.0\n"
    result = run_grader(source, memory_mib=256)
    assert result.score is None and result.runtime_error is not None and "MemoryError" in result.runtime_error


def test_process_limit() -> None:
    source = (
        "import os, time\n"
        "def grade(sample, item):\n"
        "    children = 0\n"
        "    try:\n"
        "        for _ in range(200):\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(3)\n"
        "                os._exit(0)\n"
        "            children += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "    return float(children)\n"
    )
    result = run_grader(source, max_processes=16)
    assert result.score is not None and result.score < 16, result


def test_grade_runs_python_graders_through_the_sandbox() -> None:
    obj = {
        "type": "python",
        "name": "exact",
        "source": "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['label'] else 0.4\n",
        "pass_threshold": 0.5,
    }
    grader = parse_grader(obj, param="grader")
    tools = GradingTools(python=PythonSandbox())
    hit = asyncio.run(grade(grader, {"label": "Paris"}, make_sample("Paris"), tools))
    miss = asyncio.run(grade(grader, {"label": "Paris"}, make_sample("Lyon"), tools))
    assert (hit.score, hit.passed, miss.score, miss.passed) == (1.0, True, 0.4, False)
    broken = parse_grader(obj | {"source": "def grade(sample, item):\n    return 1 / 0\n"}, param="grader")
    result = asyncio.run(grade(broken, {}, make_sample("x"), tools))
    assert result.errors["python_grader_runtime_error"] is True and result.score == 0.0
    assert "ZeroDivisionError" in str(result.errors["python_grader_runtime_error_details"])


def test_missing_bwrap_is_a_server_error() -> None:
    result = asyncio.run(PythonSandbox(bwrap="/nonexistent/bwrap").run("def grade(s, i):\n    return 1\n", {}, {}))
    assert result.server_error is not None and result.score is None
    obj = {"type": "python", "name": "p", "source": "def grade(s, i):\n    return 1\n"}
    tools = GradingTools(python=PythonSandbox(bwrap="/nonexistent/bwrap"))
    graded = asyncio.run(grade(parse_grader(obj, param="grader"), {}, None, tools))
    assert graded.errors["python_grader_server_error"] is True and graded.errors["python_grader_server_error_type"]


def test_no_sandbox_process_outlives_its_grade() -> None:
    source = "import os\ndef grade(sample, item):\n    os.fork()\n    while True:\n        pass\n"
    result = run_grader(source, timeout_seconds=1)
    assert result.timed_out
    time.sleep(0.3)
    # The sandboxed interpreter's command line holds the runner program (its `answer`).
    left = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"def answer(obj)" in cmdline:
                left.append(entry)
    assert left == []
