"""The model-family registry: ``core.families`` names each family and its implementation
("module:Class"); this module resolves that to the class. Adding a family is one module in
training/ implementing ``training.base.FraudModel`` plus one row in ``core.families``."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

from core.families import BY_KEY, MEMBER_KEYS
from training.base import FraudModel


@functools.cache
def model_class(family: str) -> type[Any]:
    """The FraudModel class of ``family`` (a key of ``core.families.BY_KEY``)."""
    try:
        module, name = BY_KEY[family].implementation.split(":")
    except KeyError:
        raise ValueError(f"unknown model family {family!r} (known: {', '.join(MEMBER_KEYS)})") from None
    cls: type[Any] = getattr(importlib.import_module(module), name)
    return cls


def build(family: str, feature_names: list[str], params: dict[str, Any] | None = None) -> FraudModel:
    model: FraudModel = model_class(family)(feature_names, **(params or {}))
    return model


def load(family: str, path: Path) -> Any:
    return model_class(family).load(path)
