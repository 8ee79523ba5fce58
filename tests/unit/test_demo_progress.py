"""`make run`'s start-up steps (printed and logged with durations), its live counters' scopes
and the kind of Serve update a deploy makes (issue #26)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from cluster import demo
from serve_deployments.deploy import change_kind


def test_steps_are_printed_and_logged_in_order_with_durations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(demo, "console", Console(file=out, width=200))
    steps = demo.Steps(tmp_path / "log" / "demo.log")
    with steps.step("first"):
        pass
    with steps.step("second"):
        steps.note("    detail")
    steps.close()
    log = (tmp_path / "log" / "demo.log").read_text()
    for text in (out.getvalue(), log):
        lines = [x for x in ("[1] first …", "done in", "[2] second …", "detail", "s: second") if x in text]
        assert lines == ["[1] first …", "done in", "[2] second …", "detail", "s: second"], text
        assert text.index("[1] first") < text.index("[2] second") < text.rindex("s: second")
    assert list(steps.durations) == ["first", "second"]


def _stats(polled: int, scored: int, alerts: int) -> dict[str, int]:
    return {"polled": polled, "scored": scored, "dead_lettered": 0, "alerts": alerts}


def _rows(table: object) -> list[list[str]]:
    columns = table.columns  # type: ignore[attr-defined]
    return [[str(c._cells[i]) for c in columns] for i in range(len(columns[0]._cells))]


def test_counters_of_this_run_and_all_time_never_share_a_row() -> None:
    table = demo.counters_table(1000, [_stats(600, 600, 5), _stats(400, 390, 2)], 200.0, (99_982, 129))
    this_run, all_time = _rows(table)
    assert this_run == ["this run", "1,000", "1,000", "990", "0", "7", "200"]
    assert all_time[0].startswith("all time") and all_time[3] == "99,982" and all_time[5] == "129"
    assert all_time[1] == all_time[2] == ""  # no all-time produced/consumed next to this run's
    assert table.caption is None


def test_a_backlog_from_earlier_runs_is_said_out_loud() -> None:
    table = demo.counters_table(100, [_stats(350, 350, 0)], 0.0, (350, 0))
    assert table.caption is not None and "250" in str(table.caption) and "earlier runs" in str(table.caption)


def test_change_kind_tells_a_full_redeploy_from_an_in_place_one() -> None:
    app = {
        "import_path": "x:y",
        "args": {"families": ["if"]},
        "deployments": [{"name": "A", "user_config": {}}],
    }
    assert "every replica starts" in change_kind(None, app)
    assert change_kind(app, app).startswith("unchanged")
    keys = app | {"args": {"families": ["if"], "api_key_digests": ["ab"]}}
    assert change_kind(app, keys) == "args changed (api_key_digests): Serve replaces every replica"
    versions = app | {"deployments": [{"name": "A", "user_config": {"version": "2"}}]}
    assert "in place" in change_kind(app, versions)
