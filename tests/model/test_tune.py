"""Ray Tune searches on a private local Ray: every family reports val AUCPR and ASHA stops
weak XGBoost/autoencoder trials early."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from training.data import Split, temporal_split
from training.tune import search

from .test_training import synthetic_frame

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
def test_search_finds_a_useful_config(local_ray: None, split: Split, family: str, tmp_path: Path) -> None:
    max_t = {"if": 1, "xgb": 60, "ae": 6}[family]
    params, frame = search(family, split, num_samples=3, time_budget_s=60, max_t=max_t, storage=tmp_path)
    assert len(frame) == 3 and frame["val_aucpr"].notna().all()
    assert frame["val_aucpr"].max() > 3 * split.y_val.mean()  # far better than chance
    assert params and all(not k.startswith("config/") for k in params)
    if family == "ae":
        assert 1 <= params["epochs"] <= 6
