"""Runs a `python` grader's `grade(sample, item)` in a fresh, locked-down process per grade.

The grader's source is someone's arbitrary code, so each grade gets its own process under
bubblewrap (`bwrap`, Debian's `bubblewrap`): new network, PID, IPC and UTS namespaces (no
network at all: not even the host's loopback), a root filesystem holding only /usr, /bin,
/lib and the Python installation, read-only, plus an empty private /tmp; no environment
variables from the server (no credentials). Inside, `setpriv` drops to the unprivileged uid
nobody (65534) with no capabilities and no_new_privs, so the process cannot read root's
files even where they are mounted; `prlimit` caps its address space (memory), CPU seconds,
processes and file size. A wall-clock timeout kills the whole sandbox (bwrap runs the grader
as PID 1's child of its own PID namespace and dies with its parent).

Item and sample go in as JSON on stdin; the score comes back as JSON on the last line of
stdout (the grader's own prints go to stderr, and are kept for the error details).
bwrap works in this container as root; where it cannot create namespaces, grades fail with
python_grader_server_error rather than running unconfined.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOBODY = 65534
_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/sbin")
MAX_OUTPUT_BYTES = 1024 * 1024
MAX_DETAILS_CHARS = 4000

# The program the sandboxed interpreter runs: read the job, exec the source, call grade().
# It writes its answer on a duplicate of stdout taken before the grader's code runs, so a
# grader that prints (to stdout) or closes sys.stdout cannot forge or lose the result.
_RUNNER = r"""
import json, linecache, math, os, sys, traceback
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
def answer(obj):
    out.write("\n" + json.dumps(obj) + "\n")
    out.flush()
try:
    job = json.loads(sys.stdin.read())
    # Tracebacks then show the grader's source lines.
    linecache.cache["<grader>"] = (len(job["source"]), None, job["source"].splitlines(True), "<grader>")
    scope = {"__name__": "grader"}
    exec(compile(job["source"], "<grader>", "exec"), scope)
    grade = scope.get("grade")
    if not callable(grade):
        raise TypeError("the source defines no function grade(sample, item)")
    result = grade(job["sample"], job["item"])
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        raise TypeError("grade() returned %r (%s), not a number" % (result, type(result).__name__))
    result = float(result)
    if not math.isfinite(result):
        raise ValueError("grade() returned %r, not a finite number" % result)
    answer({"score": result})
except BaseException as exc:
    # The traceback from the grader's own frames on: this runner's are noise to its author.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<grader>":
        tb = tb.tb_next
    answer({"error": "".join(traceback.format_exception(type(exc), exc, tb, limit=8))})
    sys.exit(1)
