"""The drift reference the consumer actors compare live features with: the training-window
sample of the production models (all families of one training run share the window)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.errors import ModelNotReady
from core.families import MEMBER_KEYS
from core.settings import Settings
from training.registry import Registry


def production_reference(settings: Settings) -> Mapping[str, np.ndarray] | None:
    """Per feature, a sample of the production version's training window (first family that
    has one), or None when no production model carries a reference."""
    registry = Registry(settings)
    for family in MEMBER_KEYS:
        try:
            return registry.drift_reference(family)
        except (ModelNotReady, AttributeError, KeyError, TypeError, ValueError):
            continue  # none, or stored by an older format
    return None
