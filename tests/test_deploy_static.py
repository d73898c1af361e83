"""Static checks of deploy/ outside deploy/k8s/ (tests/test_deploy_k8s.py's), with no
Docker engine.

- compose.yaml validates against the Compose specification's JSON schema (vendored in
  deploy/schemas/);
- every Dockerfile passes hadolint, and all YAML under deploy/ passes yamllint;
- every command an image or Compose runs exists in the project (`tailor` subcommands and
  their options, `python -m` modules, the vLLM plugin's dotted paths), and vLLM runs with
  the flags and environment inference/launcher.py gives it;
- Compose's inference URLs and base models agree with each other.

Each validator is also shown a broken document, so a check that silently passes
everything fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from deploy_docs import (
    DEPLOY,
    DOCKERFILES,
    OUR_IMAGES,
    PLUGIN_ROOT,
    ROOT,
    VLLM_MODULE,
    base_models_of,
    command_errors,
    effective,
    image_defaults,
    instructions,
    load_compose,
    plugin_path_exists,
)
from yamllint import linter
from yamllint.config import YamlLintConfig

from inference.launcher import PLUGIN

# --- Compose --------------------------------------------------------------------------


def compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_validates_against_the_compose_specification() -> None:
    assert compose_errors(load_compose()) == []


def test_compose_schema_rejects_a_broken_copy() -> None:
    broken = load_compose()
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken["services"]["worker"]["gpus_please"] = 1
    errors = compose_errors(broken)
    assert any("depends_on" in e for e in errors) and any("gpus_please" in e for e in errors), errors


def test_compose_runs_migrations_once_before_api_and_worker() -> None:
    services = load_compose()["services"]
    assert services["migrate"]["command"] == ["tailor", "migrate"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert services[name]["environment"]["TAILOR_MIGRATE_ON_START"] == "false"
    for name in ("worker", "vllm"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
    for name, service in services.items():
        if service.get("restart") != "no":
            assert "healthcheck" in service, f"{name} runs for good and has no health check"


# --- Dockerfiles ----------------------------------------------------------------------


def dockerfile_policy_errors(text: str) -> list[str]:
    steps = instructions(text)
    froms = [args.split()[0] for word, args in steps if word == "FROM"]
    stages = {args.split()[-1] for word, args in steps if word == "FROM" and " AS " in args.upper()}
    errors = []
    if len(froms) < 2:
        errors.append("not multi-stage")
    for image in froms:
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if image not in stages and (not tag or tag == "latest"):
            errors.append(f"unpinned base image {image}")
    final = [args for word, args in steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :] if word == "USER"]
    if not final or final[-1].split(":")[0] in ("root", "0"):
        errors.append("the final stage runs as root")
    if re.search(r"https?://(?!127\.0\.0\.1)", text):
        errors.append("a URL is written into the Dockerfile")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line and (i == 0 or not lines[i - 1].lstrip().startswith("#")):
            errors.append(f"line {i + 1}: a hadolint rule is ignored without a comment saying why")
    return errors


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    proc = run_hadolint(dockerfile)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_pinned_and_non_root(dockerfile: Path) -> None:
    assert dockerfile_policy_errors(dockerfile.read_text()) == []


def run_hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "hadolint"
    config = DEPLOY / "docker" / ".hadolint.yaml"
    extra = ["--config", str(config)] if config.exists() else []
    command = [str(binary), "--no-color", "--failure-threshold", "style", *extra, str(dockerfile)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_hadolint_and_policy_reject_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\n# hadolint ignore=DL3008\nRUN pip install requests\nCMD python app.py\n")
    proc = run_hadolint(bad)
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3013" in proc.stdout, proc.stdout
    assert set(dockerfile_policy_errors(bad.read_text())) == {
        "not multi-stage", "unpinned base image python:latest", "the final stage runs as root",
        "line 2: a hadolint rule is ignored without a comment saying why",
    }  # fmt: skip


def test_worker_image_pins_torch_and_takes_its_index_as_a_build_arg() -> None:
    steps = instructions((DEPLOY / "docker" / "Dockerfile.worker").read_text())
    assert ("ARG", "TORCH_VERSION=2.13.0") in steps
    assert any(word == "ARG" and args.startswith("TORCH_INDEX_URL") for word, args in steps)
    assert any(word == "FROM" and args.startswith("nvidia/cuda:") for word, args in steps)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch==2.13.0" in pyproject["project"]["optional-dependencies"]["train"]


# --- yamllint -------------------------------------------------------------------------


def yaml_problems(path: Path, text: str | None = None) -> list[str]:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    problems = linter.run(path.read_text() if text is None else text, config, str(path))
    return [f"{path.relative_to(ROOT)}:{p.line}: {p.desc} ({p.rule})" for p in problems]  # warnings count too


def test_all_yaml_passes_yamllint() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") or p.name == ".yamllint")
    assert len(files) >= 10
    assert [problem for f in files for problem in yaml_problems(f)] == []


def test_yamllint_rejects_a_broken_copy() -> None:
    path = DEPLOY / "compose.yaml"
    broken = path.read_text().replace("  redis:\n", "  redis:\n    restart: yes\n    restart: always\n", 1)
    rules = {p.rsplit("(", 1)[-1] for p in yaml_problems(path, broken)}
    assert {"truthy)", "key-duplicates)"} <= rules


# --- commands -------------------------------------------------------------------------


def compose_commands() -> list[tuple[str, list[str], dict[str, str]]]:
    out = []
    for name, service in load_compose()["services"].items():
        dockerfile = OUR_IMAGES.get(service["image"].split(":")[0])
        if dockerfile is None:
            continue  # a third-party image (PostgreSQL, Redis, MinIO)
        assert service.get("build", {}).get("dockerfile", f"deploy/docker/{dockerfile}") == f"deploy/docker/{dockerfile}"
        entry, cmd = image_defaults(DEPLOY / "docker" / dockerfile)
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        out.append((name, effective(entry, cmd, service.get("entrypoint"), service.get("command")), env))
        if "healthcheck" in service:
            out.append((f"{name} health check", service["healthcheck"]["test"][1:], env))
    return out


def test_every_image_command_exists() -> None:
    for dockerfile in DOCKERFILES:
        entry, cmd = image_defaults(dockerfile)
        argv = entry + cmd
        if argv[:3] != ["python3", "-m", VLLM_MODULE]:  # the inference image's flags come from compose/k8s
            assert command_errors(argv, {}) == [], dockerfile.name


def test_every_compose_command_exists() -> None:
    checked = compose_commands()
    assert {name for name, _, _ in checked} >= {"migrate", "api", "worker", "vllm"}
    assert {name: errs for name, argv, env in checked if (errs := command_errors(argv, env))} == {}
    vllm = load_compose()["services"]["vllm"]
    model = vllm["command"][vllm["command"].index("--served-model-name") + 1]
    registry = base_models_of((DEPLOY / "base-models.yaml").read_text())
    assert registry[model].location == vllm["command"][vllm["command"].index("--model") + 1]
    urls = json.loads(load_compose()["services"]["api"]["environment"]["TAILOR_INFERENCE_URLS"])
    assert urls == {model: ["http://vllm:8000"]}


def test_plugin_entry_point_exists() -> None:
    pyproject = tomllib.loads((PLUGIN_ROOT / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["vllm.general_plugins"][PLUGIN]
    assert plugin_path_exists(target, ":")


def test_command_check_rejects_what_does_not_exist() -> None:
    vllm_env_ok = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_PLUGINS": "tailor"}
    assert command_errors(["tailor", "wroker"], {})
    assert command_errors(["tailor", "worker", "--queues", "q"], {})
    assert command_errors(["tailor", "keys", "create"], {})  # --project is required
    assert command_errors(["python", "-m", "service.no_such_module"], {})
    assert command_errors(["python3", "-m", VLLM_MODULE, "--model", "/m", "--served-model-name", "M"], vllm_env_ok)
    assert command_errors(["python3", "-c", "urlopen('http://127.0.0.1:8000/healthz')"], {})
    assert not plugin_path_exists("tailor_vllm_plugin.middleware.NoSuchMiddleware")
    assert not plugin_path_exists("tailor_vllm_plugin.nomodule.TailorAdapterMiddleware")
