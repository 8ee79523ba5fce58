"""Champion / challenger loop: when enough new labels have arrived, enough time has
passed, or the live features drifted, fit challengers of every family on the rolling window
of labelled transactions in PostgreSQL, compare them with the production champion on the most
recent labelled days, and promote them when they win by a margin with enough frauds to tell.

New labels are counted by when they *reached* fraudray (``labels.received_at``), and the
rolling window ends at the event time of the newest labelled transaction (of the labels
received since the last round, else of all), not at wall-clock now: live traffic gets the
window it always had, a replayed or back-filled data set (event times years ago) triggers
rounds and gets a window over its own time (``window_end``).

Two kinds of challenger scores, kept apart:

- **live shadow scoring**: a round that keeps its challenger as ``candidate`` installs it as
  the shadow of the Serve scorer (the injected ``shadow`` callable); from then on every
  decision the stream makes carries the challenger's score of the same feature row in
  ``decisions.shadow_score`` / ``shadow_version`` (never deciding). A promotion clears it.
- **the round's evaluation on the decided rows** (``evaluate_decided``): the challenger's AP,
  from the round's point-in-time frame, on the evaluation-window transactions the stream
  decided, next to the AP of the live deciding scores (and of any live shadow scores) on the
  same rows; read-only, recorded in ``training_runs``. The guard itself compares champion and
  challenger on the frame's recent window.

Every round is one ``training_runs`` row (``model_name = 'learn'``) saying what was decided
and why, and a metric (``monitoring.metrics.LearnMetrics``). The hot swap and the shadow
install of the running Serve app are injected (``swap``, ``shadow``): training does not import
serving (cluster/cli.py and cluster/learner.py compose them). The guard refuses a promotion on
too few recent frauds, on a regression, or on a failed fit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
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
    # The round's evaluation on the decided rows (evaluate_decided): the evaluation window's
    # transactions that the stream decided, the AP there of the live deciding scores and of this
    # challenger (offline frame); and of the live shadow scores some decisions carry, if any.
    decided_rows: int = 0
    decided_frauds: int = 0
    live_aucpr: float | None = None
    challenger_decided_aucpr: float | None = None
    live_shadow_rows: int = 0
    live_shadow_version: str = ""
    live_shadow_aucpr: float | None = None
    live_shadow_champion_aucpr: float | None = None  # the deciding scores on those same rows
    evaluation_error: str = ""
    # Live shadow scoring: "installed" (this challenger scores the stream from now on),
    # "cleared" (a promotion), "" (unchanged); the installed ensemble version.
    shadow: str = ""
    shadow_version: str = ""
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


_DECIDED_SQL = """
SELECT transaction_id, ensemble_score, shadow_score, shadow_version FROM decisions
WHERE transaction_id = ANY(%s)
"""


def _ap(scores: Sequence[float] | np.ndarray, y: np.ndarray) -> float | None:
    """Average precision, or None when ``y`` is all one class (nothing to rank)."""
    if not 0 < int(y.sum()) < len(y):
        return None
    return float(evaluate(np.asarray(scores, dtype=np.float64), y)["aucpr"])


def evaluate_decided(
    settings: Settings, decision: Decision, versions: dict[str, ModelVersion], recent: pd.DataFrame
) -> None:
    """The challenger on the evaluation-window transactions the stream decided, next to what
    decided them (read-only): AP of the live deciding scores and of the challenger there; of
    the live shadow scores on the decisions that carry one (of the shadow version most of
    them carry), with the deciding scores on the same rows. A failure here is recorded
    (``evaluation_error``); it does not change the round's outcome."""
    import psycopg2

    try:
        members = {fam: versions[fam] for fam in MEMBER_KEYS}
        scores = ensemble_scores(members, versions[ENSEMBLE], recent)
        with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
            cur.execute(_DECIDED_SQL, (recent["transaction_id"].tolist(),))
            rows = {str(r[0]): r[1:] for r in cur.fetchall()}
    except (FraudrayError, KeyError, ValueError, OSError, psycopg2.Error) as exc:
        decision.evaluation_error = f"{type(exc).__name__}: {exc}"[:300]
        return
    mask = recent["transaction_id"].isin(rows).to_numpy()
    ids = recent["transaction_id"][mask].tolist()
    y = recent["is_fraud"].to_numpy()[mask].astype(int)
    decision.decided_rows, decision.decided_frauds = len(ids), int(y.sum())
    decision.live_aucpr = _ap([rows[t][0] for t in ids], y)
    decision.challenger_decided_aucpr = _ap(scores[mask], y)
    shadowed = [i for i, t in enumerate(ids) if rows[t][1] is not None]
    if shadowed:
        version = Counter(str(rows[ids[i]][2]) for i in shadowed).most_common(1)[0][0]
        same = [i for i in shadowed if rows[ids[i]][2] == version]
        decision.live_shadow_rows, decision.live_shadow_version = len(same), version
        decision.live_shadow_aucpr = _ap([rows[ids[i]][1] for i in same], y[same])
        decision.live_shadow_champion_aucpr = _ap([rows[ids[i]][0] for i in same], y[same])


