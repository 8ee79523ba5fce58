"""The simulated population, built from a seed in one vectorised pass: users (home city,
spend profile, active hours, devices, travel habits), merchants (city, category, online or
physical, risk, popularity) and the weighted pickers the simulator samples from.

Also the small deterministic hashing helpers used wherever a choice must not depend on the
order in which events are generated (trips, device ids, label delays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.simulator import world

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
TRIP_MS = 4 * DAY_MS  # a user's calendar is cut into 4-day blocks: each one is home or a trip
REGULAR_MERCHANTS = 6  # merchants of the home city a user keeps going back to
MAX_DEVICES = 3

# ---------------------------------------------------------------------------------------------
# Stateless hashing (splitmix64): same inputs, same outputs, in any order and any batch size.

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MASK40 = (1 << 40) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return np.asarray(x ^ (x >> np.uint64(31)))


def hash64(*parts: int | np.ndarray) -> np.ndarray:
    """A 64-bit hash of the (broadcast) parts; parts are non-negative integers."""
    h = np.zeros((), dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the point
        for p in parts:
            h = _mix(h ^ (np.asarray(p).astype(np.uint64) * _GOLDEN + np.uint64(1)))
    return np.asarray(h, dtype=np.uint64)


def hash01(*parts: int | np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from :func:`hash64`."""
    return (hash64(*parts) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# Salts keep the hash streams of different purposes apart.
SALT_TRIP, SALT_DEST, SALT_CITY, SALT_DEVICE, SALT_NEWDEV, SALT_IP, SALT_LABEL, SALT_ATTACKER = range(1, 9)


# ---------------------------------------------------------------------------------------------
# Weighted choice within groups, vectorised over many (group, uniform) pairs.


class GroupedPicker:
    """Pick an item of a given group with probability ∝ its weight, for whole arrays at once.

    Items are laid out by group with keys ``2·group + cumulative share`` (the last item of a group
    has key exactly ``2·group + 1``), so one ``searchsorted`` answers every query. An empty group
    falls through to the next non-empty one.
    """

    def __init__(self, groups: np.ndarray, weights: np.ndarray, items: np.ndarray | None = None) -> None:
        groups = np.asarray(groups, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        order = np.lexsort((np.arange(len(groups)), groups))
        g, w = groups[order], weights[order]
        cw = np.cumsum(w)
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], len(g)] - 1
        before = np.r_[0.0, cw][starts]
        total = cw[ends] - before
        if np.any(total <= 0):
            raise ValueError("every non-empty group needs a positive total weight")
        run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(g)]))
        share = (cw - before[run]) / total[run]
        share[ends] = 1.0
        self.keys = 2.0 * g + share
        self.items = (np.asarray(items) if items is not None else np.arange(len(groups)))[order]
        self.groups = np.unique(g)

    def pick(self, groups: np.ndarray | int, u: np.ndarray) -> np.ndarray:
        q = 2.0 * np.asarray(groups, dtype=np.float64) + np.asarray(u, dtype=np.float64)
        idx = np.searchsorted(self.keys, q, side="right")
        return np.asarray(self.items[np.minimum(idx, len(self.items) - 1)])


# ---------------------------------------------------------------------------------------------
# Daily and weekly seasonality: each user follows one archetype in their local time.

# (peaks as (hour, width in hours, height)), weekend factor, share of users
ARCHETYPES: tuple[tuple[str, tuple[tuple[float, float, float], ...], float, float], ...] = (
    ("commuter", ((8.0, 1.2, 0.6), (12.5, 1.2, 1.0), (18.0, 1.8, 1.0)), 0.8, 0.30),
    ("daytime", ((11.0, 2.5, 1.0), (15.0, 2.0, 0.7)), 1.2, 0.25),
    ("evening", ((19.0, 1.8, 1.0), (21.5, 1.5, 0.8)), 1.1, 0.20),
    ("night_owl", ((22.0, 2.0, 1.0), (1.0, 2.0, 0.7)), 1.3, 0.10),
    ("early_bird", ((7.0, 1.5, 1.0), (12.0, 2.0, 0.6)), 0.9, 0.15),
)
NIGHT_FLOOR = 0.02  # nobody is completely inactive at 4 am


