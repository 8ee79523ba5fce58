"""First start: make sure the registry has a production version of every family before Serve
and the consumers start, training quick models on a simulated world when it does not."""

from __future__ import annotations

from core.settings import Settings
from ingest.simulator.frames import simulated_frame
from training import quick
from training.registry import ModelVersion


def ensure_models(settings: Settings) -> dict[str, ModelVersion]:
    """The production versions, trained first on a simulated world where any is missing."""
    return quick.ensure_models(settings, simulated_frame)


def train_quick_models(settings: Settings, seed: int = 7, promote: bool = True) -> dict[str, ModelVersion]:
    """Train and register the quick models of the simulated world ``seed``."""
    return quick.train_quick_models(settings, simulated_frame(seed=seed), promote=promote)
