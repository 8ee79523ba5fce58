"""What ties the deployment files to the code: the Serve config is one Ray Serve accepts and
names the real app and deployments; every `fraudray …` command line in ray_cluster.yaml,
deploy/ and docker-compose.yml parses with the real CLI; every FRAUDRAY_* variable they set is
one the settings accept."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from cluster.cli import app as cli_app
from core.families import DEPLOYMENT_NAMES, SCORER_DEPLOYMENT
from core.settings import REPO_ROOT, Settings

SERVE_CONFIG = REPO_ROOT / "deploy" / "serve_config.yaml"
FILES_WITH_COMMANDS = [
    "ray_cluster.yaml",
    "docker-compose.yml",
    "deploy/docker/entrypoint.sh",
    *(str(p.relative_to(REPO_ROOT)) for p in sorted((REPO_ROOT / "deploy" / "kuberay").glob("*.yaml"))),
]


def _serve_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text())
    return config


def test_ray_serve_accepts_the_config() -> None:
    schema = ServeDeploySchema.model_validate(_serve_config())
    assert schema.proxy_location.value == "EveryNode"


def test_the_config_names_the_real_app_and_deployments() -> None:
    s = Settings()
    config = _serve_config()
    assert config["http_options"] == {"host": "0.0.0.0", "port": s.serve.http_port}
    (app,) = config["applications"]
    assert app["name"] == s.serve.app_name and app["route_prefix"] == "/"
    module_name, attr = app["import_path"].split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr))
    deployments = {
        obj.name for obj in vars(module).values() if isinstance(obj, serve.Deployment)
    }  # the deployments the builder binds, plus one ModelScorer per family under its own name
    assert deployments == {SCORER_DEPLOYMENT, "FraudApi"}
    models = importlib.import_module("serve_deployments.models")
    assert isinstance(models.ModelScorer, serve.Deployment)
    expected = deployments | set(DEPLOYMENT_NAMES.values())
    assert {d["name"] for d in app["deployments"]} == expected
    one_box = yaml.safe_load((REPO_ROOT / "serve_deployments" / "config.yaml").read_text())
    (local,) = one_box["applications"]
    assert (local["name"], local["import_path"], local["route_prefix"]) == (
        app["name"], app["import_path"], app["route_prefix"],
    )  # fmt: skip


def test_deployed_configs_list_the_codes_autoscaling() -> None:
    """`serve run config.yaml` and `fraudray serve` deploy configs that list each autoscaled
    deployment's autoscaling config, equal to the code's: with them listed, a later
    `serving.configure` of one applies in place (Ray counts such entries into the app's code
    version)."""
    from serve_deployments import app as app_module
    from serve_deployments import deploy as serving
    from serve_deployments import models

    code = app_module.autoscaling_configs()
    declared: dict[str, Any] = {
        SCORER_DEPLOYMENT: app_module.Ensemble,
        **dict.fromkeys(DEPLOYMENT_NAMES.values(), models.ModelScorer),
    }
    for name, deployment in declared.items():
        live = deployment._deployment_config.autoscaling_config.model_dump(exclude_unset=True)
        assert live == code[name], name  # (8.0 == 8: Ray stores some as floats)
    one_box = yaml.safe_load((REPO_ROOT / "serve_deployments" / "config.yaml").read_text())
    (local,) = one_box["applications"]
    assert {d["name"]: d["autoscaling_config"] for d in local["deployments"]} == code
    versions = {f: {"uri": "/m", "version": "v1"} for f in ("if", "xgb", "ae", "ensemble")}
    assert {d["name"]: d["autoscaling_config"] for d in serving._deployments(versions)} == code


def _strings(node: Any) -> list[str]:
    """Every string of a parsed YAML document; a list of strings (a command) also joined."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [t for v in node.values() for t in _strings(v)]
    if isinstance(node, list):
        joined = [" ".join(node)] if node and all(isinstance(v, str) for v in node) else []
        return joined + [t for v in node for t in _strings(v)]
    return []


def _commands() -> list[tuple[str, list[str]]]:
    """(file, argv after `fraudray`) for each fraudray command line (comments left out)."""
    found = []
    for rel in FILES_WITH_COMMANDS:
        text = (REPO_ROOT / rel).read_text()
        if rel.endswith(".sh"):
            texts = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        else:
            texts = [t for doc in yaml.safe_load_all(text) for t in _strings(doc)]
        for raw in texts:
            chunk = re.sub(r'"?\$\{\w+:-([^}]*)\}"?', r"\1", raw)  # ${VAR:-default} -> default
            for match in re.finditer(
                r"(?<![\w/-])fraudray ((?:consume|train|produce|serve|demo)\b[^;&|\n]*)", chunk
            ):
                found.append((rel, shlex.split(match.group(1))))
    return found


