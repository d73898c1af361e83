"""Static checks of deploy/k8s/, with no cluster.

- every kustomize target renders with `kubectl kustomize` and every rendered object
  validates, strictly (unknown fields fail), against Kubernetes 1.37's schemas;
- every ConfigMap, Secret and claim a pod names exists, and every image is pinned;
- every command Kubernetes runs exists in the project (`tailor` subcommands and their
  options, `python -m` modules, the vLLM plugin's dotted paths), and vLLM runs with the
  flags and environment inference/launcher.py gives it;
- the settings, worker pools, inference URLs and base models agree with each other.

Each validator is also shown a broken document, so a check that silently passes
everything fails here (the command check is shown its broken commands in
tests/test_deploy_static.py).
"""

from __future__ import annotations

import base64
import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_docs import (
    DEPLOY,
    K8S_OVERLAYS,
    K8S_TARGETS,
    KUBERNETES_VERSION,
    OUR_IMAGES,
    VLLM_MODULE,
    base_models_of,
    command_errors,
    config_data,
    effective,
    image_defaults,
    images,
    kustomize,
    load_compose,
    objects,
    pod_spec,
    rendered,
)

from service.core.settings import Settings, WorkerPool
from service.jobs.queue import queue_for


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
    with pytest.raises(RuntimeError, match=r"missing\.yaml"):
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


# --- commands -------------------------------------------------------------------------


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
            out.append(
                (f"{doc['kind']}/{doc['metadata']['name']}", argv, {v["name"]: v.get("value", "") for v in c.get("env", [])})
            )
    return out


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
