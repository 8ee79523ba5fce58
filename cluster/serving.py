"""Deploy the Serve application ``fraud`` on the Ray cluster (local head or RAY_ADDRESS)."""

from __future__ import annotations

from typing import Any

from cluster.settings import Settings


def deploy(settings: Settings, api_keys: list[str] | None = None, *, blocking: bool = False) -> str:
    """Start Serve's HTTP proxy on the configured host/port and (re)deploy the app.

    Returns the base URL. The production model comes from the registry (trained quickly
    first when the registry is empty).
    """
    from ray import serve

    from serve_deployments.app import build_app
    from training.quick import ensure_model

    mv = ensure_model(settings)
    serve.start(http_options={"host": settings.serve.http_host, "port": settings.serve.http_port})
    args: dict[str, Any] = {"model_uri": mv.uri, "model_version": mv.version}
    if api_keys is not None:
        args["api_keys"] = api_keys
    serve.run(build_app(args), name=settings.serve.app_name, route_prefix="/", blocking=blocking)
    return f"http://{settings.serve.http_host}:{settings.serve.http_port}"
