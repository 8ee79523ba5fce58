"""COPY text encoding: NULLs, escapes and non-finite floats survive the trip into PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from ingest.sinks import copy_text


def test_copy_text_escapes_and_nulls() -> None:
    row = ("a\tb\nc\\d", None, True, np.float64(1.5), float("nan"), datetime(2026, 1, 1, tzinfo=UTC), 7)
    line = copy_text([row]).read()
    assert line == "a\\tb\\nc\\\\d\t\\N\tt\t1.5\t\\N\t2026-01-01T00:00:00+00:00\t7\n"
