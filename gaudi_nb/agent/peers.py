"""The messages between the agents of one run across nodes.

Node 0's agent listens at (master_addr, control_port); each other node's agent keeps one TCP
connection to it and reconnects every half second when it drops. One JSON object a line:

- first line of a connection, follower to node 0: {"node": name, "token": the run's token}
  (a wrong or missing token is hung up on; so is a connection silent for 10 s);
- follower to node 0: {"usd": this node's spend} each second; {"stop": reason} a stop asked on that node;
  {"end": status, "reason": ...} when its run has ended;
- node 0 to followers: {"stop_at": step, "reason": ...} the step every rank stops after;
  {"end": status, "reason": ...}. Both are sticky: node 0 sends them again, in order, to a node that
  (re)connects later, so a short drop loses neither.

Why not torch.distributed's TCPStore: the agent would import torch (seconds, and memory, in a process
that otherwise has none), a store has no push (every follower would poll keys), and its server lives
and dies in one process just as this one does; the protocol above is these few lines and is tested
on its own (tests/test_peers.py).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set

_sending = threading.Lock()  # one line at a time on any connection: the loop and the peers' threads both send


def _send(sock: socket.socket, message: Dict[str, Any]) -> bool:
    try:
        with _sending:
            sock.sendall((json.dumps(message) + "\n").encode())
        return True
    except OSError:
        return False


class Peers:
    """The agents of one run across nodes: node 0's listens at (master_addr, control_port), each other
    node's keeps one connection to it and reconnects. JSON lines; the first line of a connection
    is {"node", "token"}, and a wrong token is hung up on. Node 0 repeats its stop decision and its
    end to a node that (re)connects, so a short drop loses neither."""

    def __init__(self, node: str, cluster: Dict[str, Any], on_message: Callable[[str, Dict[str, Any]], None]) -> None:
        self.node = node
        self.leader_name = str(cluster["nodes"][0])
        self.is_leader = int(cluster["node_rank"]) == 0
        self.token = str(cluster["token"])
        self.address = (str(cluster["master_addr"]), int(cluster["control_port"]))
        self.on_message = on_message
        self._lock = threading.Lock()
        self._connections: Dict[str, socket.socket] = {}  # node 0: the others, by name; elsewhere: node 0
        self._accepted: Set[socket.socket] = set()  # node 0: every connection it took, before and after its hello
        self._sticky: List[Dict[str, Any]] = []  # node 0: what every (re)connecting node gets first
        self._server: Optional[socket.socket] = None
        self._closed = False

    def start(self) -> Optional[str]:
        """Listen (node 0) or start connecting; returns a warning when node 0 had to listen on every address."""
        warning = None
        if self.is_leader:
            try:
                self._server = socket.create_server(self.address)
            except OSError as exc:  # the address others reach node 0 by is not its own (NAT): listen on all
                self._server = socket.create_server(("", self.address[1]))
                warning = f"node 0 listens for the other nodes on port {self.address[1]} of every address ({self.address[0]}: {exc})"
            threading.Thread(target=self._accept, name="gaudi-nb-peers", daemon=True).start()
        else:
            threading.Thread(target=self._connect, name="gaudi-nb-peers", daemon=True).start()
        return warning

    def connected(self) -> List[str]:
        with self._lock:
            return sorted(self._connections)

    def send(self, message: Dict[str, Any], *, sticky: bool = False) -> None:
        """Node 0: to every other node (sticky: and to any that connects later); elsewhere: to node 0."""
        with self._lock:
            if sticky:
                self._sticky.append(message)
            connections = list(self._connections.values())
        for sock in connections:
            _send(sock, message)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            # every socket, said hello or not: one still in its hello would otherwise outlive the close
            connections = list(set(self._connections.values()) | self._accepted)
            self._connections.clear()
            self._accepted.clear()
        for sock in connections + ([self._server] if self._server is not None else []):
            try:
                # shutdown first: a reader's makefile() holds the socket open, and the other end must see it go
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # -- node 0 -------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._server is not None
        while not self._closed:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                self._accepted.add(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        name = None
        try:
            sock.settimeout(10)  # a connection that does not say who it is within 10 s is hung up on
            lines = sock.makefile("r", encoding="utf-8")
            hello = json.loads(lines.readline() or "{}")
            if not isinstance(hello, dict) or hello.get("token") != self.token or not hello.get("node"):
                return
            sock.settimeout(None)
            name = str(hello["node"])
            with self._lock:
                if self._closed:
                    return
                self._connections[name] = sock
                for message in self._sticky:
                    _send(sock, message)
            self._read(name, lines)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                if name is not None and self._connections.get(name) is sock:
                    del self._connections[name]
                self._accepted.discard(sock)
            sock.close()

    # -- the other nodes ---------------------------------------------------------------------
    def _connect(self) -> None:
        while not self._closed:
            sock = None
            try:
                sock = socket.create_connection(self.address, timeout=5)
                sock.settimeout(None)
                if _send(sock, {"node": self.node, "token": self.token}):
                    with self._lock:
                        self._connections[self.leader_name] = sock
                    self._read(self.leader_name, sock.makefile("r", encoding="utf-8"))
            except (OSError, ValueError):
                pass
            with self._lock:
                self._connections.pop(self.leader_name, None)
            if sock is not None:
                sock.close()
            time.sleep(0.5)

    def _read(self, name: str, lines: Any) -> None:
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self.on_message(name, message)