def test_every_fraudray_command_line_parses() -> None:
    commands = _commands()
    assert {rel for rel, _argv in commands} >= {
        "ray_cluster.yaml", "docker-compose.yml", "deploy/docker/entrypoint.sh",
        "deploy/kuberay/rayjob-train-tune.yaml", "deploy/kuberay/consumers-job.yaml",
    }  # fmt: skip
    group: Any = typer.main.get_command(cli_app)  # typer's own (vendored) click group
    for rel, argv in commands:
        ctx = group.make_context("fraudray", list(argv), resilient_parsing=True)
        command = group.get_command(ctx, argv[0])
        assert command is not None, f"{rel}: no command {argv[0]}"
        try:
            command.make_context(argv[0], argv[1:], parent=ctx)
        except typer.TyperException as exc:
            pytest.fail(f"{rel}: `fraudray {shlex.join(argv)}` does not parse: {exc}")


def _env_files() -> dict[str, dict[str, str]]:
    files: dict[str, dict[str, str]] = {}
    example = (REPO_ROOT / "deploy" / "cluster.env.example").read_text()
    files["deploy/cluster.env.example"] = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    for path in (REPO_ROOT / "deploy" / "kuberay").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            values = (doc or {}).get("data") or (doc or {}).get("stringData") or {}
            fraudray = {k: str(v) for k, v in values.items() if k.startswith("FRAUDRAY_")}
            if fraudray:
                files[f"{path.relative_to(REPO_ROOT)}:{doc['metadata']['name']}"] = fraudray
    return files


@pytest.mark.parametrize("where", sorted(_env_files()))
def test_every_fraudray_variable_is_a_setting(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("FRAUDRAY_")]:
        monkeypatch.delenv(key)
    for key, value in _env_files()[where].items():
        monkeypatch.setenv(key, value)
    Settings(_env_file=None)  # raises on a name the settings do not know


def test_kubernetes_gets_all_three_service_addresses() -> None:
    k8s = {
        k: v
        for where, env in _env_files().items()
        if where.startswith("deploy/kuberay")
        for k, v in env.items()
    }
    assert {"FRAUDRAY_KAFKA_BOOTSTRAP", "FRAUDRAY_REDIS_URL", "FRAUDRAY_POSTGRES_DSN"} <= set(k8s)
    assert Path(REPO_ROOT / "deploy" / "kuberay" / "secrets.example.yaml").is_file()


def _code_version(app: dict[str, Any]) -> str:
    """Ray Serve's own code version of an app config: a change of it replaces every replica."""
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeApplicationSchema

    return get_app_code_version(ServeApplicationSchema.model_validate(app))


def test_keys_auth_and_llm_options_are_no_new_code_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fraudray serve`, `make run`, the benchmarks (``deploy``) and `serve run
    serve_deployments/config.yaml` deploy one code version whatever the keys, auth, LLM options
    and model versions: those are user_config (FraudApi's, the models'), applied in place by
    ``reconfigure``; only another set of families (or another import path) rebuilds the app."""
    from serve_deployments import deploy as serving

    s = Settings()
    versions = {f: {"uri": "/m", "version": "v1"} for f in ("if", "xgb", "ae", "ensemble")}
    one_box = yaml.safe_load((REPO_ROOT / "serve_deployments" / "config.yaml").read_text())
    (local,) = one_box["applications"]
    base = serving.app_config(s, versions, ["key-1"])
    assert base["args"] == local["args"] == {}
    same = [
        base,
        local,
        serving.app_config(s, versions, ["key-2", "key-3"]),
        serving.app_config(s, versions, ["key-1"], llm={"base_url": "http://llm:1/v1", "model": "m"}),
        serving.app_config(s, {**versions, "if": {"uri": "/m2", "version": "v2"}}, ["key-1"]),
        serving.app_config(
            s.model_copy(update={"api": s.api.model_copy(update={"auth": "off"})}), versions, []
        ),
    ]
    assert len({_code_version(app) for app in same}) == 1
    ingress = [d for app in same[2:4] for d in app["deployments"] if d["name"] == "FraudApi"]
    assert ingress[0]["user_config"] != ingress[1]["user_config"]
    assert all("api_key" not in d["user_config"]["llm"] for d in ingress)  # no secret in a config
    only_if = serving.app_config(s, {"if": versions["if"]}, ["key-1"])
    assert _code_version(only_if) != _code_version(base)


def test_app_args_rebuild_only_when_the_served_families_change() -> None:
    from serve_deployments.deploy import app_args

    every = ["ae", "if", "xgb"]
    assert app_args(every, None, None) == {}
    assert app_args(["if"], None, None) == {"families": ["if"]}
    assert app_args(every, {"args": {}}, set(every)) == {}  # in place
    assert app_args(every, {"args": {"families": every}}, set(every)) == {"families": every}  # kept
    # An app whose keys were args (before they became user_config): one rebuild to the new shape.
    assert app_args(every, {"args": {"families": every, "api_key_digests": ["ab"]}}, set(every)) == {}
    # `{}` built while the registry had only the IF: the args must change for Serve to rebuild.
    assert app_args(every, {"args": {}}, {"if"}) == {"families": every}
    assert app_args(every, {"args": {"families": ["if"]}}, {"if"}) == {}
