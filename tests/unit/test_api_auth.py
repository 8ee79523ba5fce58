"""Auth on by default: an app without keys refuses every route but /health unless
FRAUDRAY_API_AUTH=off, and the key is an OpenAPI security scheme (/docs' Authorize button)."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import Unauthorized
from core.settings import Settings
from serve_deployments.app import FraudApi, api, digest


def _replica(auth: str, keys: list[str]) -> Any:
    """The ingress class's key check with a config, without starting its stores."""
    replica = object.__new__(FraudApi.func_or_class)  # type: ignore[attr-defined]
    replica._auth = auth
    replica._key_digests = [bytes.fromhex(digest(k)) for k in keys]
    return replica


def test_without_keys_every_key_is_refused() -> None:
    replica = _replica("on", [])
    for offered in (None, "", "anything"):
        with pytest.raises(Unauthorized, match="FRAUDRAY_API_KEYS"):
            replica._check_key(offered)


def test_with_keys_only_those_pass() -> None:
    replica = _replica("on", ["k1", "k2"])
    replica._check_key("k2")
    for offered in (None, "k3"):
        with pytest.raises(Unauthorized):
            replica._check_key(offered)


def test_auth_off_asks_for_no_key() -> None:
    _replica("off", [])._check_key(None)


def test_auth_is_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRAUDRAY_API_AUTH", raising=False)
    assert Settings().api.auth == "on"
    monkeypatch.setenv("FRAUDRAY_API_AUTH", "off")
    assert Settings().api.auth == "off"


def test_openapi_has_an_api_key_scheme_on_every_route_but_health() -> None:
    schema = api.openapi()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
    }  # fmt: skip
    for path, operations in schema["paths"].items():
        for op in operations.values():
            if path == "/health":
                assert not op.get("security"), path
            else:
                assert op.get("security") == [{"ApiKey": []}], path


def _reconfigured(*configs: dict[str, Any]) -> Any:
    """A replica as Serve makes it: built with no keys, then given each ``user_config``."""
    replica = object.__new__(FraudApi.func_or_class)  # type: ignore[attr-defined]
    replica._llm_api_key, replica._auth, replica._key_digests = "llm-secret", "on", []
    for config in configs:
        replica.reconfigure(config)
    return replica


def test_reconfigure_swaps_the_keys_in_place() -> None:
    """A redeploy that changes only the key is FraudApi's user_config: the live replica takes
    the new key and refuses the old one (tests/integration/test_serve_app.py does it on Serve)."""
    replica = _reconfigured({"api_key_digests": [digest("old")], "auth": "on"})
    replica._check_key("old")
    replica.reconfigure({"api_key_digests": [digest("new")], "auth": "on", "llm": {"timeout_s": 2.0}})
    replica._check_key("new")
    with pytest.raises(Unauthorized):
        replica._check_key("old")
    assert replica.llm.timeout_s == 2.0 and replica.llm.api_key == "llm-secret"  # the secret stays


def test_reconfigure_keeps_auth_on_by_default_and_refuses_a_bad_config() -> None:
    replica = _reconfigured({})  # no keys, no auth given: closed
    with pytest.raises(Unauthorized, match="FRAUDRAY_API_KEYS"):
        replica._check_key("anything")
    replica.reconfigure({"api_key_digests": [digest("k")], "auth": "on"})
    with pytest.raises(ValueError, match="auth"):
        replica.reconfigure({"api_key_digests": [], "auth": "maybe"})
    replica._check_key("k")  # the previous config is still in force
    with pytest.raises(Unauthorized):
        replica._check_key(None)
    replica.reconfigure({"api_key_digests": [], "auth": "off"})
    replica._check_key(None)
