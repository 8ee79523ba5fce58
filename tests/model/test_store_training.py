"""Training from the feature store's offline path on a simulated, labelled world in the real
PostgreSQL: point-in-time frames, a temporal split that never leaks, every family far above
a random baseline, versions registered with window + drift reference + training_runs rows,
promote/rollback changing what is loaded, and the `fraudray train`/`models` commands."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from core.errors import ModelNotReady
from core.ports import free_port
from core.settings import Settings, get_settings
from features.catalogue import FEATURE_NAMES
from monitoring.drift import DriftWindow
from training.data import DataError, Split, frame_from_store, temporal_split
from training.isolation_forest import IsolationForestModel
from training.pipeline import TrainResult, train_all
from training.registry import Registry

from .test_training import png_size
from .world import World, delete_registry_rows, delete_world, write_world

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def world(local_stack: Settings) -> Iterator[World]:
    w = write_world(local_stack)
    yield w
    delete_world(local_stack, w)


@pytest.fixture(scope="module")
def private(
    local_stack: Settings, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """The stack's settings with a private var/ (artefacts), registry rows removed afterwards."""
    var = tmp_path_factory.mktemp("var")
    yield local_stack.model_copy(update={"stack": local_stack.stack.model_copy(update={"var_dir": var})})
    delete_registry_rows(local_stack, str(var), world)


@pytest.fixture(scope="module")
def frame(local_stack: Settings, world: World) -> pd.DataFrame:
    return frame_from_store(local_stack, world.start, world.end, id_prefix=world.prefix)


@pytest.fixture(scope="module")
def split(frame: pd.DataFrame) -> Split:
    s = temporal_split(frame, list(FEATURE_NAMES))
    s.require_fraud()
    return s


@pytest.fixture(scope="module")
def trained(split: Split, private: Settings) -> TrainResult:
    return train_all(
        split,
        private,
        params={"ae": {"epochs": 4}, "xgb": {"n_estimators": 150}},
        source="tests:store",
        promote=False,
    )


def test_the_store_frame_holds_every_labelled_transaction(frame: pd.DataFrame, world: World) -> None:
    assert len(frame) == world.rows  # every transaction has its (late) label in PostgreSQL
    assert int(frame["is_fraud"].sum()) == world.fraud
    assert list(frame.columns[: len(FEATURE_NAMES)]) == list(FEATURE_NAMES)


def test_temporal_split_on_days_never_leaks(frame: pd.DataFrame, split: Split) -> None:
    first_val, first_test = (pd.Timestamp(b) for b in split.boundaries)
    assert first_val == first_val.normalize() and first_test == first_test.normalize()  # midnights
    t = frame["event_time"]
    train_ids = set(frame.loc[t < first_val, "transaction_id"])
    test_ids = set(frame.loc[t >= first_test, "transaction_id"])
    assert train_ids and test_ids and not train_ids & test_ids
    assert len(train_ids) == len(split.y_train) and len(test_ids) == len(split.y_test)
    # No training row is as late as the first validation instant.
    assert t[t < first_val].max() < first_val <= t[(t >= first_val) & (t < first_test)].min()


def test_too_little_labelled_data_is_a_clear_error(local_stack: Settings, world: World) -> None:
    with pytest.raises(DataError, match="too little labelled data"):
        frame_from_store(
            local_stack, world.start, world.start + pd.Timedelta(hours=2), id_prefix=world.prefix
        )
    with pytest.raises(DataError, match="no transactions in PostgreSQL"):
        frame_from_store(local_stack, world.start, world.end, id_prefix="nobody-")


def test_each_family_beats_a_random_baseline_by_far(trained: TrainResult, split: Split) -> None:
    base = split.y_test.mean()  # the AP of random scores
    print("\nfeature-store world:", split.window()["rows"], split.window()["fraud"])
    for fam, m in trained.metrics.items():
        print(f"  {fam:<8} AP {m['aucpr']:.3f} ROC {m['roc_auc']:.3f} R@1%FPR {m['recall_at_1pct_fpr']:.3f}"
              f" fit {trained.seconds.get(fam, 0):.1f}s")  # fmt: skip
        assert m["aucpr"] > 5 * base, f"{fam}: AP {m['aucpr']:.3f} vs base rate {base:.4f}"
    assert trained.metrics["xgb"]["aucpr"] > 0.5
    assert trained.metrics["ensemble"]["recall_by_scenario"]  # per-scenario recall of simulated fraud