# The newest labelled transaction's event time: of the labels received since the last round
# (the ones that made it due), else of every label. ``starts_with``: the tests' id prefixes.
_NEWEST_LABELLED_SQL = """
SELECT max(t.event_time) FROM labels l JOIN transactions t USING (transaction_id)
WHERE (%(since)s::timestamptz IS NULL OR l.received_at > %(since)s)
  AND (%(prefix)s::text IS NULL OR starts_with(l.transaction_id, %(prefix)s))
"""


def window_end(cur: Any, *, since: datetime | None = None, id_prefix: str | None = None) -> datetime:
    """Where the rolling window ends: just after the event time of the newest labelled
    transaction among the labels received after ``since`` (the previous round), or among all
    labels when none arrived since (a drift or a manual round) or ``since`` is None. Live
    traffic's newest label is for a transaction of hours or days ago, as its window always
    was; a replayed data set's is in its own past, wherever wall-clock now is. ``cur``: a
    PostgreSQL cursor. Raises ``DataError`` when no transaction has a label."""
    newest = None
    for bound in (since, None) if since is not None else (None,):
        cur.execute(_NEWEST_LABELLED_SQL, {"since": bound, "prefix": id_prefix})
        newest = cur.fetchone()[0]
        if newest is not None:
            break
    if newest is None:
        raise DataError(
            "no labelled transaction in PostgreSQL: labels arrive on the labels topic "
            "(`fraudray produce`, `fraudray replay --label-column …`)"
        )
    return newest + timedelta(microseconds=1)  # the window's end is exclusive


def window_bounds(end: datetime, policy: LearnSettings) -> tuple[datetime, datetime]:
    """``[end - window_days, end)``: the rolling window of labelled transactions."""
    return end - timedelta(days=policy.window_days), end


def _path(uri: str) -> Any:
    from pathlib import Path

    return Path(uri.removeprefix("file://"))


def learn_once(
    settings: Settings,
    *,
    trigger: str = "manual",
    swap: Callable[[], None] | None = None,
    shadow: Callable[[dict[str, str] | None], None] | None = None,
    now: datetime | None = None,
    labels_since: datetime | None = None,
    id_prefix: str | None = None,
    feature_names: list[str] | None = None,
    train_workers: int = 0,
) -> Decision:
    """One round: frame of the rolling window, challengers fitted (registered as candidates),
    champion vs challenger on the recent window, guard, promotion (+ ``swap``). Never raises
    for a failed fit or too little data: that is a ``refused`` decision, recorded.

    The window ends at ``now`` when given, else at the newest labelled transaction's event
    time (``window_end``; ``labels_since``: the previous round's start, so that the labels
    that made this round due choose it). ``shadow(versions)`` installs a ``candidate``
    challenger (family -> version) as the live shadow of the Serve scorer; ``shadow(None)``
    clears it after a promotion. A failing ``shadow`` is recorded, it changes nothing else."""
    from training.pipeline import train_all

    policy = settings.learn
    registry = Registry(settings)
    t0 = time.monotonic()
    decision = Decision("refused", "", trigger=trigger)
    with registry.run("learn", {"trigger": trigger, "policy": policy.model_dump()}) as row:
        try:
            if now is None:
                with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
                    now = window_end(cur, since=labels_since, id_prefix=id_prefix)
            start, end = window_bounds(now, policy)
            frame = frame_from_store(settings, start, end, id_prefix=id_prefix)
            last = pd.Timestamp(frame[TIME].max())
            recent_from = (last - pd.Timedelta(days=policy.recent_days)).to_pydatetime()
            val_from = recent_from - timedelta(days=policy.recent_days)
            split = split_by_windows(frame, feature_names, train=(None, val_from),
                                     val=(val_from, recent_from),
                                     test=(recent_from, None))  # fmt: skip
            decision.window = split.window() | {"frame": [start.isoformat(), end.isoformat()]}
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
            evaluate_decided(settings, decision, result.versions, recent)
            decision.action, decision.reason = guard(
                decision.champion_aucpr, decision.challenger_aucpr, decision.recent_frauds, policy
            )
        except (DataError, FraudrayError, KeyError, ValueError, RuntimeError) as exc:
            reason = "too few labels" if isinstance(exc, DataError) else "failed fit"
            decision.action, decision.reason = "refused", f"{reason}: {exc}"[:500]
        complete = set(ALL_KEYS) <= set(decision.versions)
        if decision.action == "promoted" and complete:
            for fam in ALL_KEYS:
                registry.promote(fam, decision.versions[fam])
            if swap is not None:
                swap()
            _shadow(decision, shadow, None)
        elif decision.action == "promoted":
            decision.action, decision.reason = "refused", "failed fit: not every family was registered"
        elif decision.action == "candidate" and complete:
            _shadow(decision, shadow, {fam: decision.versions[fam] for fam in ALL_KEYS})
        decision.seconds = round(time.monotonic() - t0, 2)
        row.update(decision.as_dict())
    _record_metric(decision)
    return decision


