"""One runs table: `gaudi-nb runs`, %gaudi_runs, the dashboard's Runs page and the server extension show the same rows."""
from __future__ import annotations

import time

import pytest
from test_dashboard import add_run

from gaudi_nb import api
from gaudi_nb.runs_table import HEAD, progress, row_cells, run_row
from gaudi_nb.store import RunStore


def test_every_view_lists_the_same_runs_with_the_same_values(gaudi_home, capsys):
    from gaudi_nb.cli import main
    from gaudi_nb.dashboard.data_store import DashboardData
    from gaudi_nb.jupyter_server_ext import payloads as server_data
    from gaudi_nb.notebook.magic_output import RunList

    store = RunStore()
    now = time.time()
    add_run(store, "done-1", owner="ann", t0=now - 600, steps=5, usd=2.0, end=now - 300, project="llama")
    add_run(store, "busy-1", owner="ann", t0=now - 60, steps=7, usd=0.5, node="gaudi-a")  # its node is not attached: shown as recorded
    records = api.runs()

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["runs"])
    assert exit_info.value.code == 0
    cli_lines = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    notebook = RunList(records)
    assert cli_lines[0] == "run status progress loss tokens/s cost target".split() and notebook.HEAD == HEAD
    for cells, line in zip(notebook.rows(), cli_lines[1:], strict=True):
        assert " ".join(cells).split() == line  # the same cells, word for word
    assert [cells[:3] for cells in notebook.rows()] == [["busy-1", "running", "step 7/100"], ["done-1", "succeeded", "step 5/100"]]

    dashboard = DashboardData(store, follow=False, team_budgets={})
    dashboard.refresh()
    for record in records:
        row = run_row(record)
        shown = dashboard.runs.set_index("run_id").loc[record["run_id"]]
        sidebar = server_data.run(record["run_id"])["row"]
        for column in ("status", "step", "max_steps", "loss", "tokens_per_second", "usd", "target", "project"):
            assert shown[column] == row[column] == sidebar[column], column


def test_a_batch_run_shows_cells_and_unknowns_show_as_dashes():
    record = {"run_id": "nb-1", "status": "running", "kind": "batch", "batch": {"cells_done": 3, "cells_total": 9}, "steps_completed": 0, "metrics": {}, "cost": {}}
    row = run_row(record)
    assert progress(row) == "cells 3/9"
    assert row_cells(row) == ["nb-1", "running", "cells 3/9", "—", "—", "unknown", "local"]


def test_a_run_with_lines_kept_aside_says_so_on_its_row_and_one_without_does_not():
    from gaudi_nb.summary import empty_summary

    record = {**empty_summary("r1"), "bad_lines": {"count": 1, "first": {"offset": 7, "error": "'utf-8' codec can't decode byte 0xff", "text": "\ufffd"}}}
    assert run_row(record)["bad_lines"] == "1 line of events.jsonl broke the event contract and was kept aside; the first, at byte 7: 'utf-8' codec can't decode byte 0xff"
    assert run_row(empty_summary("r2"))["bad_lines"] is None
