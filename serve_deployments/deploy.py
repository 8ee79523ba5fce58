"""Deploy the Serve application ``fraud`` on the Ray cluster (local head or RAY_ADDRESS), and
swap its model versions in place (``hot_swap``) after a promote or rollback.

Both go through Serve's declarative API (the same path as ``serve deploy config.yaml``), with the
model versions as per-deployment ``user_config``: Serve derives the code version from the
import path and ``args`` only, so a config that changes nothing but ``user_config`` is a
lightweight update — ``reconfigure`` runs on the live replicas, none is restarted, no request is
dropped. (``serve.run`` would instead give every deploy a random code version and replace every
replica.) The API keys, ``auth`` and the LLM options are ``FraudApi``'s ``user_config`` too, and
``args`` stays ``{}`` (as in serve_deployments/config.yaml) while every family is served, so a
redeploy changing keys, auth, LLM options or versions is in place, whichever of ``fraudray
serve``, ``make run``, ``serve run serve_deployments/config.yaml`` or a benchmark deployed last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.settings import Settings

IMPORT_PATH = "serve_deployments.app:build_app"
DEPLOY_TIMEOUT_S = 300.0


def _client() -> Any:
    from ray.serve.context import _get_global_client

    return _get_global_client()


def _deployments(versions: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Per-deployment overrides carrying the model versions (``user_config``) and the code's
    autoscaling configs (listed so that ``configure`` applies in place; see
    ``serve_deployments.app.autoscaling_configs``)."""
    from core.families import DEPLOYMENT_NAMES, SCORER_DEPLOYMENT
    from serve_deployments.app import autoscaling_configs

    scaling = autoscaling_configs()
    names = {DEPLOYMENT_NAMES[f]: v for f, v in versions.items() if f in DEPLOYMENT_NAMES}
    names[SCORER_DEPLOYMENT] = versions.get("ensemble", {})
    return [{"name": n, "user_config": v, "autoscaling_config": scaling[n]} for n, v in names.items()]


def _apply(
    settings: Settings, app: dict[str, Any], others: list[dict[str, Any]], *, blocking: bool = True
) -> None:
    from ray.serve.schema import ServeDeploySchema

    # The running instance's proxy settings win (a config is not the place to move the proxy).
    details = _client().get_serve_details()
    http = details.get("http_options") or {}
    config = {
        "proxy_location": details.get("proxy_location") or "EveryNode",
        "http_options": {
            "host": http.get("host", settings.serve.http_host),
            "port": http.get("port", settings.serve.http_port),
        },
        "applications": [*others, app],
    }
    _client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
    if blocking:
        _wait_running(app["name"])


