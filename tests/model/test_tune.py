"""Ray Tune and Ray Train on a private local Ray: every family's search reports val AUCPR,
ASHA stops weak XGBoost/autoencoder trials early, the best config is refitted and registered;
the autoencoder trains data-parallel on a TorchTrainer and resumes from its checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from cluster.settings import Settings
from training.autoencoder import AutoencoderModel
from training.data import Split, temporal_split
from training.evaluate import evaluate
from training.pipeline import train_all
from training.registry import Registry
from training.train_ray import fit_autoencoder
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


def test_autoencoder_trains_on_ray_train_and_resumes(local_ray: None, split: Split, tmp_path: Path) -> None:
    """Two data-parallel TorchTrainer workers; a second run of the same name resumes from the
    first one's checkpoint instead of starting over."""
    first = AutoencoderModel(split.feature_names, epochs=2)
    fit_autoencoder(first, split.X_train, split.y_train, split.X_val, split.y_val,
                    storage=tmp_path, name="ae-run", workers=2)  # fmt: skip
    assert len(first.history) == 2
    assert evaluate(first.score(split.X_test), split.y_test)["aucpr"] > 3 * split.y_test.mean()
    resumed = AutoencoderModel(split.feature_names, epochs=3)
    fit_autoencoder(resumed, split.X_train, split.y_train, split.X_val, split.y_val,
                    storage=tmp_path, name="ae-run", workers=2)  # fmt: skip
    assert resumed.history[:2] == pytest.approx(first.history) and len(resumed.history) == 3
