"""The stream's validation: the rules of features/validation.py, shared with the HTTP API.

A record that fails goes to the dead-letter topic with the reason; the batch goes on.
"""

from __future__ import annotations

from features.validation import (
    COUNTRIES,
    CURRENCIES,
    MAX_AMOUNT,
    MAX_FUTURE_MS,
    MAX_ID_LEN,
    MIN_AMOUNT,
    MIN_EVENT_MS,
    amount_is_valid,
    validate,
)

__all__ = [
    "COUNTRIES",
    "CURRENCIES",
    "MAX_AMOUNT",
    "MAX_FUTURE_MS",
    "MAX_ID_LEN",
    "MIN_AMOUNT",
    "MIN_EVENT_MS",
    "amount_is_valid",
    "validate",
]
