"""Where this node's ranks start: the launch plan of a one-node run, or of one node of a run across nodes.

run.json of a run across nodes has "cluster": {"nodes": [names, node 0 first], "node_rank": k,
"master_addr": node 0's address as the others reach it, "master_port", "control_port",
"token" (shared by the nodes of this run only), "hosts": [each node's address]} (targets/ssh.py).
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import psutil

from ..launch import LaunchPlan, build_launch
from ..launch.cluster import cluster_launch_options
from ..spec import RunSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_node_plan(spec: RunSpec, worker: List[str], *, accelerator: str, launcher: str) -> LaunchPlan:
    """In a cluster-started job (Kubernetes operators) the pod's environment says where this node stands;
    a fresh port for each attempt: the last attempt's rendezvous port may not be free yet."""
    where = {"master_port": free_port(), **cluster_launch_options(os.environ, spec.nodes)}
    return build_launch(spec, worker, python=sys.executable, accelerator=accelerator, launcher=launcher, **where)


def route_to(address: str) -> Tuple[Optional[str], Optional[str]]:
    """(this node's own address on the way to `address`, the interface that holds it); Nones where unknown.

    A UDP connect sends nothing; it only asks the kernel which source address it would use,
    so on node 0 (whose own address is the master's) it names node 0's interface, not loopback.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
            local = str(probe.getsockname()[0])
    except OSError:
        return None, None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == local for a in addresses):
            return local, name
    return local, None


def cluster_plan(spec: RunSpec, cluster: Dict[str, Any], worker: List[str], *, python: str, accelerator: str, launcher: str, master_port: Optional[int] = None,
                 local_addr: Optional[str] = None, ifname: Optional[str] = None, environ: Optional[Mapping[str, str]] = None, **more: Any) -> Optional[LaunchPlan]:
    """This node's launch plan in a run across nodes; None where node 0's launcher starts this node's ranks
    (DeepSpeed, the multi-node form on Gaudi: node 0 reads the hostfile and starts every node over ssh).

    torchrun: static rendezvous at node 0's address (--node-rank, --master-addr), and on CPU
    GLOO_SOCKET_IFNAME set to the interface that reaches it (a host name that maps to 127.0.0.1
    would otherwise send gloo to loopback); NCCL_SOCKET_IFNAME as well on CUDA.
    """
    rank = int(cluster["node_rank"])
    if launcher == "deepspeed" and rank > 0:
        return None
    plan = build_launch(spec, worker, python=python, node_rank=rank, master_addr=str(cluster["master_addr"]), master_port=int(master_port or cluster["master_port"]),
                        hosts=list(cluster.get("hosts") or []) or None, local_addr=local_addr, ifname=ifname, accelerator=accelerator, launcher=launcher,
                        environ=environ, **more)
    inherited = os.environ if environ is None else environ
    if ifname and accelerator == "cuda":
        for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
            if name not in inherited:  # a user's own choice stands
                plan.env[name] = ifname
    return plan
