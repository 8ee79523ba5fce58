"""Labelled fraud scenarios, each with its own signature. A scenario turns a batch of
incidents (start times and sizes = fraudulent transactions per incident) into columns, all
at once with numpy.

- ``account_takeover``: a new device in a country the user does not live in; 2–6 online
  purchases of 5–20× the user's typical amount at resellable-goods merchants within 0.5–4 h.
- ``card_testing``: a burst of 10–40 tiny online amounts (0.5–4 USD) at as many merchants
  within 2–15 min, from a new device abroad.
- ``compromised_merchant``: one (usually risky) merchant charges 30–90 cards of people from
  its country over 2–5 days, at any hour.
- ``impossible_travel``: a genuine card-present payment at home, then 1–3 card-present
  payments (2–6× typical) more than 3,000 km away 10–120 min later.
- ``bust_out``: a new account builds a history of 4–10 small payments over 5–20 days, then
  spends 8–20 large amounts (~300–3,000 USD) within 6–36 h.

Every transaction of an incident is labelled with the scenario, except the genuine anchor of
``impossible_travel``; a bust-out account is synthetic, so its build-up is fraud too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ingest.simulator import world
from ingest.simulator.batch import SCENARIO_CODE, Columns
from ingest.simulator.population import (
    DAY_MS,
    HOUR_MS,
    MASK40,
    SALT_ATTACKER,
    SALT_DEVICE,
    SALT_IP,
    Population,
    hash64,
)

MINUTE_MS = 60_000
FAR_KM = 3000.0


@dataclass
class Context:
    """What scenarios share across calls: the population and running counters."""

    population: Population
    seed: int
    next_synthetic_user: int = -1  # bust-out accounts are numbered after the population
    incidents: dict[str, int] = field(default_factory=dict)
    # is each (user, time) on a trip abroad? Genuine anchors must not contradict the user's trips.
    abroad: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda users, _t: np.zeros(len(users), bool)
    # < 1 when users are far busier than real people: incidents unfold proportionally faster
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.next_synthetic_user < 0:
            self.next_synthetic_user = self.population.n_users

    def ms(self, duration_ms: float) -> int:
        """A scenario duration on this world's clock (at least 1 s)."""
        return max(1000, int(duration_ms * self.time_scale))

    def ms_range(self, low_ms: float, high_ms: float) -> tuple[int, int]:
        """``[low, high)`` bounds for ``rng.integers`` on this world's clock, never empty (very
        busy worlds shrink both ends onto the 1 s floor)."""
        low = self.ms(low_ms)
        return low, max(self.ms(high_ms), low + 1)

    def incident_ids(self, name: str, n: int) -> np.ndarray:
        first = self.incidents.get(name, 0)
        self.incidents[name] = first + n
        return np.arange(first, first + n, dtype=np.int64)


