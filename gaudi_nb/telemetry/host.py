"""The host source (psutil): host CPU and memory, and rank processes as devices when there is no accelerator."""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Set, Tuple

import psutil

from .base import DeviceSample, HostSample, Sample, telemetry_sources

_SELF = psutil.Process(os.getpid())
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def host_sample() -> HostSample:
    """Host-wide CPU and memory, plus this process's RSS; every source attaches one."""
    memory = psutil.virtual_memory()
    return HostSample(
        # interval=None compares with the previous call, so it never blocks the sampler.
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        memory_used_bytes=int(memory.total - memory.available),
        memory_total_bytes=int(memory.total),
        process_rss_bytes=int(_SELF.memory_info().rss),
    )


class HostSource:
    """Rank processes (rank → pid) reported as kind "cpu" devices: on a machine with
    no accelerator the ranks are the compute, so their CPU and RSS are what to watch."""

    name = "host"

    @classmethod
    def available(cls) -> bool:
        return True

    def __init__(self, pids: Optional[Dict[int, int]] = None) -> None:
        # psutil's cpu_percent is a delta against the previous call on the SAME
        # Process object, so the objects live between samples, keyed by pid.
        self._procs: Dict[int, psutil.Process] = {}
        self._pids: Dict[int, int] = {}
        self._total = int(psutil.virtual_memory().total)
        psutil.cpu_percent(interval=None)  # prime the host-wide delta
        self.set_pids(pids)

    def set_pids(self, pids: Optional[Dict[int, int]]) -> None:
        self._pids = dict(pids or {})
        wanted = set(self._pids.values())
        for pid in list(self._procs):
            if pid not in wanted:
                del self._procs[pid]
        for pid in wanted:
            self._tracked(pid)

    def _tracked(self, pid: int) -> Optional[psutil.Process]:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = psutil.Process(pid)
                proc.cpu_percent(interval=None)  # the first call only primes the delta
            except _GONE:
                return None
            self._procs[pid] = proc
        return proc

    def _usage(self, root: psutil.Process, seen: Set[int]) -> Tuple[float, int]:
        """CPU % (per core, summed) and RSS of a rank process and its children; adds their pids to seen."""
        family: List[psutil.Process] = [root]
        try:
            # Children (dataloader workers) need remembered objects too, for their deltas.
            family += [self._tracked(child.pid) or child for child in root.children(recursive=True)]
        except _GONE:
            pass
        cpu, rss = 0.0, 0
        for proc in family:
            seen.add(proc.pid)
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(interval=None)
                    rss += proc.memory_info().rss
            except _GONE:
                continue
        return cpu, rss

    def sample(self) -> Sample:
        devices: List[DeviceSample] = []
        seen: Set[int] = set(self._pids.values())
        for rank, pid in sorted(self._pids.items()):
            proc = self._tracked(pid)
            try:
                alive = proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            except _GONE:
                alive = False
            if proc is None or not alive:
                continue  # a rank that exited is skipped, not an error
            cpu, rss = self._usage(proc, seen)
            devices.append(
                DeviceSample(
                    index=rank,
                    kind="cpu",
                    label=f"cpu rank {rank}",
                    utilization_pct=cpu,
                    memory_used_bytes=rss,
                    memory_total_bytes=self._total,
                    pid=pid,
                )
            )
        # Forget children that exited, so the table does not grow over a long run.
        for pid in list(self._procs):
            if pid not in seen:
                del self._procs[pid]
        return Sample(t=time.time(), source=self.name, devices=devices, host=host_sample())


telemetry_sources.register("host", HostSource, aliases=("psutil",))
