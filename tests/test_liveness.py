"""Ending a run whose agent is gone (agent/liveness.py): the run_end is written once, and a write that failed is tried again."""
from __future__ import annotations

import json
import os
import time

import pytest

from gaudi_nb.agent import liveness
from gaudi_nb.events import EventWriter, read_events
from gaudi_nb.rundir import RunFolder


@pytest.fixture
def lost_run(tmp_path) -> RunFolder:
    """A run whose agent (a pid that no longer runs gaudi_nb.agent) stopped beating long ago."""
    folder = RunFolder(tmp_path / "runs" / "r-lost").create()
    folder.run.write_text(json.dumps({"run_id": "r-lost", "node": "local"}))
    writer = EventWriter(folder.events, "r-lost")
    writer.emit("run_start", spec={}, run_dir=str(folder.path))
    writer.close()
    folder.agent_pid.write_text(str(os.getpid()))  # this test's own process: alive, but not an agent
    os.utime(folder.agent_pid, (time.time() - 3600, time.time() - 3600))
    return folder


def test_a_run_end_that_failed_to_write_is_written_at_the_next_check(lost_run, monkeypatch):
    class FullDisk(EventWriter):
        def emit(self, type, **fields):
            raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(liveness, "EventWriter", FullDisk)
        with pytest.raises(OSError, match="No space left"):
            liveness.mark_if_lost(lost_run)
    # the marker was given back: the run is not left `running` for good
    assert liveness.mark_if_lost(lost_run) is True
    assert liveness.mark_if_lost(lost_run) is False  # and written once
    ends = [e for e in read_events(lost_run.events)[0] if e["type"] == "run_end"]
    assert [e["status"] for e in ends] == ["lost"]
