"""CSV/Parquet replay: column mapping, event-time order, nulls for absent optional fields,
labels from a column, and a clear report of every row that cannot be mapped (with its line)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ingest.cli import app
from ingest.replay import FieldMap, ReplayError, load

MAP = (
    "transaction_id=TX,user_id=CUSTOMER_ID,merchant_id=SHOP,amount=TX_AMOUNT,currency=CUR,"
    "event_time=WHEN,country=CTRY"
)
NOW = datetime(2026, 6, 1, tzinfo=UTC)

MESSY = """TX,CUSTOMER_ID,SHOP,TX_AMOUNT,CUR,WHEN,CTRY,IS_FRAUD,KIND
t1,c1,s1,12.50,eur,2026-01-01T10:00:05Z,fr,0,
t2,c2,s2,abc,EUR,2026-01-01T10:00:01Z,FR,1,card_testing
t3,,s3,5,EUR,2026-01-01 09:00:00,FR,0,

t4,c4,s4,7,EUR,yesterday,FR,0,
t5,c5,"shop
on two lines",8,EUR,2026-01-01T08:00:00+01:00,FR,1,account_takeover
t6,c6,s6,9,EUR,2026-01-01T08:00:00Z,FR,maybe,
t7,c7,s7,9,EUR,2026-01-01T08:00:00Z
t8,c8,s8,-1,EUR,2026-01-01T11:00:00Z,FR,,
t9,c9,s9,3,XYZ,2026-01-01T11:00:00Z,FR,,
t10,c10,s10,4,EUR,2026-01-01T09:30:00Z,FR,,
"""


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    path = tmp_path / "messy.csv"
    path.write_text(MESSY)
    return path


def test_bad_rows_are_reported_with_their_line_numbers(messy: Path) -> None:
    data = load(messy, FieldMap.parse(MAP), label_column="IS_FRAUD", scenario_column="KIND", now=NOW)
    report = {e.line: e.reason for e in data.errors}
    assert report == {
        3: "amount 'abc' is not a number",
        4: "user_id is empty (column CUSTOMER_ID)",
        6: "event_time 'yesterday' is not an ISO-8601 date/time",
        9: "IS_FRAUD 'maybe' is not a 0/1 (true/false, yes/no) label",
        10: "row has 6 fields, the header has 9",
        11: "amount must be finite and 0 or in [0.0001, 1e+09], got -1.0",
        12: "currency 'XYZ' is not an ISO-4217 code",
    }
    assert data.rows_read == 10 and data.blank_lines == 1
    assert len(data) + len(data.errors) == data.rows_read


def test_good_rows_come_in_event_time_order_with_nulls_and_labels(messy: Path) -> None:
    data = load(messy, FieldMap.parse(MAP), label_column="IS_FRAUD", scenario_column="KIND", now=NOW)
    assert [r["transaction_id"] for r in data.records()] == ["t5", "t10", "t1"]
    assert list(data.lines) == [7, 13, 2]  # t5's quoted field spans lines 7–8
    t5 = data.records()[0]
    assert t5["event_time"] == datetime(2026, 1, 1, 7, 0, tzinfo=UTC)
    assert t5["merchant_id"] == "shop\non two lines"
    assert all(t5[f] is None for f in ("device_id", "channel", "merchant_category", "lat", "lon", "ip"))
    assert data.records()[2]["currency"] == "EUR" and data.records()[2]["country"] == "FR"  # upper-cased
    assert data.is_fraud is not None and data.has_label is not None
    assert data.is_fraud.tolist() == [True, False, False]
    assert data.has_label.tolist() == [True, False, True]  # t10's empty label cell = unlabelled
    assert data.scenario == ["account_takeover", None, None]
    chunk = next(data.chunks(label_delay_s=0))
    labels = chunk.labels()
    assert labels is not None and labels[1].tolist() == [True, False]  # only labelled rows


def test_mapping_errors_are_clear(messy: Path) -> None:
    with pytest.raises(ReplayError, match=r"required field.*currency.*columns: TX, CUSTOMER_ID"):
        load(
            messy,
            FieldMap.parse(
                "user_id=CUSTOMER_ID,merchant_id=SHOP,amount=TX_AMOUNT,event_time=WHEN,country=CTRY"
            ),
        )
    with pytest.raises(ReplayError, match="'amnt' is not a transaction field"):
        FieldMap.parse(MAP + ",amnt=X")
    with pytest.raises(ReplayError, match="not field=value"):
        FieldMap.parse("user_id")
    with pytest.raises(ReplayError, match="both mapped"):
        FieldMap.parse(MAP, "currency=EUR")
    with pytest.raises(ReplayError, match=r"no column.*'NOPE'.*columns: TX, CUSTOMER_ID"):
        load(messy, FieldMap.parse(MAP.replace("SHOP", "NOPE")))


def test_constants_derived_ids_and_parquet_with_native_types(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "cust": [101, 102, 103],
        "amt": [10.0, np.nan, 30.5],
        "ts": pd.to_datetime(["2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"]),
        "lat": [48.85, 48.86, np.nan],
        "lon": [2.35, 2.36, np.nan],
    })  # fmt: skip
    path = tmp_path / "native.parquet"
    frame.to_parquet(path)
    mapping = FieldMap.parse("user_id=cust,amount=amt,event_time=ts,lat=lat,lon=lon",
                             "merchant_id=m1,currency=eur,country=fr")  # fmt: skip
    data = load(path, mapping, now=NOW)
    assert [(e.line, e.reason) for e in data.errors] == [(2, "amount is empty")]
    assert [r["transaction_id"] for r in data.records()] == ["native:1", "native:3"]  # file stem + row
    assert [r["user_id"] for r in data.records()] == ["101", "103"]
    assert data.records()[0]["currency"] == "EUR" and data.records()[0]["lat"] == 48.85
    assert data.records()[1]["lat"] is None and data.records()[1]["lon"] is None


def test_numeric_times_epoch_offsets_and_start_shift(tmp_path: Path) -> None:
    path = tmp_path / "times.csv"
    mapping = FieldMap.parse("user_id=u,amount=a,event_time=t", "merchant_id=m,currency=EUR,country=FR")
    path.write_text("u,a,t\nx,1,1767225600\ny,2,1767225601.5\n")  # epoch seconds
    data = load(path, mapping, now=NOW)
    assert [r["event_time"] for r in data.records()] == [
        datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    ]  # fmt: skip
    path.write_text("u,a,t\nx,1,0\ny,2,3600\n")  # offsets, like Kaggle's "Time"
    with pytest.raises(ReplayError, match="--time-origin"):
        load(path, mapping, now=NOW)
    data = load(path, mapping, time_origin=datetime(2026, 2, 1, tzinfo=UTC), now=NOW)
    assert data.records()[1]["event_time"] == datetime(2026, 2, 1, 1, tzinfo=UTC)
    path.write_text("u,a,t\nx,1,0\ny,2,36\n")  # hours, like PaySim's "step"
    data = load(path, mapping, time_unit="h", time_origin=datetime(2026, 2, 1, tzinfo=UTC),
                start=datetime(2026, 5, 1, tzinfo=UTC), now=NOW)  # fmt: skip
    first = datetime(2026, 5, 1, tzinfo=UTC)
    assert [r["event_time"] for r in data.records()] == [first, first + timedelta(hours=36)]


def test_same_named_columns_need_no_mapping(tmp_path: Path) -> None:
    path = tmp_path / "named.csv"
    path.write_text("user_id,merchant_id,amount,currency,event_time,country,device_id,CUST\n"
                    "u1,m1,5,EUR,2026-01-01T00:00:00Z,FR,d1,other\n")  # fmt: skip
    data = load(path, FieldMap.parse("", None), now=NOW)
    assert data.records()[0]["user_id"] == "u1" and data.records()[0]["device_id"] == "d1"
    data = load(path, FieldMap.parse("user_id=CUST", "device_id=fixed"), now=NOW)  # explicit wins
    assert data.records()[0]["user_id"] == "other" and data.records()[0]["device_id"] == "fixed"


def test_cli_dry_run_prints_the_report(messy: Path, tmp_path: Path) -> None:
    errors = tmp_path / "rejected.csv"
    result = CliRunner().invoke(
        app,
        [
            "replay",
            str(messy),
            "--map",
            MAP,
            "--label-column",
            "IS_FRAUD",
            "--dry-run",
            "--errors-out",
            str(errors),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "10 rows read" in result.output and "3 good" in result.output and "7 rejected" in result.output
    assert "amount 'abc' is not a number" in result.output
    lines = errors.read_text().splitlines()
    assert lines[0] == "line,reason" and lines[1].startswith("3,") and len(lines) == 8
