"""deploy/kuberay/ against KubeRay's CRD schemas, and the references between the manifests.

The RayService and RayJob are validated with the openAPIV3Schema of KubeRay v1.6.1's CRDs,
which cluster/fetch_schemas.sh takes from the operator's Go module (Go module proxy) and
converts to strict JSON Schema under var/cache/ (no field outside the schema passes). The
core objects (Service, ConfigMap, Secret, PersistentVolumeClaim, batch/v1 Job) have no schema
source reachable here: they are checked against HAND_CHECKED_CORE_SUBSET below, written from
the Kubernetes API reference, except the Job's pod template, which gets the full
PodTemplateSpec schema embedded in the RayJob CRD.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from core.settings import REPO_ROOT, Settings
from tests.helpers import fetched_schemas

KUBERAY = REPO_ROOT / "deploy" / "kuberay"
TOKEN_SECRET = "fraudray-ray-token"


@pytest.fixture(scope="module")
def schema_dir() -> Path:
    return fetched_schemas("kuberay", timeout_s=600)


@cache
def _validator(schema_dir: Path, kind: str, version: str = "v1") -> Draft7Validator:
    schema = json.loads((schema_dir / f"{kind.lower()}_{version}.json").read_text())
    return Draft7Validator(schema)


def _errors(validator: Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator.iter_errors(doc)]


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(KUBERAY.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _name, doc in _manifests() if doc["kind"] == kind]


def _cluster_specs() -> list[dict[str, Any]]:
    (service,) = _of_kind("RayService")
    (job,) = _of_kind("RayJob")
    return [service["spec"]["rayClusterConfig"], job["spec"]["rayClusterSpec"]]


def _pod_specs(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def test_the_ray_manifests_match_kuberays_crds(schema_dir: Path) -> None:
    ray_docs = [(name, doc) for name, doc in _manifests() if doc["apiVersion"] == "ray.io/v1"]
    assert sorted(doc["kind"] for _n, doc in ray_docs) == ["RayJob", "RayService"]
    for name, doc in ray_docs:
        assert _errors(_validator(schema_dir, doc["kind"]), doc) == [], name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name


def test_the_converted_schemas_accept_kuberays_own_samples(schema_dir: Path) -> None:
    """The strict conversion must not reject what KubeRay itself ships as valid."""
    source = json.loads((schema_dir / "SOURCE.json").read_text())
    samples = sorted(Path(source["Dir"], "config", "samples").glob("*.yaml"))
    checked = 0
    for path in samples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "ray.io/v1":
                assert _errors(_validator(schema_dir, doc["kind"]), doc) == [], path.name
                checked += 1
    assert checked >= 20


def test_a_misspelt_or_mistyped_field_fails(schema_dir: Path) -> None:
    (service,) = _of_kind("RayService")
    bad = json.loads(json.dumps(service))
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    assert any("envFrm" in e for e in _errors(_validator(schema_dir, "RayService"), bad))
    bad = json.loads(json.dumps(service))
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    assert _errors(_validator(schema_dir, "RayService"), bad)


def test_no_field_whose_cel_rules_the_schema_check_skips() -> None:
    text = "".join(p.read_text() for p in KUBERAY.glob("*.yaml"))
    assert "managedBy" not in text and "deletionStrategy" not in text


def test_serve_config_v2_is_deploy_serve_config() -> None:
    (service,) = _of_kind("RayService")
    expected = yaml.safe_load((REPO_ROOT / "deploy" / "serve_config.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == expected, (
        "copy deploy/serve_config.yaml (without comments) into serveConfigV2"
    )


def test_token_auth_with_the_token_from_the_secret() -> None:
    secrets = {doc["metadata"]["name"]: doc for doc in _of_kind("Secret")}
    assert "auth_token" in secrets[TOKEN_SECRET]["stringData"]
    for cluster in _cluster_specs():
        assert cluster["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
        containers = [c for pod in _pod_specs(cluster) for c in pod["containers"]]
        assert containers
        for container in containers:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
                "name": TOKEN_SECRET,
                "key": "auth_token",
            }
    (job,) = _of_kind("Job")
    (submitter,) = job["spec"]["template"]["spec"]["containers"]
    assert {e["name"] for e in submitter["env"]} == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}


def test_autoscaling_head_and_worker_groups() -> None:
    service, job = _cluster_specs()
    for cluster in (service, job):
        assert cluster["enableInTreeAutoscaling"] is True
        assert cluster["rayVersion"] == _ray_pin()
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            assert group["maxReplicas"] > group["minReplicas"]
    assert service["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "head: control plane only"
    assert service["workerGroupSpecs"][0]["minReplicas"] >= 1


def _ray_pin() -> str:
    match = re.search(r"^ray\[[^\]]*\]==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert match
    return match.group(1)


def test_settings_reach_every_ray_pod_from_configmap_and_secret() -> None:
    (config,) = _of_kind("ConfigMap")
    secrets = {doc["metadata"]["name"]: doc for doc in _of_kind("Secret")}
    assert "FRAUDRAY_KAFKA_BOOTSTRAP" in config["data"]
    assert {"FRAUDRAY_REDIS_URL", "FRAUDRAY_POSTGRES_DSN", "FRAUDRAY_API_KEYS"} <= set(
        secrets["fraudray-services"]["stringData"]
    )
    claims = {doc["metadata"]["name"] for doc in _of_kind("PersistentVolumeClaim")}
    for cluster in _cluster_specs():
        for pod in _pod_specs(cluster):
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"] + pod.get("initContainers", []):
                refs = [next(iter(r.values()))["name"] for r in container["envFrom"]]
                assert refs == [config["metadata"]["name"], "fraudray-services"], container["name"]
                for mount in container["volumeMounts"]:
                    assert mount["mountPath"] == config["data"]["FRAUDRAY_STACK_VAR_DIR"]
                    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] in claims


def test_metrics_and_serve_ports() -> None:
    s = Settings()
    for cluster in _cluster_specs():
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for group in groups:
            assert group["rayStartParams"]["metrics-export-port"] == str(s.ray.metrics_export_port)
            annotations = group["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(s.ray.metrics_export_port)
            ports = {
                p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]
            }
            assert ports["metrics"] == s.ray.metrics_export_port
    head_ports = _cluster_specs()[0]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "serve", "containerPort": s.serve.http_port} in [
        {"name": p["name"], "containerPort": p["containerPort"]} for p in head_ports
    ]


def test_the_training_job_runs_fraudray_train_tune() -> None:
    (job,) = _of_kind("RayJob")
    assert job["spec"]["entrypoint"].startswith("fraudray train --tune")
    # Registered for review, on the serving features: `models promote` may then take them.
    assert "--csv" not in job["spec"]["entrypoint"] and "--no-promote" in job["spec"]["entrypoint"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True


# -- core objects: hand-checked subset --------------------------------------------------------

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _NAME, "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
    "additionalProperties": False,
}
_STR_MAP = {
    "type": "object",
    "propertyNames": {"pattern": r"^[-._a-zA-Z0-9]+$"},
    "additionalProperties": {"type": "string"},
}


def _obj(api: str, kind: str, **props: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *[k for k in props if k != "type"]],
        "properties": {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": _META, **props},
        "additionalProperties": False,
    }


# A SUBSET of the Kubernetes API schemas, written by hand from the API reference for the
# fields these manifests use: unknown fields fail, so do wrong types.
HAND_CHECKED_CORE_SUBSET: dict[str, dict[str, Any]] = {
    "Service": _obj(
        "v1",
        "Service",
        spec={
            "type": "object",
            "required": ["type", "externalName"],
            "additionalProperties": False,
            "properties": {
                "type": {"const": "ExternalName"},
                "externalName": {"type": "string", "format": "hostname"},
            },
        },
    ),
    "ConfigMap": _obj("v1", "ConfigMap", data=_STR_MAP),
    "Secret": _obj("v1", "Secret", type={"const": "Opaque"}, stringData=_STR_MAP),
    "PersistentVolumeClaim": _obj(
        "v1",
        "PersistentVolumeClaim",
        spec={
            "type": "object",
            "required": ["accessModes", "resources"],
            "additionalProperties": False,
            "properties": {
                "accessModes": {
                    "type": "array",
                    "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]},
                },
                "resources": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "requests": {
                            "type": "object",
                            "required": ["storage"],
                            "properties": {"storage": {"type": "string", "pattern": r"^\d+(Mi|Gi|Ti)$"}},
                        }
                    },
                },
                "storageClassName": {"type": "string"},
            },
        },
    ),
    "Job": _obj(
        "batch/v1",
        "Job",
        spec={
            "type": "object",
            "required": ["template"],
            "additionalProperties": False,
            "properties": {
                "backoffLimit": {"type": "integer", "minimum": 0},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "template": {"type": "object"},  # checked below with the CRD's PodTemplateSpec
            },
        },
    ),
}


def test_core_objects_against_the_hand_checked_subset(schema_dir: Path) -> None:
    docs = [(name, doc) for name, doc in _manifests() if doc["apiVersion"] != "ray.io/v1"]
    assert {doc["kind"] for _n, doc in docs} == set(HAND_CHECKED_CORE_SUBSET)
    for name, doc in docs:
        assert _errors(Draft7Validator(HAND_CHECKED_CORE_SUBSET[doc["kind"]]), doc) == [], name
    pod_template = _validator(schema_dir, "RayJob").schema["properties"]["spec"]["properties"][
        "submitterPodTemplate"
    ]
    for name, doc in docs:
        if doc["kind"] == "Job":
            assert _errors(Draft7Validator(pod_template), doc["spec"]["template"]) == [], name
            assert doc["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}


def test_one_image_everywhere() -> None:
    text = "".join(p.read_text() for p in KUBERAY.glob("*.yaml"))
    images = set(re.findall(r"^\s*image: (\S+)", text, re.M))
    assert len(images) == 1, images
    assert images.pop().endswith(":0.1.0")  # the version of pyproject.toml and docker-compose.yml