def test_versions_carry_window_reference_and_runs(
    trained: TrainResult, split: Split, private: Settings
) -> None:
    registry = Registry(private)
    mv = registry.get("xgb", trained.versions["xgb"].version)
    assert mv.stage == "candidate" and mv.feature_names == list(FEATURE_NAMES)
    assert mv.training_window["train"] == [split.span[0], split.boundaries[0]]
    assert mv.training_window["rows"] == split.sizes()
    assert {"aucpr", "roc_auc", "precision", "recall", "pr_curve", "roc_curve"} <= mv.metrics.keys()
    assert mv.params["max_depth"] and "drift_reference" not in mv.params  # fetched on its own
    png = (Path(mv.uri) / "curves.png").read_bytes()  # PR and ROC side by side
    assert png_size(png) == (1000, 440) and 20_000 < len(png) < 500_000

    reference = registry.drift_reference("xgb", mv.version)
    assert set(reference) == set(FEATURE_NAMES)
    window = DriftWindow(reference, list(FEATURE_NAMES), size=5000, min_samples=500)
    sample = split.X_train[np.random.default_rng(0).choice(len(split.X_train), 5000, replace=False)]
    window.add(sample)
    assert max(window.psi_by_feature().values()) < 0.1  # a sample of the training window
    shifted = sample.copy()
    shifted[:, FEATURE_NAMES.index("log_amount")] += 2.0
    window.add(shifted)
    assert window.psi_by_feature()["log_amount"] > 0.25

    ours = {v.version for v in trained.versions.values()}
    runs = {r["model_name"]: r for r in registry.runs(limit=500) if r["metrics"].get("version") in ours}
    assert set(runs) == {"if", "xgb", "ae", "ensemble"}
    assert all(r["status"] == "finished" and r["finished_at"] for r in runs.values())
    assert runs["xgb"]["metrics"]["aucpr"] == pytest.approx(trained.metrics["xgb"]["aucpr"])


def _register_if(
    registry: Registry, name: str, threshold: float, features: Sequence[str] = ("a", "b")
) -> str:
    names = list(features)
    model = IsolationForestModel(names, n_estimators=5).fit(np.zeros((20, len(names))), np.zeros(20))
    model.threshold = threshold
    version, path = registry.new_version_dir(name)
    model.save(path)
    registry.register(name, version, path, metrics={}, params={}, feature_names=names)
    return version


def test_promote_and_rollback_change_what_is_loaded(private: Settings) -> None:
    registry = Registry(private)
    name = f"test-{uuid.uuid4().hex[:8]}"
    v1, v2, v3 = (_register_if(registry, name, t) for t in (0.1, 0.2, 0.3))

    def loaded() -> float | None:
        return IsolationForestModel.load(Path(registry.production(name).uri)).threshold

    with pytest.raises(ModelNotReady):
        registry.rollback(name)  # nothing in production yet
    for v in (v1, v2, v3):
        registry.promote(name, v)
    assert loaded() == 0.3
    assert registry.rollback(name) == (v3, v2)
    assert loaded() == 0.2 and registry.get(name, v3).stage == "archived"
    assert registry.rollback(name) == (v2, v1)  # two steps back, not back and forth
    assert loaded() == 0.1
    with pytest.raises(ModelNotReady, match="no earlier production version"):
        registry.rollback(name)
    with pytest.raises(ModelNotReady):
        registry.promote(name, "no-such-version")
    assert registry.production(name).version == v1


@pytest.fixture
def cli_env(private: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`fraudray` with the private var/ and no Ray head (so Serve counts as not running)."""
    monkeypatch.setenv("FRAUDRAY_STACK_VAR_DIR", str(private.var_dir))
    monkeypatch.setenv("FRAUDRAY_RAY_HEAD_PORT", str(free_port()))
    monkeypatch.setenv("COLUMNS", "250")  # rich tables unwrapped
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_train_command_uses_the_feature_store(cli_env: None, world: World, tmp_path: Path) -> None:
    from cluster.cli import app

    report = tmp_path / "report.json"
    # --no-promote: the registry is shared, a test model must never reach production "xgb".
    # --train-workers 0: in this process; tests/model/test_tune.py covers Ray Train (~40 s here).
    args = ["train", "--model", "xgb", "--start", world.start.strftime("%Y-%m-%d"),
            "--end", world.end.strftime("%Y-%m-%d"), "--no-promote", "--train-workers", "0",
            "--report", str(report)]  # fmt: skip
    out = CliRunner().invoke(app, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "feature-store" in out.output
    data = json.loads(report.read_text())
    assert data["source"] == "feature-store" and data["models"]["xgb"]["metrics"]["aucpr"] > 0.5
    assert data["window"]["rows"]["train"] > 0
    version = data["models"]["xgb"]["version"]
    assert Registry(get_settings()).get("xgb", version).stage == "candidate"
    out = CliRunner().invoke(app, ["models", "list", "xgb"], catch_exceptions=False)
    assert version in out.output


def test_models_promote_and_rollback_commands(cli_env: None) -> None:
    from cluster.cli import app

    registry = Registry(get_settings())
    name = f"test-{uuid.uuid4().hex[:8]}"
    # On the serving catalogue's features: `models promote` refuses versions trained on others.
    v1, v2 = (_register_if(registry, name, t, FEATURE_NAMES) for t in (0.1, 0.2))
    for v in (v1, v2):
        out = CliRunner().invoke(app, ["models", "promote", name, v], catch_exceptions=False)
        assert out.exit_code == 0 and "now in production" in out.output
        assert "not running" in out.output and "next `fraudray serve`" in out.output  # no crash
    out = CliRunner().invoke(app, ["models", "rollback", name], catch_exceptions=False)
    assert out.exit_code == 0 and f"{v1} is back in production, {v2} archived" in out.output
    out = CliRunner().invoke(app, ["models", "rollback", name])
    assert out.exit_code == 1 and "no earlier production version" in out.output


def test_train_command_says_when_data_are_missing(cli_env: None) -> None:
    from cluster.cli import app

    out = CliRunner().invoke(app, ["train", "--start", "1990-01-01", "--end", "1990-01-02"])
    assert out.exit_code == 1 and "no transactions in PostgreSQL" in out.output
