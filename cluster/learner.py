"""The learning loop as a background thread of `make run` (``cluster/demo.py``): the same
``training.learning.run_loop`` as `fraudray learn`, with the hot swap of the running app and the
PSI drift check composed here (training imports neither), the live shadow install of a
challenger kept as candidate (``serve_deployments.deploy.install_shadow``), its settings from
``LearnSettings`` (``FRAUDRAY_LEARN_*``), and a one-line status for the live view.

Fits run in this process (``train_workers=0``): a thread, not a Ray actor, so that a stop
never leaves a fit behind on the cluster. ``stop`` ends the wait between checks at once; a
round already running finishes first (``join`` waits for it up to its timeout)."""

from __future__ import annotations

import threading
import time

from core.settings import Settings
from training.learning import Decision


class LearnerThread(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True, name="learning-loop")
        self.settings = settings
        self.stop_event = threading.Event()
        self.last: Decision | None = None
        self.status = f"checks every {settings.learn.poll_s:.0f} s for new labels, the schedule or drift"

    def run(self) -> None:
        from cluster.drift import psi_alert
        from serve_deployments.deploy import hot_swap, install_shadow
        from training.learning import run_loop

        def swap() -> None:
            hot_swap(self.settings)  # also clears a live shadow (the Ensemble's config is rewritten)

        def shadow(versions: dict[str, str] | None) -> None:
            install_shadow(self.settings, versions)

        try:
            run_loop(
                self.settings, swap=swap, shadow=shadow, drifted=lambda: psi_alert(self.settings),
                stop=self.stop_event.is_set, on_decision=self._decided, on_check=self._checked,
                sleep=self.stop_event.wait,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - PostgreSQL away, a failed swap: shown, not a traceback
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.status = f"stopped: {type(exc).__name__}: {first}"[:200]

    def _checked(self, new_labels: int, trigger: str) -> None:
        policy = self.settings.learn
        if trigger:
            self.status = f"round running ({trigger}) since {time.strftime('%H:%M:%S')}"
        elif self.last is None:
            self.status = (
                f"waiting: {new_labels:,} new labels (a round at {policy.every_labels:,}, or after "
                f"{policy.every_minutes:.0f} min with any, or on drift PSI > {policy.drift_psi})"
            )

    def _decided(self, decision: Decision) -> None:
        self.last = decision
        self.status = self.line(decision)

    @staticmethod
    def line(d: Decision) -> str:
        """``promoted (labels:5000) at 12:03:04: challenger AP 0.8800 beats … [23 s]``."""
        shadow = {"installed": f"; shadow-scoring {d.shadow_version}", "cleared": "; shadow cleared"}.get(
            d.shadow, ""
        )
        if d.shadow_error:
            shadow = f"; shadow not changed ({d.shadow_error[:80]})"
        return (
            f"{d.action} ({d.trigger}) at {time.strftime('%H:%M:%S')}: {d.reason}{shadow} [{d.seconds:.0f} s]"
        )

    def stop(self, timeout: float = 120.0) -> None:
        self.stop_event.set()
        self.join(timeout=timeout)
