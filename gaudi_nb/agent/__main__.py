"""python -m gaudi_nb.agent --run-dir DIR: supervise one run on this node until it ends."""
import argparse
import os
import traceback
from pathlib import Path

from ..rundir import RunFolder
from .liveness import end_run

parser = argparse.ArgumentParser(prog="python -m gaudi_nb.agent", description="Supervise one gaudi_nb run on this node.")
parser.add_argument("--run-dir", required=True, type=Path)
args = parser.parse_args()
# what the agent and its ranks write (checkpoints, logs, events) is the user's alone on a shared node; the ranks inherit it
os.umask(0o077)
folder = RunFolder(args.run_dir.resolve())
try:
    from .supervisor import Agent

    agent = Agent(folder.path)
except Exception as exc:  # an unreadable spec, a broken install: the run still ends, with the reason
    traceback.print_exc()
    end_run(folder, "failed", f"the agent could not start: {type(exc).__name__}: {exc}")
    raise SystemExit(1) from None
agent.run_to_end()
