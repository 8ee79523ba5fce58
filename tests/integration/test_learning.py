"""The champion/challenger loop on the real PostgreSQL: a champion trained on a world with one
fraud scenario (card testing) is in production; a later world brings other scenarios
(account takeover, bust-out) with their labels; one round of the loop fits challengers on the
new world's rolling window, finds they beat the champion on the newest labelled day by the
margin, promotes them, hot-swaps (an injected callable here) and records the round in
``training_runs``. The challenger is shadow-scored: the decisions of the newest labelled day
get its score next to the deciding one (``decisions.shadow_score`` / ``shadow_version``),
idempotently, without any deciding column changing. The production versions found before the
test are restored afterwards."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg2
import pytest

from core import db
from core.errors import ModelNotReady
from core.families import ALL_KEYS
from core.settings import Settings
from features.catalogue import FEATURE_NAMES
from training.data import frame_from_store, temporal_split
from training.learning import learn_once, write_shadow_scores
from training.pipeline import train_all
from training.registry import Registry

from ..model.world import World, delete_registry_rows, delete_world, write_world

pytestmark = [pytest.mark.integration]

OLD_MIX, NEW_MIX = "card_testing=1", "account_takeover=0.5,bust_out=0.5"


@pytest.fixture(scope="module")
def worlds(local_stack: Settings) -> Iterator[tuple[World, World]]:
    old = write_world(local_stack, seed=1, start=datetime(2002, 9, 2, tzinfo=UTC), fraud_mix=OLD_MIX)
    new = write_world(local_stack, seed=2, start=datetime(2002, 10, 7, tzinfo=UTC), fraud_mix=NEW_MIX)
    yield old, new
    for w in (old, new):
        delete_world(local_stack, w)


@pytest.fixture(scope="module")
def private(
    local_stack: Settings, worlds: tuple[World, World], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Private var/ and learning settings; the production versions of before restored after."""
    var = tmp_path_factory.mktemp("var")
    registry = Registry(local_stack)
    before = {}
    for fam in ALL_KEYS:
        with contextlib.suppress(ModelNotReady):
            before[fam] = registry.production(fam).version
    learn = local_stack.learn.model_copy(update={"recent_days": 1.0, "margin": 0.02, "min_recent_frauds": 15})
    yield local_stack.model_copy(update={
        "stack": local_stack.stack.model_copy(update={"var_dir": var}), "learn": learn,
    })  # fmt: skip
    for fam, version in before.items():
        registry.promote(fam, version)
    delete_registry_rows(local_stack, str(var))
    for w in worlds:
        delete_registry_rows(local_stack, str(var), w)
    with db.transaction(local_stack.postgres.dsn.get_secret_value()) as cur:
        cur.execute("DELETE FROM training_runs WHERE model_name = 'learn' AND config->>'trigger' = 'tests'")


def test_a_challenger_of_the_new_fraud_mix_is_promoted(
    private: Settings, worlds: tuple[World, World]
) -> None:
    old, new = worlds
    frame = frame_from_store(private, old.start, old.end, id_prefix=old.prefix)
    champion = train_all(temporal_split(frame, list(FEATURE_NAMES)), private, source="tests:learn-champion")
    assert set(champion.versions) == set(ALL_KEYS)

    _decide_with_random_scores(private, new)

    swaps: list[int] = []
    decision = learn_once(private, trigger="tests", swap=lambda: swaps.append(1), now=new.end,
                          id_prefix=new.prefix, feature_names=list(FEATURE_NAMES))  # fmt: skip
    print(f"\nlearn: {decision.as_dict()}")
    assert decision.recent_frauds >= 15
    assert decision.champion_aucpr is not None and decision.challenger_aucpr is not None
    assert decision.challenger_aucpr >= decision.champion_aucpr + 0.02
    assert decision.action == "promoted", decision.reason
    assert swaps == [1]
    registry = Registry(private)
    assert {fam: registry.production(fam).version for fam in ALL_KEYS} == decision.versions
    run = next(r for r in registry.runs("learn", limit=5) if r["config"].get("trigger") == "tests")
    assert run["status"] == "finished" and run["metrics"]["action"] == "promoted"

    # Shadow scoring: every decision of the evaluation window (the newest labelled day) holds the
    # challenger ensemble's score; the rest of the world none; nothing deciding changed.
    recent_from = decision.window["test"][0]
    rows = _decisions(private, new)
    recent = {t: r for t, r in rows.items() if r["event_time"] >= datetime.fromisoformat(recent_from)}
    assert decision.shadow_version == decision.versions["ensemble"]
    assert decision.shadow_rows == len(recent) == decision.recent_rows, decision.shadow_error
    assert all(r["shadow_version"] == decision.shadow_version for r in recent.values())
    assert all(r["shadow_score"] is not None for r in recent.values())
    assert all(r["shadow_score"] is None and r["shadow_version"] is None
               for t, r in rows.items() if t not in recent)  # fmt: skip
    assert all(r["model_version"] == "tests-live" for r in rows.values())
    # the shadow scores are the challenger's: their AP on the window is its measured AP, and the
    # random live scores' AP is about the fraud rate
    assert decision.shadow_aucpr == pytest.approx(decision.challenger_aucpr, abs=1e-6)
    assert decision.live_aucpr is not None and decision.live_aucpr < 0.2
    # idempotent: writing the same scores again changes nothing
    ids = list(recent)
    scores = np.asarray([recent[t]["shadow_score"] for t in ids])
    again = write_shadow_scores(private, ids, scores, decision.shadow_version)
    assert set(again) == set(recent)
    assert _decisions(private, new) == rows


def _decide_with_random_scores(settings: Settings, world: World) -> None:
    """A decision for every transaction of ``world``, as a stream would leave them (the live
    scores here random: a model that knows nothing)."""
    conn = psycopg2.connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO decisions (transaction_id, user_id, scores, ensemble_score, is_fraud,"
                " model_version) SELECT transaction_id, user_id, '{}', random(), false, 'tests-live'"
                " FROM transactions WHERE transaction_id LIKE %s",
                (world.prefix + "%",),
            )
    finally:
        conn.close()


def _decisions(settings: Settings, world: World) -> dict[str, dict[str, Any]]:
    conn = psycopg2.connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT d.transaction_id, t.event_time, d.ensemble_score, d.is_fraud, d.model_version,"
                " d.shadow_score, d.shadow_version"
                " FROM decisions d JOIN transactions t USING (transaction_id)"
                " WHERE d.transaction_id LIKE %s",
                (world.prefix + "%",),
            )
            names = [c.name for c in cur.description]
            return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
    finally:
        conn.close()


def test_the_demo_learning_thread_waits_for_labels_and_stops_at_once(local_stack: Settings) -> None:
    """`make run`'s loop (cluster.learner): checks, says what it waits for, and a stop ends the
    wait between checks at once (no round: thresholds out of reach)."""
    from cluster.learner import LearnerThread

    policy = {"every_labels": 10**12, "every_minutes": 10**9, "drift_psi": 10**9, "poll_s": 60.0}
    s = local_stack.model_copy(update={"learn": local_stack.learn.model_copy(update=policy)})
    learner = LearnerThread(s)
    learner.start()
    deadline = time.monotonic() + 60
    while not learner.status.startswith("waiting:"):
        assert learner.is_alive() and time.monotonic() < deadline, learner.status
        time.sleep(0.1)
    assert "new labels" in learner.status and learner.last is None
    t0 = time.monotonic()
    learner.stop()
    assert not learner.is_alive() and time.monotonic() - t0 < 5
