"""ray_cluster.yaml through Ray's own cluster-config validation (prepare_config fills in the
provider's defaults, validate_config checks the result against Ray's ray-schema.json; neither
calls the cloud), plus what the schema cannot know: ports, token auth, the Serve deploy, and
the GCP/Azure variants of docs/deploy.md."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from core.ray_client import SERVE_FAST_PATH
from core.settings import REPO_ROOT, Settings

CONFIG = REPO_ROOT / "ray_cluster.yaml"


def _load() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return config


def _validated(config: dict[str, Any]) -> dict[str, Any]:
    prepared: dict[str, Any] = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _ray_starts(config: dict[str, Any], key: str) -> list[str]:
    return [c for c in config[key] if "ray start" in c]


def _flag(command: str, name: str) -> str:
    match = re.search(rf"--{name}[= ](\S+)", command)
    assert match, f"--{name} missing in: {command}"
    return match.group(1)


def test_ray_accepts_the_config() -> None:
    prepared = _validated(_load())
    assert prepared["provider"]["type"] == "aws"


def test_the_validation_has_teeth() -> None:
    config = _load()
    config["head_start_ray_comands"] = config.pop("head_start_ray_commands")  # a typo
    with pytest.raises(jsonschema.ValidationError, match="head_start_ray_comands"):
        _validated(config)
    config = _load()
    config["available_node_types"]["cpu_worker"]["resources"] = {"CPU": "eight"}
    with pytest.raises(jsonschema.ValidationError):
        _validated(config)


def test_head_and_an_autoscaling_cpu_worker_group() -> None:
    config = _validated(_load())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head is control plane only"
    (worker,) = (t for name, t in types.items() if name != config["head_node_type"])
    assert 1 <= worker["min_workers"] < worker["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_token_auth_on_every_node_and_the_token_reaches_them() -> None:
    config = _load()
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = _ray_starts(config, "head_start_ray_commands") + _ray_starts(config, "worker_start_ray_commands")
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command
        for name, value in SERVE_FAST_PATH.items():  # Serve's processes inherit it from `ray start`
            assert f"{name}={value}" in command, command
    for command in config["head_start_ray_commands"]:
        if command.split()[:2] != ["ray", "stop"]:
            assert "RAY_AUTH_MODE=token" in command, command


def test_ports_match_the_settings() -> None:
    s = Settings()
    config = _load()
    (head,) = _ray_starts(config, "head_start_ray_commands")
    (worker,) = _ray_starts(config, "worker_start_ray_commands")
    assert int(_flag(head, "port")) == s.ray.head_port == 6380
    assert _flag(worker, "address") == f"$RAY_HEAD_IP:{s.ray.head_port}"
    assert int(_flag(head, "dashboard-port")) == s.ray.dashboard_port
    for command in (head, worker):
        assert int(_flag(command, "metrics-export-port")) == s.ray.metrics_export_port
    opened = {p["FromPort"] for p in config["provider"]["security_group"]["IpPermissions"]}
    assert opened == {s.ray.metrics_export_port, s.serve.http_port}, "Prometheus and the load balancer"


def test_serve_app_and_consumers_are_started_from_the_repo() -> None:
    config = _load()
    assert config["file_mounts"]["~/fraudray"] == "."
    assert (REPO_ROOT / "pyproject.toml").exists()
    assert {".venv", "var"} <= set(config["rsync_exclude"]) and config["rsync_filter"] == [".gitignore"]
    setup = " ".join(config["setup_commands"])
    assert "-r ~/fraudray/requirements.txt" in setup and "-e ~/fraudray" in setup
    head = " ".join(config["head_start_ray_commands"])
    deploy = re.search(r"serve deploy (\S+) --address http://127\.0\.0\.1:(\d+)", head)
    assert deploy, head
    assert (REPO_ROOT / deploy.group(1)).is_file()
    assert int(deploy.group(2)) == Settings().ray.dashboard_port
    assert "ray job submit" in head and "-- fraudray consume --actors" in head
    env_mount = config["file_mounts"]["~/fraudray.env"]
    assert not env_mount.startswith((".", "/work")), "the env file holds secrets: keep it out of the repo"
    assert (REPO_ROOT / "deploy" / "cluster.env.example").is_file()


def _doc_variants() -> dict[str, dict[str, Any]]:
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```yaml\n(# ray_cluster\.yaml on (\w+)\n.*?)```", text, flags=re.S)
    return {name: yaml.safe_load(body) for body, name in blocks}


@pytest.mark.parametrize("provider", ["GCP", "Azure"])
def test_the_documented_gcp_and_azure_variants_validate(provider: str) -> None:
    variants = _doc_variants()
    assert provider in variants, f"docs/deploy.md lost its {provider} block"
    config = _load()
    config["provider"].pop("security_group")  # AWS only; the docs say what replaces it
    config.update(variants[provider])
    prepared = _validated(config)
    assert prepared["provider"]["type"] == provider.lower()
    assert set(prepared["available_node_types"]) == set(_load()["available_node_types"])


def test_the_config_mentions_no_file_that_is_missing() -> None:
    text = CONFIG.read_text()
    for rel in re.findall(r"\b((?:deploy|docs)/[\w./-]+\.(?:ya?ml|md|example))", text):
        assert (REPO_ROOT / rel).exists(), rel
