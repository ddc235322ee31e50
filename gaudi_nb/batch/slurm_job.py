"""`gaudi-nb batch NB --target CLUSTER` on a Slurm cluster: papermill as a one-node job.

The client registers the run as a local batch does and writes what the job needs (job/batch.json:
the notebook, its parameters, the output and manifest paths, the kernel, the cell plan, the
manifest; owner-only, the parameters are the real ones) into the run folder, then submits one
`sbatch -N 1` job whose task runs `python -m gaudi_nb.batch.slurm_job --run-dir DIR`: the same
papermill road as a local batch (execute.run_notebook), its events written where the client reads
them, with the Slurm node's name in `node`. The client hands each event to on_event as it arrives
(the CLI's cell lines), writes `job` events while Slurm holds the job (its pending reason), and
ends the run itself only when the job ends without a run_end (scancel, a node failure), with
Slurm's state in the reason.

Where the cluster's run root is this machine's GAUDI_NB_HOME (`slurm:` on the login node, where
JupyterLab runs) the job runs in the run folder itself. Elsewhere (a login node over SSH, another
--run-root) the run folder here holds what the client keeps and the job gets its own on the cluster's
shared filesystem, `<run root>/runs/<run id>/`: the notebook is sent there (the files beside it are
not: the notebook runs from that folder), its events come back as a train run's do (mirrored through
the login node) into the run's events here, and the output notebook and manifest are brought back
when it ends (an s3:// output is written from the cluster).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import posixpath
import shlex
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .. import paths
from ..errors import SpecError
from ..events import EventWriter, read_events
from .execute import MANIFEST_NAME, OUTPUT_NAME, BatchJob, EventCallback, is_remote, run_notebook, write_text
from .manifest import SecretValue

JOB_FILE = "batch.json"
QUERY_EVERY_S = 1.0


def check_cluster(target: Any, name: str) -> None:
    """A batch notebook can run on `name`: a Slurm cluster; SpecError if not."""
    from ..targets.slurm import SlurmTarget

    if not isinstance(target, SlurmTarget):
        raise SpecError(f"target '{name}': batch notebooks run here (local) or on a Slurm cluster; run gaudi-nb batch on the node itself")


def shares_run_folder(target: Any) -> bool:
    """The cluster's run root is this machine's GAUDI_NB_HOME: the job runs in the run folder here."""
    return not target.login.remote and Path(str(target.cluster.get("home") or "")).resolve() == paths.home().resolve()


def on_cluster(target: Any, job: BatchJob) -> BatchJob:
    """The job as the cluster's task reads it where the run folder is not shared: its own run folder under the
    cluster's run root, the notebook sent there, the output notebook and manifest written there (brought back
    at the end; an s3:// output as given)."""
    root = target.root(job.run_id)
    notebook = posixpath.join(root, "job", Path(job.notebook).name)
    target.login.put_file(Path(job.notebook), notebook)
    output = job.output_path if is_remote(job.output_path) else posixpath.join(root, OUTPUT_NAME)
    manifest = job.manifest_path if is_remote(job.manifest_path) else posixpath.join(root, MANIFEST_NAME)
    return dataclasses.replace(job, run_dir=root, notebook=notebook, output_path=output, manifest_path=manifest)


def bring_back(target: Any, job: BatchJob, there: BatchJob) -> None:
    """The output notebook and manifest the job wrote on the cluster, to where this run keeps them here."""
    pairs = [(there.output_path, job.output_path), (there.manifest_path, job.manifest_path), (there.manifest_path, str(Path(job.run_dir) / MANIFEST_NAME))]
    for remote, local in pairs:
        if is_remote(local) or remote == local:
            continue
        text = target.login.read_text(remote)
        if text:
            write_text(text, local)


def _job_options(target: Any, job: BatchJob, folder: str) -> list:
    slurm = target.slurm
    options = [f"--job-name=gaudi-nb-{job.run_id}", "--nodes=1", "--ntasks-per-node=1", f"--partition={slurm.get('partition')}",
               f"--output={folder}/slurm-%j.out", f"--chdir={posixpath.dirname(job.notebook)}", "--no-requeue"]
    options += [f"--account={slurm['account']}"] if slurm.get("account") else []
    options += [f"--qos={slurm['qos']}"] if slurm.get("qos") else []
    return options


def run_on_cluster(name: str, job: BatchJob, on_event: Optional[EventCallback]) -> None:
    """Submit the notebook's job and follow its events until the run ends (the job's run_end, or ours when Slurm ended it)."""
    from ..targets import target_for

    target: Any = target_for(name)  # a SlurmTarget: check_cluster said so
    shared = shares_run_folder(target)
    there = job if shared else on_cluster(target, job)
    folder = posixpath.join(there.run_dir, "job")
    inputs = {**dataclasses.asdict(there), "secret": [k for k, v in job.parameters.items() if isinstance(v, SecretValue)]}
    target.login.put_bytes(posixpath.join(folder, JOB_FILE), json.dumps(inputs, default=str).encode(), 0o600)  # the real parameters: owner-only
    python = target.cluster.get("python") or "python3"
    task = " ".join(shlex.quote(p) for p in (python, "-m", "gaudi_nb.batch.slurm_job", "--run-dir", there.run_dir))
    home = f"GAUDI_NB_HOME={shlex.quote(str(target.cluster['home']))} " if target.cluster.get("home") else ""
    job_id = target.login.slurm("sbatch", "--parsable", *_job_options(target, there, folder), "--wrap", f"{home}exec srun {task}").strip().split(";")[0]
    _follow(target, name, job, job_id, on_event, None if shared else posixpath.join(there.run_dir, "events.jsonl"))
    if not shared:
        bring_back(target, job, there)


def _follow(target: Any, name: str, job: BatchJob, job_id: str, on_event: Optional[EventCallback], remote_events: Optional[str] = None) -> None:
    """Hand the run's events to on_event until its run_end; `job` events while Slurm holds the job; the run's
    end here, with Slurm's state, when the job ended without one. remote_events: the job's events on the cluster,
    brought into the run's events here as they come."""
    from ..nodes.slurm import job as job_state

    events_path, offset, said, asked = Path(job.run_dir) / "events.jsonl", 0, None, 0.0
    ended = ""  # Slurm's state once the job is over
    writer = EventWriter(events_path, job.run_id, node=name)
    copied = _Copied(target, remote_events, Path(job.run_dir) / "job" / "events.jsonl", events_path) if remote_events else None
    try:
        while True:
            if copied is not None:
                copied.take()
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


class _Copied:
    """The job's events on the cluster, mirrored here (job/events.jsonl), their complete lines appended to the run's events."""

    def __init__(self, target: Any, remote: str, mirror: Path, events: Path) -> None:
        self.target, self.remote, self.mirror, self.events, self.offset = target, remote, mirror, events, 0

    def take(self) -> None:
        self.target.login.mirror(self.remote, self.mirror)
        try:
            with open(self.mirror, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return
        whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits for its newline
        if whole:
            fd = os.open(self.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, whole)
            finally:
                os.close(fd)
            self.offset += len(whole)


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
