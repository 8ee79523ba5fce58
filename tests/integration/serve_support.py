"""Support for the Serve tests: small production models for all four families, trained on
synthetic rows in the feature catalogue's space, the FAKE OpenAI-compatible server the
shared app's LLM settings point at, and the schemathesis run over the API."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pandas as pd

from core.settings import Settings
from features.online import FEATURE_NAMES
from training.data import temporal_split
from training.pipeline import TrainResult, train_all

FAKE_REPLY = "FAKE-LLM: the amount is far above this user's usual spending."


class FakeOpenAIServer:
    """A FAKE OpenAI-compatible endpoint (POST /v1/chat/completions) for tests only: answers
    ``FAKE_REPLY``, or sleeps ``delay_s`` first; records the prompts it received."""

    def __init__(self) -> None:
        fake = self
        self.delay_s = 0.0
        self.prompts: list[list[dict[str, str]]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.prompts.append(body["messages"])
                time.sleep(fake.delay_s)
                reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": FAKE_REPLY}}]}
                data = json.dumps(reply).encode()
                self.send_response(200 if self.path == "/v1/chat/completions" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SMALL = {"if": {"n_estimators": 50}, "xgb": {"n_estimators": 40}, "ae": {"epochs": 3}}


def labelled_frame(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Gaussian rows in the catalogue's columns plus ~4 % shifted ones labelled fraud: enough
    for every family to fit in seconds (serving tests need versions, not good models)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    y = (rng.random(n) < 0.04).astype(np.int8)
    X[y == 1, :3] += 3.0
    frame = pd.DataFrame(X, columns=list(FEATURE_NAMES))
    frame["is_fraud"] = y
    frame["event_time"] = pd.date_range("2026-01-01", periods=n, freq="min")
    return frame


def train_small(
    settings: Settings, seed: int = 0, families: tuple[str, ...] = ("if", "xgb", "ae")
) -> TrainResult:
    """Train, register and promote small models (seconds, not minutes)."""
    split = temporal_split(labelled_frame(seed=seed), list(FEATURE_NAMES))
    return train_all(split, settings, params=SMALL, families=families, source=f"test-serve-{seed}")


def ensure_all(settings: Settings) -> dict[str, Any]:
    """Production versions of all four families (small ones trained when any is missing)."""
    from core.errors import ModelNotReady
    from serve_deployments.app import production_versions

    try:
        found = production_versions(settings)
    except ModelNotReady:
        found = {}
    if {"if", "xgb", "ae", "ensemble"} <= found.keys():
        return found
    train_small(settings)
    return production_versions(settings)


def fuzz_api(
    url: str, key: str, max_examples: int = 170, workers: int = 8
) -> tuple[dict[str, int], dict[str, int]]:
    """schemathesis over ``url``'s OpenAPI schema: per operation, positive and negative cases with
    the key (no 5xx; statuses, content types and bodies as documented), then cases with a wrong
    key (401 expected, or 400/422 when FastAPI rejects the body before the handler runs).

    Hypothesis generates the cases (deterministically); they are sent ``workers`` at a time, since
    each one mostly waits on the Serve round trip. Returns the calls per operation and the 401s
    per protected operation; raises on the first failing case.
    """
    from concurrent.futures import ThreadPoolExecutor

    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    fuzz = hypothesis.settings(
        max_examples=max_examples, deadline=None, database=None, derandomize=True,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    with_key: list[Any] = []
    wrong_key: list[Any] = []

    def generate(
        op: Any, mode: GenerationMode, headers: dict[str, str] | None, n: int, into: list[Any]
    ) -> None:
        @hypothesis.settings(fuzz, max_examples=n)
        @hypothesis.given(case=op.as_strategy(generation_mode=mode, headers=headers))
        def collect(case: Any) -> None:
            into.append(case)

        try:
            collect()
        except hypothesis.errors.Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE, op.label  # nothing to negate (/health)

    for result in schema.get_all_operations():
        op = result.ok()  # type: ignore[union-attr]  # an Err here is a broken schema: fail loudly
        protected = op.path != "/health"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            generate(op, mode, {"x-api-key": key} if protected else None, max_examples, with_key)
        if protected:
            generate(op, GenerationMode.POSITIVE, None, 20, wrong_key)

    def call_with_key(case: Any) -> str:
        response = case.call(headers={"X-API-Key": key}, timeout=60)
        case.validate_response(response, checks=checks)
        return str(case.operation.label)

    def call_with_wrong_key(case: Any) -> tuple[str, int]:
        response = case.call(headers={"X-API-Key": "not-" + key}, timeout=60)
        assert response.status_code in {400, 401, 422}, (
            case.operation.label,
            response.status_code,
            response.text,
        )
        return str(case.operation.label), response.status_code

    calls: dict[str, int] = {}
    unauthorised: dict[str, int] = {}
    with ThreadPoolExecutor(workers) as pool:
        for label in pool.map(call_with_key, with_key):
            calls[label] = calls.get(label, 0) + 1
        for label, status in pool.map(call_with_wrong_key, wrong_key):
            unauthorised[label] = unauthorised.get(label, 0) + (status == 401)
    return calls, unauthorised
