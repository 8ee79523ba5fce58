"""Time windows: every page reads a bounded, half-open ``[start, end)`` window in UTC, so each
query is a range scan on ``transactions_event_time`` or ``decisions_scored_at``.

Relative windows ("last hour") end at *now* rounded down to a few seconds, so that reruns within
the cache TTL ask the database the same question and hit ``st.cache_data``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MAX_WINDOW = timedelta(days=31)
ROUND_S = 5

PRESETS: dict[str, timedelta] = {
    "Last 15 minutes": timedelta(minutes=15),
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "Last 31 days": MAX_WINDOW,
}
CUSTOM = "Custom range"
DEFAULT_PRESET = "Last hour"

# Trend buckets: the unit and the longest window it is drawn for (beyond, the next unit up).
BUCKETS: dict[str, timedelta] = {
    "minute": timedelta(days=1),
    "hour": timedelta(days=31),
    "day": MAX_WINDOW,
}


@dataclass(frozen=True)
class Window:
    """A half-open UTC interval ``[start, end)``."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware")
        if self.end <= self.start:
            raise ValueError(f"empty window: {self.start.isoformat()} .. {self.end.isoformat()}")

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def label(self) -> str:
        fmt = "%Y-%m-%d %H:%M:%S"
        return f"{self.start.astimezone(UTC):{fmt}} – {self.end.astimezone(UTC):{fmt}} UTC"


def now_rounded(now: datetime | None = None, step_s: int = ROUND_S) -> datetime:
    """``now`` (default: the clock) rounded down to ``step_s`` seconds, in UTC."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now - timedelta(seconds=now.timestamp() % step_s)


def last(length: timedelta, now: datetime | None = None) -> Window:
    """The window of ``length`` ending at (rounded) now."""
    end = now_rounded(now)
    return Window(end - min(length, MAX_WINDOW), end)


def clipped(start: datetime, end: datetime) -> tuple[Window, bool]:
    """A window no longer than ``MAX_WINDOW`` (keeping its end), and whether it was cut."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError("the end of the range must come after its start")
    if end - start > MAX_WINDOW:
        return Window(end - MAX_WINDOW, end), True
    return Window(start, end), False


def parse_instant(text: str) -> datetime:
    """An ISO-8601 instant (``Z`` accepted); naive values are taken as UTC."""
    text = text.strip()[:64]
    if "T" in text:  # a "+" offset arrives as a space when the URL did not encode it
        text = text.replace(" ", "+")
    return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def from_query_params(params: Mapping[str, str | list[str]]) -> Window | None:
    """The window named by ``?from=…&to=…`` (ISO-8601), or ``None`` when absent or unreadable."""
    raw_from, raw_to = params.get("from"), params.get("to")
    if not raw_from or not raw_to:
        return None
    first = raw_from[0] if isinstance(raw_from, list) else raw_from
    second = raw_to[0] if isinstance(raw_to, list) else raw_to
    try:
        window, _ = clipped(parse_instant(first), parse_instant(second))
    except ValueError:
        return None
    return window


def bucket_for(window: Window, wanted: str) -> str:
    """``wanted`` ('minute', 'hour' or 'day'), coarsened until the window fits its limit."""
    units = list(BUCKETS)
    if wanted not in BUCKETS:
        raise ValueError(f"unknown bucket {wanted!r}; expected one of {units}")
    for unit in units[units.index(wanted) :]:
        if window.length <= BUCKETS[unit]:
            return unit
    return units[-1]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