"""


@dataclass(frozen=True)
class SandboxResult:
    score: float | None = None
    # The grader's code failed (exception, bad return value, timeout, memory): its details.
    runtime_error: str | None = None
    # The sandbox itself failed (bwrap missing or refused): a short type and its details.
    server_error: str | None = None
    server_error_details: str | None = None
    stderr: str = ""
    timed_out: bool = False


def _ancestors(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if p != Path("/")]


@dataclass
class PythonSandbox:
    """One configured sandbox; `run` grades once, in a new process, and never raises for
    what the grader's code does."""

    timeout_seconds: float = 10.0
    memory_mib: int = 512
    max_processes: int = 32
    max_file_bytes: int = 16 * 1024 * 1024
    tmp_bytes: int = 16 * 1024 * 1024
    # The interpreter the grader runs on: this process's own, with its installed packages
    # (numpy and friends, as OpenAI's grader image has), mounted read-only.
    python: str = sys.executable
    bwrap: str | None = None

    def _binds(self) -> list[Path]:
        """The Python installation's directories, outside the system ones mounted anyway."""
        real = Path(self.python).resolve()
        candidates = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), real.parent]
        binds: list[Path] = []
        for path in candidates:
            if any(path.is_relative_to(p) for p in [*map(Path, _SYSTEM_DIRS), *binds]):
                continue
            binds = [b for b in binds if not b.is_relative_to(path)] + [path]
        return binds

    def command(self) -> list[str]:
        bwrap = self.bwrap or shutil.which("bwrap")
        if bwrap is None:
            raise FileNotFoundError("bwrap (Debian package bubblewrap) is not installed")
        # As root (this container, most of them) bwrap makes the namespaces itself and setpriv
        # then drops to nobody. As any other user bwrap needs a user namespace, and the
        # process is already unprivileged.
        privileged = os.geteuid() == 0
        argv = [
            bwrap,
            "--unshare-net",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
        ]
        if privileged:
            argv += [
                "--cap-drop",
                "ALL",
                # Kept only for setpriv below, which gives both up with every other capability.
                "--cap-add",
                "CAP_SETUID",
                "--cap-add",
                "CAP_SETGID",
            ]
        else:
            argv += ["--unshare-user", "--cap-drop", "ALL"]
        for system_dir in _SYSTEM_DIRS:
            argv += ["--ro-bind-try", system_dir, system_dir]
        made: set[Path] = set()
        for path in self._binds():
            # bwrap would create the parents of a mount point as 0700 root (copying /root's
            # mode, say); nobody must be able to walk through them to the interpreter.
            for parent in _ancestors(path):
                if parent not in made:
                    argv += ["--perms", "0755", "--dir", str(parent)]
                    made.add(parent)
            argv += ["--ro-bind", str(path), str(path)]
        argv += [
            "--perms",
            "1777",
            "--size",
            str(self.tmp_bytes),
            "--tmpfs",
            "/tmp",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--chdir",
            "/tmp",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/tmp",
            "--setenv",
            "LANG",
            "C.UTF-8",
            # numpy's BLAS would reserve memory per core; one thread fits the memory limit.
            "--setenv",
            "OPENBLAS_NUM_THREADS",
            "1",
            "--setenv",
            "OMP_NUM_THREADS",
            "1",
            "--",
        ]
        if privileged:
            argv += [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        argv += [
            "prlimit",
            f"--as={self.memory_mib * 1024 * 1024}",
            f"--cpu={math.ceil(self.timeout_seconds) + 1}",
            f"--nproc={self.max_processes}",
            f"--fsize={self.max_file_bytes}",
            "--core=0",
            "--",
            self.python,
            "-I",  # isolated: no PYTHON* variables, no user site, no script directory on sys.path
            "-B",
            "-c",
            _RUNNER,
        ]
        return argv

    async def run(self, source: str, sample: dict[str, Any] | None, item: dict[str, Any]) -> SandboxResult:
        try:
            argv = self.command()
        except FileNotFoundError as exc:
            return SandboxResult(server_error="sandbox_unavailable", server_error_details=str(exc))
        payload = json.dumps({"source": source, "sample": sample if sample is not None else {}, "item": item}).encode()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return SandboxResult(server_error="sandbox_unavailable", server_error_details=f"{type(exc).__name__}: {exc}")
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None

        async def feed() -> None:
            assert process.stdin is not None
            try:
                process.stdin.write(payload)
                await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the grader exited before reading: its exit status tells why
            finally:
                process.stdin.close()

        async def drain(stream: asyncio.StreamReader) -> bytes:
            # Keep the first MAX_OUTPUT_BYTES and the last 4 KiB: a grader printing without
            # end cannot fill the server's memory, and the end of its output is still seen.
            kept, tail, overflowed = bytearray(), b"", False
            while chunk := await stream.read(65536):
                if len(kept) < MAX_OUTPUT_BYTES:
                    kept += chunk[: MAX_OUTPUT_BYTES - len(kept)]
                else:
                    overflowed = True
                tail = (tail + chunk)[-4096:]
            return bytes(kept) + b"\n[...]\n" + tail if overflowed else bytes(kept)

        timed_out = False
        tasks = asyncio.gather(feed(), drain(process.stdout), drain(process.stderr), process.wait())
        try:
            _, stdout, stderr, _ = await asyncio.wait_for(tasks, timeout=self.timeout_seconds)
        except TimeoutError:
            timed_out = True
            stdout = stderr = b""
            _kill_sandbox(process)
            try:
                await asyncio.wait_for(process.wait(), timeout=2)
            except TimeoutError:
                _kill_group(process)  # bwrap itself hangs: --die-with-parent ends the rest
                await process.wait()
        except BaseException:
            # Cancelled (the eval run was): the sandbox must not outlive the grade.
            _kill_sandbox(process)
            _kill_group(process)
            raise
        err_text = stderr.decode("utf-8", "replace")
        if timed_out:
            return SandboxResult(
                runtime_error=f"The python grader was killed after {self.timeout_seconds:g} s (its time limit).",
                timed_out=True,
            )
        return _result(process.returncode, stdout.decode("utf-8", "replace"), err_text, self)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc: no children file on every kernel)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # The command name, in parentheses, may hold spaces: the fields after it are plain.
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 1 and fields[1] == str(pid):
                found.append(int(entry))
    return found


def _kill_sandbox(process: asyncio.subprocess.Process) -> None:
    """SIGKILL bwrap's child: the init of the sandbox's PID namespace, whose death ends
    every process in it. bwrap then reaps it and exits (killing bwrap first would leave
    that child to the container's init, as a zombie)."""
    for child in _children(process.pid):
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(text: str) -> str:
    return text if len(text) <= MAX_DETAILS_CHARS else "…" + text[-MAX_DETAILS_CHARS:]


def _result(returncode: int | None, stdout: str, stderr: str, sandbox: PythonSandbox) -> SandboxResult:
    answer: dict[str, Any] | None = None
    lines = [line for line in stdout.splitlines() if line.strip()]
    if lines:
        try:
            parsed = json.loads(lines[-1])
            answer = parsed if isinstance(parsed, dict) else None
        except ValueError:
            answer = None
    if answer is not None and "score" in answer and returncode == 0:
        return SandboxResult(score=float(answer["score"]), stderr=_tail(stderr))
    if answer is not None and "error" in answer:
        details = str(answer["error"]).rstrip()
        if stderr.strip():
            details += "\n--- stderr ---\n" + stderr.strip()
        return SandboxResult(runtime_error=_tail(details), stderr=_tail(stderr))
    if stderr.startswith("bwrap:") or "setpriv:" in stderr[:200] or "prlimit:" in stderr[:200]:
        # The sandbox never started the interpreter.
        return SandboxResult(server_error="sandbox_failed", server_error_details=_tail(stderr.strip()), stderr=_tail(stderr))
    # No answer at all: killed by a limit (CPU: SIGXCPU/SIGKILL; memory: the interpreter died).
    if returncode is not None and returncode < 0:
        why = f"killed by signal {signal.Signals(-returncode).name}"
    elif returncode in (128 + signal.SIGKILL, 128 + signal.SIGXCPU):
        why = f"killed by signal {signal.Signals(returncode - 128).name}"
    else:
        why = f"exited with status {returncode}"
    limits = f"limits: {sandbox.timeout_seconds:g} s, {sandbox.memory_mib} MiB"
    return SandboxResult(
        runtime_error=_tail(f"The python grader {why} without returning a score ({limits}).\n{stderr.strip()}".rstrip()),
        stderr=_tail(stderr),
    )
