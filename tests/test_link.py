"""nodes/link.py over a real sshd: one connection per node that every call shares, a node that does not answer
is one UnreachableError and its link's state says why, the call after it returns reconnects, and a mirror
that lost its link goes on from its own size (with backoff) so no byte is lost or doubled.
MergedStream and combine_ends, the several-node half of link.py, are in test_multinode.py."""
from __future__ import annotations

import json
import sys

import pytest
from conftest import wait_for

from gaudi_nb.events import make_event
from gaudi_nb.nodes.link import Links, UnreachableError


@pytest.fixture
def linked(ssh_home, sshd):
    """A fresh Links and the node record of the session's sshd (this machine, this venv's Python)."""
    sshd.kill_sessions()  # connections other tests left: this test counts its own
    sshd.node_home.mkdir(parents=True, exist_ok=True)
    links = Links()
    record = {"name": "n1", "user": sshd.user, "host": sshd.address, "port": sshd.port, "python": sys.executable, "home": str(sshd.node_home)}
    yield links, record
    for name in list(links._connections):
        links.drop(name)
    links.loop.call_soon_threadsafe(links.loop.stop)


def test_every_call_to_a_node_shares_one_connection(linked, sshd):
    links, record = linked
    assert links.run(record, "echo one") == (0, "one\n", "")
    assert links.run(record, "echo two >&2; exit 3") == (3, "", "two\n")  # a failing command is the command's, not the link's
    links.put_text(record, str(sshd.node_home / "put.txt"), "written")
    assert (sshd.node_home / "put.txt").read_text() == "written"
    assert len(sshd.session_pids()) == 1  # one SSH connection served all three
    assert links.state("n1").up


def test_an_unreachable_node_is_one_error_and_the_next_call_after_it_returns_reconnects(linked, sshd):
    links, record = linked
    sshd.stop()
    with pytest.raises(UnreachableError, match="node n1 is unreachable"):
        links.run(record, "true", timeout=20)
    state = links.state("n1")
    assert state.up is False and state.error  # the link's state, with the reason, for the views
    sshd.start()
    assert links.run(record, "echo back")[1] == "back\n"
    assert links.state("n1").up and links.state("n1").error is None


def test_a_dropped_connection_costs_at_most_one_call(linked, sshd):
    links, record = linked
    assert links.run(record, "true")[0] == 0
    assert sshd.kill_sessions()  # the link drops under the client
    try:
        links.run(record, "true", timeout=20)  # may see the drop (and say so) or may already reconnect
    except UnreachableError as exc:
        assert "node n1" in str(exc)
    assert links.run(record, "echo again")[1] == "again\n"


def test_a_mirror_goes_on_from_its_own_size_after_the_link_drops(linked, sshd, tmp_path):
    links, record = linked
    run_dir = sshd.node_home / "runs" / "mirrored"
    run_dir.mkdir(parents=True)
    remote = run_dir / "events.jsonl"

    def append(*events):
        with open(remote, "a") as fh:
            fh.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in events)  # compact, as EventWriter writes

    append(*(make_event("step", "mirrored", rank=0, step=n) for n in range(1, 4)))
    local = tmp_path / "mirror" / "events.jsonl"
    links.mirror(record, str(remote), local, remote_run_dir=str(run_dir))
    wait_for(lambda: local.exists() and local.read_bytes() == remote.read_bytes(), timeout=60, what="the first lines mirrored")
    assert sshd.kill_sessions()  # the link drops mid-follow
    append(*(make_event("step", "mirrored", rank=0, step=n) for n in range(4, 8)), make_event("run_end", "mirrored", status="succeeded"))  # written while it was down
    assert links.wait_mirrored(local, timeout=60), "the mirror did not finish after the link came back"
    assert local.read_bytes() == remote.read_bytes()  # every byte once, in order
    assert not links.mirroring(local)