def season_table() -> np.ndarray:
    """Activity multiplier per (archetype, local hour of week, Monday 00:00 = 0); each row averages 1."""
    hours = np.arange(24, dtype=np.float64) + 0.5
    rows = []
    for _name, peaks, weekend, _share in ARCHETYPES:
        day = np.full(24, NIGHT_FLOOR)
        for hour, width, height in peaks:
            d = np.abs(hours - hour)
            d = np.minimum(d, 24 - d)
            day += height * np.exp(-0.5 * (d / width) ** 2)
        week = np.concatenate([day] * 5 + [day * weekend] * 2)
        rows.append(week / week.mean())
    return np.vstack(rows)


SEASON = season_table()


def hour_of_week(t_ms: int | np.ndarray) -> np.ndarray:
    """UTC hour of week with Monday 00:00 = 0 (1970-01-01 was a Thursday)."""
    return np.asarray((np.asarray(t_ms) // HOUR_MS + 72) % 168)


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Population:
    """Users and merchants as parallel numpy arrays (index = id number)."""

    seed: int
    # users
    home_country: np.ndarray  # int16 country index
    home_city: np.ndarray  # int16 city index
    home_lat: np.ndarray
    home_lon: np.ndarray
    tz: np.ndarray  # int16 hours from UTC
    activity: np.ndarray  # relative transaction rate, mean exactly 1
    archetype: np.ndarray  # int8 row of SEASON
    mu: np.ndarray  # log of the typical amount in USD
    sigma: np.ndarray  # log-normal spread of the user's amounts
    online_share: np.ndarray
    wallet_share: np.ndarray  # card-present payments made with the phone (device id known)
    travel_prob: np.ndarray  # chance that a 4-day block is a trip abroad
    trip_phase: np.ndarray  # int64 ms offset of the user's 4-day blocks
    n_devices: np.ndarray  # int8 in 1..MAX_DEVICES
    home_ip: np.ndarray  # int64 packed IPv4
    regular: np.ndarray  # (users, REGULAR_MERCHANTS) int32 merchants of the home city
    # merchants
    m_country: np.ndarray
    m_city: np.ndarray
    m_category: np.ndarray
    m_online: np.ndarray  # bool: sells online (else a physical shop)
    m_risk: np.ndarray
    m_popularity: np.ndarray
    m_lat: np.ndarray
    m_lon: np.ndarray
    # pickers
    physical_by_city: GroupedPicker
    physical_high_risk_by_city: GroupedPicker
    online_by_country: GroupedPicker
    online_global: GroupedPicker
    online_high_risk: GroupedPicker
    users_by_country: GroupedPicker
    city_by_country: GroupedPicker
    travel_destination: GroupedPicker
    attacker_country: GroupedPicker

    @property
    def n_users(self) -> int:
        return len(self.home_country)

    @property
    def n_merchants(self) -> int:
        return len(self.m_country)

    def device_code(self, user: np.ndarray, k: np.ndarray | int) -> np.ndarray:
        """The id number of the user's k-th usual device (k < n_devices[user])."""
        return np.asarray(hash64(self.seed, SALT_DEVICE, user, k) & np.uint64(MASK40)).astype(np.int64)

    def known_devices(self, user: int) -> set[int]:
        return {int(self.device_code(np.asarray(user), k)) for k in range(int(self.n_devices[user]))}


def build_population(seed: int, users: int = 100_000, merchants: int = 10_000) -> Population:
    """A population of ``users`` cardholders and ``merchants`` merchants (same seed ⇒ same population)."""
    if users < 1:
        raise ValueError("the population needs at least one user")
    n_cities = len(world.CITY_COUNTRY)
    min_per_city = 8
    if merchants < 2 * min_per_city * n_cities:
        raise ValueError(f"need at least {2 * min_per_city * n_cities} merchants ({n_cities} cities)")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n_countries = len(world.COUNTRIES)
    city_by_country = GroupedPicker(world.CITY_COUNTRY, world.CITY_WEIGHT)

    # --- merchants: at least a few per city, the rest where the cardholders are
    city_share = world.COUNTRY_USERS[world.CITY_COUNTRY] * world.CITY_WEIGHT
    per_city = min_per_city + rng.multinomial(
        merchants - min_per_city * n_cities, city_share / city_share.sum()
    )
    m_city = np.repeat(np.arange(n_cities), per_city).astype(np.int16)
    m_country = world.CITY_COUNTRY[m_city]
    m_category = rng.choice(
        len(world.CATEGORIES), size=merchants, p=world.CATEGORY_WEIGHT / world.CATEGORY_WEIGHT.sum()
    ).astype(np.int8)
    m_online = rng.random(merchants) < world.CATEGORY_ONLINE[m_category]
    # every city keeps a physical shop and every country an online one
    starts = np.r_[0, np.cumsum(per_city)[:-1]]
    has_physical = np.add.reduceat((~m_online).astype(np.int64), starts) > 0
    m_online[starts[~has_physical]] = False
    # a country with no online merchant has only physical ones (≥ 8 per city): flip one
    for c in np.setdiff1d(np.arange(n_countries), m_country[m_online]):
        m_online[np.flatnonzero(m_country == c)[0]] = True
    mean_risk = world.CATEGORY_RISK[m_category]
    m_risk = rng.beta(2.0, 2.0 * (1 - mean_risk) / mean_risk)
    m_popularity = rng.lognormal(0.0, 1.0, merchants) * world.CATEGORY_WEIGHT[m_category]
    m_lat = world.CITY_LAT[m_city] + rng.normal(0, 0.04, merchants)
    m_lon = world.CITY_LON[m_city] + rng.normal(0, 0.04, merchants)

    physical = np.flatnonzero(~m_online)
    online = np.flatnonzero(m_online)
    high_risk = world.CATEGORY_HIGH_RISK[m_category]
    online_hr = online[high_risk[online]]
    if len(online_hr) == 0:
        online_hr = online
    physical_by_city = GroupedPicker(m_city[physical], m_popularity[physical], physical)
    physical_high_risk_by_city = GroupedPicker(
        m_city[physical], m_popularity[physical] * np.where(high_risk[physical], 50.0, 1.0), physical
    )
    online_by_country = GroupedPicker(m_country[online], m_popularity[online], online)
    online_global = GroupedPicker(np.zeros(len(online), np.int64), m_popularity[online], online)
    online_high_risk = GroupedPicker(np.zeros(len(online_hr), np.int64), m_popularity[online_hr], online_hr)

    # --- users
    home_country = rng.choice(n_countries, size=users, p=world.COUNTRY_USERS / world.COUNTRY_USERS.sum())
    home_city = city_by_country.pick(home_country, rng.random(users)).astype(np.int16)
    activity = rng.gamma(2.0, 0.5, users)
    activity *= users / activity.sum()
    shares = np.array([a[3] for a in ARCHETYPES])
    user_ids = np.arange(users, dtype=np.int64)
    regular = physical_by_city.pick(
        np.repeat(home_city, REGULAR_MERCHANTS), rng.random(users * REGULAR_MERCHANTS)
    ).reshape(users, REGULAR_MERCHANTS)
    ip_low = (hash64(seed, SALT_IP, user_ids) & np.uint64(0xFFFFFF)).astype(np.int64)

    return Population(
        seed=seed,
        home_country=home_country.astype(np.int16),
        home_city=home_city,
        home_lat=world.CITY_LAT[home_city] + rng.normal(0, 0.04, users),
        home_lon=world.CITY_LON[home_city] + rng.normal(0, 0.04, users),
        tz=world.CITY_TZ[home_city],
        activity=activity,
        archetype=rng.choice(len(ARCHETYPES), size=users, p=shares / shares.sum()).astype(np.int8),
        mu=np.log(35.0) + rng.normal(0.0, 0.5, users),
        sigma=rng.uniform(0.45, 0.85, users),
        online_share=rng.beta(2.0, 4.0, users),
        wallet_share=rng.beta(1.5, 3.0, users),
        travel_prob=rng.beta(1.0, 60.0, users),
        trip_phase=rng.integers(0, TRIP_MS, users),
        n_devices=(1 + rng.binomial(MAX_DEVICES - 1, 0.35, users)).astype(np.int8),
        home_ip=(world.COUNTRY_IP_OCTET[home_country] << 24) | ip_low,
        regular=regular.astype(np.int32),
        m_country=m_country,
        m_city=m_city,
        m_category=m_category,
        m_online=m_online,
        m_risk=m_risk,
        m_popularity=m_popularity,
        m_lat=m_lat,
        m_lon=m_lon,
        physical_by_city=physical_by_city,
        physical_high_risk_by_city=physical_high_risk_by_city,
        online_by_country=online_by_country,
        online_global=online_global,
        online_high_risk=online_high_risk,
        users_by_country=GroupedPicker(home_country, np.ones(users)),
        city_by_country=city_by_country,
        travel_destination=GroupedPicker(np.zeros(n_countries, np.int64), world.COUNTRY_TRAVEL),
        attacker_country=GroupedPicker(np.zeros(n_countries, np.int64), world.COUNTRY_ATTACKER),
    )
