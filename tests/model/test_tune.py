"""Ray Tune searches on a private local Ray: every family reports val AUCPR, ASHA stops weak
XGBoost/autoencoder trials early, and the best config is refitted and registered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from cluster.settings import Settings
from training.data import Split, temporal_split
from training.pipeline import train_all
from training.registry import Registry
from training.tune import search

from .test_training import synthetic_frame
from .world import delete_registry_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def split() -> Split:
    return temporal_split(synthetic_frame(5000))


@pytest.mark.parametrize("family", ["if", "xgb", "ae"])
def test_search_finds_a_useful_config(
    local_ray: None, split: Split, family: str, tmp_path: Path, local_stack: Settings
) -> None:
    max_t = {"if": 1, "xgb": 60, "ae": 6}[family]
    # The budget only bounds a busy machine: 3 trials take a few seconds on an idle one.
    params, frame = search(family, split, num_samples=3, time_budget_s=150, max_t=max_t, storage=tmp_path)
    assert 1 <= len(frame) <= 3 and frame["val_aucpr"].notna().all()
    assert frame["val_aucpr"].max() > 3 * split.y_val.mean()  # far better than chance
    assert params and all(not k.startswith("config/") for k in params)
    if family == "ae":
        assert 1 <= params["epochs"] <= 6
    # The best config is refitted and registered (a candidate, artefacts in a private var/).
    private = local_stack.model_copy(
        update={"stack": local_stack.stack.model_copy(update={"var_dir": tmp_path})}
    )
    try:
        result = train_all(split, private, params={family: params}, families=(family,),
                           source="tests:tune", promote=False)  # fmt: skip
        mv = Registry(private).get(family, result.versions[family].version)
        assert mv.stage == "candidate" and mv.metrics["aucpr"] > 3 * split.y_test.mean()
    finally:
        delete_registry_rows(local_stack, str(tmp_path))
