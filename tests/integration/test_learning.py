"""The champion/challenger loop on the real PostgreSQL: a champion trained on a world with one
fraud scenario (card testing) is in production; a later world brings other scenarios
(account takeover, bust-out) with their labels; one round of the loop fits challengers on the
new world's rolling window, finds they beat the champion on the newest labelled day by the
margin, promotes them, hot-swaps (an injected callable here) and records the round in
``training_runs``. The production versions found before the test are restored afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg2
import pytest

from core.errors import ModelNotReady
from core.families import ALL_KEYS
from core.settings import Settings
from features.catalogue import FEATURE_NAMES
from training.data import frame_from_store, temporal_split
from training.learning import learn_once
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
    conn = psycopg2.connect(local_stack.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "DELETE FROM training_runs WHERE model_name = 'learn' AND config->>'trigger' = 'tests'"
            )
    finally:
        conn.close()


def test_a_challenger_of_the_new_fraud_mix_is_promoted(
    private: Settings, worlds: tuple[World, World]
) -> None:
    old, new = worlds
    frame = frame_from_store(private, old.start, old.end, id_prefix=old.prefix)
    champion = train_all(temporal_split(frame, list(FEATURE_NAMES)), private, source="tests:learn-champion")
    assert set(champion.versions) == set(ALL_KEYS)

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
