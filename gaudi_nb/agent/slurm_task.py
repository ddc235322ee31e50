"""The task Slurm starts on each allocated node (`srun ... python -m gaudi_nb.agent.commands slurm-task`).

It turns the job's environment into what the agent reads, then runs the agent in its own process (Slurm's
signals reach it): this node's part of the run, `<run folder>/nodes/<SLURMD_NODENAME>/`, with
the run's spec and the node's run.json. Across nodes the `cluster` block comes from Slurm, not
from the client: the node rank is SLURM_NODEID, the nodes are SLURM_JOB_NODELIST, and node 0's
task writes the master address (the first node's NodeAddr from `scontrol show node`: node names
need not resolve) and two ports free there into `cluster-<job id>.json` on the shared
filesystem, which the other nodes' tasks wait for. The cards: HABANA_VISIBLE_MODULES from
SLURM_STEP_GPUS/SLURM_JOB_GPUS on stock Slurm (launch/slurm.py's visible_modules).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..launch.slurm import expand_hosts, parse_record, visible_modules
from ..private import write_atomic
from ..rundir import RunFolder

TIME_LIMIT = "before Slurm's time limit"  # a stop the job's time-limit warning asked: what its run_end says
CLUSTER_WAIT_S = 120.0  # how long a node waits for node 0's cluster file (node 0's task may start later)


def node_addresses(names: list) -> Dict[str, str]:
    """Each node's NodeAddr as scontrol says (its name where scontrol cannot be asked)."""
    try:
        out = subprocess.run(["scontrol", "-o", "show", "node", ",".join(names)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    found = {r["NodeName"]: r.get("NodeAddr") or r["NodeName"] for r in map(parse_record, out.splitlines()) if r.get("NodeName")}
    return {name: found.get(name, name) for name in names}


def _free_ports(count: int) -> list:
    from .commands import free_ports

    return free_ports(count)


def cluster_block(root: Path, environ: Mapping[str, str], names: list, rank: int, token: str) -> Dict[str, Any]:
    """run.json's `cluster` for this node: node 0 writes where the rendezvous is, the others read it."""
    shared = root / "job" / f"cluster-{environ['SLURM_JOB_ID']}-{environ.get('SLURM_RESTART_COUNT', '0')}.json"
    if rank == 0:
        addresses = node_addresses(names)
        ports = _free_ports(2)
        where = {"master_addr": addresses[names[0]], "master_port": ports[0], "control_port": ports[1], "hosts": [addresses[n] for n in names]}
        tmp = shared.with_suffix(".tmp")
        tmp.write_text(json.dumps(where))
        os.replace(tmp, shared)
    deadline = time.monotonic() + CLUSTER_WAIT_S
    while not shared.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"slurm-task: node 0 wrote no {shared.name} in {CLUSTER_WAIT_S:.0f} s")
        time.sleep(0.1)
    where = json.loads(shared.read_text())
    return {"nodes": names, "node_rank": rank, "token": token, **where}


def part_name(root: Path, environ: Mapping[str, str], names: list) -> str:
    """This node's part: its Slurm node's name; a one-node job that Slurm started again keeps the run's one part
    (its events and checkpoints) wherever Slurm starts it."""
    name = environ.get("SLURMD_NODENAME") or socket.gethostname()
    if len(names) == 1 and int(environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        parts = [p.parent.name for p in (root / "nodes").glob("*/run.json")]
        if len(parts) == 1:
            return parts[0]
    return name


def make_part(root: Path, environ: Mapping[str, str]) -> Path:
    """This node's part of the run (spec.json, run.json, the sent environment, code/); returns its folder."""
    host = environ.get("SLURMD_NODENAME") or socket.gethostname()
    names = expand_hosts(environ["SLURM_JOB_NODELIST"])
    name = part_name(root, environ, names)
    rank = int(environ.get("SLURM_NODEID") or 0)
    template = json.loads((root / "job" / "run.json").read_text())
    part = RunFolder(root / "nodes" / name)
    for where in (part.path, part.logs, part.control):
        where.mkdir(parents=True, exist_ok=True)
    if not part.spec.exists():  # a later start keeps the part's spec (`gaudi-nb resume --max-steps` changed it there)
        shutil.copyfile(root / "job" / "spec.json", part.spec)
    sent = root / "job" / "control" / "environment.json"
    if sent.exists():
        fd = os.open(part.control / "environment.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(sent.read_text())
    archive = root / "code.tar"
    if archive.exists():
        from ..workdir import code_dir

        with tarfile.open(archive) as tar:
            tar.extractall(code_dir(part.path), filter="data")
    run = {key: template[key] for key in ("run_id", "target", "created_at", "client") if key in template}
    run.update(node=name, hostname=socket.gethostname(), slurm={"job_id": environ["SLURM_JOB_ID"], "node_rank": rank, "host": host,
                                                                "restart": int(environ.get("SLURM_RESTART_COUNT") or 0)})
    if len(names) > 1:
        run["cluster"] = cluster_block(root, environ, names, rank, template["token"])
    write_atomic(part.run, json.dumps(run))  # owner-only: across nodes it holds the run's token
    return part.path


def main(root: Path, environ: Mapping[str, str] = os.environ) -> None:
    """Make this node's part and supervise it in this process (Slurm's signals reach the agent; no second
    Python start before the ranks): what `python -m gaudi_nb.agent` does, its output in logs/agent.log."""
    root = root.resolve()
    part = RunFolder(make_part(root, environ))
    restart = int(environ.get("SLURM_RESTART_COUNT") or 0)
    if restart > 0:  # Slurm's requeue: the next attempt from the last checkpoint, or nothing left to do
        from .requeue import go_on, output_of

        job_id = environ["SLURM_JOB_ID"]
        if not go_on(part, job_id, restart, output_of(root, job_id), environ.get("SLURMD_NODENAME") or socket.gethostname()):
            return
    os.environ.update(visible_modules(environ))
    os.chdir(part.path)
    log = os.open(part.agent_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    from .supervisor import supervise

    supervise(part)


def ask_stop(folder: RunFolder, reason: str, nodes: int, why: Optional[str] = None) -> bool:
    """Ask node 0's agent to stop the run: across nodes it picks the step and tells the others (stop_nodes.json),
    on one node its ranks read the request. Only files: the agents are on compute nodes, not where this runs.
    why: what asked, where it is not a person (the time limit's warning), for the run's end to say."""
    from .stop import STOP_NODES

    if nodes <= 1:
        return folder.request_stop(reason, why=why)
    folder.control.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder.control / STOP_NODES, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump({"reason": reason, "t": time.time(), **({"why": why} if why else {})}, fh)
    return True
