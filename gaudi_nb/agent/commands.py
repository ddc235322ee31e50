"""python -m gaudi_nb.agent.commands COMMAND: what a client asks of a node, run on the node.

Every command answers one JSON line on stdout (except `tail`, which streams a file's bytes),
so the client never parses prose. A target runs these commands over its transport (SSH: one
command line each); the local target calls `answer()` in its own process. `--files-stdin`
sends a command the run's files (spec.json, run.json, the environment the client sends) in the
same round trip: a JSON object {relative path: {"text": ..., "mode": ...}} on stdin.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional

from ..events import ended_in_file
from ..private import FILE_MODE, private_dir, write_atomic
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
    write_atomic(folder.agent_pid, str(agent.pid))
    return agent.pid


CODE_ARCHIVE = "code.tar"  # the working directory a client sent: unpacked into code/ before the agent starts

Files = Dict[str, Dict[str, Any]]  # relative path in the run folder -> {"text": ..., "mode": 0o600 or absent}


def write_files(folder: RunFolder, files: Files) -> None:
    """Write what the client sent into the run folder (a secret's mode from the moment it exists)."""
    for relative, item in files.items():
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
            raise ValueError(f"not a path inside the run folder: {relative}")
        path = folder.path.joinpath(*parts)
        private_dir(path.parent)
        # whole or not at all (the agent reads spec.json and run.json), and owner-only: run.json holds the token of a run across nodes
        write_atomic(path, str(item["text"]), int(item.get("mode") or FILE_MODE))


def start(folder: RunFolder, files: Optional[Files] = None) -> int:
    """A launch's one node-side step: the folder, the files sent with it, the working directory's archive
    unpacked into code/, then the agent; returns the agent's pid."""
    for where in (folder.logs, folder.control):
        private_dir(where)  # the run folder too: owner-only on a shared node
    write_files(folder, files or {})
    archive = folder.path / CODE_ARCHIVE
    if archive.exists():
        from ..workdir import code_dir

        with tarfile.open(archive) as tar:
            tar.extractall(code_dir(folder.path), filter="data")
        archive.unlink()
    return start_agent(folder)


def free_ports(count: int) -> List[int]:
    """Ports free on this node now: the rendezvous's and the agents' own channel (node 0 hosts both)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def stop_all(folder: RunFolder, reason: str) -> Dict[str, bool]:
    """Node 0 of a run across nodes: ask its agent to stop every node (it picks the step; the first request
    wins). `alive` False: the agent is gone, and the client asks each node to end its own part."""
    from .stop import STOP_NODES

    alive, first = liveness.agent_alive(folder), False
    if alive:
        folder.control.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(folder.control / STOP_NODES, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, json.dumps({"reason": reason, "t": time.time()}).encode())
            os.close(fd)
            first = True
        except FileExistsError:
            pass
    return {"first": first, "alive": alive}


def end_started(folder: RunFolder, reason: str) -> bool:
    """A launch that failed: kill this node's agent if it started (its ranks follow it) and end this
    node's part as failed. True if this call wrote the run_end."""
    if not folder.path.exists():
        return False
    pid = folder.agent_process_id()
    if pid and liveness.agent_alive(folder):
        os.kill(pid, signal.SIGKILL)
    return folder.run.exists() and liveness.end_run(folder, "failed", reason)


def stop_run(folder: RunFolder, reason: str) -> bool:
    """Ask for a clean stop; a run whose agent is gone ends at once as stopped. True if this request was the first."""
    first = folder.request_stop(reason)
    if folder.agent_process_id() is not None and not liveness.agent_alive(folder):
        return liveness.end_lost(folder) or first
    return first


def tail(path: Path, offset: int, *, follow: bool, folder: Optional[RunFolder] = None, poll_s: float = 0.1, out: Any = None) -> None:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gaudi_nb.agent.commands", description="Node-side commands of gaudi_nb (a client runs them over SSH).")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, *, run_dir: bool = True, reason: Optional[str] = None, files: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        if run_dir:
            sub.add_argument("--run-dir", required=True, type=Path)
        if reason is not None:
            sub.add_argument("--reason", default=reason or None, required=not reason)
        if files:
            sub.add_argument("--files-stdin", action="store_true", help="write the files sent on stdin (JSON) into the run folder first")
        return sub

    command("start", "start a run's agent detached", files=True)
    command("stop", "ask a run to stop (ends a run whose agent is gone)", reason="stopped")
    command("stop-all", "node 0 of a run across nodes: ask its agent to stop every node", reason="stopped")
    command("check-lost", "end a run whose agent is gone as lost")
    resume = command("resume", "continue an ended run from its newest complete checkpoint as its next attempt", files=True)
    resume.add_argument("--max-steps", type=int, default=None)
    resume.add_argument("--budget-usd", type=float, default=None)
    resume.add_argument("--no-start", action="store_true", help="leave the agent to a scheduler's job (Slurm): only the request and the restart event")
    command("fail", "end a run that could not start", reason="")
    command("slurm-task", "Slurm's srun task on an allocated node: make this node's part of the run and become its agent")
    slurm_stop = command("slurm-stop", "a run on Slurm: ask node 0's agent to stop it (files only: the agents are on compute nodes)", reason="stopped")
    slurm_stop.add_argument("--nodes", type=int, default=1)
    slurm_stop.add_argument("--time-limit", action="store_true", help="asked by the job's time-limit warning (the run's end says so)")
    command("end-started", "a launch failed: kill this node's agent if it started, end its part as failed", reason="")
    ports = command("free-ports", "ports free on this node now", run_dir=False)
    ports.add_argument("--count", type=int, default=2)
    follow = command("tail", "stream a run file's bytes from an offset", run_dir=False)
    follow.add_argument("--path", required=True, type=Path)
    follow.add_argument("--offset", type=int, default=0)
    follow.add_argument("--follow", action="store_true", help="until the run has ended")
    follow.add_argument("--run-dir", type=Path, default=None, help="the run whose end stops --follow (default: the file's folder)")
    return parser


def answer(argv: List[str], files: Optional[Files] = None) -> Dict[str, Any]:
    """What a command answers (every command but tail). SpecError: a refusal that says what to do."""
    args = _parser().parse_args(argv)
    if args.command == "free-ports":
        return {"ports": free_ports(args.count)}
    folder = RunFolder(args.run_dir.expanduser().resolve())
    if args.command == "start":
        return {"pid": start(folder, files)}
    if args.command == "stop":
        return {"first": stop_run(folder, args.reason)}
    if args.command == "stop-all":
        return stop_all(folder, args.reason)
    if args.command == "check-lost":
        return {"lost": liveness.mark_if_lost(folder)}
    if args.command == "slurm-stop":
        from .slurm_task import TIME_LIMIT, ask_stop

        return {"first": ask_stop(folder, args.reason, args.nodes, why=TIME_LIMIT if args.time_limit else None)}
    if args.command == "end-started":
        return {"ended": end_started(folder, args.reason)}
    if args.command == "resume":
        from .resume import resume_run

        write_files(folder, files or {})
        try:
            return resume_run(folder, max_steps=args.max_steps, budget_usd=args.budget_usd, start=not args.no_start)
        except BaseException:  # nothing started to read (and delete) what was sent: it does not stay here
            for relative in files or {}:
                folder.path.joinpath(*PurePosixPath(relative).parts).unlink(missing_ok=True)
            raise
    return {"ended": liveness.end_run(folder, "failed", args.reason)}


def main(argv: Optional[list] = None) -> None:
    os.umask(0o077)  # what this node command makes (a run folder, its code) is the user's alone on a shared node
    args = _parser().parse_args(argv)
    if args.command == "tail":
        tail(args.path, args.offset, follow=args.follow, folder=RunFolder(args.run_dir) if args.run_dir else None)
        return
    if args.command == "slurm-task":
        from .slurm_task import main as slurm_task

        slurm_task(args.run_dir)  # supervises the run in this process until it ends
        return
    files = json.loads(sys.stdin.read() or "{}") if getattr(args, "files_stdin", False) else None
    from ..errors import SpecError

    try:
        result = answer(list(sys.argv[1:] if argv is None else argv), files)
    except SpecError as exc:  # the client shows this line as it is: it says what to do next
        sys.stderr.write(f"{exc}\n")
        sys.exit(REFUSED)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
