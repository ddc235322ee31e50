"""`gaudi-nb batch NB --target CLUSTER` on a Slurm cluster: papermill as a one-node job.

The client registers the run as a local batch does and writes what the job needs (job/batch.json:
the notebook, its parameters, the output and manifest paths, the kernel, the cell plan, the
manifest; owner-only, the parameters are the real ones) into the run folder, then submits one
`sbatch -N 1` job whose task runs `python -m gaudi_nb.batch.slurm_job --run-dir DIR`: the same
papermill road as a local batch (execute.run_notebook), its events written where the client reads
them, with the Slurm node's name in `node`. The client hands each event to on_event as it arrives
(the CLI's cell lines), writes `queue` events while Slurm holds the job (its pending reason), and
ends the run itself only when the job ends without a run_end (scancel, a node failure), with
Slurm's state in the reason.

The run folder must be on the cluster's shared filesystem as this machine sees it: the cluster's
run root is this machine's GAUDI_NB_HOME (`slurm:` on the login node, where JupyterLab runs). A
cluster reached over SSH is refused with what to do instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .. import paths
from ..errors import SpecError
from ..events import EventWriter, read_events
from .execute import BatchJob, EventCallback, run_notebook
from .manifest import SecretValue

JOB_FILE = "batch.json"
QUERY_EVERY_S = 1.0


def check_cluster(target: Any, name: str) -> None:
    """A batch notebook can run on `name`: a Slurm cluster whose run root is this machine's run folder; SpecError if not."""
    from ..targets.slurm import SlurmTarget

    if not isinstance(target, SlurmTarget):
        raise SpecError(f"target '{name}': batch notebooks run here (local) or on a Slurm cluster; run gaudi-nb batch on the node itself")
    if target.login.remote or Path(str(target.cluster.get("home") or "")).resolve() != paths.home().resolve():
        raise SpecError(f"target '{name}': a batch notebook on a Slurm cluster runs from its login node (attach it there as slurm: with the same --run-root as GAUDI_NB_HOME)")


def _job_options(target: Any, job: BatchJob, folder: Path) -> list:
    slurm = target.slurm
    options = [f"--job-name=gaudi-nb-{job.run_id}", "--nodes=1", "--ntasks-per-node=1", f"--partition={slurm.get('partition')}",
               f"--output={folder}/slurm-%j.out", f"--chdir={Path(job.notebook).parent}", "--no-requeue"]
    options += [f"--account={slurm['account']}"] if slurm.get("account") else []
    options += [f"--qos={slurm['qos']}"] if slurm.get("qos") else []
    return options


def run_on_cluster(name: str, job: BatchJob, on_event: Optional[EventCallback]) -> None:
    """Submit the notebook's job and follow its events until the run ends (the job's run_end, or ours when Slurm ended it)."""
    from ..targets import target_for

    target: Any = target_for(name)  # a SlurmTarget: check_cluster said so
    folder = Path(job.run_dir) / "job"
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {**dataclasses.asdict(job), "secret": [k for k, v in job.parameters.items() if isinstance(v, SecretValue)]}
    fd = os.open(folder / JOB_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(inputs, fh, default=str)
    python = target.cluster.get("python") or "python3"
    task = " ".join(shlex.quote(p) for p in (python, "-m", "gaudi_nb.batch.slurm_job", "--run-dir", job.run_dir))
    home = f"GAUDI_NB_HOME={shlex.quote(str(target.cluster['home']))} " if target.cluster.get("home") else ""
    job_id = target.login.slurm("sbatch", "--parsable", *_job_options(target, job, folder), "--wrap", f"{home}exec srun {task}").strip().split(";")[0]
    _follow(target, name, job, job_id, on_event)


def _follow(target: Any, name: str, job: BatchJob, job_id: str, on_event: Optional[EventCallback]) -> None:
    """Hand the run's events to on_event until its run_end; `queue` events while Slurm holds the job; the run's
    end here, with Slurm's state, when the job ended without one."""
    from ..nodes.slurm import job as job_state

    events_path, offset, said, asked = Path(job.run_dir) / "events.jsonl", 0, None, 0.0
    ended = ""  # Slurm's state once the job is over
    writer = EventWriter(events_path, job.run_id, node=name)
    try:
        while True:
            events, offset = read_events(events_path, offset)
            for event in events:
                if on_event is not None and event.get("type") != "job":
                    on_event(event)
                if event.get("type") == "run_end":
                    return
            if ended:  # the job is over and its events are all read: it wrote no end
                end = writer.emit("run_end", status="failed", exit_code=None, reason=f"Slurm job {job_id} {ended} before the notebook ended")
                if on_event is not None:
                    on_event(end)
                return
            if time.monotonic() - asked < QUERY_EVERY_S:
                time.sleep(0.1)
                continue
            asked = time.monotonic()
            state = job_state(target.login, job_id)
            if state["state"] in ("PENDING", "RUNNING") and (state["state"], state["reason"]) != said:
                said = (state["state"], state["reason"])
                writer.emit("job", scheduler="slurm", job_id=job_id, partition=target.slurm.get("partition"), state=state["state"],
                            reason=state["reason"] if state["state"] == "PENDING" else None, nodes=state["nodes"] or None)
            elif state["state"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                ended = state["state"] if state["state"] != "GONE" else "ended"
    finally:
        writer.close()


def main(argv: Optional[list] = None) -> None:
    """The job's task: the notebook through papermill, as a local batch runs it, on this Slurm node."""
    parser = argparse.ArgumentParser(description="a batch notebook's Slurm task")
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    inputs: Dict[str, Any] = json.loads((args.run_dir / "job" / JOB_FILE).read_text())
    secret = set(inputs.pop("secret", []))
    inputs["parameters"] = {k: SecretValue(v) if k in secret else v for k, v in inputs["parameters"].items()}
    run_notebook(BatchJob(**inputs), None, node=os.environ.get("SLURMD_NODENAME") or "slurm")


if __name__ == "__main__":
    main()
