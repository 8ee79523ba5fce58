"""Shared fixtures. Integration tests use the real local stack (started by `make test`, or
here when it is not up yet) and isolate themselves with uuid-named topics and groups."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.ray_client import ray_env

os.environ.update(ray_env())  # token auth and Serve's fast path, before anything imports ray
# The suite forks subprocesses (initdb, the stack, the CLI) while Ray's clients hold gRPC
# channels; grpcio's fork handlers then start a poller in the child that can die on the fd
# Popen closed before exec (grpc/grpc#43055), failing the subprocess. Nothing here uses gRPC
# in a forked child, so the handlers are turned off (docs/reliability.md).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import threading

import pytest
import ray
from confluent_kafka.admin import AdminClient, NewTopic

from cluster import stack
from core.ports import free_port
from core.settings import Settings
from tests.helpers import API_KEY, TEST_TAG

_ray_init = ray.init


def _ray_init_from_the_main_thread(*args: Any, **kwargs: Any) -> Any:
    """Tests start Ray from the main thread only. A thread left behind by an earlier module
    (Serve's router loop, a load generator) that calls Ray after that module's shutdown
    would otherwise start a stray default Ray (dashboard :8265) that the next module's
    ``ray.init`` collides with ("Perhaps you called ray.init twice"): fail in that thread,
    with its stack, instead."""
    here = threading.current_thread()
    if here is not threading.main_thread():
        raise RuntimeError(f"ray.init called from thread {here.name!r} after its module shut Ray down")
    return _ray_init(*args, **kwargs)


pytest.MonkeyPatch().setattr(ray, "init", _ray_init_from_the_main_thread)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def local_stack(settings: Settings) -> Iterator[Settings]:
    """The local stack, started (idempotently) if a test needs it; `make test` stops it. At
    the end, the online store forgets the tests' tagged users and merchants (helpers.TEST_TAG)."""
    stack.up(settings)
    yield settings
    from features.online import OnlineStore

    OnlineStore(settings.redis.urls()).drop_population(TEST_TAG)


@pytest.fixture
def new_topic(local_stack: Settings) -> Iterator[Callable[..., str]]:
    """Factory: a fresh uuid-named topic (deleted afterwards)."""
    admin = AdminClient({"bootstrap.servers": local_stack.kafka.bootstrap})
    created: list[str] = []

    def make(prefix: str = "test", partitions: int = 3) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result()
        created.append(name)
        return name

    yield make
    if created:
        for fut in admin.delete_topics(created, operation_timeout=30).values():
            fut.result()


_shared: dict[str, Any] = {}  # url, settings, the fake LLM and the environment to restore


@pytest.fixture(scope="module")
def serve_app(local_stack: Settings) -> str:
    """`serve run serve_deployments/config.yaml` with the registry's production models of all
    four families, on a private local Ray cluster whose nodes carry the FRAUDRAY_* environment a
    deployment's nodes would (the API key, the LLM endpoint: a FAKE OpenAI-compatible server).

    Shared by the modules that ask for it: they run one after another
    (``pytest_collection_modifyitems``) and the cluster goes down after the last of their tests
    (``pytest_runtest_teardown``), before any module that starts a Ray of its own. One bring-up
    instead of one per module: each costs about a minute on two cores."""
    if "url" not in _shared:
        try:
            _start_shared_app(local_stack)
        except BaseException:
            _stop_shared_app()  # the next module tries again from scratch
            raise
    return str(_shared["url"])


@pytest.fixture(scope="module")
def serve_app_settings(serve_app: str) -> Settings:
    """The settings of the shared app (its HTTP port)."""
    settings: Settings = _shared["settings"]
    return settings


@pytest.fixture(scope="module")
def fake_llm(serve_app: str) -> Any:
    """The FAKE OpenAI-compatible server the shared app's LLM settings point at."""
    return _shared["llm"]


def _start_shared_app(local_stack: Settings) -> None:
    from ray import serve

    from core import ray_client
    from core.settings import REPO_ROOT
    from serve_deployments import deploy as serving
    from tests.integration.serve_support import FakeOpenAIServer, ensure_all

    ensure_all(local_stack)  # the app takes the registry's production models
    llm = FakeOpenAIServer()
    env = {
        "FRAUDRAY_API_KEYS": API_KEY,
        "FRAUDRAY_LLM_BASE_URL": llm.base_url,
        "FRAUDRAY_LLM_MODEL": "fake-model",
        "FRAUDRAY_LLM_TIMEOUT_S": "1.0",
        # Handles report their in-flight requests to the autoscaler every second instead of
        # Ray's 10 s, so that the autoscaling test need not watch for tens of seconds.
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    }
    _shared.update(llm=llm, saved_env={k: os.environ.get(k) for k in env})
    os.environ.update(env)  # before Ray starts: its nodes pass it on to the replicas
    port = free_port()
    s = local_stack.model_copy(update={"serve": local_stack.serve.model_copy(update={"http_port": port})})
    _shared["settings"] = s
    ray_client.init(s, local=True, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})  # the config's port is 8000
    run = subprocess.run(
        [str(Path(sys.executable).parent / "serve"), "run", "serve_deployments/config.yaml",
         "--address", ray.get_runtime_context().gcs_address, "--non-blocking"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    serving._wait_running(s.serve.app_name, timeout_s=600)  # replicas import torch & co.
    _shared["url"] = f"http://127.0.0.1:{port}"


def _stop_shared_app() -> None:
    from core import ray_client

    try:
        ray_client.shutdown()  # the private cluster goes down, Serve and all
        if "llm" in _shared:
            _shared["llm"].stop()
    finally:
        for k, v in _shared.get("saved_env", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _shared.clear()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests of the shared Serve app, one after another where the first of them was, with
    tests/integration/test_metrics.py first among them: its counters (summed over the Ray
    session, whose metrics carry no per-actor label) must start from zero."""
    shared = [i for i in items if "serve_app" in getattr(i, "fixturenames", ())]
    if not shared:
        return
    first = items.index(shared[0])
    rest = [i for i in items if i not in shared]
    shared.sort(key=lambda i: i.path.name != "test_metrics.py")  # stable: module order kept
    items[:] = rest[:first] + shared + rest[first:]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if _shared and (nextitem is None or "serve_app" not in getattr(nextitem, "fixturenames", ())):
        _stop_shared_app()


@pytest.fixture
def group_id() -> str:
    return f"test-group-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def consumer_pool() -> Iterator[Callable[..., Any]]:
    """``ConsumerPool(...)`` whose actors the teardown kills if the test left any (a drain that
    failed or timed out): a leaked pool goes on polling its group, with Ray restarting it, and
    starved the tests after it of CPU until the session ended."""
    from ingest.consumer import ConsumerPool

    made: list[ConsumerPool] = []

    def make(*args: Any, **kwargs: Any) -> ConsumerPool:
        made.append(ConsumerPool(*args, **kwargs))
        return made[-1]

    yield make
    for pool in made:
        for actor in pool.actors:  # empty once the pool was stopped
            try:
                ray.kill(actor, no_restart=True)
            except Exception as exc:  # gone already is fine; anything else is reported
                print(f"consumer_pool teardown: {exc!r}")


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's status once everything is reported: native threads left by Ray's
    gRPC client, torch and Chromium's websocket have crashed CPython's finalisation (SIGSEGV
    after the summary, turning a green run red in CI)."""
    if _exit_status and os.environ.get("FRAUDRAY_TEST_HARD_EXIT", "1") == "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
