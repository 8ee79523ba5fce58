"""What every page shares: settings, cached queries that report database errors instead of
raising, the sidebar's time-range and refresh controls, live re-rendering, and empty states."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ParamSpec, TypeGuard

import pandas as pd
import psycopg2
import streamlit as st

from core.settings import Settings, get_settings
from dashboards import timerange
from dashboards.timerange import CUSTOM, DEFAULT_PRESET, PRESETS, Window

P = ParamSpec("P")

CACHE_TTL_S = 10
REFRESH_CHOICES: dict[str, int | None] = {"Off": None, "10 s": 10, "30 s": 30, "1 min": 60}
DEFAULT_REFRESH = "30 s"
START_HINT = "start the producer (`make run`, or `fraudray produce` and `fraudray consume`)"
NO_DECISIONS = f"No decisions yet — {START_HINT}."

_K_PRESET, _K_REFRESH, _K_QP_DONE = "range_preset", "refresh", "_range_from_url"
_K_FROM_D, _K_FROM_T = "range_from_date", "range_from_time"
_K_TO_D, _K_TO_T = "range_to_date", "range_to_time"
_DATE_MIN, _DATE_MAX = date(2000, 1, 1), date(2100, 1, 1)


def settings() -> Settings:
    return get_settings()


def dsn() -> str:
    return settings().postgres.dsn.get_secret_value()


@functools.cache
def _cached(fn: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
    return st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)(fn)


def fetch(fn: Callable[P, pd.DataFrame], *args: P.args, **kwargs: P.kwargs) -> pd.DataFrame | None:
    """``fn(*args)`` through ``st.cache_data``; a database error is shown and gives ``None``."""
    try:
        return _cached(fn)(*args, **kwargs)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        st.error(f"PostgreSQL is not reachable ({first}) — start the stack with `fraudray stack up`.")
    except psycopg2.errors.UndefinedTable as exc:
        st.error(
            f"The database has no fraudray schema ({exc.pgerror or exc}) — `fraudray stack up` applies it."
        )
    except psycopg2.Error as exc:
        st.error(f"Query failed: {type(exc).__name__}: {str(exc).strip()[:300]}")
    return None


def empty_state(message: str) -> None:
    """An explained empty state, never a blank chart."""
    st.info(message, icon=":material/info:")


def no_data(what: str, window: Window) -> str:
    return f"No {what} between {window.label()} — {START_HINT}, or widen the time range."


def has_rows(frame: pd.DataFrame | None, empty: str) -> TypeGuard[pd.DataFrame]:
    """Whether a fetched ``frame`` has rows to show. When not, the page says why: ``fetch``
    has shown the database error, or this shows the explained empty state ``empty``."""
    if frame is None:
        return False
    if frame.empty:
        empty_state(empty)
        return False
    return True


def table(frame: pd.DataFrame, column_config: dict[str, Any] | None = None) -> None:
    """A full-width table without the index, as every page shows its rows."""
    st.dataframe(frame, hide_index=True, width="stretch", column_config=column_config)


def utc_column(label: str) -> Any:
    """A timestamp column shown to the second (timestamps are UTC throughout)."""
    return st.column_config.DatetimeColumn(label, format="YYYY-MM-DD HH:mm:ss")


# -- sidebar --------------------------------------------------------------------------------


def _floor_minute(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


def _apply_url_window() -> None:
    """``?from=…&to=…`` (ISO-8601) opens the app on that custom range, once per session."""
    if st.session_state.get(_K_QP_DONE):
        return
    st.session_state[_K_QP_DONE] = True
    params = {key: st.query_params.get_all(key) for key in ("from", "to")}
    window = timerange.from_query_params(params)
    if window is None:
        return
    start = _floor_minute(window.start)
    end = _floor_minute(window.end)
    if end < window.end:
        end += timedelta(minutes=1)
    st.session_state[_K_PRESET] = CUSTOM
    st.session_state[_K_FROM_D], st.session_state[_K_FROM_T] = start.date(), start.time()
    st.session_state[_K_TO_D], st.session_state[_K_TO_T] = end.date(), end.time()


def sidebar() -> None:
    """The controls every page obeys (call before ``st.navigation(...).run()``)."""
    _apply_url_window()
    now = timerange.now_rounded()
    defaults: dict[str, Any] = {
        _K_PRESET: DEFAULT_PRESET,
        _K_REFRESH: DEFAULT_REFRESH,
        _K_FROM_D: (now - timedelta(hours=1)).date(),
        _K_FROM_T: _floor_minute(now - timedelta(hours=1)).time(),
        _K_TO_D: now.date(),
        _K_TO_T: _floor_minute(now + timedelta(minutes=1)).time(),
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)
    with st.sidebar:
        st.selectbox("Time range", [*PRESETS, CUSTOM], key=_K_PRESET)
        if st.session_state[_K_PRESET] == CUSTOM:
            left, right = st.columns([3, 2])
            left.date_input("From (UTC)", key=_K_FROM_D, min_value=_DATE_MIN, max_value=_DATE_MAX)
            right.time_input("From time", key=_K_FROM_T, step=60, label_visibility="hidden")
            left.date_input("To (UTC)", key=_K_TO_D, min_value=_DATE_MIN, max_value=_DATE_MAX)
            right.time_input("To time", key=_K_TO_T, step=60, label_visibility="hidden")
        st.selectbox("Auto-refresh", list(REFRESH_CHOICES), key=_K_REFRESH)
        if st.button("Refresh now", icon=":material/refresh:"):
            st.cache_data.clear()
        st.caption(
            "Times are UTC. Transaction pages filter on event time; alerts and model scores on "
            f"decision time. Windows are capped at {timerange.MAX_WINDOW.days} days."
        )


def window() -> Window:
    """The selected window, recomputed on every (fragment) run so relative ranges move."""
    preset = st.session_state.get(_K_PRESET, DEFAULT_PRESET)
    if preset != CUSTOM:
        return timerange.last(PRESETS.get(preset, PRESETS[DEFAULT_PRESET]))
    start = datetime.combine(st.session_state[_K_FROM_D], st.session_state[_K_FROM_T] or time(), UTC)
    end = datetime.combine(st.session_state[_K_TO_D], st.session_state[_K_TO_T] or time(), UTC)
    if end <= start:
        st.warning("The custom range ends before it starts; showing the last hour instead.")
        return timerange.last(PRESETS[DEFAULT_PRESET])
    selected, cut = timerange.clipped(start, end)
    if cut:
        st.warning(f"Custom range cut to its last {timerange.MAX_WINDOW.days} days.")
    return selected


def captioned_window(clock: str) -> Window:
    """The selected window under a caption naming the clock the page filters on
    (``"Event time"`` or ``"Decision time"``)."""
    selected = window()
    st.caption(f"{clock} {selected.label()}")
    return selected


def refresh_interval() -> int | None:
    return REFRESH_CHOICES.get(st.session_state.get(_K_REFRESH, DEFAULT_REFRESH))


def live(body: Callable[[], None]) -> None:
    """Run a page's body inside a fragment that re-renders itself at the chosen interval."""
    interval = refresh_interval()

    @st.fragment(run_every=interval)
    def _live() -> None:
        body()
        every = f"refreshes every {interval} s" if interval else "auto-refresh off"
        st.caption(f"Updated {datetime.now(UTC):%H:%M:%S} UTC · {every}")

    _live()


def static_url() -> str | None:
    """Where Streamlit serves ``dashboards/static/`` (``None`` when static serving is off)."""
    if not st.get_option("server.enableStaticServing"):
        return None
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}/app/static/" if base else "/app/static/"


def fmt_int(value: Any) -> str:
    return f"{int(value):,}" if pd.notna(value) else "–"


def fmt_pct(value: Any, digits: int = 2) -> str:
    return f"{100 * float(value):.{digits}f} %" if pd.notna(value) else "–"


def fmt_ms(value: Any) -> str:
    """Milliseconds, shown in s/min/h when large (latencies stretch during a backlog)."""
    if value is None or pd.isna(value):
        return "–"
    ms = float(value)
    if abs(ms) < 1000:
        return f"{ms:.0f} ms"
    if abs(ms) < 60_000:
        return f"{ms / 1000:.1f} s"
    if abs(ms) < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"
