"""Local processes for the demo, the tests and the benchmarks: a private redis-server,
`tailor serve`, `tailor worker` and `tailor inference`, each bound to 127.0.0.1 (servers on
free ports) and stopped by its owner.

Every process started here is remembered and stopped at interpreter exit too, so a crash
or an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from service.core.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
STOP_GRACE = 15.0


_STARTED: list[subprocess.Popen[bytes]] = []


def _spawn(
    cmd: list[str], log_path: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The child keeps its own copy of the log descriptor; ours is closed at once.
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env) if env else None, cwd=cwd
        )
    _STARTED.append(proc)
    return proc


def stop_process(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL. Safe to call twice."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if proc in _STARTED:
            _STARTED.remove(proc)


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_STARTED):
        stop_process(proc, grace=5)


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until(ready: Any, proc: subprocess.Popen[bytes], what: str, log_path: Path, timeout: float) -> None:
    """Poll `ready()` until it is true; fail with the log tail if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before it was ready; log:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{what} was not ready after {timeout:.0f}s; log:\n{log_tail(log_path)}")
        time.sleep(0.1)


def _http_answers(url: str, ok: tuple[int, ...] | None = None) -> bool:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return ok is None or response.status_code in ok


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A redis-server of our own on a free port that keeps nothing on disk; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not on PATH: run `make setup` (it installs Debian's redis-server), "
            "or point TAILOR_TEST_REDIS_URL at a Redis the tests may use"
        )
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "redis.log"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = _spawn(cmd, log_path, cwd=workdir)
    try:
        _wait_until(lambda: _redis_pings(port), proc, "redis-server", log_path, timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


def clean_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """os.environ without any TAILOR_* setting of the developer's shell, plus `overrides`.

    PYTHONPATH gets the repository root, so `python -m service.cli` imports this checkout
    even though the process runs in its data dir (where no stray `.env` is read).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class TailorServer:
    """`tailor serve` as a child process on 127.0.0.1 and a free port.

    Use `start_server(...)`, which waits for /health; `with start_server(...) as s:` stops
    it on exit, as does `.stop()`.
    """

    def __init__(self, env_overrides: Mapping[str, str], data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root_url}/v1"
        self.log_path = self.data_dir / "server.log"
        self.env = clean_env({"TAILOR_DATA_DIR": str(self.data_dir), **env_overrides})
        cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = _spawn(cmd, self.log_path, env=self.env, cwd=self.data_dir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        _wait_until(
            lambda: _http_answers(f"{self.root_url}/health", ok=(200,)), self.proc, "tailor serve", self.log_path, timeout
        )

    def stop(self) -> None:
        """SIGTERM, 15 s to finish, then SIGKILL."""
        stop_process(self.proc)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `tailor ARGS` with this server's environment (same database, store, Redis)."""
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env=self.env,
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`tailor {' '.join(args)}` exited with {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def create_key(self, project: str) -> str:
        key = self.cli("keys", "create", "--project", project).stdout.strip()
        assert key and "\n" not in key, f"`tailor keys create` should print one key, printed {key!r}"
        return key

    def __enter__(self) -> TailorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(env_overrides: Mapping[str, str], data_dir: Path, timeout: float = READY_TIMEOUT) -> TailorServer:
    """Start `tailor serve` with TAILOR_DATA_DIR=data_dir plus `env_overrides` (usually
    `server_env` and whatever a test changes) and wait until GET /health answers 200."""
    server = TailorServer(env_overrides, data_dir)
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_server(env_overrides: Mapping[str, str], data_dir: Path, timeout: float = READY_TIMEOUT) -> Iterator[TailorServer]:
    server = start_server(env_overrides, data_dir, timeout)
    try:
        yield server
    finally:
        server.stop()


class TailorWorker:
    """`tailor worker` as a child process with the same settings as a server."""

    command = "worker"

    def __init__(self, env_overrides: Mapping[str, str], data_dir: Path, name: str = "worker", *extra_args: str):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"{name}.log"
        self.env = clean_env({"TAILOR_DATA_DIR": str(self.data_dir), **env_overrides})
        cmd = [sys.executable, "-m", "service.cli", self.command, "--worker-id", name, *extra_args]
        self.proc = _spawn(cmd, self.log_path, env=self.env, cwd=self.data_dir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL, as a crash or a lost host would: no clean-up runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        stop_process(self.proc)


class TailorEvalWorker(TailorWorker):
    """`tailor eval-worker` as a child process: eval runs and graders/run."""

    command = "eval-worker"


@contextmanager
def running_worker(
    env_overrides: Mapping[str, str], data_dir: Path, name: str = "worker", kind: type[TailorWorker] = TailorWorker
) -> Iterator[TailorWorker]:
    """A `tailor worker` (or, with `kind=TailorEvalWorker`, a `tailor eval-worker`) until the block ends."""
    worker = kind(env_overrides, data_dir, name)
    try:
        yield worker
    finally:
        worker.stop()


class TailorInference:
    """`tailor inference` as a child process: one vLLM server per base model, the first on
    TAILOR_INFERENCE_PORT (which the API must be given too, to find it).

    vLLM takes a minute or more to start on CPU: start this first and `wait_ready` later."""

    READY_TIMEOUT = 600.0

    def __init__(self, env_overrides: Mapping[str, str], data_dir: Path):
        if "TAILOR_INFERENCE_PORT" not in env_overrides:
            raise ValueError("set TAILOR_INFERENCE_PORT (a free port) for tailor inference and tailor serve alike")
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{env_overrides['TAILOR_INFERENCE_PORT']}"
        self.log_path = self.data_dir / "inference.log"
        self.env = clean_env({"TAILOR_DATA_DIR": str(self.data_dir), **env_overrides})
        self.proc = _spawn([sys.executable, "-m", "service.cli", "inference"], self.log_path, env=self.env, cwd=self.data_dir)

    @property
    def adapter_cache(self) -> Path:
        """Where the first base model's vLLM keeps downloaded adapters (the default location)."""
        return self.data_dir / "adapter-cache"

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def ready(self) -> bool:
        return _http_answers(f"{self.url}/health", ok=(200,))

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        _wait_until(self.ready, self.proc, "tailor inference", self.log_path, timeout)

    def stop(self) -> None:
        """`tailor inference` stops its vLLM servers (and their engine processes) on SIGTERM."""
        stop_process(self.proc, grace=45)


@contextmanager
def running_inference(env_overrides: Mapping[str, str], data_dir: Path) -> Iterator[TailorInference]:
    """Started, not waited for: call `wait_ready()` when vLLM is needed."""
    inference = TailorInference(env_overrides, data_dir)
    try:
        yield inference
    finally:
        inference.stop()
