"""Champion / challenger learning loop: when enough new labels have arrived, enough time has
passed, or the live features drifted, fit challengers of every family on the rolling window
of labelled transactions in PostgreSQL, compare them with the production champion on the most
recent labelled days, and promote them when they win by a margin with enough frauds to tell.

Every round is one ``training_runs`` row (``model_name = 'learn'``) saying what was decided
and why, and a metric (``monitoring.metrics.LearnMetrics``). The hot swap of the running Serve
app is injected (``swap``): training does not import serving (cluster/cli.py composes them).
The guard refuses a promotion on too few recent frauds, on a regression, or on a failed fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from core.errors import FraudrayError, ModelNotReady
from core.families import ALL_KEYS, ENSEMBLE, MEMBER_KEYS
from core.settings import LearnSettings, Settings
from training.data import TIME, DataError, frame_from_store, split_by_windows
from training.evaluate import evaluate
from training.families import load as load_model
from training.registry import Registry

Action = Literal["promoted", "candidate", "refused", "skipped"]


@dataclass
class Decision:
    action: Action
    reason: str
    trigger: str = ""
    champion_aucpr: float | None = None
    challenger_aucpr: float | None = None
    recent_rows: int = 0
    recent_frauds: int = 0
    versions: dict[str, str] = field(default_factory=dict)  # the challenger's, per family
    window: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def guard(
    champion: float | None, challenger: float, recent_frauds: int, policy: LearnSettings
) -> tuple[Action, str]:
    """Promote only with enough recent frauds to tell, and a win by ``margin`` (AP, absolute)."""
    if recent_frauds < policy.min_recent_frauds:
        return (
            "refused",
            f"too few labels: {recent_frauds} frauds in the recent window (< {policy.min_recent_frauds})",
        )
    if champion is None:
        return "promoted", "no champion in production"
    if challenger < champion:
        return "refused", f"regression: challenger AP {challenger:.4f} < champion {champion:.4f}"
    if challenger < champion + policy.margin:
        return "candidate", f"challenger AP {challenger:.4f} does not beat {champion:.4f} by {policy.margin}"
    return "promoted", f"challenger AP {challenger:.4f} beats champion {champion:.4f} by >= {policy.margin}"


def due(new_labels: int, minutes: float, drifted: bool, policy: LearnSettings) -> str:
    """Why a round is due now ('' when it is not): labels, schedule or drift."""
    if drifted:
        return "drift"
    if new_labels >= policy.every_labels:
        return f"labels:{new_labels}"
    if minutes >= policy.every_minutes and new_labels > 0:
        return f"schedule:{minutes:.0f}min"
    return ""


def champion_scores(registry: Registry, recent: pd.DataFrame) -> np.ndarray | None:
    """The production ensemble's score on ``recent`` (each member on its own feature columns),
    as the Serve app computes it; None when there is no complete champion."""
    from training.ensemble import Ensemble

    try:
        scores = {}
        for fam in MEMBER_KEYS:
            mv = registry.production(fam)
            scores[fam] = load_model(fam, _path(mv.uri)).score(recent[mv.feature_names].to_numpy(np.float32))
        ens = Ensemble.load(_path(registry.production(ENSEMBLE).uri))
    except (ModelNotReady, KeyError):
        return None
    return np.asarray(ens.predict(scores), dtype=np.float64)


def _path(uri: str) -> Any:
    from pathlib import Path

    return Path(uri.removeprefix("file://"))


def learn_once(
    settings: Settings,
    *,
    trigger: str = "manual",
    swap: Callable[[], None] | None = None,
    now: datetime | None = None,
    id_prefix: str | None = None,
    feature_names: list[str] | None = None,
    train_workers: int = 0,
) -> Decision:
    """One round: frame of the rolling window, challengers fitted (registered as candidates),
    champion vs challenger on the recent window, guard, promotion (+ ``swap``). Never raises
    for a failed fit or too little data: that is a ``refused`` decision, recorded."""
    from training.pipeline import train_all

    policy = settings.learn
    registry = Registry(settings)
    t0 = time.monotonic()
    decision = Decision("refused", "", trigger=trigger)
    with registry.run("learn", {"trigger": trigger, "policy": policy.model_dump()}) as row:
        try:
            end = now or datetime.now(UTC)
            frame = frame_from_store(
                settings, end - timedelta(days=policy.window_days), end, id_prefix=id_prefix
            )
            last = pd.Timestamp(frame[TIME].max())
            recent_from = (last - pd.Timedelta(days=policy.recent_days)).to_pydatetime()
            val_from = recent_from - timedelta(days=policy.recent_days)
            split = split_by_windows(frame, feature_names, train=(None, val_from),
                                     val=(val_from, recent_from),
                                     test=(recent_from, None))  # fmt: skip
            decision.window = split.window()
            recent = frame[pd.to_datetime(frame[TIME], utc=True) >= pd.Timestamp(recent_from)]
            decision.recent_rows, decision.recent_frauds = len(recent), int(recent["is_fraud"].sum())
            champ = champion_scores(registry, recent)
            if champ is not None:
                decision.champion_aucpr = float(evaluate(champ, recent["is_fraud"].to_numpy())["aucpr"])
            result = train_all(
                split, settings, source=f"learn:{trigger}", promote=False, ae_workers=train_workers
            )
            decision.versions = {k: v.version for k, v in result.versions.items()}
            decision.challenger_aucpr = float(result.metrics[ENSEMBLE]["aucpr"])
            decision.action, decision.reason = guard(
                decision.champion_aucpr, decision.challenger_aucpr, decision.recent_frauds, policy
            )
        except (DataError, FraudrayError, KeyError, ValueError, RuntimeError) as exc:
            reason = "too few labels" if isinstance(exc, DataError) else "failed fit"
            decision.action, decision.reason = "refused", f"{reason}: {exc}"[:500]
        if decision.action == "promoted" and set(ALL_KEYS) <= set(decision.versions):
            for fam in ALL_KEYS:
                registry.promote(fam, decision.versions[fam])
            if swap is not None:
                swap()
        elif decision.action == "promoted":
            decision.action, decision.reason = "refused", "failed fit: not every family was registered"
        decision.seconds = round(time.monotonic() - t0, 2)
        row.update(decision.as_dict())
    _record_metric(decision)
    return decision


def _record_metric(decision: Decision) -> None:
    from monitoring.metrics import LearnMetrics

    LearnMetrics.shared().observe(decision.action, decision.champion_aucpr, decision.challenger_aucpr)


_NEW_LABELS_SQL = "SELECT count(*) FROM labels WHERE labelled_at > %s"


def new_labels_since(settings: Settings, since: datetime) -> int:
    import psycopg2

    conn = psycopg2.connect(settings.postgres.dsn.get_secret_value(), connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(_NEW_LABELS_SQL, (since,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def run_loop(
    settings: Settings,
    *,
    swap: Callable[[], None] | None = None,
    drifted: Callable[[], bool] = lambda: False,
    stop: Callable[[], bool] = lambda: False,
    on_decision: Callable[[Decision], None] = lambda d: None,
    train_workers: int = 0,
) -> None:
    """Check every ``poll_s`` whether a round is due (``due``) and run it; until ``stop()``."""
    policy = settings.learn
    last = datetime.now(UTC)
    while not stop():
        minutes = (datetime.now(UTC) - last).total_seconds() / 60
        trigger = due(new_labels_since(settings, last), minutes, drifted(), policy)
        if trigger:
            started = datetime.now(UTC)
            on_decision(learn_once(settings, trigger=trigger, swap=swap, train_workers=train_workers))
            last = started
        else:
            time.sleep(policy.poll_s)