def _spread(
    rng: np.random.Generator, starts: np.ndarray, sizes: np.ndarray, spans: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row → incident index, and sorted event times spread over each incident's span."""
    r = np.repeat(np.arange(len(sizes)), sizes)
    offsets = rng.random(len(r)) * spans[r]
    order = np.lexsort((offsets, r))
    return r, starts[r] + offsets[order].astype(np.int64)


def _other_country(
    rng: np.random.Generator, pop: Population, avoid: np.ndarray, picker: str = "attacker_country"
) -> np.ndarray:
    """A country per row drawn from ``picker``'s weights, never the row's ``avoid`` country."""
    pick = getattr(pop, picker)
    out = pick.pick(0, rng.random(len(avoid)))
    for _ in range(20):
        same = out == avoid
        if not same.any():
            break
        out[same] = pick.pick(0, rng.random(int(same.sum())))
    same = out == avoid
    out[same] = (out[same] + 1) % len(world.COUNTRIES)
    return out.astype(np.int16)


def _ip(seed: int, country: np.ndarray, *key: np.ndarray | int) -> np.ndarray:
    low = (hash64(seed, SALT_IP, *key) & np.uint64(0xFFFFFF)).astype(np.int64)
    return np.asarray((world.COUNTRY_IP_OCTET[country] << 24) | low)


def _attacker_device(ctx: Context, code: int, incident: np.ndarray) -> np.ndarray:
    return (hash64(ctx.seed, SALT_ATTACKER, code, incident) & np.uint64(MASK40)).astype(np.int64)


def _columns(
    *,
    t: np.ndarray,
    user: np.ndarray,
    merchant: np.ndarray,
    usd: np.ndarray,
    country: np.ndarray,
    device: np.ndarray | int,
    channel: np.ndarray | int,
    lat: np.ndarray,
    lon: np.ndarray,
    ip: np.ndarray | int,
    scenario: np.ndarray | int,
    pop: Population,
) -> Columns:
    n = len(t)
    currency = world.COUNTRY_CURRENCY[pop.m_country[merchant]]
    return Columns(
        t=t.astype(np.int64),
        user=user.astype(np.int64),
        merchant=merchant.astype(np.int64),
        amount=world.to_local_amount(usd, currency),
        currency=currency.astype(np.int16),
        country=np.broadcast_to(country, n).astype(np.int16),
        device=np.broadcast_to(device, n).astype(np.int64),
        channel=np.broadcast_to(channel, n).astype(np.int8),
        lat=np.broadcast_to(lat, n).astype(np.float64),
        lon=np.broadcast_to(lon, n).astype(np.float64),
        ip=np.broadcast_to(ip, n).astype(np.int64),
        scenario=np.broadcast_to(scenario, n).astype(np.int8),
    )


class Scenario(ABC):
    """One kind of fraud: how big its incidents are and what their transactions look like."""

    name: ClassVar[str]
    max_span_ms: ClassVar[int]  # first to last transaction of an incident, at most (time_scale 1)

    @property
    def code(self) -> int:
        return SCENARIO_CODE[self.name]

    incident_size: ClassVar[tuple[int, int]]  # fraudulent transactions per incident, inclusive

    def sizes(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Fraudulent transactions of ``n`` new incidents."""
        low, high = self.incident_size
        return rng.integers(low, high + 1, n)

    @abstractmethod
    def generate(
        self, rng: np.random.Generator, ctx: Context, starts: np.ndarray, sizes: np.ndarray
    ) -> Columns:
        """The transactions of incidents starting at ``starts`` (epoch ms), time-sorted per incident."""


@dataclass
class _Abroad:
    """Incidents of an attacker abroad on a victim's card: rows ``r`` of the incidents at ``t``."""

    victim: np.ndarray
    country: np.ndarray
    city: np.ndarray
    incident: np.ndarray
    r: np.ndarray
    t: np.ndarray


class _AbroadScenario(Scenario):
    """Account takeover and card testing: an attacker's device and IP in another country, online."""

    min_span_ms: ClassVar[int]

    def _incidents(
        self, rng: np.random.Generator, ctx: Context, starts: np.ndarray, sizes: np.ndarray
    ) -> _Abroad:
        pop, n = ctx.population, len(starts)
        victim = rng.integers(0, pop.n_users, n)
        country = _other_country(rng, pop, pop.home_country[victim])
        city = pop.city_by_country.pick(country, rng.random(n))
        incident = ctx.incident_ids(self.name, n)
        spans = rng.uniform(ctx.ms(self.min_span_ms), ctx.ms(self.max_span_ms), n)
        r, t = _spread(rng, starts, sizes, spans)
        return _Abroad(victim, country, city, incident, r, t)

    def _columns(
        self, rng: np.random.Generator, ctx: Context, a: _Abroad, merchant: np.ndarray, usd: np.ndarray
    ) -> Columns:
        n = len(a.victim)
        return _columns(
            t=a.t,
            user=a.victim[a.r],
            merchant=merchant,
            usd=usd,
            country=a.country[a.r],
            device=_attacker_device(ctx, self.code, a.incident)[a.r],
            channel=world.ONLINE,
            lat=(world.CITY_LAT[a.city] + rng.normal(0, 0.03, n))[a.r],
            lon=(world.CITY_LON[a.city] + rng.normal(0, 0.03, n))[a.r],
            ip=_ip(ctx.seed, a.country, self.code, a.incident)[a.r],
            scenario=self.code,
            pop=ctx.population,
        )


class AccountTakeover(_AbroadScenario):
    name = "account_takeover"
    min_span_ms = 30 * MINUTE_MS
    max_span_ms = 4 * HOUR_MS

    incident_size = (2, 6)

    def generate(
        self, rng: np.random.Generator, ctx: Context, starts: np.ndarray, sizes: np.ndarray
    ) -> Columns:
        a = self._incidents(rng, ctx, starts, sizes)
        pop, m = ctx.population, len(a.r)
        usd = np.exp(pop.mu[a.victim[a.r]]) * rng.uniform(5.0, 20.0, m)  # large: the victim's x5-20
        return self._columns(rng, ctx, a, pop.online_high_risk.pick(0, rng.random(m)), usd)


class CardTesting(_AbroadScenario):
    name = "card_testing"
    min_span_ms = 2 * MINUTE_MS
    max_span_ms = 15 * MINUTE_MS

    incident_size = (10, 40)

    def generate(
        self, rng: np.random.Generator, ctx: Context, starts: np.ndarray, sizes: np.ndarray
    ) -> Columns:
        a = self._incidents(rng, ctx, starts, sizes)
        pop, m = ctx.population, len(a.r)
        merchant = pop.online_global.pick(0, rng.random(m))  # drawn before the amounts, as always
        return self._columns(rng, ctx, a, merchant, rng.uniform(0.5, 4.0, m))


class CompromisedMerchant(Scenario):
    name = "compromised_merchant"
    max_span_ms = 5 * DAY_MS

    incident_size = (30, 90)

    def generate(
        self, rng: np.random.Generator, ctx: Context, starts: np.ndarray, sizes: np.ndarray
    ) -> Columns:
        pop, n = ctx.population, len(starts)
        weight = pop.m_risk**2
        merchant = np.searchsorted(np.cumsum(weight), rng.random(n) * weight.sum(), side="right")
        merchant = np.minimum(merchant, pop.n_merchants - 1)
        r, t = _spread(rng, starts, sizes, rng.uniform(ctx.ms(2 * DAY_MS), ctx.ms(self.max_span_ms), n))
        m, mr = len(r), merchant[r]
        victim = pop.users_by_country.pick(pop.m_country[mr], rng.random(m))
        category = pop.m_category[mr]
        usd = rng.lognormal(np.log(60.0) + world.CATEGORY_OFFSET[category] * 0.5, 0.6)
        return _columns(
            t=t,
            user=victim,
            merchant=mr,
            usd=usd,
            country=pop.m_country[mr],
            device=-1,
            channel=np.where(pop.m_online[mr], world.ONLINE, world.CARD_PRESENT),
            lat=pop.m_lat[mr],
            lon=pop.m_lon[mr],
            ip=-1,
            scenario=self.code,
            pop=pop,
        )


class ImpossibleTravel(Scenario):
    name = "impossible_travel"
    max_span_ms = 3 * HOUR_MS

    incident_size = (1, 3)

    def generate(
        self, rng: np.random.Generator, ctx: Context, starts: np.ndarray, sizes: np.ndarray
    ) -> Columns:
        pop, n = ctx.population, len(starts)
        victim = rng.integers(0, pop.n_users, n)
        for _ in range(10):  # the cardholder is at home when the anchor happens
            away = ctx.abroad(victim, starts)
            if not away.any():
                break
            victim[away] = rng.integers(0, pop.n_users, int(away.sum()))
        home = pop.home_country[victim]
        # the genuine anchor: the cardholder pays at one of their usual shops at home
        anchor_m = pop.regular[victim, rng.integers(0, pop.regular.shape[1], n)]
        anchor_cat = pop.m_category[anchor_m]
        anchor_usd = np.exp(
            pop.mu[victim] + world.CATEGORY_OFFSET[anchor_cat] + pop.sigma[victim] * rng.normal(size=n)
        )
        anchor = _columns(
            t=starts,
            user=victim,
            merchant=anchor_m,
            usd=anchor_usd,
            country=home,
            device=-1,
            channel=world.CARD_PRESENT,
            lat=pop.m_lat[anchor_m],
            lon=pop.m_lon[anchor_m],
            ip=-1,
            scenario=0,
            pop=pop,
        )
        # the cloned card, far away, shortly after
        far = world.COUNTRY_DISTANCE_KM[home] > FAR_KM
        weights = far * (world.COUNTRY_TRAVEL + world.COUNTRY_ATTACKER + 0.1)
        cum = np.cumsum(weights, axis=1)
        country = (cum > (rng.random(n) * cum[:, -1])[:, None]).argmax(axis=1)
        city = pop.city_by_country.pick(country, rng.random(n))
        first = starts + rng.integers(*ctx.ms_range(10 * MINUTE_MS, 120 * MINUTE_MS), n)
        r = np.repeat(np.arange(n), sizes)
        gaps = rng.integers(*ctx.ms_range(2 * MINUTE_MS, 20 * MINUTE_MS), len(r))
        rank = np.arange(len(r)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        gaps[rank == 0] = 0
        t = first[r] + _cumsum_by_group(gaps, r)
        m = len(r)
        merchant = pop.physical_high_risk_by_city.pick(city[r], rng.random(m))
        fraud = _columns(
            t=t,
            user=victim[r],
            merchant=merchant,
            usd=np.exp(pop.mu[victim[r]]) * rng.uniform(2.0, 6.0, m),
            country=country[r],
            device=-1,
            channel=world.CARD_PRESENT,
            lat=pop.m_lat[merchant],
            lon=pop.m_lon[merchant],
            ip=-1,
            scenario=self.code,
            pop=pop,
        )
        return Columns.concat([anchor, fraud])


class BustOut(Scenario):
    name = "bust_out"
    max_span_ms = 20 * DAY_MS + 36 * HOUR_MS

    incident_size = (12, 30)  # a third build-up (4–10), the rest the bust (8–20)

    def generate(
        self, rng: np.random.Generator, ctx: Context, starts: np.ndarray, sizes: np.ndarray
    ) -> Columns:
        pop, n = ctx.population, len(starts)
        account = np.arange(ctx.next_synthetic_user, ctx.next_synthetic_user + n, dtype=np.int64)
        ctx.next_synthetic_user += n
        p = world.COUNTRY_USERS / world.COUNTRY_USERS.sum()
        home = rng.choice(len(world.COUNTRIES), size=n, p=p).astype(np.int16)
        city = pop.city_by_country.pick(home, rng.random(n))
        device = (hash64(pop.seed, SALT_DEVICE, account, 0) & np.uint64(MASK40)).astype(np.int64)
        ip = _ip(ctx.seed, home, self.code, account)
        lat = world.CITY_LAT[city] + rng.normal(0, 0.04, n)
        lon = world.CITY_LON[city] + rng.normal(0, 0.04, n)
        n_build = sizes // 3
        n_bust = sizes - n_build
        build_span = rng.uniform(ctx.ms(5 * DAY_MS), ctx.ms(20 * DAY_MS), n)
        # the build-up: small payments at a steady pace, one every span/n_build (jittered)
        rb = np.repeat(np.arange(n), n_build)
        rank = np.arange(len(rb)) - np.repeat(np.cumsum(n_build) - n_build, n_build)
        tb = starts[rb] + ((rank + rng.random(len(rb))) / n_build[rb] * build_span[rb]).astype(np.int64)
        rs, ts = _spread(
            rng,
            starts + build_span.astype(np.int64),
            n_bust,
            rng.uniform(ctx.ms(6 * HOUR_MS), ctx.ms(36 * HOUR_MS), n),
        )

        def phase(r: np.ndarray, t: np.ndarray, usd: np.ndarray, high_risk: bool) -> Columns:
            m = len(r)
            online = rng.random(m) < 0.5
            physical = (pop.physical_high_risk_by_city if high_risk else pop.physical_by_city).pick(
                city[r], rng.random(m)
            )
            web = (
                pop.online_high_risk.pick(0, rng.random(m))
                if high_risk
                else pop.online_by_country.pick(home[r], rng.random(m))
            )
            merchant = np.where(online, web, physical)
            return _columns(
                t=t,
                user=account[r],
                merchant=merchant,
                usd=usd,
                country=home[r],
                device=np.where(online | (rng.random(m) < 0.5), device[r], -1),
                channel=np.where(online, world.ONLINE, world.CARD_PRESENT),
                lat=np.where(online, lat[r], pop.m_lat[merchant]),
                lon=np.where(online, lon[r], pop.m_lon[merchant]),
                ip=np.where(online, ip[r], -1),
                scenario=self.code,
                pop=pop,
            )

        build = phase(rb, tb, rng.uniform(5.0, 40.0, len(rb)), high_risk=False)
        bust = phase(rs, ts, rng.lognormal(np.log(900.0), 0.5, len(rs)), high_risk=True)
        return Columns.concat([build, bust])


def _cumsum_by_group(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running sum of ``values`` restarting at every new (sorted) ``group``."""
    total = np.cumsum(values)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    before = np.r_[0, total][starts]
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(group)]))
    return np.asarray(total - before[run])


SCENARIO_TYPES: tuple[type[Scenario], ...] = (
    AccountTakeover,
    CardTesting,
    CompromisedMerchant,
    ImpossibleTravel,
    BustOut,
)
DEFAULT_MIX: dict[str, float] = {
    "account_takeover": 0.20,
    "card_testing": 0.25,
    "compromised_merchant": 0.20,
    "impossible_travel": 0.15,
    "bust_out": 0.20,
}
