"""Champion / challenger learning loop: when enough new labels have arrived, enough time has
passed, or the live features drifted, fit challengers of every family on the rolling window
of labelled transactions in PostgreSQL, compare them with the production champion on the most
recent labelled days, and promote them when they win by a margin with enough frauds to tell.

Every fitted challenger is **shadow-scored**: its ensemble scores the transactions of the
evaluation window (the newest labelled days) that the stream decided, from the same
point-in-time frame, and the scores are written next to the champion's in
``decisions.shadow_score`` / ``shadow_version`` (``write_shadow_scores``; never deciding). This
happens in the round, over that window, not per batch in the consumer.

Every round is one ``training_runs`` row (``model_name = 'learn'``) saying what was decided
and why, and a metric (``monitoring.metrics.LearnMetrics``). The hot swap of the running Serve
app is injected (``swap``): training does not import serving (cluster/cli.py composes them).
The guard refuses a promotion on too few recent frauds, on a regression, or on a failed fit.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from core import db
from core.errors import FraudrayError, ModelNotReady
from core.families import ALL_KEYS, ENSEMBLE, MEMBER_KEYS
from core.settings import LearnSettings, Settings
from training.data import TIME, DataError, frame_from_store, split_by_windows
from training.evaluate import evaluate
from training.families import load as load_model
from training.registry import ModelVersion, Registry

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
    # Shadow scoring: decisions of the evaluation window given the challenger's score, and the
    # AP there of what the stream decided (the live scores) and of the challenger's shadow score.
    shadow_version: str = ""
    shadow_rows: int = 0
    shadow_frauds: int = 0
    live_aucpr: float | None = None
    shadow_aucpr: float | None = None
    shadow_error: str = ""

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


def ensemble_scores(
    members: dict[str, ModelVersion], ensemble: ModelVersion, frame: pd.DataFrame
) -> np.ndarray:
    """The score of ``ensemble`` over ``members`` on ``frame`` (each member on its own feature
    columns), as the Serve app computes it."""
    from training.ensemble import Ensemble

    scores = {
        fam: load_model(fam, _path(mv.uri)).score(frame[mv.feature_names].to_numpy(np.float32))
        for fam, mv in members.items()
    }
    return np.asarray(Ensemble.load(_path(ensemble.uri)).predict(scores), dtype=np.float64)


def champion_scores(registry: Registry, recent: pd.DataFrame) -> np.ndarray | None:
    """The production ensemble's score on ``recent``; None when there is no complete champion."""
    try:
        members = {fam: registry.production(fam) for fam in MEMBER_KEYS}
        return ensemble_scores(members, registry.production(ENSEMBLE), recent)
    except (ModelNotReady, KeyError):
        return None


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

_SHADOW_UPDATE = """
UPDATE decisions d SET shadow_score = s.score, shadow_version = %s
FROM shadow_stage s WHERE d.transaction_id = s.transaction_id
RETURNING d.transaction_id, d.ensemble_score
"""


def write_shadow_scores(
    settings: Settings, transaction_ids: Sequence[str], scores: np.ndarray, version: str
) -> dict[str, float]:
    """Store ``scores`` of the challenger ensemble ``version`` in ``decisions.shadow_score`` /
    ``shadow_version`` of those transactions that have a decision (others are skipped): one
    COPY into a temporary table and one ``UPDATE … FROM``, in one database transaction.
    Idempotent (the same call again leaves the same rows); a later challenger overwrites.
    Returns the live (deciding) ensemble score of every transaction updated."""
    seen: set[str] = set()
    lines = []
    for tid, score in zip(transaction_ids, np.asarray(scores, dtype=np.float64).tolist(), strict=True):
        if tid not in seen:
            seen.add(tid)
            lines.append(f"{tid.translate(_COPY_ESCAPES)}\t{score!r}\n")
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(
            "CREATE TEMP TABLE shadow_stage (transaction_id text, score double precision) ON COMMIT DROP"
        )
        cur.copy_expert("COPY shadow_stage (transaction_id, score) FROM STDIN", io.StringIO("".join(lines)))
        cur.execute(_SHADOW_UPDATE, (version,))
        return {str(tid): float(live) for tid, live in cur.fetchall()}


def shadow_score(
    settings: Settings, decision: Decision, versions: dict[str, ModelVersion], recent: pd.DataFrame
) -> None:
    """Score ``recent`` with the challenger, write it next to the stream's decisions, and put
    the live vs shadow AP on those decisions into ``decision``. A failure here is recorded
    (``shadow_error``), it does not change the round's outcome."""
    import psycopg2

    try:
        members = {fam: versions[fam] for fam in MEMBER_KEYS}
        scores = ensemble_scores(members, versions[ENSEMBLE], recent)
        decision.shadow_version = versions[ENSEMBLE].version
        ids = recent["transaction_id"].tolist()
        live = write_shadow_scores(settings, ids, scores, decision.shadow_version)
    except (FraudrayError, KeyError, ValueError, OSError, psycopg2.Error) as exc:
        decision.shadow_error = f"{type(exc).__name__}: {exc}"[:300]
        return
    decision.shadow_rows = len(live)
    mask = recent["transaction_id"].isin(live).to_numpy()
    y = recent["is_fraud"].to_numpy()[mask]
    decision.shadow_frauds = int(y.sum())
    if 0 < decision.shadow_frauds < len(y):
        live_scores = np.asarray([live[t] for t in recent["transaction_id"][mask]], dtype=np.float64)
        decision.live_aucpr = float(evaluate(live_scores, y)["aucpr"])
        decision.shadow_aucpr = float(evaluate(scores[mask], y)["aucpr"])


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
            shadow_score(settings, decision, result.versions, recent)
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
    on_check: Callable[[int, str], None] = lambda new_labels, trigger: None,
    sleep: Callable[[float], Any] = time.sleep,
    train_workers: int = 0,
) -> None:
    """Check every ``poll_s`` whether a round is due (``due``) and run it; until ``stop()``.
    ``on_check`` gets each check's count of new labels and trigger ('' = not due); ``sleep``
    waits between checks (an ``Event.wait`` ends the wait as soon as the caller stops)."""
    policy = settings.learn
    last = datetime.now(UTC)
    while not stop():
        minutes = (datetime.now(UTC) - last).total_seconds() / 60
        new_labels = new_labels_since(settings, last)
        trigger = due(new_labels, minutes, drifted(), policy)
        on_check(new_labels, trigger)
        if trigger:
            started = datetime.now(UTC)
            on_decision(learn_once(settings, trigger=trigger, swap=swap, train_workers=train_workers))
            last = started
        else:
            sleep(policy.poll_s)
