"""Explanations: per-model feature attributions, the top factors in plain words, and a
rationale text from an OpenAI-compatible LLM when one is configured, else from a template.

Attributions per family (one row of features in, one value per feature out, higher = pushes
towards fraud):

- ``xgb``: XGBoost ``pred_contribs`` (exact TreeSHAP values, log-odds; the bias is left out).
- ``ae``: the autoencoder's squared reconstruction error per feature (standardised units).
- ``if``: path-based isolation credit: in every tree, each split on the row's path credits its
  feature with ``log(n_parent / n_child)``, the share of the node's training sample it cut away
  from the row; averaged over trees (a DIFFI-like local score, cheap enough for one request).

The LLM only rewrites the factors we computed: the prompt carries them and nothing else, the call
has a timeout, and any failure (down, slow, malformed reply) falls back to the deterministic
template; the response says which one was used (``rationale_source``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import httpx
import numpy as np

from features.catalogue import FEATURES

log = logging.getLogger(__name__)

DESCRIPTIONS: dict[str, str] = {f.name: f.description for f in FEATURES}
TOP_K = 5

RationaleSource = Literal["llm", "template"]


def _shares(values: np.ndarray) -> np.ndarray:
    """Positive parts as shares summing to 1 (all zero when nothing is positive)."""
    pos = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, None)
    total = pos.sum()
    return pos / total if total > 0 else pos


@dataclass(frozen=True)
class Factor:
    feature: str
    value: float
    weight: float  # share of the combined attribution, 0-1
    text: str


def describe_factor(feature: str, value: float) -> str:
    """One factor in plain words: what the feature measures and the row's value."""
    what = DESCRIPTIONS.get(feature, feature.replace("_", " "))
    if feature.startswith(("user_new_", "is_")) and value in (0.0, 1.0):
        return f"{what}: {'yes' if value == 1.0 else 'no'}"
    return f"{what}: {value:.4g}"


def top_factors(
    attributions: Mapping[str, np.ndarray], feature_names: list[str], row: np.ndarray, k: int = TOP_K
) -> list[Factor]:
    """The ``k`` features with the largest mean share of each model's positive attribution."""
    if not attributions:
        return []
    combined = np.mean([_shares(a) for a in attributions.values()], axis=0)
    order = [int(i) for i in np.argsort(-combined, kind="stable")[:k] if combined[i] > 0]
    return [
        Factor(
            feature_names[i],
            float(row[i]),
            float(combined[i]),
            describe_factor(feature_names[i], float(row[i])),
        )
        for i in order
    ]


def template_rationale(score: float, threshold: float, is_fraud: bool, factors: list[Factor]) -> str:
    """The deterministic rationale: same inputs, same text."""
    verdict = "flagged as likely fraud" if is_fraud else "not flagged"
    head = f"Risk score {score:.3f} against a threshold of {threshold:.3f}: {verdict}."
    if not factors:
        return head + " No feature stands out."
    parts = "; ".join(f"{f.text} ({f.weight:.0%} of the attribution)" for f in factors)
    return f"{head} Main factors: {parts}."


def llm_messages(
    score: float, threshold: float, is_fraud: bool, factors: list[Factor]
) -> list[dict[str, str]]:
    """A prompt grounded in the computed factors only (no raw record, no identifiers)."""
    lines = "\n".join(f"- {f.text} (weight {f.weight:.2f})" for f in factors) or "- none"
    return [
        {
            "role": "system",
            "content": "You explain fraud-scoring decisions to bank analysts. Use only the facts "
            "given. Two or three plain sentences, no speculation, no advice.",
        },
        {
            "role": "user",
            "content": f"Risk score {score:.3f}, threshold {threshold:.3f}, decision: "
            f"{'fraud' if is_fraud else 'not fraud'}.\nTop factors:\n{lines}\nExplain the decision.",
        },
    ]


@dataclass(frozen=True)
class LlmConfig:
    base_url: str = ""
    model: str = ""
    api_key: str = ""
    timeout_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)


async def llm_rationale(
    config: LlmConfig, messages: list[dict[str, str]], client: httpx.AsyncClient | None = None
) -> str | None:
    """The LLM's text, or None when it is not configured, down, slow or answers nonsense."""
    if not config.enabled:
        return None
    url = config.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    body = {"model": config.model, "messages": messages, "temperature": 0.0, "max_tokens": 200}
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=config.timeout_s) as own:
                r = await own.post(url, json=body, headers=headers)
        else:
            r = await client.post(url, json=body, headers=headers, timeout=config.timeout_s)
        r.raise_for_status()
        text = r.json()["choices"][0]["message"]["content"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        log.warning("LLM rationale unavailable, using the template: %s", type(exc).__name__)
        return None
    if not isinstance(text, str) or not text.strip():
        return None
    return text.strip()[:2000]


async def rationale(
    config: LlmConfig,
    *,
    score: float,
    threshold: float,
    is_fraud: bool,
    factors: list[Factor],
    client: httpx.AsyncClient | None = None,
) -> tuple[str, RationaleSource]:
    text = await llm_rationale(config, llm_messages(score, threshold, is_fraud, factors), client)
    if text is not None:
        return text, "llm"
    return template_rationale(score, threshold, is_fraud, factors), "template"
