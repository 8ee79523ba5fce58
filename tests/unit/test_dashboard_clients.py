"""The dashboard's HTTP clients against real local HTTP servers (and a port nobody listens on):
/explain's every failure becomes an honest reason, never an exception."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dashboards import clients

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve() -> Iterator[Callable[[int, Any], tuple[str, list[dict[str, str]]]]]:
    """Factory: a local server answering every GET with (status, JSON body); returns its URL and
    the headers of the requests it saw."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def make(status: int, body: Any) -> tuple[str, list[dict[str, str]]]:
        seen: list[dict[str, str]] = []

        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append({**dict(self.headers.items()), "path": self.path})
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def test_explain_connection_refused() -> None:
    answer = clients.explain(f"http://127.0.0.1:{_closed_port()}", "tx-1")
    assert not answer.ok and answer.status is None
    assert "not reachable (connection refused)" in answer.reason


def test_explain_404_says_explanations_are_not_available(serve: Any) -> None:
    url, seen = serve(404, {"detail": "Not Found"})
    answer = clients.explain(url, "tx-1", api_key="k1")
    assert not answer.ok and answer.status == 404
    assert "not available from the API yet (HTTP 404)" in answer.reason
    assert seen[0]["X-API-Key"] == "k1"
    assert seen[0]["path"] == "/explain?transaction_id=tx-1"


def test_explain_refused_key_and_server_error(serve: Any) -> None:
    url, _ = serve(401, {"detail": "missing or wrong X-API-Key header"})
    assert "refused the API key" in clients.explain(url, "tx-1").reason
    url, seen = serve(503, b"")
    answer = clients.explain(url, "tx-1")
    assert answer.reason == "the API answered HTTP 503"
    assert "X-API-Key" not in seen[0]  # no key configured: no header


def test_explain_success(serve: Any) -> None:
    body = {"transaction_id": "tx-1", "rationale": "new device", "rationale_source": "template"}
    url, _ = serve(200, body)
    answer = clients.explain(url, "tx-1")
    assert answer.ok and answer.body == body
    url, _ = serve(200, b"not json")
    assert not clients.explain(url, "tx-1").ok


def test_prometheus_query(serve: Any) -> None:
    down = clients.prometheus_query(f"http://127.0.0.1:{_closed_port()}", clients.LAG_QUERY)
    assert not down.reachable and "Prometheus not reachable" in down.reason
    payload = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {"partition": "0"}, "value": [1.0, "42"]}]},
    }
    url, seen = serve(200, payload)
    up = clients.prometheus_query(url, clients.LAG_QUERY)
    assert up.reachable and up.series == [({"partition": "0"}, 42.0)]
    assert seen[0]["path"].startswith("/api/v1/query?query=sum")
    url, _ = serve(200, {"status": "success", "data": {"resultType": "vector", "result": []}})
    empty = clients.prometheus_query(url, clients.LAG_QUERY)
    assert empty.reachable and empty.series == []
