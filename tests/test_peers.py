"""The messages between the agents of one run across nodes (agent/peers.py), over real sockets on loopback:
a follower's hello and token, a stop delivered to a follower, a follower that (re)connects late gets what
it missed, a leader agent that dies and comes back, a follower's spend and stop reaching node 0."""
import json
import socket
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest

from gaudi_nb.agent.peers import Peers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Inbox:
    """What one agent's Peers handed to its on_message, in order (called on the peers' threads)."""

    def __init__(self) -> None:
        self.messages: List[Tuple[str, Dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, message: Dict[str, Any]) -> None:
        with self.lock:
            self.messages.append((name, message))

    def wait_for(self, predicate, timeout: float = 10.0) -> List[Tuple[str, Dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self.messages):
                    return list(self.messages)
            time.sleep(0.02)
        raise AssertionError(f"not received within {timeout} s; got {self.messages}")


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def cluster():
    return {"nodes": ["na", "nb", "nc"], "node_rank": 0, "master_addr": "127.0.0.1", "master_port": 1, "control_port": free_port(), "token": "s3cret"}


@pytest.fixture
def started():
    peers: List[Peers] = []

    def start(node: str, cluster: Dict[str, Any], rank: int) -> Tuple[Peers, Inbox]:
        inbox = Inbox()
        p = Peers(node, {**cluster, "node_rank": rank}, inbox)
        assert p.start() is None  # loopback is this machine's own address: no listening on every address
        peers.append(p)
        return p, inbox

    yield start
    for p in peers:
        p.close()


def test_a_stop_reaches_every_follower_and_their_spend_reaches_node_0(cluster, started):
    leader, leader_inbox = started("na", cluster, 0)
    nb, nb_inbox = started("nb", cluster, 1)
    nc, nc_inbox = started("nc", cluster, 2)
    wait_until(lambda: leader.connected() == ["nb", "nc"] and nb.connected() == ["na"] and nc.connected() == ["na"])
    nb.send({"usd": 1.5})
    nc.send({"stop": "stopped"})  # a stop asked on a follower goes to node 0, which decides
    got = leader_inbox.wait_for(lambda m: len(m) >= 2)
    assert ("nb", {"usd": 1.5}) in got and ("nc", {"stop": "stopped"}) in got
    leader.send({"stop_at": 12, "reason": "stopped"}, sticky=True)
    for inbox in (nb_inbox, nc_inbox):
        assert inbox.wait_for(lambda m: m)[0] == ("na", {"stop_at": 12, "reason": "stopped"})


def test_a_follower_that_connects_late_gets_the_stop_and_the_end_in_order(cluster, started):
    leader, _ = started("na", cluster, 0)
    leader.send({"usd": 0.1})  # not sticky: a moment's news, lost to whoever was not there
    leader.send({"stop_at": 7, "reason": "budget_exceeded"}, sticky=True)
    leader.send({"end": "budget_exceeded", "reason": "budget reached"}, sticky=True)
    nb, nb_inbox = started("nb", cluster, 1)
    got = nb_inbox.wait_for(lambda m: len(m) >= 2)
    assert [m for _, m in got] == [{"stop_at": 7, "reason": "budget_exceeded"}, {"end": "budget_exceeded", "reason": "budget reached"}]


def test_a_dropped_connection_reconnects_and_replays_what_node_0_decided(cluster, started):
    leader, _ = started("na", cluster, 0)
    nb, nb_inbox = started("nb", cluster, 1)
    wait_until(lambda: leader.connected() == ["nb"])
    leader.send({"stop_at": 30, "reason": "stopped"}, sticky=True)
    nb_inbox.wait_for(lambda m: len(m) == 1)
    with leader._lock:  # the network drops the connection: node 0's side of it goes
        sock = leader._connections["nb"]
    sock.shutdown(socket.SHUT_RDWR)
    # the follower reconnects within a second and gets node 0's decision again (it writes the same stop_at)
    got = nb_inbox.wait_for(lambda m: len(m) == 2, timeout=10)
    assert got[1] == ("na", {"stop_at": 30, "reason": "stopped"})
    wait_until(lambda: leader.connected() == ["nb"])


def test_when_the_leader_agent_dies_the_follower_keeps_trying_and_finds_a_new_one(cluster, started):
    leader, _ = started("na", cluster, 0)
    nb, nb_inbox = started("nb", cluster, 1)
    wait_until(lambda: nb.connected() == ["na"])
    leader.close()  # node 0's agent is gone: the follower sees no leader, and says nothing to anyone
    wait_until(lambda: nb.connected() == [])
    nb.send({"usd": 2.0})  # to nobody: must not raise
    assert nb_inbox.messages == []
    # an agent listens again at node 0's address (a restarted agent): the follower finds it by itself
    again, again_inbox = started("na", cluster, 0)
    again.send({"end": "failed", "reason": "node 0 restarted"}, sticky=True)
    assert nb_inbox.wait_for(lambda m: m, timeout=10) == [("na", {"end": "failed", "reason": "node 0 restarted"})]
    nb.send({"usd": 3.0})
    assert again_inbox.wait_for(lambda m: m) == [("nb", {"usd": 3.0})]


@pytest.mark.parametrize("hello", [b'{"node": "nb", "token": "wrong"}\n', b'{"token": "s3cret"}\n', b"not json\n"])
def test_a_connection_without_the_runs_token_is_hung_up_on(cluster, started, hello):
    leader, leader_inbox = started("na", cluster, 0)
    leader.send({"stop_at": 3, "reason": "stopped"}, sticky=True)
    with socket.create_connection(("127.0.0.1", cluster["control_port"]), timeout=5) as sock:
        sock.sendall(hello)
        sock.sendall(json.dumps({"stop": "stopped"}).encode() + b"\n")
        assert sock.recv(1024) == b""  # closed, and nothing of the run was sent
    assert leader.connected() == [] and leader_inbox.messages == []


def test_a_line_that_is_not_a_message_is_skipped_and_the_next_one_read(cluster, started):
    leader, leader_inbox = started("na", cluster, 0)
    with socket.create_connection(("127.0.0.1", cluster["control_port"]), timeout=5) as sock:
        sock.sendall(b'{"node": "nb", "token": "s3cret"}\n{torn\n[1, 2]\n{"usd": 4.0}\n')
        assert leader_inbox.wait_for(lambda m: m) == [("nb", {"usd": 4.0})]