def _shadow(
    decision: Decision,
    shadow: Callable[[dict[str, str] | None], None] | None,
    versions: dict[str, str] | None,
) -> None:
    """Install ``versions`` as the live shadow (None: clear it); a failure is recorded only."""
    if shadow is None:
        return
    try:
        shadow(versions)
    except Exception as exc:  # noqa: BLE001 - Serve away, a replica that cannot load it: the round stands
        decision.shadow_error = f"{type(exc).__name__}: {exc}"[:300]
        return
    decision.shadow = "cleared" if versions is None else "installed"
    decision.shadow_version = "" if versions is None else versions[ENSEMBLE]


def _record_metric(decision: Decision) -> None:
    from monitoring.metrics import LearnMetrics

    LearnMetrics.shared().observe(decision.action, decision.champion_aucpr, decision.challenger_aucpr)


_NEW_LABELS_SQL = "SELECT count(*), now() FROM labels WHERE received_at > %s"


def new_labels_since(settings: Settings, since: datetime) -> tuple[int, datetime]:
    """How many labels reached PostgreSQL after ``since`` (``received_at``, whatever their own
    ``labelled_at``: a replay's labels count too), and the database's clock now (the next
    ``since``: one clock for both sides of the comparison)."""
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(_NEW_LABELS_SQL, (since,))
        count, now = cur.fetchone()
        return int(count), now


def database_now(settings: Settings) -> datetime:
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute("SELECT now()")
        now: datetime = cur.fetchone()[0]
        return now


def run_loop(
    settings: Settings,
    *,
    swap: Callable[[], None] | None = None,
    shadow: Callable[[dict[str, str] | None], None] | None = None,
    drifted: Callable[[], bool] = lambda: False,
    stop: Callable[[], bool] = lambda: False,
    on_decision: Callable[[Decision], None] = lambda d: None,
    on_check: Callable[[int, str], None] = lambda new_labels, trigger: None,
    sleep: Callable[[float], Any] = time.sleep,
    train_workers: int = 0,
) -> None:
    """Check every ``poll_s`` whether a round is due (``due``) and run it; until ``stop()``.
    New labels are those received since the last round's start (or the loop's), by the
    database's clock. ``on_check`` gets each check's count of new labels and trigger ('' = not
    due); ``sleep`` waits between checks (an ``Event.wait`` ends the wait as soon as the caller
    stops)."""
    policy = settings.learn
    last = database_now(settings)
    while not stop():
        new_labels, checked_at = new_labels_since(settings, last)
        minutes = (checked_at - last).total_seconds() / 60
        trigger = due(new_labels, minutes, drifted(), policy)
        on_check(new_labels, trigger)
        if trigger:
            on_decision(learn_once(settings, trigger=trigger, swap=swap, shadow=shadow,
                                   labels_since=last, train_workers=train_workers))  # fmt: skip
            last = checked_at
        else:
            sleep(policy.poll_s)
