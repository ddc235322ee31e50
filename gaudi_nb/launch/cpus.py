"""The node's CPU topology (lscpu) and mpirun's cores per rank, as optimum-habana's DistributedRunner computes them.

DistributedRunner.get_peval() reads ``Socket(s)`` and ``Core(s) per socket`` from lscpu,
so ``PE=`` counts physical cores: on a hyperthreaded host ``os.cpu_count()`` is twice
that, and a doubled ``PE=`` does not fit a socket under ``--bind-to core`` (Open MPI 5,
shipped with Gaudi software 1.23+, then refuses to map the job).
"""
from __future__ import annotations

import math
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Dict, Optional

from ..errors import SpecError


@dataclass(frozen=True)
class CpuTopology:
    """Physical layout of one node: what ``--bind-to core`` binds to."""

    sockets: int
    cores_per_socket: int
    threads_per_core: int = 1
    source: str = "lscpu"

    @property
    def physical_cores(self) -> int:
        return self.sockets * self.cores_per_socket

    @property
    def logical_cpus(self) -> int:
        return self.physical_cores * self.threads_per_core


_LINE = re.compile(r"^\s*([^:]+?)\s*:\s*(.*?)\s*$")


def _fields(text: str) -> Dict[str, str]:
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and match.group(1) not in fields:  # the first block is the CPU itself
            fields[match.group(1)] = match.group(2)
    return fields


def _positive(value: Optional[str]) -> Optional[int]:
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def parse_lscpu(text: str) -> Optional[CpuTopology]:
    """``Socket(s)``, ``Core(s) per socket`` and ``Thread(s) per core`` from lscpu's output
    (LC_ALL=C); None when a count is missing or ``-`` (some ARM hosts print per-cluster counts)."""
    fields = _fields(text)
    sockets = _positive(fields.get("Socket(s)"))
    cores = _positive(fields.get("Core(s) per socket"))
    if sockets is None or cores is None:
        return None
    return CpuTopology(sockets, cores, _positive(fields.get("Thread(s) per core")) or 1, source="lscpu")


def _allowed_cpus() -> Optional[int]:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def cpu_topology() -> CpuTopology:
    """This node's topology: lscpu first (what DistributedRunner reads), else psutil's physical
    core count as one socket, else the logical count. A process confined to fewer CPUs (a
    container's cpuset) gets the cores it may use, spread over the same sockets."""
    topology: Optional[CpuTopology] = None
    try:
        done = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"})
        if done.returncode == 0:
            topology = parse_lscpu(done.stdout)
    except (OSError, subprocess.SubprocessError):
        topology = None
    if topology is None:
        import psutil

        physical = psutil.cpu_count(logical=False)
        logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        if physical:
            topology = CpuTopology(1, physical, max(1, logical // physical), source="psutil")
        else:
            topology = CpuTopology(1, logical, 1, source="os.cpu_count")
    allowed = _allowed_cpus()
    if allowed is not None and allowed < topology.logical_cpus:
        usable = max(1, allowed // topology.threads_per_core)
        sockets = min(topology.sockets, usable)
        topology = CpuTopology(sockets, max(1, usable // sockets), topology.threads_per_core, source=topology.source + "+affinity")
    return topology


def mpirun_map_by(topology: CpuTopology) -> str:
    """``socket``, as DistributedRunner maps; ``slot`` where lscpu says one core per socket
    (a VM, where DistributedRunner switches to slot too)."""
    return "slot" if topology.cores_per_socket == 1 else "socket"


def mpirun_cores_per_process(topology: CpuTopology, world_size: int) -> int:
    """Physical cores bound to each rank (mpirun's ``PE=``), never 0.

    Mapping by socket, the ranks are dealt round-robin over the sockets, so each socket holds
    ``ceil(ranks / sockets)`` of them and their cores must fit in it: ``cores_per_socket //
    ceil(ranks / sockets)``. That is DistributedRunner's ``sockets * cores // ranks`` whenever
    the ranks fill the sockets evenly (8 ranks on 2 × 40 cores: 10 each), and still fits
    when they do not (1 rank: 40, not 80; 3 ranks: 20, not 26). DistributedRunner yields 0
    when a host has fewer cores than ranks; this never does.
    """
    ranks = max(1, world_size)
    if mpirun_map_by(topology) == "slot":
        return max(1, topology.physical_cores // ranks)
    per_socket = math.ceil(ranks / topology.sockets)
    return max(1, topology.cores_per_socket // per_socket)


def check_cores_for_ranks(topology: CpuTopology, world_size: int) -> None:
    """``--bind-to core`` gives each rank cores of its own: more ranks than physical cores cannot map."""
    if world_size > topology.physical_cores:
        raise SpecError(
            f"mpirun binds each rank to its own core: {world_size} ranks need {world_size} physical cores, "
            f"this node has {topology.physical_cores} ({topology.sockets} socket(s) × {topology.cores_per_socket}); "
            "lower devices or use launcher='torchrun'"
        )
