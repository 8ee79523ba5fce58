"""The dashboard's two HTTP clients: the fraudray API's ``GET /explain`` and Prometheus's query API.

Neither ever raises into a page: a failure comes back as a value whose ``reason`` says, in words
an analyst can act on, what did not answer and why (connection refused, HTTP 404, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from core.settings import Settings

EXPLAIN_TIMEOUT_S = 10.0
PROMETHEUS_TIMEOUT_S = 2.0
LAG_QUERY = "sum(max by (partition) (fraudray_consumer_lag))"
DRIFT_QUERY = "max by (feature) (fraudray_feature_drift_psi)"


def api_base_url(settings: Settings) -> str:
    return f"http://{settings.serve.http_host}:{settings.serve.http_port}"


def prometheus_base_url(settings: Settings) -> str:
    # The local stack's Prometheus listens on loopback; settings carry only its port.
    return f"http://127.0.0.1:{settings.prometheus.port}"


@dataclass(frozen=True)
class Explanation:
    """What ``/explain`` answered: ``body`` on success, else ``reason`` (and the HTTP status)."""

    ok: bool
    body: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    status: int | None = None


def _connection_reason(url: str, exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"the API at {url} is not reachable (connection refused) — start it with `make run`"
    if isinstance(exc, httpx.TimeoutException):
        return f"the API at {url} did not answer within {EXPLAIN_TIMEOUT_S:g} s"
    return f"the API at {url} failed: {type(exc).__name__}: {exc}"


def explain(
    base_url: str, transaction_id: str, api_key: str | None = None, timeout: float = EXPLAIN_TIMEOUT_S
) -> Explanation:
    """``GET {base_url}/explain?transaction_id=…`` with the ``X-API-Key`` header when a key is set."""
    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        response = httpx.get(
            f"{base_url}/explain", params={"transaction_id": transaction_id}, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as exc:
        return Explanation(ok=False, reason=_connection_reason(base_url, exc))
    status = response.status_code
    if status == httpx.codes.OK:
        try:
            body = response.json()
        except ValueError:
            return Explanation(ok=False, status=status, reason="the API answered /explain with non-JSON")
        if not isinstance(body, dict):
            body = {"explanation": body}
        return Explanation(ok=True, body=body, status=status)
    detail = response.text.strip()[:300]
    if status == httpx.codes.NOT_FOUND:
        reason = (
            "explanations are not available from the API yet (HTTP 404): either the /explain "
            "endpoint is not deployed or it does not know this transaction"
        )
    elif status in {httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN}:
        reason = f"the API refused the API key (HTTP {status}); check FRAUDRAY_API_KEYS"
    else:
        reason = f"the API answered HTTP {status}"
    if detail:
        reason += f" — {detail}"
    return Explanation(ok=False, status=status, reason=reason)


@dataclass(frozen=True)
class PromResult:
    """A Prometheus instant query: ``reachable`` False means nothing usable answered."""

    reachable: bool
    series: list[tuple[dict[str, str], float]] = field(default_factory=list)
    reason: str = ""


def prometheus_query(base_url: str, promql: str, timeout: float = PROMETHEUS_TIMEOUT_S) -> PromResult:
    """An instant vector query through ``/api/v1/query``."""
    try:
        response = httpx.get(f"{base_url}/api/v1/query", params={"query": promql}, timeout=timeout)
        response.raise_for_status()
        payload = response.json()
    except httpx.HTTPError as exc:
        return PromResult(False, reason=f"Prometheus not reachable at {base_url} ({type(exc).__name__})")
    except ValueError:
        return PromResult(False, reason=f"Prometheus at {base_url} answered with non-JSON")
    if payload.get("status") != "success":
        return PromResult(False, reason=f"Prometheus query failed: {payload.get('error', 'unknown error')}")
    series = []
    for item in payload.get("data", {}).get("result", []):
        try:
            series.append((dict(item.get("metric", {})), float(item["value"][1])))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return PromResult(True, series)
