"""Slurm start-up: submit → first step of a gaudi-nb run and of a plain `sbatch` + `srun torchrun` job, side by side. Prints JSON.

Both arms run the same training script on the same real two-node cluster (tests/slurm_cluster.py:
Debian's slurmctld and two slurmd on this machine), two nodes, one rank a node, gloo:

  gaudi_nb  gaudi_nb.train(target=<the attached cluster>, nodes=2, devices=1, script=...): the
            check (sbatch --test-only), the inputs, sbatch, the srun task, the agents, torchrun
  plain     sbatch of `srun torchrun --nnodes 2 --node_rank $SLURM_NODEID --master_addr 127.0.0.1 ...`

Measured from the moment the arm submits (train() called / sbatch called) to the first step's own
time (rank 0 writes it: a step event for gaudi_nb, a line in a file for plain). Arms alternate
after one untimed warm-up each; the figures are medians. On a 2-core machine shared with other work
torchrun's start varies by seconds from run to run.

    python benchmarks/slurm.py            # 3 repetitions
    python benchmarks/slurm.py --reps 1

Goal (issue 19, point 9): gaudi-nb within 2 s of plain.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's real Slurm cluster

SCRIPT = """
import os
import time

import torch.distributed as dist

dist.init_process_group("gloo")
for step in range(1, {steps} + 1):
    dist.barrier()
    if os.environ.get("GAUDI_NB_RUN_DIR"):
        from gaudi_nb.worker.script import report

        report(step=step, loss=1.0, tokens=1, samples=1)
    elif step == 1 and dist.get_rank() == 0:
        with open(os.environ["FIRST_STEP_FILE"], "w") as fh:
            fh.write(repr(time.time()))
dist.destroy_process_group()
"""

PLAIN = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --partition=gaudi
#SBATCH --gres=gpu:hl225:1
#SBATCH --output={folder}/plain-%j.out
export FIRST_STEP_FILE={first}
srun bash -c '{python} -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --node-rank $SLURM_NODEID --master-addr 127.0.0.1 --master-port {port} {script}'
"""


PARTS: Dict[str, List[float]] = {"submitted_s": [], "agent_s": [], "ranks_s": []}  # where a gaudi-nb run's time goes


def gaudi_nb_arm(script: Path) -> float:
    import gaudi_nb

    started = time.time()
    run = gaudi_nb.train(target="hpc", nodes=2, devices=1, script=str(script), max_steps=3)
    submitted = time.time()
    run.wait(timeout=300)
    events = run.events()
    steps = [e for e in events if e["type"] == "step"]
    if not steps or run.status != "succeeded":
        raise RuntimeError(f"the gaudi-nb run {run.run_id} ended {run.status}: {run.record().get('exit')}")
    PARTS["submitted_s"].append(submitted - started)  # train() returned: the check, the inputs, sbatch
    PARTS["agent_s"].append(min(e["t"] for e in events if e["type"] == "run_start") - started)  # node 0's agent is up
    PARTS["ranks_s"].append(min(e["t"] for e in events if e["type"] == "worker_start") - started)  # a rank is up (torchrun started it)
    return float(min(e["t"] for e in steps)) - started


def plain_arm(folder: Path, script: Path, env: Dict[str, str], index: int) -> float:
    from slurm_cluster import _free_ports

    first = folder / f"first-{index}.txt"
    job = folder / f"plain-{index}.sh"
    job.write_text(PLAIN.format(folder=folder, first=first, python=sys.executable, port=_free_ports(1)[0], script=script))
    started = time.time()
    job_id = subprocess.run(["sbatch", "--parsable", str(job)], capture_output=True, text=True, check=True, env=env).stdout.strip()
    deadline = time.monotonic() + 300
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, env=env).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"plain job {job_id} still queued or running after 300 s")
        time.sleep(0.2)
    if not first.exists():
        raise RuntimeError(f"plain job {job_id} wrote no first step: {folder}/plain-{job_id}.out")
    return float(first.read_text()) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    from slurm_cluster import SlurmCluster, missing

    why = missing()
    if why:
        raise SystemExit(why)
    cluster_dir = Path(f"/tmp/gaudi-nb-slurm-bench-{os.getpid()}")
    cluster_dir.mkdir(mode=0o755)
    cluster = SlurmCluster(cluster_dir).start()
    home = Path(tempfile.mkdtemp(prefix="gaudi-nb-slurm-bench-"))
    os.environ.update(SLURM_CONF=str(cluster.conf), GAUDI_NB_HOME=str(home), GAUDI_NB_ACCELERATOR="cpu")
    os.environ.pop("GAUDI_NB_STORE_URL", None)
    try:
        from gaudi_nb.nodes.attach import attach

        attach("slurm:", name="hpc", partition="gaudi")
        script = home / "train.py"
        script.write_text(SCRIPT.format(steps=3))
        env = dict(os.environ)
        gaudi_nb_arm(script)  # warm-up: page cache, the store's schema
        plain_arm(home, script, env, 0)
        times: Dict[str, List[float]] = {"gaudi_nb": [], "plain": []}
        for values in PARTS.values():
            values.clear()  # the warm-up's
        for rep in range(args.reps):
            arms = [("gaudi_nb", lambda: gaudi_nb_arm(script)), ("plain", lambda index=rep + 1: plain_arm(home, script, env, index))]
            for name, arm in arms if rep % 2 == 0 else reversed(arms):
                times[name].append(arm())
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(json.dumps({
            "benchmark": "slurm submit to first step (2 nodes, 1 rank each, gloo, CPU)",
            "reps": args.reps,
            "submit_to_first_step_s": {name: [round(v, 2) for v in values] for name, values in times.items()},
            "median_s": {name: round(v, 2) for name, v in medians.items()},
            "gaudi_nb_minus_plain_s": round(medians["gaudi_nb"] - medians["plain"], 2),
            "gaudi_nb_parts_median_s": {name: round(statistics.median(values), 2) for name, values in PARTS.items()},
            "goal_s": 2.0,
        }, indent=2))
    finally:
        cluster.stop()
        shutil.rmtree(cluster_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
