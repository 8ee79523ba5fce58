"""Live shadow scoring (#23) on real Kafka, Redis, PostgreSQL, Ray and Serve: a challenger (fitted
on a simulated world, registered, not promoted) is installed as the shadow of the shared app's
scorer the way the learning loop installs a candidate (``serve_deployments.deploy.install_shadow``).
Every decision the stream makes from then on carries the challenger's score of the same feature
row in ``decisions.shadow_score`` / ``shadow_version`` while the champion alone decides (its
scores are the ones it gives without a shadow); a promotion (registry + hot swap) clears the
shadow, and the decisions after it have none. The production versions found before the test
are restored (and swapped back) after."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from ray import serve

from core import db
from core.errors import ModelNotReady
from core.families import ALL_KEYS, MEMBER_KEYS, SCORER_DEPLOYMENT
from core.settings import ConsumerSettings, Settings
from features.catalogue import FEATURE_NAMES
from ingest.consumer import ConsumerPool
from serve_deployments.deploy import hot_swap, install_shadow
from tests.helpers import produce, production_version_ids, restore_production, with_topics
from training.data import frame_from_store, temporal_split
from training.learning import ensemble_scores
from training.pipeline import train_all
from training.registry import Registry

from ..model.world import delete_registry_rows, delete_world, write_world

pytestmark = [pytest.mark.integration]

WORLD_START = datetime(2000, 7, 3, tzinfo=UTC)  # no other test trains on July 2000
N = 400  # transactions per stream phase


@pytest.fixture(scope="module")
def challenger(
    serve_app_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, dict[str, str], dict[str, str]]]:
    """(settings with a private var/, the challenger's versions, the champion's versions)."""
    base = serve_app_settings
    var = tmp_path_factory.mktemp("var")
    before = production_version_ids(base)
    consumer = ConsumerSettings(batch_size=200, poll_timeout_s=0.2)
    s = base.model_copy(
        update={"stack": base.stack.model_copy(update={"var_dir": var}), "consumer": consumer}
    )
    world = write_world(base, seed=4, start=WORLD_START, fraud_mix="account_takeover=0.5,bust_out=0.5")
    try:
        frame = frame_from_store(s, world.start, world.end, id_prefix=world.prefix)
        trained = train_all(temporal_split(frame, list(FEATURE_NAMES)), s, source="tests:shadow-challenger",
                            promote=False)  # fmt: skip
        yield s, {k: v.version for k, v in trained.versions.items()}, before
    finally:
        with contextlib.suppress(ModelNotReady):
            install_shadow(base, None)
        restore_production(base, before)
        delete_world(base, world)
        delete_registry_rows(base, str(var), world)


Row = tuple[float, str, float | None, str | None]


def _decisions(settings: Settings, ids: list[str]) -> dict[str, Row]:
    """transaction id -> (ensemble_score, model_version, shadow_score, shadow_version)."""
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(
            "SELECT transaction_id, ensemble_score, model_version, shadow_score, shadow_version"
            " FROM decisions WHERE transaction_id = ANY(%s)",
            (ids,),
        )
        return {r[0]: r[1:] for r in cur.fetchall()}


def _stream(settings: Settings, new_topic: Callable[..., str], group_id: str) -> dict[str, Row]:
    """N fresh transactions through Kafka (topics of their own) → one consumer actor → Serve →
    PostgreSQL."""
    s = with_topics(
        settings, transactions_topic=new_topic("shadow-tx"), labels_topic=new_topic("shadow-labels", 1)
    )
    ids = [r["transaction_id"] for r in produce(s, N)]
    stats = ConsumerPool(s, 1, group_id).drain(timeout=300)
    assert sum(x["scored"] for x in stats) == N
    rows = _decisions(s, ids)
    assert len(rows) == N
    return rows


def test_a_shadow_challenger_scores_the_stream_and_a_promotion_clears_it(
    challenger: tuple[Settings, dict[str, str], dict[str, str]],
    new_topic: Callable[..., str],
    group_id: str,
) -> None:
    s, versions, champion = challenger
    assert set(versions) == set(ALL_KEYS) and versions["ensemble"] != champion.get("ensemble")
    handle = serve.get_deployment_handle(SCORER_DEPLOYMENT, s.serve.app_name)
    rng = np.random.default_rng(0)
    matrix = np.abs(rng.normal(1.0, 1.0, (64, len(FEATURE_NAMES)))).astype(np.float32)
    plain = handle.score.remote(matrix).result(timeout_s=60)
    assert "shadow_scores" not in plain

    # 1. Installed as shadow: the scorer's reply carries the challenger's scores (the loop's
    # offline scoring of the same rows), the champion's scores are what they were.
    assert install_shadow(s, versions) == versions["ensemble"]
    assert install_shadow(s, versions) == versions["ensemble"]  # again: nothing to apply
    scored = handle.score.remote(matrix).result(timeout_s=60)
    registry = Registry(s)
    offline = ensemble_scores({f: registry.get(f, versions[f]) for f in MEMBER_KEYS},
                              registry.get("ensemble", versions["ensemble"]),
                              pd.DataFrame(matrix, columns=list(FEATURE_NAMES)))  # fmt: skip
    assert scored["shadow_version"] == versions["ensemble"]
    np.testing.assert_allclose(scored["shadow_scores"], offline, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scored["scores"], plain["scores"])
    assert scored["model_version"] == plain["model_version"]
    assert "shadow_scores" not in handle.score.remote(matrix, False).result(timeout_s=60)  # the API's calls

    # 2. The stream: every decision has the challenger's shadow score beside the champion's.
    rows = _stream(s, new_topic, group_id)
    print(f"\nshadow: {sum(r[3] is not None for r in rows.values())} of {N} decisions shadow-scored")
    assert {r[1] for r in rows.values()} == {plain["model_version"]}
    assert all(r[2] is not None and 0.0 <= r[2] <= 1.0 for r in rows.values())
    assert {r[3] for r in rows.values()} == {versions["ensemble"]}
    assert any(abs(r[0] - (r[2] or 0.0)) > 1e-9 for r in rows.values())  # two models, two scores

    # 3. A promotion (registry + hot swap, as the loop's swap does) clears the shadow.
    for fam in ALL_KEYS:
        registry.promote(fam, versions[fam])
    hot_swap(s)
    assert "shadow_scores" not in handle.score.remote(matrix).result(timeout_s=60)
    assert install_shadow(s, None) == ""  # already clear: nothing to apply
    rows = _stream(s, new_topic, group_id + "-after")
    assert {r[1] for r in rows.values()} == {versions["ensemble"]}
    assert all(r[2] is None and r[3] is None for r in rows.values())
