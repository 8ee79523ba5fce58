"""Static facts of the simulated card network: countries with their cities (lat/lon, UTC
offset), currencies with FX rates and minor units, merchant categories.

Everything here is plain data plus numpy views of it; the population and the fraud
scenarios index into these arrays (country index, city index, category index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class City:
    name: str
    lat: float
    lon: float
    tz: int  # whole hours from UTC (standard time; good enough for daily seasonality)


@dataclass(frozen=True, slots=True)
class Country:
    code: str  # ISO-3166 alpha-2
    currency: str  # ISO-4217
    users: float  # share of cardholders living here (relative weight)
    travel: float  # attractiveness as a travel destination
    attacker: float  # weight as the origin of remote attacks (account takeover, card testing)
    cities: tuple[City, ...]


COUNTRIES: tuple[Country, ...] = (
    Country("US", "USD", 20, 4, 1, (
        City("New York", 40.71, -74.01, -5), City("Los Angeles", 34.05, -118.24, -8),
        City("Chicago", 41.88, -87.63, -6), City("Houston", 29.76, -95.37, -6),
        City("Miami", 25.76, -80.19, -5),
    )),
    Country("CA", "CAD", 3, 1, 0, (City("Toronto", 43.65, -79.38, -5), City("Vancouver", 49.28, -123.12, -8),
            City("Montreal", 45.50, -73.57, -5))),
    Country("MX", "MXN", 3, 2, 0, (City("Mexico City", 19.43, -99.13, -6),
            City("Guadalajara", 20.67, -103.35, -6))),
    Country("BR", "BRL", 5, 1, 2, (City("Sao Paulo", -23.55, -46.63, -3),
            City("Rio de Janeiro", -22.91, -43.17, -3))),
    Country("AR", "ARS", 1, 0.5, 0, (City("Buenos Aires", -34.60, -58.38, -3),)),
    Country("CO", "COP", 1, 0.5, 0.5, (City("Bogota", 4.71, -74.07, -5),)),
    Country("GB", "GBP", 7, 3, 0.5, (City("London", 51.51, -0.13, 0), City("Manchester", 53.48, -2.24, 0),
            City("Edinburgh", 55.95, -3.19, 0))),
    Country("IE", "EUR", 1, 1, 0, (City("Dublin", 53.35, -6.26, 0),)),
    Country("FR", "EUR", 6, 4, 0, (City("Paris", 48.86, 2.35, 1), City("Lyon", 45.76, 4.84, 1),
            City("Marseille", 43.30, 5.37, 1))),
    Country("DE", "EUR", 7, 1.5, 0, (City("Berlin", 52.52, 13.40, 1), City("Munich", 48.14, 11.58, 1),
            City("Hamburg", 53.55, 9.99, 1), City("Frankfurt", 50.11, 8.68, 1))),
    Country("ES", "EUR", 4, 4, 0, (City("Madrid", 40.42, -3.70, 1), City("Barcelona", 41.39, 2.17, 1))),
    Country("IT", "EUR", 4, 3, 0, (City("Rome", 41.90, 12.50, 1), City("Milan", 45.46, 9.19, 1))),
    Country("NL", "EUR", 2, 1, 0, (City("Amsterdam", 52.37, 4.90, 1),)),
    Country("BE", "EUR", 1, 0.5, 0, (City("Brussels", 50.85, 4.35, 1),)),
    Country("PT", "EUR", 1, 2, 0, (City("Lisbon", 38.72, -9.14, 0),)),
    Country("CH", "CHF", 1, 1, 0, (City("Zurich", 47.38, 8.54, 1),)),
    Country("SE", "SEK", 1, 0.5, 0, (City("Stockholm", 59.33, 18.07, 1),)),
    Country("PL", "PLN", 2, 0.5, 0.3, (City("Warsaw", 52.23, 21.01, 1), City("Krakow", 50.06, 19.94, 1))),
    Country("RO", "RON", 1, 0.3, 2, (City("Bucharest", 44.43, 26.10, 2),)),
    Country("UA", "UAH", 1, 0.2, 1, (City("Kyiv", 50.45, 30.52, 2),)),
    Country("TR", "TRY", 2, 2, 1, (City("Istanbul", 41.01, 28.98, 3),)),
    Country("RU", "RUB", 2, 0.3, 2, (City("Moscow", 55.76, 37.62, 3),)),
    Country("NG", "NGN", 1, 0.1, 3, (City("Lagos", 6.52, 3.38, 1),)),
    Country("ZA", "ZAR", 1, 0.5, 0.5, (City("Johannesburg", -26.20, 28.05, 2),)),
    Country("EG", "EGP", 1, 1, 0.3, (City("Cairo", 30.04, 31.24, 2),)),
    Country("AE", "AED", 1, 2, 0, (City("Dubai", 25.20, 55.27, 4),)),
    Country("IN", "INR", 6, 0.5, 1, (City("Mumbai", 19.08, 72.88, 5), City("Delhi", 28.61, 77.21, 5),
            City("Bangalore", 12.97, 77.59, 5))),
    Country("CN", "CNY", 4, 1, 1, (City("Shanghai", 31.23, 121.47, 8), City("Beijing", 39.90, 116.41, 8))),
    Country("JP", "JPY", 3, 1.5, 0, (City("Tokyo", 35.68, 139.69, 9), City("Osaka", 34.69, 135.50, 9))),
    Country("KR", "KRW", 1, 0.5, 0, (City("Seoul", 37.57, 126.98, 9),)),
    Country("SG", "SGD", 1, 1, 0, (City("Singapore", 1.35, 103.82, 8),)),
    Country("TH", "THB", 1, 2, 0, (City("Bangkok", 13.76, 100.50, 7),)),
    Country("ID", "IDR", 1, 1, 1, (City("Jakarta", -6.21, 106.85, 7),)),
    Country("PH", "PHP", 1, 0.5, 1, (City("Manila", 14.60, 120.98, 8),)),
    Country("VN", "VND", 1, 0.5, 2, (City("Ho Chi Minh City", 10.82, 106.63, 7),)),
    Country("AU", "AUD", 2, 1, 0, (City("Sydney", -33.87, 151.21, 10),
            City("Melbourne", -37.81, 144.96, 10))),
)  # fmt: skip

# Units of each currency per US dollar (rounded, mid-2020s); amounts are in the merchant's currency.
FX_PER_USD: dict[str, float] = {
    "USD": 1.0, "CAD": 1.37, "MXN": 18.0, "BRL": 5.3, "ARS": 1000.0, "COP": 4000.0, "GBP": 0.79,
    "EUR": 0.92, "CHF": 0.88, "SEK": 10.5, "PLN": 4.0, "RON": 4.6, "UAH": 41.0, "TRY": 34.0,
    "RUB": 90.0, "NGN": 1500.0, "ZAR": 18.0, "EGP": 48.0, "AED": 3.67, "INR": 84.0, "CNY": 7.2,
    "JPY": 150.0, "KRW": 1350.0, "SGD": 1.34, "THB": 35.0, "IDR": 16000.0, "PHP": 57.0,
    "VND": 25000.0, "AUD": 1.52,
}  # fmt: skip
ZERO_DECIMAL = frozenset({"JPY", "KRW", "VND"})


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    weight: float  # share of genuine spend events
    amount_offset: float  # added to the user's log-amount (log USD)
    online: float  # probability that a merchant of this category sells online
    risk: float  # mean merchant risk score
    high_risk: bool  # favoured by cash-out fraud (resellable goods)


CATEGORIES: tuple[Category, ...] = (
    Category("grocery", 22, -0.3, 0.05, 0.02, False),
    Category("restaurant", 16, -0.4, 0.05, 0.03, False),
    Category("fuel", 8, 0.1, 0.0, 0.03, False),
    Category("retail", 14, 0.3, 0.35, 0.04, False),
    Category("pharmacy", 5, -0.5, 0.1, 0.02, False),
    Category("transport", 7, -1.0, 0.3, 0.03, False),
    Category("entertainment", 5, -0.2, 0.5, 0.05, False),
    Category("digital_goods", 5, -1.2, 1.0, 0.08, False),
    Category("utilities", 4, 0.6, 0.8, 0.02, False),
    Category("travel", 3, 1.8, 0.7, 0.06, False),
    Category("hotel", 2, 1.6, 0.5, 0.05, False),
    Category("electronics", 4, 1.4, 0.5, 0.12, True),
    Category("jewelry", 1, 1.6, 0.3, 0.15, True),
    Category("gift_cards", 1.5, 0.5, 0.7, 0.2, True),
    Category("money_transfer", 1, 1.0, 0.9, 0.2, True),
)

CHANNELS: tuple[str, str] = ("card_present", "online")
CARD_PRESENT, ONLINE = 0, 1


def _array(values: Sequence[float], dtype: type) -> np.ndarray:
    out: np.ndarray = np.asarray(values, dtype=dtype)
    out.setflags(write=False)
    return out


# Country-indexed arrays.
COUNTRY_CODES: tuple[str, ...] = tuple(c.code for c in COUNTRIES)
CURRENCY_CODES: tuple[str, ...] = tuple(sorted({c.currency for c in COUNTRIES}))
COUNTRY_CURRENCY = _array([CURRENCY_CODES.index(c.currency) for c in COUNTRIES], np.int16)
CURRENCY_FX = _array([FX_PER_USD[c] for c in CURRENCY_CODES], np.float64)
CURRENCY_DECIMALS = _array([0 if c in ZERO_DECIMAL else 2 for c in CURRENCY_CODES], np.int8)
COUNTRY_USERS = _array([c.users for c in COUNTRIES], np.float64)
COUNTRY_TRAVEL = _array([c.travel for c in COUNTRIES], np.float64)
COUNTRY_ATTACKER = _array([c.attacker for c in COUNTRIES], np.float64)

# City-indexed arrays (cities of all countries, in order).
CITY_COUNTRY = _array([i for i, c in enumerate(COUNTRIES) for _ in c.cities], np.int16)
CITY_LAT = _array([city.lat for c in COUNTRIES for city in c.cities], np.float64)
CITY_LON = _array([city.lon for c in COUNTRIES for city in c.cities], np.float64)
CITY_TZ = _array([city.tz for c in COUNTRIES for city in c.cities], np.int16)
# Within a country, the first city is the biggest: weights 1, 1/2, 1/3, ...
CITY_WEIGHT = _array([1.0 / (k + 1) for c in COUNTRIES for k in range(len(c.cities))], np.float64)

CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
CATEGORY_WEIGHT = _array([c.weight for c in CATEGORIES], np.float64)
CATEGORY_OFFSET = _array([c.amount_offset for c in CATEGORIES], np.float64)
CATEGORY_ONLINE = _array([c.online for c in CATEGORIES], np.float64)
CATEGORY_RISK = _array([c.risk for c in CATEGORIES], np.float64)
CATEGORY_HIGH_RISK = _array([c.high_risk for c in CATEGORIES], np.bool_)

# A fake but stable IPv4 block per country: first octet, so an IP's country is recognisable.
COUNTRY_IP_OCTET = _array([11 + 5 * i for i in range(len(COUNTRIES))], np.int64)

EARTH_RADIUS_KM = 6371.0


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km (element-wise)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))))


def _first_city_of_each_country() -> np.ndarray:
    return np.searchsorted(CITY_COUNTRY, np.arange(len(COUNTRIES)))


_CAPITALS = _first_city_of_each_country()
# Distance between countries (their first cities), km.
COUNTRY_DISTANCE_KM = haversine_km(
    CITY_LAT[_CAPITALS][:, None], CITY_LON[_CAPITALS][:, None],
    CITY_LAT[_CAPITALS][None, :], CITY_LON[_CAPITALS][None, :],
)  # fmt: skip
COUNTRY_DISTANCE_KM.setflags(write=False)


def to_local_amount(usd: np.ndarray, currency: np.ndarray) -> np.ndarray:
    """USD amounts converted to each row's currency and rounded to its minor unit (≥ 1 unit)."""
    local = usd * CURRENCY_FX[currency]
    cents = np.where(CURRENCY_DECIMALS[currency] == 0, 1.0, 100.0)
    return np.maximum(np.round(local * cents), 1.0) / cents
