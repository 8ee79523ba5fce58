"""Explanations without Serve: attributions point at the feature that makes a row unusual,
factors are ranked and worded from the catalogue, the template is deterministic, and the LLM
client falls back on every kind of failure (no server needed: unroutable or unconfigured)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from features.catalogue import FEATURE_NAMES
from serve_deployments import explain as xp
from training.isolation_forest import isolation_credit

NAMES = list(FEATURE_NAMES)


def test_isolation_credit_points_at_the_unusual_feature() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 6)).astype(np.float32)
    forest = IsolationForest(n_estimators=100, random_state=0).fit(X)
    row = np.zeros(6, dtype=np.float32)
    row[4] = 12.0  # far outside the training range on feature 4 only
    credit = isolation_credit(forest, row)
    assert credit.shape == (6,) and int(np.argmax(credit)) == 4
    assert credit[4] > 2 * np.delete(credit, 4).max()


def test_top_factors_rank_by_mean_share_and_use_plain_words() -> None:
    row = np.zeros(len(NAMES), dtype=np.float32)
    i, j = NAMES.index("log_amount"), NAMES.index("user_new_device")
    row[i], row[j] = 8.2, 1.0
    a = np.zeros(len(NAMES))
    a[i], a[j] = 3.0, 1.0
    b = np.zeros(len(NAMES))
    b[i], b[j] = 1.0, 1.0
    b[NAMES.index("hour_of_day")] = -5.0  # negative attributions never count as reasons for fraud
    factors = xp.top_factors({"xgb": a, "ae": b}, NAMES, row, k=3)
    assert [f.feature for f in factors] == ["log_amount", "user_new_device"]
    assert factors[0].weight == pytest.approx((0.75 + 0.5) / 2)
    assert factors[0].text == "log(1 + amount): 8.2"
    assert factors[1].text.endswith(": yes")
    assert xp.top_factors({}, NAMES, row) == []


def test_template_is_deterministic_and_names_the_factors() -> None:
    factors = [xp.Factor("log_amount", 8.2, 0.6, "log(1 + amount): 8.2")]
    one = xp.template_rationale(0.93, 0.7, True, factors)
    assert one == xp.template_rationale(0.93, 0.7, True, factors)
    assert "flagged as likely fraud" in one and "log(1 + amount): 8.2 (60% of the attribution)" in one
    assert "No feature stands out" in xp.template_rationale(0.1, 0.7, False, [])


def test_prompt_is_grounded_in_the_factors() -> None:
    factors = [xp.Factor("log_amount", 8.2, 0.6, "log(1 + amount): 8.2")]
    messages = xp.llm_messages(0.93, 0.7, True, factors)
    assert messages[0]["role"] == "system" and "only the facts" in messages[0]["content"]
    assert "log(1 + amount): 8.2" in messages[1]["content"] and "0.930" in messages[1]["content"]


@pytest.mark.parametrize(
    "config",
    [
        xp.LlmConfig(),  # not configured
        xp.LlmConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout_s=0.5),  # nothing listens
        xp.LlmConfig(base_url="http://10.255.255.1/v1", model="m", timeout_s=0.3),  # unroutable: timeout
    ],
)
def test_rationale_falls_back_to_the_template(config: xp.LlmConfig) -> None:
    factors = [xp.Factor("log_amount", 8.2, 0.6, "log(1 + amount): 8.2")]
    text, source = asyncio.run(xp.rationale(config, score=0.9, threshold=0.7, is_fraud=True, factors=factors))
    assert source == "template" and text == xp.template_rationale(0.9, 0.7, True, factors)
