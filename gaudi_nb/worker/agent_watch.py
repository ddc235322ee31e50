"""Ranks never outlive their agent: a thread in each rank exits the process when the agent is gone.

Why a thread and not only the step callback: a rank can hang in a collective, in data
loading or in a script that never calls back; an agent that died (kill -9, the OOM killer)
must not leave ranks training on a billed machine with nobody metering them.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Optional

import psutil

from ..rundir import AGENT_HOST_ENV, AGENT_PID_ENV

CHECK_EVERY_S = 2.0
EXIT_CODE = 75  # EX_TEMPFAIL: not the training's fault


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start(pid: Optional[int] = None, interval_s: float = CHECK_EVERY_S) -> Optional[threading.Thread]:
    """Watch the agent (its pid from the launcher's environment); None when there is none to watch.

    psutil's is_running() compares the process's start time, so a reused pid is not mistaken
    for the agent. Only ranks on the agent's own node can see its pid: the launcher passes the
    variable to local ranks; ranks on other nodes are watched by their own node's agent.
    """
    if pid is None:
        if os.environ.get(AGENT_HOST_ENV, socket.gethostname()) != socket.gethostname():
            return None
        try:
            pid = int(os.environ[AGENT_PID_ENV])
        except (KeyError, ValueError):
            return None
    try:
        agent = psutil.Process(pid)
    except psutil.Error:
        agent = None
    if agent is None or not _alive(agent):
        _exit(pid)

    def watch() -> None:
        while _alive(agent):  # type: ignore[arg-type]
            threading.Event().wait(interval_s)
        _exit(pid)

    thread = threading.Thread(target=watch, name="gaudi-nb-agent-watchdog", daemon=True)
    thread.start()
    return thread


def _exit(pid: Optional[int]) -> None:
    sys.stderr.write(f"gaudi_nb: the run's agent (pid {pid}) is gone; this rank stops so it does not train unmetered\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)

