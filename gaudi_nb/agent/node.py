"""python -m gaudi_nb.agent.node COMMAND: what a client asks of a node over SSH, run on the node.

Every command answers one JSON line on stdout (except `tail`, which streams a file's bytes),
so the client never parses prose. The same functions serve the local target directly.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from ..events import ended_in_file
from ..rundir import RunFolder
from . import liveness

REFUSED = 2  # exit status of a command the node refused with a one-line reason on stderr


def start_agent(folder: RunFolder, python: Optional[str] = None) -> int:
    """Start the run's agent detached in its own session (it survives the SSH session or kernel); returns its pid."""
    folder.logs.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, **folder.take_sent_environment()}  # a run on a node: what its client sent
    with open(folder.agent_log, "ab") as log:
        agent = subprocess.Popen(
            [python or sys.executable, "-m", "gaudi_nb.agent", "--run-dir", str(folder.path)],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            # python -m puts the working folder first on the import path: a folder holding a
            # `gaudi_nb` directory (a checkout) must not replace the installed package in the agent
            cwd=str(folder.path),
        )
    # known from the first moment, so an agent that dies before its first beat is still seen as lost
    folder.agent_pid.write_text(str(agent.pid))
    return agent.pid


def stop_run(folder: RunFolder, reason: str) -> bool:
    """Ask for a clean stop; a run whose agent is gone ends at once as stopped. True if this request was the first."""
    first = folder.request_stop(reason)
    if folder.agent_process_id() is not None and not liveness.agent_alive(folder):
        return liveness.end_lost(folder) or first
    return first


def tail(path: Path, offset: int, *, follow: bool, folder: Optional[RunFolder] = None, poll_s: float = 0.2, out: Any = None) -> None:
    """Write the file's bytes from offset to stdout; with follow, keep writing until the run has ended and all is sent.

    The client counts the bytes it has written to its mirror and, after a dropped link,
    asks again from there: nothing is lost and nothing is sent twice.
    """
    out = out or sys.stdout.buffer
    folder = folder or RunFolder(path.parent)
    position = offset
    while True:
        try:
            with open(path, "rb") as fh:
                fh.seek(position)
                chunk = fh.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            out.write(chunk)
            out.flush()
            position += len(chunk)
        elif not follow or ended_in_file(folder.events):
            if not _drained(path, position):
                continue
            return
        else:
            time.sleep(poll_s)


def _drained(path: Path, position: int) -> bool:
    try:
        return path.stat().st_size <= position
    except OSError:
        return True


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gaudi_nb.agent.node", description="Node-side commands of gaudi_nb (a client runs them over SSH).")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a run's agent detached")
    start.add_argument("--run-dir", required=True, type=Path)
    stop = commands.add_parser("stop", help="ask a run to stop (ends a run whose agent is gone)")
    stop.add_argument("--run-dir", required=True, type=Path)
    stop.add_argument("--reason", default="stopped")
    lost = commands.add_parser("check-lost", help="end a run whose agent is gone as lost")
    lost.add_argument("--run-dir", required=True, type=Path)
    resume = commands.add_parser("resume", help="continue an ended run from its newest complete checkpoint as its next attempt")
    resume.add_argument("--run-dir", required=True, type=Path)
    resume.add_argument("--max-steps", type=int, default=None)
    resume.add_argument("--budget-usd", type=float, default=None)
    fail = commands.add_parser("fail", help="end a run that could not start")
    fail.add_argument("--run-dir", required=True, type=Path)
    fail.add_argument("--reason", required=True)
    follow = commands.add_parser("tail", help="stream a run file's bytes from an offset")
    follow.add_argument("--path", required=True, type=Path)
    follow.add_argument("--offset", type=int, default=0)
    follow.add_argument("--follow", action="store_true", help="until the run has ended")
    follow.add_argument("--run-dir", type=Path, default=None, help="the run whose end stops --follow (default: the file's folder)")
    args = parser.parse_args(argv)

    if args.command == "tail":
        tail(args.path, args.offset, follow=args.follow, folder=RunFolder(args.run_dir) if args.run_dir else None)
        return
    folder = RunFolder(args.run_dir.expanduser().resolve())
    answer: Dict[str, Any]
    if args.command == "start":
        answer = {"pid": start_agent(folder)}
    elif args.command == "stop":
        answer = {"first": stop_run(folder, args.reason)}
    elif args.command == "check-lost":
        answer = {"lost": liveness.mark_if_lost(folder)}
    elif args.command == "resume":
        from ..errors import SpecError
        from .resume import resume_run

        try:
            answer = resume_run(folder, max_steps=args.max_steps, budget_usd=args.budget_usd)
        except SpecError as exc:  # the client shows this line as it is: it says what to do next
            sys.stderr.write(f"{exc}\n")
            sys.exit(REFUSED)
    else:
        answer = {"ended": liveness.end_run(folder, "failed", args.reason)}
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
