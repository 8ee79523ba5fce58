"""The simulator: reproducible to the byte, every scenario at its configured share with its
signature, genuine users that behave (home, known devices, no teleporting, daily rhythm),
and valid records only."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.validation import validate
from ingest.serde import TransactionSerde
from ingest.simulator import SimConfig, Simulator, demo_transactions, parse_mix, retag, world, write_parquet
from ingest.simulator.batch import SCENARIO_CODE, SCENARIOS, Columns
from ingest.simulator.population import build_population
from ingest.simulator.scenarios import SCENARIO_TYPES, Context

START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
SCHEMA_FIELDS = [f["name"] for f in TransactionSerde().schema["fields"]]


def _frame(sim: Simulator, n: int) -> pd.DataFrame:
    parts, total = [], 0
    for batch in sim.batches():
        parts.append(batch.cols)
        total += len(batch)
        if total >= n:
            break
    c = Columns.concat(parts)
    frame = pd.DataFrame({k: getattr(c, k) for k in Columns.__dataclass_fields__})
    frame["usd"] = frame["amount"] / world.CURRENCY_FX[frame["currency"]]
    return frame


@pytest.fixture(scope="module")
def busy() -> tuple[Simulator, pd.DataFrame]:
    """~2.8 days of 20k users at 10 tx/day with 5 % fraud: enough incidents to measure shares."""
    sim = Simulator(SimConfig(seed=11, users=20_000, tx_per_user_day=10, fraud_rate=0.05, start=START))
    return sim, _frame(sim, 550_000)


# -- reproducibility ---------------------------------------------------------------------------


def _encoded(seed: int, n: int = 20_000) -> list[bytes]:
    serde = TransactionSerde()
    sim = Simulator(SimConfig(seed=seed, users=5_000, start=START))
    return [serde.encode(r) for r in itertools.islice(sim.records(), n)]


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    first, again, other = _encoded(7), _encoded(7), _encoded(8)
    assert first == again
    assert sum(a != b for a, b in zip(first, other, strict=True)) > 0.99 * len(first)


def test_labels_are_reproducible_too() -> None:
    def labels(seed: int) -> list[tuple[Any, ...]]:
        sim = Simulator(SimConfig(seed=seed, users=5_000, start=START, fraud_rate=0.05))
        batch = next(sim.chunks())
        due, fraud, scenario = batch.labels()
        return list(zip(due.tolist(), fraud.tolist(), scenario, strict=True))

    assert labels(3) == labels(3)
    assert labels(3) != labels(4)


def test_population_of_100k_builds_fast_and_is_consistent() -> None:
    t0 = time.perf_counter()
    pop = build_population(1, users=100_000, merchants=10_000)
    seconds = time.perf_counter() - t0
    print(f"population of 100k users / 10k merchants: {seconds:.2f} s")
    assert seconds < 3.0
    assert pop.n_users == 100_000 and pop.n_merchants == 10_000
    assert np.all(pop.m_city[pop.regular] == pop.home_city[:, None])  # usual shops are in the home city
    assert not pop.m_online[pop.regular].any()
    assert set(np.unique(pop.n_devices)) <= {1, 2, 3}
    assert abs(pop.activity.mean() - 1.0) < 1e-9
    assert len(np.unique(pop.home_country)) == len(world.COUNTRIES)


# -- records -------------------------------------------------------------------------------------


def test_records_have_exactly_the_schema_fields_and_are_valid() -> None:
    sim = Simulator(SimConfig(seed=5, users=5_000, start=START, fraud_rate=0.05))
    records = list(itertools.islice(sim.records(), 30_000))
    now_ms = int((START + timedelta(days=30)).timestamp() * 1000)
    assert all(list(r) == SCHEMA_FIELDS for r in records)  # no label inside a transaction
    assert [validate(r, now_ms) for r in records if validate(r, now_ms)] == []
    times = [r["event_time"] for r in records]
    assert times == sorted(times) and times[0] >= START
    assert len({r["transaction_id"] for r in records}) == len(records)


def test_demo_transactions_keeps_its_contract() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = list(demo_transactions(3000, seed=9, users=200, start=start))
    assert len(records) == 3000
    assert records == list(demo_transactions(3000, seed=9, users=200, start=start))
    assert records[0]["event_time"].tzinfo is not None
    span = records[-1]["event_time"] - start
    assert timedelta(seconds=60) < span < timedelta(seconds=400)  # ~20 tx/s of event time
    assert len({r["user_id"] for r in records}) > 150


def test_a_tag_gives_a_stream_users_and_merchants_of_its_own() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    plain = list(demo_transactions(500, seed=9, users=200, start=start))
    tagged = list(demo_transactions(500, seed=9, users=200, start=start, tag="t1"))
    for p, t in zip(plain, tagged, strict=True):
        assert t == p | {"user_id": f"t1-{p['user_id']}", "merchant_id": f"t1-{p['merchant_id']}"}
    ids = list(retag(plain, "run7", ("transaction_id",)))
    assert [r["transaction_id"] for r in ids] == [f"run7-{p['transaction_id']}" for p in plain]
    assert plain[0]["user_id"] == tagged[0]["user_id"][3:]  # the inputs are left alone


@pytest.mark.parametrize("users", [1, 10, 50])
def test_tiny_demo_worlds_run_on_the_1_s_floor(users: int) -> None:
    # So busy that every scenario duration shrinks onto the clock's 1 s floor.
    records = list(demo_transactions(500, seed=3, users=users))
    assert len(records) == 500 and len({r["transaction_id"] for r in records}) == 500


def test_parse_mix() -> None:
    mix = parse_mix("card_testing=3, bust_out=1")
    assert mix["card_testing"] == 0.75 and mix["bust_out"] == 0.25 and mix["account_takeover"] == 0
    for bad in ("nope=1", "card_testing", "card_testing=-1", "card_testing=0"):
        with pytest.raises(ValueError, match=r"fraud mix|unknown|weight"):
            parse_mix(bad)


# -- fraud shares --------------------------------------------------------------------------------


def test_every_scenario_appears_at_its_configured_share(busy: tuple[Simulator, pd.DataFrame]) -> None:
    sim, frame = busy
    shares = frame["scenario"].value_counts(normalize=True)
    for name in SCENARIOS:
        expected = sim.config.fraud_rate * sim.config.fraud_mix[name]
        got = shares.get(SCENARIO_CODE[name], 0.0)
        print(f"{name:22s} expected {expected:.4f} got {got:.4f} ({got / expected:.2f}×)")
        assert 0.8 * expected <= got <= 1.2 * expected, name


def test_default_fraud_rate_and_a_custom_mix() -> None:
    default = _frame(Simulator(SimConfig(seed=2, users=50_000, start=START)), 300_000)
    rate = (default["scenario"] > 0).mean()
    assert 0.0075 * 0.8 <= rate <= 0.0075 * 1.2
    only = Simulator(SimConfig(seed=2, users=20_000, tx_per_user_day=10, fraud_rate=0.02,
                               fraud_mix={"card_testing": 1.0}, start=START))  # fmt: skip
    frame = _frame(only, 200_000)
    assert set(frame["scenario"].unique()) == {0, SCENARIO_CODE["card_testing"]}
    assert 0.016 <= (frame["scenario"] > 0).mean() <= 0.024


def test_busy_worlds_run_on_a_compressed_clock() -> None:
    """Users 200× busier than real people: incidents unfold 200× faster, start-up stays quick."""
    config = SimConfig(seed=6, users=20_000, tx_per_user_day=2000, fraud_rate=0.05, start=START)
    assert config.time_scale == pytest.approx(0.005)
    t0 = time.perf_counter()
    frame = _frame(Simulator(config), 300_000)
    assert time.perf_counter() - t0 < 15
    assert 0.04 <= (frame["scenario"] > 0).mean() <= 0.06
    ct = frame[frame["scenario"] == SCENARIO_CODE["card_testing"]].groupby("user")["t"]
    assert ((ct.max() - ct.min()) <= 15 * 60_000 * 0.005).mean() > 0.95  # 15 min → 4.5 s


# -- signatures in the stream --------------------------------------------------------------------


def test_card_testing_bursts_are_many_tiny_amounts_within_minutes(
    busy: tuple[Simulator, pd.DataFrame],
) -> None:
    frame = busy[1]
    ct = frame[frame["scenario"] == SCENARIO_CODE["card_testing"]]
    assert (ct["usd"] <= 4.01).all() and (ct["channel"] == world.ONLINE).all()
    bursts = ct.groupby("user").agg(n=("t", "size"), span=("t", lambda t: t.max() - t.min()),
                                    merchants=("merchant", "nunique"))  # fmt: skip
    full = bursts[bursts["n"] >= 10]
    assert len(full) > 50
    assert (full["span"] <= 15 * 60_000).mean() > 0.95  # minutes, not hours
    assert (full["merchants"] >= 0.8 * full["n"]).mean() > 0.95  # at many merchants
    # genuine users never make ten tiny payments within 15 minutes
    tiny = frame[(frame["scenario"] == 0) & (frame["usd"] < 4)].sort_values(["user", "t"])
    u, t = tiny["user"].to_numpy(), tiny["t"].to_numpy()
    assert not ((u[9:] == u[:-9]) & (t[9:] - t[:-9] <= 15 * 60_000)).any()


def test_account_takeover_is_a_new_device_abroad_with_high_amounts(
    busy: tuple[Simulator, pd.DataFrame],
) -> None:
    sim, frame = busy
    pop = sim.population
    ato = frame[frame["scenario"] == SCENARIO_CODE["account_takeover"]]
    users = ato["user"].to_numpy()
    assert (ato["country"].to_numpy() != pop.home_country[users]).all()
    known = np.zeros(len(ato), bool)
    for k in range(3):
        known |= (ato["device"].to_numpy() == pop.device_code(users, k)) & (k < pop.n_devices[users])
    assert not known.any()
    assert (ato["usd"].to_numpy() >= 4.9 * np.exp(pop.mu[users])).all()
    assert (ato["channel"] == world.ONLINE).all()


def test_compromised_merchant_hits_many_users_over_days(busy: tuple[Simulator, pd.DataFrame]) -> None:
    frame = busy[1]
    cm = frame[frame["scenario"] == SCENARIO_CODE["compromised_merchant"]]
    per_merchant = cm.groupby("merchant").agg(n=("t", "size"), users=("user", "nunique"),
                                              span=("t", lambda t: t.max() - t.min()))  # fmt: skip
    big = per_merchant[per_merchant["n"] >= 20]
    assert len(big) >= 5
    assert (big["users"] / big["n"]).median() >= 0.8  # mostly different cards
    assert (big["users"] >= 0.5 * big["n"]).all()
    assert (big["span"] >= 12 * 3_600_000).mean() > 0.8
    assert big["span"].max() >= 2 * 86_400_000


def test_impossible_travel_has_a_genuine_payment_far_away_just_before(
    busy: tuple[Simulator, pd.DataFrame],
) -> None:
    frame = busy[1]
    it = frame[frame["scenario"] == SCENARIO_CODE["impossible_travel"]]
    home = frame[(frame["scenario"] == 0) & (frame["channel"] == world.CARD_PRESENT)]
    pairs = it.merge(home, on="user", suffixes=("", "_home"))
    pairs = pairs[(pairs["t"] > pairs["t_home"]) & (pairs["t"] - pairs["t_home"] <= 3 * 3_600_000)]
    km = world.haversine_km(pairs["lat"], pairs["lon"], pairs["lat_home"], pairs["lon_home"])
    hours = (pairs["t"] - pairs["t_home"]) / 3_600_000
    pairs = pairs.assign(speed=km / hours)
    fastest = pairs.groupby(["user", "t"])["speed"].max()
    assert len(fastest) >= 0.95 * len(it)  # the anchor is there (bar incidents cut at the start)
    assert (fastest > 1000).mean() > 0.98


def test_bust_out_builds_slowly_then_spends_big() -> None:
    pop = build_population(4, users=5_000)
    ctx = Context(pop, 4)
    bust = next(t for t in SCENARIO_TYPES if t.name == "bust_out")()
    rng = np.random.default_rng(0)
    starts = np.full(100, int(START.timestamp() * 1000))
    cols = bust.generate(rng, ctx, starts, bust.sizes(rng, 100))
    frame = pd.DataFrame({"t": cols.t, "user": cols.user,
                          "usd": cols.amount / world.CURRENCY_FX[cols.currency]})  # fmt: skip
    assert (frame["user"] >= pop.n_users).all()  # fresh synthetic accounts
    for _, acc in frame.sort_values("t").groupby("user"):
        build, spree = acc[acc["usd"] < 100], acc[acc["usd"] >= 100]
        assert len(build) >= 4 and len(spree) >= 6
        assert build["t"].max() < spree["t"].min()  # slow build, then the bust
        assert build["t"].max() - build["t"].min() >= 2 * 86_400_000
        assert spree["t"].max() - spree["t"].min() <= 36 * 3_600_000
        assert spree["usd"].median() > 10 * build["usd"].median()


# -- genuine behaviour --------------------------------------------------------------------------


def test_genuine_users_stay_home_on_known_devices_and_never_teleport(
    busy: tuple[Simulator, pd.DataFrame],
) -> None:
    sim, frame = busy
    pop = sim.population
    g = frame[frame["scenario"] == 0]
    users = g["user"].to_numpy()
    assert (g["country"].to_numpy() == pop.home_country[users]).mean() > 0.95
    online = g[g["channel"] == world.ONLINE]
    u = online["user"].to_numpy()
    known = np.zeros(len(online), bool)
    for k in range(3):
        known |= (online["device"].to_numpy() == pop.device_code(u, k)) & (k < pop.n_devices[u])
    assert known.mean() > 0.99
    g = g.sort_values(["user", "t"])
    same = g["user"].to_numpy()[1:] == g["user"].to_numpy()[:-1]
    km = world.haversine_km(g["lat"].to_numpy()[:-1], g["lon"].to_numpy()[:-1],
                            g["lat"].to_numpy()[1:], g["lon"].to_numpy()[1:])  # fmt: skip
    hours = np.maximum(np.diff(g["t"].to_numpy()) / 3_600_000, 1 / 60)
    assert ((km / hours > 1000) & (km > 500) & same).sum() <= 1e-4 * same.sum()


def test_genuine_traffic_follows_the_local_day(busy: tuple[Simulator, pd.DataFrame]) -> None:
    sim, frame = busy
    g = frame[frame["scenario"] == 0]
    local = (g["t"] // 3_600_000 + sim.population.tz[g["user"].to_numpy()]) % 24
    by_hour = np.bincount(local, minlength=24)
    assert by_hour[3:5].mean() < 0.3 * by_hour[11:14].mean()


def test_amounts_are_log_normal_around_each_users_profile(busy: tuple[Simulator, pd.DataFrame]) -> None:
    sim, frame = busy
    pop = sim.population
    g = frame[(frame["scenario"] == 0)]
    log_ratio = np.log(g["usd"].to_numpy()) - pop.mu[g["user"].to_numpy()]
    assert abs(np.median(log_ratio)) < 0.3  # centred on the user's typical amount
    heavy = np.argsort(pop.mu)[-2000:]
    light = np.argsort(pop.mu)[:2000]
    assert g[g["user"].isin(heavy)]["usd"].median() > 3 * g[g["user"].isin(light)]["usd"].median()


# -- Parquet -------------------------------------------------------------------------------------


def test_to_parquet_writes_the_same_records_with_labels(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "sim.parquet"
    config = SimConfig(seed=21, users=5_000, fraud_rate=0.05, start=START)
    mix = write_parquet(Simulator(config), path, 12_345)
    table = pq.read_table(path)
    assert table.num_rows == 12_345 == sum(mix.values())
    assert table.column_names == [*SCHEMA_FIELDS, "is_fraud", "scenario"]
    rows = table.to_pylist()
    records = list(itertools.islice(Simulator(config).records(), 12_345))
    for row, record in zip(rows, records, strict=True):
        assert {k: row[k] for k in SCHEMA_FIELDS} == record
        assert row["is_fraud"] == (row["scenario"] is not None)
    assert mix["genuine"] == sum(not r["is_fraud"] for r in rows)
