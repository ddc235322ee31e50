"""What every rank does first and last, whether it runs the built-in trainer or a user script."""
from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
import traceback
from typing import Mapping, NoReturn, Tuple

from ..errors import GaudiNbError
from ..events import EventWriter
from ..rundir import RunFolder


def rank_info() -> Tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's variables, or Open MPI's under mpirun."""
    env = os.environ
    if "RANK" not in env and "OMPI_COMM_WORLD_RANK" in env:
        # torch.distributed's env:// rendezvous reads RANK/WORLD_SIZE, so mirror them.
        env["RANK"] = env["OMPI_COMM_WORLD_RANK"]
        env["WORLD_SIZE"] = env["OMPI_COMM_WORLD_SIZE"]
        env["LOCAL_RANK"] = env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


def node_placement(environ: Mapping[str, str]) -> Tuple[int, int, int]:
    """(ranks on this node, nodes, this node's rank) from whichever launcher started the rank: torchrun sets
    LOCAL_WORLD_SIZE and GROUP_RANK; DeepSpeed's launcher (the default across Gaudi nodes) sets LOCAL_SIZE,
    CROSS_SIZE and CROSS_RANK instead (deepspeed/launcher/launch.py); Open MPI its OMPI_COMM_WORLD_LOCAL_SIZE.
    A launcher that says nothing means one node. A world that is not nodes × ranks per node is refused."""
    world = int(environ.get("WORLD_SIZE") or environ.get("OMPI_COMM_WORLD_SIZE") or 1)
    local = int(environ.get("LOCAL_WORLD_SIZE") or environ.get("LOCAL_SIZE") or environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or world)
    nodes = int(environ.get("CROSS_SIZE") or max(1, world // max(1, local)))
    node_rank = int(environ.get("GROUP_RANK") or environ.get("NODE_RANK") or environ.get("CROSS_RANK") or 0)
    if local * nodes != world or not 0 <= node_rank < nodes:
        raise GaudiNbError(f"the launcher started {world} rank(s) as {nodes} node(s) of {local} with this node's rank {node_rank}: "
                           "every node must run the same number of ranks (give each node the same --devices)")
    return local, nodes, node_rank


def writer_for(folder: RunFolder, rank: int) -> EventWriter:
    run = folder.read_run()
    return EventWriter(folder.events, run["run_id"], node=run.get("node", "local"), rank=rank)


def report_error(folder: RunFolder, exc: BaseException) -> None:
    """Put the rank's exception in the event stream: the launcher's own summary hides it in the log."""
    try:
        writer = writer_for(folder, rank_info()[0])
        writer.emit("worker_error", error=f"{type(exc).__name__}: {exc}"[:500], traceback=traceback.format_exc().splitlines()[-15:])
        writer.close()
    except Exception:
        pass  # the log still has the traceback


def leave_process_group() -> None:
    """Leave torch.distributed before the interpreter exits. A group left to interpreter teardown can abort the
    rank (SIGABRT: "terminate called without an active exception") when a peer, on this node or another, has
    already exited, turning a clean stop (or a script that ran to its end) into a failed exit code."""
    dist = sys.modules.get("torch.distributed")
    # never imported: this rank joined no group (and importing torch only to learn that costs seconds)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_cleanly() -> NoReturn:
    """End a rank whose training ended cleanly, with exit code 0, without the interpreter's teardown.

    Why: a collective backend's C++ worker thread can free the last collective's work after Python
    code has ended (gloo does, freeing it needs the GIL). If that falls inside Py_Finalize, Python
    ends the thread with pthread_exit, the unwind crosses a noexcept destructor and the rank aborts
    (SIGABRT, "terminate called without an active exception"): a finished run reported failed. On
    this machine under load that was about one 2-rank run in eight. It applies on every device, so
    the HPU path is the one the tests run.

    What teardown does that a user can notice is done first: the process group is left, objects
    nothing refers to are finalized (an unclosed file is flushed), other non-daemon threads are
    joined, exit handlers run (logging, trackers, multiprocessing) and stdio is flushed."""
    leave_process_group()
    gc.collect()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
