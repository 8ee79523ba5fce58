"""Ray Tune and Ray Train on a private local Ray: every family's search reports val AUCPR,
ASHA stops weak XGBoost/autoencoder trials early, the best config is refitted and registered;
the autoencoder trains data-parallel on a TorchTrainer, XGBoost on an XGBoostTrainer, and
both resume from their checkpoints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from core import ray_client
from core.settings import Settings
from training.autoencoder import AutoencoderModel
from training.data import Split, temporal_split
from training.evaluate import evaluate
from training.pipeline import train_all
from training.registry import Registry
from training.train_ray import fit_autoencoder, fit_xgboost
from training.tune import search
from training.xgboost_model import XGBoostModel

from .test_training import synthetic_frame
from .world import delete_registry_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_ray(settings: Settings) -> Iterator[None]:
    """The private local Ray `fraudray train` starts when no cluster is configured."""
    ray_client.init(settings.model_copy(update={"ray": settings.ray.model_copy(update={"num_cpus": 2})}),
                    local=True, log_to_driver=False)  # fmt: skip
    yield
    ray_client.shutdown()


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


def test_xgboost_trains_on_ray_train_and_resumes(local_ray: None, split: Split, tmp_path: Path) -> None:
    """Two XGBoostTrainer workers, each boosting on half the training rows; the booster comes
    back as an ordinary fitted model. A second run of the same name resumes from the first
    one's checkpoint: although it is given only half the rows (a fresh start would grow other
    trees), its first 20 trees are the first run's, then it boosts on until early stopping."""
    t0 = time.perf_counter()
    first = XGBoostModel(split.feature_names, n_estimators=20)
    fit_xgboost(first, split.X_train, split.y_train, split.X_val, split.y_val,
                storage=tmp_path, name="xgb-run", workers=2)  # fmt: skip
    seconds = time.perf_counter() - t0
    aucpr = evaluate(first.score(split.X_test), split.y_test)["aucpr"]
    print(f"\nXGBoost on Ray Train, 2 workers: fit {seconds:.1f} s, test AP {aucpr:.3f} "
          f"(base rate {split.y_test.mean():.3f})")  # fmt: skip
    assert first.booster is not None and first.booster.num_boosted_rounds() == 20
    assert len(first.history) == 20 and first.best_iteration == int(np.argmax(first.history))
    assert aucpr > 3 * split.y_test.mean()
    first.save(tmp_path / "model")  # saves, loads, scores and explains like an in-process fit
    again = XGBoostModel.load(tmp_path / "model")
    np.testing.assert_allclose(again.score(split.X_test), first.score(split.X_test), rtol=1e-6)
    assert again.contributions(split.X_test[:3]).shape == (3, len(split.feature_names) + 1)

    half = len(split.y_train) // 2
    resumed = XGBoostModel(split.feature_names, n_estimators=300, early_stopping_rounds=10)
    fit_xgboost(resumed, split.X_train[half:], split.y_train[half:], split.X_val, split.y_val,
                storage=tmp_path, name="xgb-run", workers=2)  # fmt: skip
    assert resumed.booster is not None
    rounds = resumed.booster.num_boosted_rounds()
    assert 20 < rounds < 300 and len(resumed.history) == rounds  # stopped early on val AUCPR
    assert resumed.history[:20] == first.history
    assert resumed.best_iteration == int(np.argmax(resumed.history))
    test = xgb.DMatrix(split.X_test, feature_names=split.feature_names)
    np.testing.assert_array_equal(
        resumed.booster.predict(test, iteration_range=(0, 20)),
        first.booster.predict(test, iteration_range=(0, 20)),
    )
