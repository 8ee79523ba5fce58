"""docker-compose.yml, the Dockerfile and their files, without a Docker engine (there is none
on these machines). The compose file is loaded by compose-go, the library Docker Compose
itself uses (built by cluster/fetch_schemas.sh from deploy/compose/check): interpolation, the
Compose schema, merge keys and service references are checked as `docker compose config`
would. The tests then check the normalised project: ports at the settings' defaults, every
bind-mounted file present, the FRAUDRAY_* environment accepted by the settings, Prometheus and
Grafana wired to the files of monitoring/.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from core.ray_client import SERVE_FAST_PATH
from core.settings import REPO_ROOT, Settings
from tests.helpers import fetched_schemas

COMPOSE = REPO_ROOT / "docker-compose.yml"
PROMETHEUS = REPO_ROOT / "deploy" / "compose" / "prometheus.yml"
ENV = {"FRAUDRAY_API_KEYS": "test-key"}  # the one variable the file requires


def _load(checker: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only PATH/HOME from our environment: a developer's FRAUDRAY_* must not leak into the check.
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run([str(checker), str(COMPOSE)], capture_output=True, text=True,
                          env={**base, **env}, cwd=REPO_ROOT, timeout=60, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def checker() -> Path:
    return fetched_schemas("compose", timeout_s=900)


@pytest.fixture(scope="module")
def project(checker: Path) -> dict[str, Any]:
    out = _load(checker, ENV)
    assert out.returncode == 0, out.stderr
    loaded: dict[str, Any] = json.loads(out.stdout)
    return loaded


def test_compose_go_refuses_a_broken_file(checker: Path, tmp_path: Path) -> None:
    out = _load(checker, {})
    assert out.returncode != 0 and "FRAUDRAY_API_KEYS" in out.stderr, "the API keys must be required"
    text = COMPOSE.read_text()
    for old, new, error in [
        ("    environment:\n      CLUSTER_ID", "    enviroment:\n      CLUSTER_ID", "enviroment"),  # schema
        ("depends_on: [prometheus]", "depends_on: [prometheuss]", "prometheuss"),  # reference
    ]:
        assert old in text
        broken = tmp_path / "docker-compose.yml"
        broken.write_text(text.replace(old, new, 1))
        bad = subprocess.run([str(checker), str(broken)], capture_output=True, text=True,
                             env={**os.environ, **ENV}, timeout=60, check=False)  # fmt: skip
        assert bad.returncode != 0 and error in bad.stderr, (new, bad.stderr)


def _published(service: dict[str, Any]) -> dict[int, int]:
    ports = {}
    for p in service.get("ports", []):
        assert p["host_ip"] == "127.0.0.1", f"publish on loopback only: {p}"
        ports[int(p["published"])] = int(p["target"])
    return ports


def test_ports_are_the_settings_defaults(project: dict[str, Any]) -> None:
    s = Settings()
    services = project["services"]
    want = {
        "kafka": {s.kafka.port: 9092},
        "schema-registry": {s.stack.schema_registry_port: 8080},  # Apicurio's image listens on 8080
        "redis": {s.redis.port: 6379},
        "postgres": {s.postgres.port: 5432},
        "prometheus": {s.prometheus.port: 9090, 3000: 3000},  # 3000: Grafana, in this network
        "alertmanager": {s.alertmanager.port: 9093},
        "ray-head": {s.serve.http_port: 8000, s.ray.dashboard_port: 8265, s.ray.head_port: 6380},
    }
    assert (s.kafka.port, s.redis.port, s.postgres.port) == (9092, 6379, 5432)
    assert (s.prometheus.port, s.alertmanager.port) == (9090, 9093)
    assert (s.serve.http_port, s.ray.dashboard_port, s.ray.head_port) == (8000, 8265, 6380)
    for name, ports in want.items():
        assert _published(services[name]) == ports, name
    published = [p for svc in services.values() for p in _published(svc)]
    assert len(published) == len(set(published))
    assert not any(_published(services[n]) for n in services if n not in want)


def test_the_services_of_the_stack(project: dict[str, Any]) -> None:
    services = project["services"]
    assert {
        "kafka",
        "schema-registry",
        "redis",
        "postgres",
        "prometheus",
        "alertmanager",
        "grafana",
        "ray-head",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"


def test_kafka_runs_kraft_with_the_settings_topics(project: dict[str, Any]) -> None:
    s = Settings()
    kafka = project["services"]["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft: no ZooKeeper"
    assert len(base64.urlsafe_b64decode(kafka["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID: a base64 UUID"
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["EXTERNAL"] == s.kafka.bootstrap, "the host reaches Kafka at the default bootstrap"
    assert listeners["CONTROLLER"] == f":{s.kafka.controller_port}"
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@kafka:{s.kafka.controller_port}"
    internal = advertised["INTERNAL"]
    assert project["services"]["ray-head"]["environment"]["FRAUDRAY_KAFKA_BOOTSTRAP"] == internal
    init = " ".join(project["services"]["kafka-init"]["command"])
    topics = re.search(r"for t in (.*?); do", init)
    assert topics and tuple(topics.group(1).split()) == s.kafka.topics
    assert f"--partitions {s.kafka.partitions}" in init and f"--bootstrap-server {internal}" in init


def test_the_fraudray_environment_is_valid_settings(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = project["services"]
    for name in ("ray-head", "producer"):
        env = services[name]["environment"]
        for key in [k for k in os.environ if k.startswith("FRAUDRAY_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s = Settings(_env_file=None)
        assert s.kafka.bootstrap.split(":")[0] == "kafka", name
        assert urlsplit(s.redis.url.get_secret_value()).hostname == "redis"
        assert urlsplit(s.postgres.dsn.get_secret_value()).hostname == "postgres"
        assert s.api.key_list() == ["test-key"]
        assert env["RAY_AUTH_MODE"] == "token"
    head = services["ray-head"]
    assert head["environment"]["FRAUDRAY_STACK_VAR_DIR"] in {v["target"] for v in head["volumes"]}
    assert head["command"] == ["bash", "deploy/docker/entrypoint.sh", "head"]


def test_every_bind_mount_exists(project: dict[str, Any]) -> None:
    binds = [
        (n, v)
        for n, svc in project["services"].items()
        for v in svc.get("volumes", [])
        if v["type"] == "bind"
    ]
    assert binds
    for name, volume in binds:
        assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"
        assert Path(volume["source"]).resolve().is_relative_to(REPO_ROOT), f"{name} mounts outside the repo"
    named = {
        v["source"]
        for svc in project["services"].values()
        for v in svc.get("volumes", [])
        if v["type"] == "volume"
    }
    assert named <= set(project["volumes"])


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (bind, relative to the repo) or volume name."""
    out = {}
    for v in service.get("volumes", []):
        src = v["source"]
        out[v["target"]] = str(Path(src).relative_to(REPO_ROOT)) if v["type"] == "bind" else src
    return out


