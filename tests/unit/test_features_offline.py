"""The catalogue, the shared kernel and the offline engine on hand-made histories (no services)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from features import catalogue as cat
from features.catalogue import FEATURE_NAMES, FEATURES
from features.kernel import KERNELS, RAW_KEYS, TxBatch, assemble, empty_raw, haversine_km, to_ms
from features.offline import frame_from_records

T0 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)  # a Wednesday


def tx(i: int, minutes: float, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "transaction_id": f"t{i:04d}", "user_id": "u1", "merchant_id": "m1", "amount": 10.0,
        "currency": "EUR", "event_time": T0 + timedelta(minutes=minutes), "country": "FR",
        "device_id": "d1", "channel": "card_present", "merchant_category": "grocery",
        "lat": None, "lon": None, "ip": None,
    }  # fmt: skip
    rec.update(kw)
    return rec


def col(frame: Any, name: str) -> list[float]:
    return [float(v) for v in frame[name]]


def test_catalogue_is_consistent() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == len(FEATURES)
    assert {f.aggregation for f in FEATURES} <= set(KERNELS)
    for f in FEATURES:
        assert f.description and f.entity in {"transaction", "user", "merchant"}
    assert cat.USER_WINDOWS == (60, 3600, 86_400, 604_800, 2_592_000)
    assert cat.USER_SCAN_S == 30 * 86_400  # the user's retained events cover the 30-day windows
    assert cat.MERCHANT_WINDOWS == (3600, 86_400)
    assert cat.MERCHANT_DAY_WINDOWS == (604_800, 2_592_000)
    assert cat.RISK_WINDOWS == (604_800, 2_592_000)
    assert len(RAW_KEYS) == len(set(RAW_KEYS))


def test_to_ms_is_exact() -> None:
    t = datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)
    assert to_ms(t) == 1767225600123
    with pytest.raises(ValueError, match="timezone"):
        to_ms(datetime(2026, 1, 1))


def test_stateless_row_of_a_new_user() -> None:
    batch = TxBatch.from_records([tx(1, 0, amount=99.0, channel="online", merchant_category="jewelry")])
    row = dict(zip(FEATURE_NAMES, assemble(batch, empty_raw(batch))[0], strict=True))
    assert row["log_amount"] == pytest.approx(np.log1p(99.0))
    assert row["user_tx_count_1h"] == 0 and row["user_amount_sum_7d"] == 0
    assert row["user_tx_count_30d"] == 0 and row["user_amount_mean_7d"] == row["user_amount_mean_30d"] == 0
    assert row["merchant_tx_count_7d"] == row["merchant_tx_count_30d"] == 0
    assert row["merchant_amount_mean_7d"] == row["merchant_amount_mean_30d"] == 0
    assert row["user_seconds_since_last"] == 7 * 86_400
    assert row["user_amount_zscore"] == 0 and row["user_amount_ratio"] == 1
    assert row["user_new_device"] == row["user_new_country"] == row["user_new_merchant"] == 1
    assert row["user_distinct_countries_24h"] == 1
    assert row["merchant_fraud_risk_7d"] == pytest.approx(0.01)
    assert row["hour_of_day"] == 10 and row["is_weekend"] == 0 and row["is_night"] == 0
    assert row["channel_code"] == 2 and row["is_card_not_present"] == 1
    assert row["merchant_category_code"] == cat.CATEGORIES["jewelry"] and row["is_high_risk_category"] == 1


def test_haversine_paris_london() -> None:
    km = haversine_km(np.array([48.8566]), np.array([2.3522]), np.array([51.5074]), np.array([-0.1278]))
    assert km[0] == pytest.approx(343.5, abs=1.0)


def test_velocity_windows_and_previous_transaction() -> None:
    recs = [tx(1, 0, amount=5.0), tx(2, 0.5, amount=7.0), tx(3, 30, amount=11.0), tx(4, 30.5, amount=13.0)]
    f = frame_from_records(recs)
    assert col(f, "user_tx_count_1m") == [0, 1, 0, 1]
    assert col(f, "user_tx_count_1h") == [0, 1, 2, 3]
    assert col(f, "user_amount_sum_1h") == [0, 5, 12, 23]
    assert col(f, "user_seconds_since_last") == [7 * 86_400, 30, 1770, 30]
    assert col(f, "user_tx_count_lifetime") == [0, 1, 2, 3]
    # a window's lower bound is inclusive: exactly 1 min before still counts
    g = frame_from_records([tx(1, 0), tx(2, 1)])
    assert col(g, "user_tx_count_1m") == [0, 1]


def test_same_instant_transactions_do_not_see_each_other_in_windows() -> None:
    f = frame_from_records([tx(1, 0), tx(2, 0), tx(3, 1)])
    assert col(f, "user_tx_count_1h") == [0, 0, 2]
    # ...but the running amount statistics follow (event time, transaction id) order
    assert col(f, "user_tx_count_lifetime") == [0, 1, 2]


def test_zscore_and_ratio_follow_welford_state() -> None:
    amounts = [10.0, 12.0, 8.0, 11.0, 60.0]
    f = frame_from_records([tx(i, i, amount=a) for i, a in enumerate(amounts)])
    prev = np.array(amounts[:4])
    z = (60.0 - prev.mean()) / prev.std(ddof=1)
    assert col(f, "user_amount_zscore")[4] == pytest.approx(z, rel=1e-5)
    assert col(f, "user_amount_ratio")[4] == pytest.approx(60.0 / prev.mean(), rel=1e-6)
    assert col(f, "user_amount_zscore")[:2] == [0.0, 0.0]  # fewer than 2 earlier amounts


def test_constant_spender_gets_a_finite_zscore() -> None:
    f = frame_from_records([tx(i, i, amount=9.99) for i in range(5)] + [tx(9, 9, amount=19.99)])
    assert col(f, "user_amount_zscore")[-1] == cat.ZSCORE_CLIP
    assert col(f, "user_amount_zscore")[:-1] == [0.0] * 5


def test_novelty_within_the_horizon() -> None:
    recs = [
        tx(1, 0),
        tx(2, 1, device_id="d2", country="DE", merchant_id="m2"),
        tx(3, 2),
        tx(4, 91 * 24 * 60),  # device, country and merchant last seen 91 days ago
        tx(5, 91 * 24 * 60 + 1, device_id=None),
    ]
    f = frame_from_records(recs)
    assert col(f, "user_new_device") == [1, 1, 0, 1, 0]  # no device: not "new"
    assert col(f, "user_new_country") == [1, 1, 0, 1, 0]
    assert col(f, "user_new_merchant") == [1, 1, 0, 1, 0]
    assert col(f, "user_distinct_countries_24h") == [1, 2, 2, 1, 1]


def test_impossible_travel() -> None:
    paris, ny = {"lat": 48.8566, "lon": 2.3522}, {"lat": 40.7128, "lon": -74.0060}
    recs = [tx(1, 0, **paris), tx(2, 10, lat=None, lon=None), tx(3, 60, **ny), tx(4, 60.5, **ny)]
    f = frame_from_records(recs)
    dist = col(f, "user_geo_distance_km")
    speed = col(f, "user_geo_speed_kmh")
    assert dist[0] == 0 and dist[1] == 0  # first one, and one without a location
    assert dist[2] == pytest.approx(5837, abs=5)  # from Paris, skipping the unlocated one
    assert speed[2] == pytest.approx(5837, abs=5)  # in one hour
    assert dist[3] == pytest.approx(0, abs=1e-3) and speed[3] == pytest.approx(0, abs=1e-2)
    far = frame_from_records([tx(1, 0, **paris), tx(2, 0.1, **ny)])
    assert col(far, "user_geo_speed_kmh")[1] == cat.SPEED_CAP_KMH


def test_merchant_counts_span_users() -> None:
    recs = [tx(1, 0), tx(2, 10, user_id="u2"), tx(3, 30, user_id="u3"), tx(4, 90, user_id="u4")]
    f = frame_from_records(recs)
    assert col(f, "merchant_tx_count_1h") == [0, 1, 2, 1]  # [30 min, 90 min) holds one
    assert col(f, "merchant_tx_count_24h") == [0, 1, 2, 3]


def test_user_30_day_count_and_window_means() -> None:
    day = 24 * 60
    at = [(0, 10.0), (1 * day, 20.0), (9 * day, 60.0), (9 * day + 1, 1.0), (29 * day, 5.0), (39 * day, 7.0)]
    recs = [tx(i, minutes, amount=amount) for i, (minutes, amount) in enumerate(at)]
    f = frame_from_records(recs)
    assert col(f, "user_tx_count_7d") == [0, 1, 0, 1, 0, 0]
    # exactly 30 days before still counts (the lower bound is inclusive): day 39 sees days 9-29
    assert col(f, "user_tx_count_30d") == [0, 1, 2, 3, 4, 3]
    assert col(f, "user_amount_mean_7d") == [0, 10, 0, 60, 0, 0]  # 0 for an empty window
    assert col(f, "user_amount_mean_30d") == pytest.approx([0, 10, 15, 30, 91 / 4, 22], rel=1e-6)
    # the mean is the window's sum over its count, as the kernel's other windows are
    for w in ("7d",):
        mean, total, n = (np.array(col(f, c)) for c in (f"user_amount_mean_{w}", f"user_amount_sum_{w}",
                                                        f"user_tx_count_{w}"))  # fmt: skip
        np.testing.assert_allclose(mean * n, total, rtol=1e-6)


def test_merchant_day_windows_are_whole_utc_days_before_the_events_day() -> None:
    midnight = datetime(2026, 3, 10, tzinfo=UTC)  # a Tuesday

    def at(i: int, when: datetime, amount: float) -> dict[str, Any]:
        return tx(i, (when - T0).total_seconds() / 60, user_id=f"u{i}", amount=amount)

    minute = timedelta(minutes=1)
    recs = [
        at(1, midnight - 8 * timedelta(days=1), 100.0),  # day d - 8
        at(2, midnight - 7 * timedelta(days=1), 7.0),  # day d - 7
        at(3, midnight - minute, 0.1),  # 23:59 the day before d
        at(4, midnight + minute, 0.2),  # 00:01 of day d
        at(5, midnight + timedelta(hours=23, minutes=59), 9.0),  # 23:59 of day d
        at(6, midnight + timedelta(days=1), 1.0),  # 00:00 of d + 1
    ]
    f = frame_from_records(recs)
    # 00:01 sees the 23:59 of the day before (2 minutes earlier) and day d - 7, not day d - 8;
    # 23:59 of day d does not see 00:01 of its own day; midnight after it sees all of day d
    assert col(f, "merchant_tx_count_7d") == [0, 1, 2, 2, 2, 3]
    assert col(f, "merchant_tx_count_30d") == [0, 1, 2, 3, 3, 5]
    assert col(f, "merchant_amount_mean_7d") == pytest.approx([0, 100, 107 / 2, 7.1 / 2, 7.1 / 2, 9.3 / 3])
    assert col(f, "merchant_amount_mean_30d") == pytest.approx(
        [0, 100, 107 / 2, 107.1 / 3, 107.1 / 3, 116.3 / 5]
    )
    # the minute windows of the same merchant are unchanged: the 23:59 one is 2 minutes before
    assert col(f, "merchant_tx_count_1h")[3] == 1
    # sums are whole cents: 0.1 + 0.2 is 0.30, the mean of 0.1 and 0.2 exactly 0.15
    g = frame_from_records([at(1, midnight - minute, 0.1), at(2, midnight - 2 * minute, 0.2),
                            at(3, midnight + minute, 1.0)])  # fmt: skip
    assert g["merchant_amount_mean_7d"].iloc[2] == np.float32(0.15)


def test_merchant_risk_uses_only_labels_arrived_by_event_time() -> None:
    recs = [tx(1, 0), tx(2, 10, user_id="u2"), tx(3, 120, user_id="u3"), tx(4, 180, user_id="u4")]
    labels = [
        {"transaction_id": "t0001", "is_fraud": True, "scenario": "card_testing",
         "labelled_at": T0 + timedelta(minutes=120)},  # arrives exactly at t0003's instant
        {"transaction_id": "t0002", "is_fraud": False, "scenario": None,
         "labelled_at": T0 + timedelta(minutes=150)},
    ]  # fmt: skip
    f = frame_from_records(recs, labels)
    risk = col(f, "merchant_fraud_risk_7d")
    assert risk[0] == risk[1] == pytest.approx(1 / 100)  # before any label arrived
    assert risk[2] == pytest.approx(2 / 101)  # the fraud label, stamped at its instant, counts
    assert risk[3] == pytest.approx(2 / 102)  # then a genuine one
    assert list(f["is_fraud"]) == [1, 0, 0, 0]  # the target column is the eventual label
    assert list(f["scenario"]) == ["card_testing", None, None, None]


def test_labels_beyond_the_horizon_or_without_a_transaction_are_ignored() -> None:
    recs = [tx(1, 0), tx(2, (cat.LABEL_HORIZON_DAYS + 3) * 24 * 60, user_id="u2")]
    labels = [
        {
            "transaction_id": "t0001",
            "is_fraud": True,
            "labelled_at": T0 + timedelta(days=cat.LABEL_HORIZON_DAYS + 2),
        },
        {"transaction_id": "nope", "is_fraud": True, "labelled_at": T0 + timedelta(minutes=1)},
    ]
    f = frame_from_records(recs, labels)
    assert col(f, "merchant_fraud_risk_30d")[1] == pytest.approx(0.01)


def test_events_beyond_the_cap_are_forgotten() -> None:
    n = cat.USER_EVENTS_CAP + 20
    f = frame_from_records([tx(i, i / 100) for i in range(n)])
    counts = col(f, "user_tx_count_1h")
    assert counts[cat.USER_EVENTS_CAP] == cat.USER_EVENTS_CAP
    assert counts[-1] == cat.USER_EVENTS_CAP  # never more than the retained events
    assert col(f, "user_tx_count_lifetime")[-1] == n - 1  # the Welford count is not capped


def test_idle_user_starts_afresh() -> None:
    f = frame_from_records([tx(1, 0, amount=10.0), tx(2, (cat.USER_TTL_S // 60) + 10, amount=30.0)])
    assert col(f, "user_tx_count_lifetime") == [0, 0]
    assert col(f, "user_amount_ratio") == [1, 1]


def test_frame_columns_and_order() -> None:
    recs = [tx(2, 5, user_id="u2"), tx(1, 0)]
    f = frame_from_records(recs)
    assert list(f.columns[: len(FEATURE_NAMES)]) == list(FEATURE_NAMES)
    assert list(f["transaction_id"]) == ["t0002", "t0001"]  # input order
    assert {"user_id", "merchant_id", "event_time", "is_fraud", "scenario"} <= set(f.columns)
    assert f[list(FEATURE_NAMES)].dtypes.unique().tolist() == [np.float32]
    empty = frame_from_records([])
    assert len(empty) == 0 and list(empty.columns[: len(FEATURE_NAMES)]) == list(FEATURE_NAMES)


def test_duplicate_transaction_ids_count_once() -> None:
    f = frame_from_records([tx(1, 0), tx(1, 0), tx(2, 1)])
    assert len(f) == 2
    assert col(f, "user_tx_count_1h") == [0, 1]
