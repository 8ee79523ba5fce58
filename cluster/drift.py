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


def psi_alert(settings: Settings) -> bool:
    """Whether any feature's live PSI (``fraudray_feature_drift_psi``, exported by the consumer
    actors) is above ``settings.learn.drift_psi`` in Prometheus; False when Prometheus cannot
    say (the learning loop then runs on its schedule only)."""
    import json
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"query": "max(fraudray_feature_drift_psi)"})
    url = f"http://127.0.0.1:{settings.prometheus.port}/api/v1/query?{query}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            result = json.load(resp)["data"]["result"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(result) and float(result[0]["value"][1]) > settings.learn.drift_psi
