"""The champion/challenger loop on the real PostgreSQL: a champion trained on a world with one
fraud scenario (card testing) is in production; a later world brings other scenarios
(account takeover, bust-out) with their labels; one round of the loop fits challengers on the
new world's rolling window, finds they beat the champion on the newest labelled day by the
margin, promotes them, hot-swaps (an injected callable here), clears the live shadow (another
injected callable) and records the round in ``training_runs``. The round's evaluation on the
decided rows compares the challenger with what the stream decided on the newest labelled day,
read-only: no decision changes (live shadow scores are the stream's, test_learning_shadow.py).

Replayed data (#23): a world with event times in 2017 whose labels reach PostgreSQL now is
counted as new labels (``received_at``) and gets a round whose window is its own time, not
wall-clock now's. The production versions found before the test are restored afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import db
from core.families import ALL_KEYS
from core.settings import Settings
from features.catalogue import FEATURE_NAMES
from tests.helpers import production_version_ids
from training.data import frame_from_store, temporal_split
from training.learning import database_now, due, learn_once, new_labels_since
from training.pipeline import train_all
from training.registry import Registry

from ..model.world import World, delete_registry_rows, delete_world, write_world

pytestmark = [pytest.mark.integration]

OLD_MIX, NEW_MIX = "card_testing=1", "account_takeover=0.5,bust_out=0.5"
REPLAY_START = datetime(2017, 2, 6, tzinfo=UTC)  # no other test writes 2017


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
    before = production_version_ids(local_stack)
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
    shadows: list[dict[str, str] | None] = []
    decision = learn_once(private, trigger="tests", swap=lambda: swaps.append(1), shadow=shadows.append,
                          now=new.end, id_prefix=new.prefix, feature_names=list(FEATURE_NAMES))  # fmt: skip
    print(f"\nlearn: {decision.as_dict()}")
    assert decision.recent_frauds >= 15
    assert decision.champion_aucpr is not None and decision.challenger_aucpr is not None
    assert decision.challenger_aucpr >= decision.champion_aucpr + 0.02
    assert decision.action == "promoted", decision.reason
    assert swaps == [1]
    assert shadows == [None] and decision.shadow == "cleared"  # a promotion clears the live shadow
    registry = Registry(private)
    assert {fam: registry.production(fam).version for fam in ALL_KEYS} == decision.versions
    run = next(r for r in registry.runs("learn", limit=5) if r["config"].get("trigger") == "tests")
    assert run["status"] == "finished" and run["metrics"]["action"] == "promoted"

    # The evaluation on the decided rows: every transaction of the evaluation window (the newest
    # labelled day) has a decision; the challenger's AP there is its measured AP, the random live
    # scores' about the fraud rate; nothing was written to any decision.
    rows = _decisions(private, new)
    assert decision.decided_rows == decision.recent_rows, decision.evaluation_error
    assert decision.decided_frauds == decision.recent_frauds
    assert decision.challenger_decided_aucpr == pytest.approx(decision.challenger_aucpr, abs=1e-6)
    assert decision.live_aucpr is not None and decision.live_aucpr < 0.2
    assert decision.live_shadow_rows == 0  # no live shadow scored these decisions
    assert all(r["shadow_score"] is None and r["shadow_version"] is None for r in rows.values())
    assert all(r["model_version"] == "tests-live" for r in rows.values())


def test_replayed_labels_trigger_a_round_over_their_own_time(
    private: Settings, worlds: tuple[World, World]
) -> None:
    """A data set replayed with event times in 2017 (`fraudray replay … --labels all`): its labels
    reach PostgreSQL now, so they count as new labels, and the round's window ends at its newest
    labelled transaction, not at wall-clock now (where it would hold none of them)."""
    since = database_now(private)
    replayed = write_world(private, seed=3, start=REPLAY_START, fraud_mix=NEW_MIX)
    try:
        new_labels, checked_at = new_labels_since(private, since)
        assert new_labels >= replayed.rows and checked_at > since  # labelled_at is in 2017
        trigger = due(new_labels, 0.0, False, private.learn.model_copy(update={"every_labels": 5000}))
        assert trigger.startswith("labels:"), trigger
        shadows: list[dict[str, str] | None] = []
        decision = learn_once(private, trigger="tests", shadow=shadows.append, labels_since=since,
                              id_prefix=replayed.prefix, feature_names=list(FEATURE_NAMES))  # fmt: skip
        print(f"\nlearn (replayed): {decision.as_dict()}")
        newest = _newest_labelled(private, replayed)
        start, end = (datetime.fromisoformat(t) for t in decision.window["frame"])
        assert end == newest + timedelta(microseconds=1)  # the replay's own newest labelled tx
        assert replayed.start < newest < replayed.end and end - start == timedelta(
            days=private.learn.window_days
        )
        assert decision.action != "refused" or not decision.reason.startswith("too few"), decision.reason
        assert set(decision.versions) == set(ALL_KEYS), decision.reason
        assert decision.recent_rows > 0 and decision.recent_frauds >= 15
        assert datetime.fromisoformat(decision.window["test"][0]).year == REPLAY_START.year
        # a challenger kept as candidate shadow-scores the stream; a promoted one clears the shadow
        if decision.action == "candidate":
            assert shadows == [decision.versions] and decision.shadow == "installed"
        elif decision.action == "promoted":
            assert shadows == [None]
    finally:
        delete_world(private, replayed)
        delete_registry_rows(private, str(private.stack.var_dir), replayed)


def _newest_labelled(settings: Settings, world: World) -> datetime:
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(
            "SELECT max(t.event_time) FROM transactions t JOIN labels l USING (transaction_id)"
            " WHERE t.transaction_id LIKE %s",
            (world.prefix + "%",),
        )
        newest: datetime = cur.fetchone()[0]
        return newest


def _decide_with_random_scores(settings: Settings, world: World) -> None:
    """A decision for every transaction of ``world``, as a stream would leave them (the live
    scores here random: a model that knows nothing)."""
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(
            "INSERT INTO decisions (transaction_id, user_id, scores, ensemble_score, is_fraud,"
            " model_version) SELECT transaction_id, user_id, '{}', random(), false, 'tests-live'"
            " FROM transactions WHERE transaction_id LIKE %s",
            (world.prefix + "%",),
        )


def _decisions(settings: Settings, world: World) -> dict[str, dict[str, Any]]:
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(
            "SELECT d.transaction_id, t.event_time, d.ensemble_score, d.is_fraud, d.model_version,"
            " d.shadow_score, d.shadow_version"
            " FROM decisions d JOIN transactions t USING (transaction_id)"
            " WHERE d.transaction_id LIKE %s",
            (world.prefix + "%",),
        )
        names = [c.name for c in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


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
