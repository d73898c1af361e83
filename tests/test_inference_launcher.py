"""`tailor inference`'s vLLM command line and environment, and the ports the API and the
launcher agree on without configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.launcher import InferenceError, vllm_command, vllm_env, vllm_python
from service.core.settings import Settings
from service.core.topology import upstreams


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, data_dir=Path("/srv/tailor"), **values)  # type: ignore[call-arg]


def test_cpu_command_line() -> None:
    s = settings(vllm_max_loras=3, vllm_max_lora_rank=32, vllm_extra_args=["--max-model-len", "2048"])
    cmd = vllm_command(s, "SmolLM2-135M-Instruct", Path("/models/smol"), 8100, Path("/venv/bin/python"), cpu=True)
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for flag in (
        "--model /models/smol",
        "--served-model-name SmolLM2-135M-Instruct",
        "--host 127.0.0.1",
        "--port 8100",
        "--enable-lora",
        "--max-loras 3",
        "--max-lora-rank 32",
        "--dtype float32",
        "--middleware tailor_vllm_plugin.middleware.TailorAdapterMiddleware",
        "--kv-cache-memory-bytes 2147483648",
    ):
        assert flag in joined, flag
    assert cmd[-2:] == ["--max-model-len", "2048"]


def test_gpu_command_line_leaves_dtype_and_memory_to_vllm() -> None:
    cmd = vllm_command(settings(), "llama", Path("/m"), 8101, Path("/venv/bin/python"), cpu=False)
    assert "--dtype" not in cmd and "--kv-cache-memory-bytes" not in cmd


def test_environment_carries_the_store_and_turns_the_resolver_on() -> None:
    s = settings(
        storage_url="s3://bucket/prefix",
        s3_endpoint_url="http://minio:9000",
        inference_api_key="secret",
        adapter_cache_max_bytes=123,
    )
    env = vllm_env(s, "org/model:v1", base={"PATH": "/bin", "AWS_ACCESS_KEY_ID": "id"})
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_PLUGINS"] == "tailor"
    assert env["TAILOR_STORAGE_URL"] == "s3://bucket/prefix" and env["TAILOR_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["TAILOR_VLLM_BASE_MODEL"] == "org/model:v1" and env["TAILOR_ADAPTER_CACHE_MAX_BYTES"] == "123"
    assert env["TAILOR_ADAPTER_CACHE_DIR"] == "/srv/tailor/adapter-cache/org_model_v1"
    assert env["VLLM_API_KEY"] == "secret" and env["AWS_ACCESS_KEY_ID"] == "id"


def test_missing_vllm_virtualenv_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="make setup-vllm"):
        vllm_python(settings(vllm_python=tmp_path / "nope" / "python"))


def test_gateway_and_launcher_agree_on_ports() -> None:
    s = settings(
        inference_port=9000, inference_host="0.0.0.0", inference_urls={"b": ["http://10.0.0.5:8100/v1/", "http://10.0.0.6:8100"]}
    )
    assert upstreams(s, ["a", "b", "c"]) == {
        "a": ["http://127.0.0.1:9000"],
        "b": ["http://10.0.0.5:8100", "http://10.0.0.6:8100"],
        "c": ["http://127.0.0.1:9002"],
    }


def test_a_crashed_server_is_restarted_with_growing_pauses_until_it_keeps_crashing() -> None:
    from inference.launcher import CRASH_LIMIT, CRASH_WINDOW, RESTART_DELAYS, VllmServer

    server = VllmServer("m", "http://127.0.0.1:1", proc=None)  # type: ignore[arg-type]
    pauses = [server.crashed(at=float(t)) for t in range(CRASH_LIMIT - 1)]
    assert pauses == list(RESTART_DELAYS[: CRASH_LIMIT - 1]) and pauses == sorted(pauses)
    assert server.crashed(at=float(CRASH_LIMIT)) is None, "the CRASH_LIMIT-th exit in the window gives up"
    fresh = VllmServer("m", "http://127.0.0.1:1", proc=None)  # type: ignore[arg-type]
    for i in range(CRASH_LIMIT * 3):
        # One crash per window never adds up to giving up.
        assert fresh.crashed(at=i * (CRASH_WINDOW + 1)) == RESTART_DELAYS[0]
