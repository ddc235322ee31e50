"""python -m gaudi_nb.agent --run-dir DIR: supervise one run on this node until it ends."""
import argparse
from pathlib import Path

from ..rundir import RunFolder

parser = argparse.ArgumentParser(prog="python -m gaudi_nb.agent", description="Supervise one gaudi_nb run on this node.")
parser.add_argument("--run-dir", required=True, type=Path)
args = parser.parse_args()
from .supervisor import supervise  # noqa: E402 (after the arguments: a usage error loads nothing)

supervise(RunFolder(args.run_dir.resolve()))
