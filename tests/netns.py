"""Two hosts on one machine for tests: two network namespaces, each on a veth to a bridge here.

Host A is 10.200.0.1/24 and host B 10.200.0.2/24, each the only address of its namespace's
veth; the veths' other ends hang on a bridge in this machine's own namespace, which holds
10.200.0.254/24. So the two reach each other (the cluster network, as ../shared/TESTING.md's
veth pair between them), and a client here reaches both (an sshd in each). When 10.200.0.0/24
is taken here already, the next free 10.200.N.0/24 is used.

Only what this object created is removed, and always: `close()` (also at exit) kills the
processes still inside its namespaces, then deletes the namespaces and the bridge.
"""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import subprocess
from typing import List, Optional

IP = shutil.which("ip") or "/usr/sbin/ip"


def available() -> Optional[str]:
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not os.path.exists(IP):
        return "no ip command (apt-get install -y iproute2)"
    result = subprocess.run([IP, "netns", "list"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"ip netns cannot be used here: {result.stderr.strip()}"
    return None


def _ip(*args: str, netns: Optional[str] = None) -> None:
    command = [IP, "netns", "exec", netns, IP, *args] if netns else [IP, *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


def _free_subnet() -> str:
    used = subprocess.run([IP, "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    for third in range(256):
        if f" 10.200.{third}." not in used:
            return f"10.200.{third}"
    raise RuntimeError("no free 10.200.N.0/24 subnet here")


class TwoHosts:
    """`with TwoHosts() as hosts:` hosts.namespaces[i] holds hosts.addresses[i] on hosts.interfaces[i]."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.namespaces = [f"gnb-{tag}-a", f"gnb-{tag}-b"]
        self.interfaces = [f"gnb{tag}a0", f"gnb{tag}b0"]  # inside the namespaces (at most 15 characters)
        self.bridge = f"gnb{tag}br"
        self.addresses: List[str] = []
        self.bridge_address = ""
        self._created: List[str] = []  # what to undo: "netns:NAME", "link:NAME"

    def create(self) -> "TwoHosts":
        atexit.register(self.close)
        try:
            subnet = _free_subnet()
            self.addresses = [f"{subnet}.1", f"{subnet}.2"]
            self.bridge_address = f"{subnet}.254"
            _ip("link", "add", self.bridge, "type", "bridge")
            self._created.append(f"link:{self.bridge}")
            _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for namespace, inside, address in zip(self.namespaces, self.interfaces, self.addresses, strict=True):
                _ip("netns", "add", namespace)
                self._created.append(f"netns:{namespace}")
                outside = inside[:-1] + "1"
                _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
                self._created.append(f"link:{outside}")
                _ip("link", "set", inside, "netns", namespace)
                _ip("link", "set", outside, "master", self.bridge, "up")
                _ip("addr", "add", f"{address}/24", "dev", inside, netns=namespace)
                _ip("link", "set", inside, "up", netns=namespace)
                _ip("link", "set", "lo", "up", netns=namespace)  # a namespace reaches its own addresses through lo
        except BaseException:
            self.close()
            raise
        return self

    def pids(self, namespace: str) -> List[int]:
        result = subprocess.run([IP, "netns", "pids", namespace], capture_output=True, text=True)
        return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []

    def close(self) -> None:
        """Kill what still runs in our namespaces, then delete them and our links (idempotent)."""
        for item in reversed(self._created):
            kind, name = item.split(":", 1)
            if kind == "netns":
                for pid in self.pids(name):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                subprocess.run([IP, "netns", "del", name], capture_output=True)
            else:
                subprocess.run([IP, "link", "del", name], capture_output=True)  # gone already when its peer's namespace went
        self._created.clear()

    def __enter__(self) -> "TwoHosts":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()