def test_prometheus_scrapes_ray_with_the_templates_relabelling(project: dict[str, Any]) -> None:
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    services = project["services"]
    mounts = _mounts(services["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == "deploy/compose/prometheus.yml"
    config = yaml.safe_load(PROMETHEUS.read_text())
    (rules,) = config["rule_files"]
    assert mounts[rules] == "monitoring/prometheus/rules.yml"
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    (sd_file,) = jobs["ray"]["file_sd_configs"][0]["files"]
    ray_tmp = _mounts(services["ray-head"])
    assert mounts[str(Path(sd_file).parent)] == ray_tmp[str(Path(sd_file).parent)] == "ray-tmp"
    assert Path(sd_file).name == PROMETHEUS_SERVICE_DISCOVERY_FILE
    assert Path(sd_file).parent == Path(Settings().ray.temp_dir)
    template = yaml.safe_load((REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    (template_ray,) = (j for j in template["scrape_configs"] if j["job_name"] == "ray")
    unescaped = json.loads(json.dumps(template_ray["metric_relabel_configs"]).replace("$$", "$"))
    assert jobs["ray"]["metric_relabel_configs"] == unescaped
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by make setup")
def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    config["rule_files"] = [str(REPO_ROOT / "monitoring" / "prometheus" / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_is_provisioned_from_monitoring(project: dict[str, Any]) -> None:
    grafana = project["services"]["grafana"]
    env, mounts = grafana["environment"], _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "monitoring/grafana/provisioning"
    provisioning = REPO_ROOT / "monitoring" / "grafana" / "provisioning"
    used = {
        m for f in provisioning.rglob("*.yml")
        for m in re.findall(r"\$\{(\w+)\}", json.dumps(yaml.safe_load(f.read_text())))
    }  # fmt: skip
    assert used <= set(env), f"provisioning needs {used - set(env)}"
    dashboards = env["GRAFANA_FRAUDRAY_DASHBOARDS"]
    assert mounts[dashboards] == "monitoring/grafana/dashboards"
    assert list((REPO_ROOT / mounts[dashboards]).glob("*.json")), "no dashboard to provision"
    assert mounts[env["FRAUDRAY_RAY_TEMP_DIR"]] == "ray-tmp"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    url = datasources["datasources"][0]["url"]
    if urlsplit(url.replace("${FRAUDRAY_PROMETHEUS_PORT}", "1")).hostname in {"127.0.0.1", "localhost"}:
        assert grafana["network_mode"] == "service:prometheus", (
            "loopback datasource: share Prometheus' network"
        )
    assert env["FRAUDRAY_PROMETHEUS_PORT"] == str(Settings().prometheus.port)


def test_alertmanager_reads_the_rendered_template(project: dict[str, Any]) -> None:
    services = project["services"]
    render = services["alertmanager-config"]
    dest = render["command"][-1]
    assert render["command"][:3] == ["bash", "deploy/docker/entrypoint.sh", "alertmanager-config"]
    assert f"--config.file={dest}" in services["alertmanager"]["command"]
    assert (
        _mounts(render)[str(Path(dest).parent)] == _mounts(services["alertmanager"])[str(Path(dest).parent)]
    )
    from monitoring.alertmanager_config import ENV_NAMES

    assert set(render["environment"]) == set(ENV_NAMES)


def test_the_dockerfile_copies_what_exists() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M), "Python 3.11, as requirements.txt is pinned for"
    sources = [s for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", text, re.M) for s in line.split()[:-1]]
    assert sources
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}  # fmt: skip
    for src in sources:
        assert (REPO_ROOT / src).exists(), src
        assert src not in ignored, f"{src} is copied but .dockerignore drops it"
    assert {".env", ".venv", "var", ".git"} <= ignored, "keep secrets and local state out of the image"
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.M)[0].split()}
    s = Settings()
    assert exposed == {s.ray.head_port, s.serve.http_port, s.ray.dashboard_port, s.ray.metrics_export_port}
    assert "RAY_AUTH_MODE=token" in text
    for name, value in SERVE_FAST_PATH.items():  # every Ray process in the image (compose, KubeRay)
        assert re.search(rf"^\s*(?:ENV )?{name}={value}\b", text, re.M), name


def test_the_entrypoint_starts_ray_as_configured() -> None:
    script = REPO_ROOT / "deploy" / "docker" / "entrypoint.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    s = Settings()
    start = re.search(r"ray start --head (.*?)--disable-usage-stats", text, re.S)
    assert start
    flags = dict(re.findall(r"--([\w-]+) (\S+)", start.group(1).replace("\\\n", " ")))
    assert int(flags["port"]) == s.ray.head_port
    assert int(flags["dashboard-port"]) == s.ray.dashboard_port
    assert int(flags["metrics-export-port"]) == s.ray.metrics_export_port
    deploy = re.search(r"serve deploy (\S+) --address http://127\.0\.0\.1:(\d+)", text)
    assert deploy and (REPO_ROOT / deploy.group(1)).is_file() and int(deploy.group(2)) == s.ray.dashboard_port
