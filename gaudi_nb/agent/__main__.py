"""python -m gaudi_nb.agent --run-dir DIR: supervise one run on this node until it ends."""
import argparse
from pathlib import Path

from .supervisor import Agent

parser = argparse.ArgumentParser(prog="python -m gaudi_nb.agent", description="Supervise one gaudi_nb run on this node.")
parser.add_argument("--run-dir", required=True, type=Path)
args = parser.parse_args()
Agent(args.run_dir).run_to_end()