def _wait_running(app_name: str, timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    """Until the app is RUNNING (Serve's own wait gives up after 60 s; on a busy 2-core box the
    replicas of five deployments can take longer to import torch, XGBoost and sklearn)."""
    import time

    from ray import serve

    from core.errors import ModelNotReady

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(app_name)
        status = str(getattr(app, "status", ""))
        if status.endswith("RUNNING"):
            return
        if status.endswith("DEPLOY_FAILED"):
            raise ModelNotReady(f"Serve app {app_name!r} failed to deploy: {app.message if app else ''}")
        if time.monotonic() > deadline:
            raise ModelNotReady(f"Serve app {app_name!r} not running after {timeout_s:.0f} s ({status})")
        time.sleep(0.5)


def _live(settings: Settings) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The running app's declarative config (None when absent or deployed by serve.run) and the
    configs of the other declaratively deployed apps (kept when we re-apply)."""
    details = _client().get_serve_details()
    ours, others = None, []
    for name, app in (details.get("applications") or {}).items():
        config = app.get("deployed_app_config")
        if config is None:
            continue
        config = {k: v for k, v in dict(config).items() if v is not None}
        if name == settings.serve.app_name:
            ours = config
        else:
            others.append(config)
    return ours, others


def _live_families(settings: Settings) -> set[str] | None:
    """The model families the running app has deployments for (None: no app)."""
    from core.families import DEPLOYMENT_NAMES

    app = (_client().get_serve_details().get("applications") or {}).get(settings.serve.app_name)
    if app is None:
        return None
    live = set(app.get("deployments") or {})
    return {family for family, name in DEPLOYMENT_NAMES.items() if name in live}


def app_args(
    families: list[str], live: dict[str, Any] | None, live_families: set[str] | None
) -> dict[str, Any]:
    """The app's ``args``: ``{}`` when every family is served — what serve_deployments/config.yaml
    deploys, so that `serve run` of it, `fraudray serve`, `make run` and the benchmarks share one
    code version and switching between them is in place — else ``{"families": [...]}``.

    Serve rebuilds the app only when the args change, so the live app's spelling is kept when it
    already serves these families, and the other one is used when it serves other families (a
    build of ``{}`` made when the registry had fewer families must be rebuilt)."""
    from core.families import MEMBER_KEYS

    explicit: dict[str, Any] = {"families": sorted(families)}
    default: dict[str, Any] = {} if set(families) == set(MEMBER_KEYS) else explicit
    if live is None:
        return default
    live_args = dict(live.get("args") or {})
    if live_families == set(families):
        return live_args if live_args in (default, explicit) else default
    return explicit if live_args == default else default


def deploy(
    settings: Settings,
    api_keys: list[str] | None = None,
    *,
    blocking: bool = False,
    llm: dict[str, Any] | None = None,
    report: Callable[[str], None] | None = None,
) -> str:
    """Start Serve's HTTP proxy on the configured host/port and (re)deploy the app.

    Returns the base URL. The models are the registry's production versions
    (``cluster.first_start.ensure_models`` trains first-start ones beforehand). ``api_keys``
    (only their digests reach the cluster; default: the settings' keys) and ``llm``
    (``base_url``, ``model``, ``timeout_s``) override the settings; with ``auth`` they are
    ``FraudApi``'s ``user_config``, so changing them reconfigures the live ingress in place.
    ``blocking`` keeps this process alive afterwards (Ctrl-C to leave; the app keeps running
    on the cluster). ``report`` gets one line saying what kind of update Serve will make (see
    ``change_kind``) before it waits for the app.
    """
    import time

    from ray import serve

    from serve_deployments.app import production_versions

    versions = production_versions(settings)
    serve.start(http_options={"host": settings.serve.http_host, "port": settings.serve.http_port})
    keys = settings.api.key_list() if api_keys is None else api_keys
    ours, others = _live(settings)
    live_families = _live_families(settings) if ours is not None else None
    app = app_config(settings, versions, keys, llm=llm, live=ours, live_families=live_families)
    if report is not None:
        report(change_kind(ours, app))
    _apply(settings, app, others)
    while blocking:
        time.sleep(3600)
    return f"http://{settings.serve.http_host}:{settings.serve.http_port}"


def app_config(
    settings: Settings,
    versions: dict[str, dict[str, str]],
    api_keys: list[str],
    *,
    llm: dict[str, Any] | None = None,
    live: dict[str, Any] | None = None,
    live_families: set[str] | None = None,
) -> dict[str, Any]:
    """The declarative config of the app ``deploy`` applies: ``args`` from ``app_args``, the
    model versions and autoscaling per deployment (``_deployments``), and ``FraudApi``'s keys
    (digests), ``auth`` and LLM options as its ``user_config`` — out of ``args``, so that
    changing them is no new code version."""
    from serve_deployments.app import INGRESS_DEPLOYMENT, digest, ingress_user_config

    # The deploying process's auth choice, not whatever environment the cluster's nodes have.
    ingress = {
        "name": INGRESS_DEPLOYMENT,
        "user_config": ingress_user_config(
            settings, digests=[digest(k) for k in api_keys], auth=settings.api.auth, llm=llm
        ),
    }
    families = sorted(f for f in versions if f != "ensemble")
    return {
        "name": settings.serve.app_name,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
        "args": app_args(families, live, live_families),
        "deployments": [*_deployments(versions), ingress],
    }


def change_kind(live: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What Serve does when ``new`` replaces the app's ``live`` declarative config: Serve
    derives the code version from the import path and ``args``, so a change there replaces
    every replica of the app (minutes on a busy 2-core box: each imports torch, XGBoost and
    sklearn again); ``user_config`` alone reconfigures the live replicas in place."""
    if live is None:
        return "no app deployed yet (or one from serve.run): every replica starts"
    changed = sorted(k for k in {*live.get("args", {}), *new["args"]}
                     if live.get("args", {}).get(k) != new["args"].get(k))  # fmt: skip
    if live.get("import_path") != new["import_path"] or changed:
        return f"args changed ({', '.join(changed) or 'import path'}): Serve replaces every replica"
    before = {d["name"]: d for d in live.get("deployments") or []}
    after = {d["name"]: d for d in new["deployments"]}
    changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
    if changed:
        names = ", ".join(changed)
        return f"only user_config/options changed ({names}): the live replicas reconfigure in place"
    return "unchanged: nothing to redeploy"


def hot_swap(settings: Settings) -> dict[str, str]:
    """Push the registry's production versions to the running app; returns family -> version.

    Only the deployments' ``user_config`` changes (same import path and args), so the live
    replicas reconfigure in place. When the set of served families changes (say an XGBoost
    appears in a registry that had only the Isolation Forest), the args change too and Serve
    rolls the app over to new replicas instead. Connects to the configured cluster when this
    process is not connected to Ray yet.
    """
    import ray

    from core import ray_client
    from core.errors import ModelNotReady
    from serve_deployments.app import production_versions

    if not ray.is_initialized():
        ray_client.init(settings, log_to_driver=False)
    versions = production_versions(settings)
    ours, others = _live(settings)
    if ours is None:
        raise ModelNotReady(
            f"Serve app {settings.serve.app_name!r} is not running (deploy it with `fraudray serve`)"
        )
    from core.families import DEPLOYMENT_NAMES

    families = sorted(f for f in versions if f in DEPLOYMENT_NAMES)
    members = {DEPLOYMENT_NAMES[f] for f in families}
    args = dict(ours.get("args") or {})  # the live app's, as long as it serves these families
    live_families = _live_families(settings)
    if live_families != set(families):  # new args => new code version => Serve rebuilds the app
        # A builder-made config ({} or families) gets the usual spelling; one with args of its
        # own (pinned models, addresses: the fault and multi-node tests) keeps them.
        plain = set(args) <= {"families"}
        args = app_args(families, ours, live_families) if plain else args | {"families": families}
    overrides = {
        d["name"]: dict(d)
        for d in ours.get("deployments") or []
        if d["name"] not in DEPLOYMENT_NAMES.values() or d["name"] in members
    }
    for d in _deployments(versions):  # only the versions: the live options (autoscaling) stay
        overrides[d["name"]] = {
            "name": d["name"],
            **overrides.get(d["name"], {}),
            "user_config": d["user_config"],
        }
    _apply(settings, ours | {"args": args, "deployments": list(overrides.values())}, others)
    return {family: v["version"] for family, v in versions.items()}


def autoscaling(settings: Settings) -> dict[str, dict[str, Any]]:
    """The running app's ``autoscaling_config`` by deployment (those its config lists)."""
    ours, _ = _live(settings)
    deployments = (ours or {}).get("deployments") or []
    return {d["name"]: dict(d["autoscaling_config"]) for d in deployments if d.get("autoscaling_config")}


def configure(settings: Settings, deployments: dict[str, dict[str, Any]]) -> None:
    """Merge per-deployment options (``{name: {"autoscaling_config": …}}``) into the running
    app's config and re-apply it.

    In place (no replica restarts) for the autoscaling configs of the Ensemble and the model
    deployments: every config fraudray deploys (``deploy``, ``config.yaml``) already lists one
    for each. Ray 2.60 folds the number of such entries into the app's code version, so giving
    an ``autoscaling_config`` to a deployment that had none (``FraudApi``, or an app deployed
    from a config without them) replaces every replica of the app (tens of seconds; docs/serving.md).
    ``user_config`` changes (``hot_swap``) stay in place."""
    from core.errors import ModelNotReady

    ours, others = _live(settings)
    if ours is None:
        raise ModelNotReady(f"Serve app {settings.serve.app_name!r} is not running")
    merged = {d["name"]: dict(d) for d in ours.get("deployments") or []}
    for name, options in deployments.items():
        merged[name] = {**merged.get(name, {"name": name}), **options}
    # Not blocking: an autoscaling change can leave the app UPSCALING for a while, which is fine.
    _apply(settings, ours | {"deployments": list(merged.values())}, others, blocking=False)


def shadow_config(settings: Settings, versions: dict[str, str]) -> dict[str, dict[str, str]]:
    """``{family: {"uri", "version"}}`` of a challenger (family -> version, every member family
    and ``ensemble``) from the registry, as the Ensemble's ``user_config["shadow"]``. Refuses a
    challenger whose members were trained on features serving does not compute."""
    from core.errors import ModelNotReady
    from core.families import ALL_KEYS, MEMBER_KEYS
    from features.catalogue import FEATURE_NAMES
    from training.registry import Registry

    missing = set(ALL_KEYS) - versions.keys()
    if missing:
        raise ModelNotReady(f"a shadow challenger needs every family; {sorted(missing)} missing")
    registry = Registry(settings)
    out = {}
    for family in ALL_KEYS:
        mv = registry.get(family, versions[family])
        if family in MEMBER_KEYS and not set(mv.feature_names) <= set(FEATURE_NAMES):
            raise ModelNotReady(f"{family} {mv.version} was trained on other features than serving computes")
        out[family] = {"uri": mv.uri, "version": mv.version}
    return out


def install_shadow(settings: Settings, versions: dict[str, str] | None) -> str:
    """Make the challenger ``versions`` (family -> version) the running app's shadow: the
    Ensemble scores every stream batch with it too, next to the champion, never deciding
    (``serve_deployments.app.ShadowChallenger``); ``None`` clears it. Only the Ensemble's
    ``user_config`` changes, so its live replicas reconfigure in place (no request dropped).
    Returns the installed ensemble version ('' when cleared); a call that changes nothing is
    not applied. ``hot_swap`` (a promotion, a rollback) clears the shadow too: it rewrites
    the Ensemble's ``user_config`` from the production versions."""
    import ray

    from core import ray_client
    from core.errors import ModelNotReady
    from core.families import SCORER_DEPLOYMENT
    from serve_deployments.app import production_versions

    if not ray.is_initialized():
        ray_client.init(settings, log_to_driver=False)
    ours, others = _live(settings)
    if ours is None:
        raise ModelNotReady(
            f"Serve app {settings.serve.app_name!r} is not running (deploy it with `fraudray serve`)"
        )
    deployments = [dict(d) for d in ours.get("deployments") or []]
    scorer = next((d for d in deployments if d["name"] == SCORER_DEPLOYMENT), None)
    if scorer is None:
        scorer = {"name": SCORER_DEPLOYMENT}
        deployments.append(scorer)
    # The champion's part as served now (an entry without user_config: what the builder bound).
    if "user_config" in scorer:
        current = dict(scorer["user_config"] or {})
    else:
        current = dict(production_versions(settings).get("ensemble", {}))
    wanted = {k: v for k, v in current.items() if k != "shadow"}
    if versions is not None:
        wanted["shadow"] = shadow_config(settings, versions)
    if "user_config" in scorer and wanted == current:
        return str(wanted.get("shadow", {}).get("ensemble", {}).get("version", ""))
    scorer["user_config"] = wanted
    _apply(settings, ours | {"deployments": deployments}, others)
    return "" if versions is None else versions["ensemble"]
