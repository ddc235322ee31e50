"""A Slurm cluster as an attached target: where its commands run, what it has, and attaching it.

`slurm:` runs Slurm's commands on this machine (JupyterLab on a login node, Open OnDemand's
usual case); `slurm://USER@LOGIN[:PORT]` runs them on a login node over SSH, through this
process's links (link.py), as every command to an SSH node goes. No command ever goes to a
compute node: jobs go through sbatch, and the run's files through the cluster's shared
filesystem (`--run-root`), which the login node and every compute node see at the same path.

The cluster's record is a node record (the store's nodes table) whose url is `slurm:` or
`slurm://...`, whose `home` is the run root, and whose `resources` hold what Slurm said:
{"slurm": {"partition", "account", "qos", "gres", "nodes": [{name, state, gres, cpus, addr}]}}.
"""
from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import GaudiNbError, NotFoundError, SpecError
from ..launch.slurm import SQUEUE_FORMAT, Gres, accelerators, expand_hosts, job_state, parse_gres, parse_record, parse_squeue
from ..version import __version__

SLURM_URL = re.compile(r"^slurm:(?://(?P<user>[^@/\s]+)@(?P<host>[^:/\s]+)(?::(?P<port>\d+))?)?/?$")


def is_cluster(record: Dict[str, Any]) -> bool:
    return str(record.get("url") or "").startswith("slurm:")


def parse_slurm_url(url: str) -> Tuple[Optional[str], Optional[str], int]:
    """(user, login host, port) of slurm://USER@LOGIN[:PORT]; (None, None, 22) for `slurm:` (this machine)."""
    match = SLURM_URL.match(url.strip())
    if not match:
        raise SpecError(f"url: {url} is not a Slurm address: slurm: (Slurm's commands on this machine) or slurm://USER@LOGIN[:PORT]")
    return match["user"], match["host"], int(match["port"] or 22)


class Login:
    """Where the cluster's commands run: this machine, or its login node over SSH (the node record's address)."""

    def __init__(self, record: Dict[str, Any]) -> None:
        self.record = record
        self.remote = bool(record.get("host")) and str(record.get("url", "")).startswith("slurm://")

    def run(self, argv: List[str], *, input: Optional[str] = None, timeout: float = 60.0) -> Tuple[int, str, str]:
        """(exit status, stdout, stderr) of a command there. UnreachableError when the login node does not answer."""
        if self.remote:
            from .link import links

            env = f"GAUDI_NB_HOME={shlex.quote(self.record['home'])} " if self.record.get("home") else ""
            return links().run(self.record, env + shlex.join(argv), timeout=timeout, input=input)
        try:
            done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: command not found"
        return done.returncode, done.stdout, done.stderr

    def slurm(self, *argv: str, input: Optional[str] = None, timeout: float = 60.0) -> str:
        """A Slurm command's output; GaudiNbError with Slurm's own last line when it fails."""
        status, out, err = self.run(list(argv), input=input, timeout=timeout)
        if status != 0:
            raise GaudiNbError(slurm_message(err) or f"{argv[0]} exited {status}")
        return out

    def read_text(self, path: str) -> str:
        """A file there ('' if it cannot be read)."""
        if self.remote:
            status, out, _ = self.run(["cat", path])
            return out if status == 0 else ""
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return ""

    def put_bytes(self, path: str, data: bytes, mode: Optional[int] = None) -> None:
        if self.remote:
            from .link import links

            links().put_bytes(self.record, path, data, mode)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode or 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    def put_file(self, local: Path, path: str) -> None:
        if self.remote:
            from .link import links

            links().put_file(self.record, local, path)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, path)

    def mirror(self, path: str, local: Path) -> None:
        """Bring the file's new bytes here: over SSH a mirror from its offset (link.py); on this machine a copy
        of what was appended since (nothing where the run root is this machine's GAUDI_NB_HOME: it is that file)."""
        if self.remote:
            from .link import links

            links().mirror(self.record, path, local, remote_run_dir=str(Path(path).parent))
            return
        source = Path(path)
        if source.resolve() == Path(local).resolve():
            return
        try:
            size = local.stat().st_size if local.exists() else 0
            with open(source, "rb") as fh:
                fh.seek(size)
                data = fh.read()
        except OSError:
            return
        if data:
            local.parent.mkdir(parents=True, exist_ok=True)
            with open(local, "ab") as out:
                out.write(data)


def slurm_message(stderr: str) -> str:
    """Slurm's own words from a failed command (its last error line, without the `sbatch: error:` prefix)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    last = re.sub(r"^(sbatch|srun|squeue|sinfo|scontrol|scancel): error: ", "", last)
    return re.sub(r"^(Batch job submission failed|allocation failure): ", "", last)


def cluster_nodes(login: Login, partition: str) -> List[Dict[str, Any]]:
    """The partition's nodes as scontrol reads them: name, state, GRES (the accelerator's type and count), CPUs, address."""
    out = login.slurm("sinfo", "-h", "-N", "-p", partition, "-o", "%N")
    names = sorted(set(out.split()))
    if not names:
        return []
    nodes = []
    for line in login.slurm("scontrol", "-o", "show", "node", ",".join(names)).splitlines():
        record = parse_record(line)
        if not record.get("NodeName"):
            continue
        gres = accelerators(parse_gres(record.get("Gres")))
        nodes.append({"name": record["NodeName"], "state": record.get("State", "").lower(), "cpus": int(record.get("CPUTot") or 0),
                      "gres": None if gres is None else {"name": gres.name, "type": gres.type, "count": gres.count},
                      "addr": record.get("NodeAddr") or record["NodeName"]})
    return nodes


def partition_gres(nodes: List[Dict[str, Any]]) -> Optional[Gres]:
    """The accelerator GRES a run asks for: the one the partition's nodes have (the smallest count of them), None without."""
    found = [node["gres"] for node in nodes if node.get("gres")]
    if not found:
        return None
    smallest = min(found, key=lambda g: g["count"])
    return Gres(smallest["name"], smallest["type"], smallest["count"])


def check_partition(login: Login, partition: str) -> None:
    status, out, err = login.run(["sinfo", "-h", "-o", "%R"])
    if status != 0:
        raise SpecError(f"sinfo does not answer{' on ' + str(login.record.get('host')) if login.remote else ''}: {slurm_message(err) or 'exit ' + str(status)}: is Slurm's client installed and SLURM_CONF set?")
    partitions = sorted(set(out.split()))
    if partition not in partitions:
        raise SpecError(f"partition: the cluster has no partition '{partition}': use --partition {' or '.join(partitions) or 'NAME'} (sinfo lists them)")


def _check_gaudi_nb(login: Login, python: str, run_root: str) -> str:
    """The version of gaudi_nb `python` imports from the run root (where the jobs start); SpecError if not this client's."""
    probe = f"mkdir -p {shlex.quote(run_root)} && cd {shlex.quote(run_root)} && {shlex.quote(python)} -c 'import gaudi_nb.version as v; print(v.__version__)'"
    status, out, err = login.run(["sh", "-c", probe])
    found = out.strip().splitlines()[-1] if status == 0 and out.strip() else None
    if found != __version__:
        why = f"has gaudi_nb {found}" if found else f"cannot import gaudi_nb ({slurm_message(err) or 'not installed'})"
        raise SpecError(f"--python {python} {why} under {run_root} and this client is {__version__}: pip install gaudi_nb=={__version__} on the cluster's shared filesystem and give that --python")
    return found


def attach_cluster(url: str, *, name: Optional[str], partition: Optional[str], account: Optional[str] = None, qos: Optional[str] = None,
                   run_root: Optional[str] = None, price_per_hour: Optional[float] = None, python: Optional[str] = None,
                   identity_file: Optional[str] = None, trust_new_host: bool = False, store: Any = None,
                   progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Attach a Slurm cluster: sinfo answers, the partition exists, its nodes' GRES and CPUs, gaudi_nb importable under the run root; record it."""
    from ..paths import home
    from ..store import RunStore
    from .attach import check_name

    user, host, port = parse_slurm_url(url)
    if not name:
        raise SpecError("name: a cluster needs --name (what runs call it: --target NAME)")
    check_name(name)
    store = store or RunStore()
    say = progress or (lambda message: None)
    record: Dict[str, Any] = {"name": name, "url": url.strip(), "user": user or getpass.getuser(), "host": host or "localhost", "port": port,
                              "identity_file": identity_file, "python": python, "home": run_root, "attached_at": time.time()}
    if host:
        found = _login_probe(record, python=python, trust_new_host=trust_new_host, progress=say)
        record.update(python=python or found.executable, home=run_root or found.home)
    else:
        record.update(python=python or sys.executable, home=run_root or str(home()))
    login = Login(record)
    partition = partition or _default_partition(login)
    say(f"checking partition {partition}")
    check_partition(login, partition)
    nodes = cluster_nodes(login, partition)
    if not nodes:
        raise SpecError(f"partition: {partition} has no nodes (sinfo -p {partition}): pick a partition with nodes")
    gres = partition_gres(nodes)
    version = _check_gaudi_nb(login, record["python"], record["home"])
    record.update(accelerator="hpu" if gres else "cpu", device_count=gres.count if gres else 0, gaudi_nb_version=version, price_per_hour=price_per_hour,
                  price_source="--price-per-hour" if price_per_hour is not None else None,
                  resources={"slurm": {"partition": partition, "account": account, "qos": qos, "gres": gres.request(gres.count) if gres else None, "nodes": nodes}})
    try:
        existing = store.get_node(name)
    except NotFoundError:
        return store.add_node(record)
    if existing["url"] != record["url"]:
        raise SpecError(f"a node named '{name}' is attached already at {existing['url']}: pick another --name, or gaudi-nb nodes detach {name} first")
    return store.update_node(name, **{k: v for k, v in record.items() if k != "name"})


def _default_partition(login: Login) -> str:
    status, out, err = login.run(["sinfo", "-h", "-o", "%P"])
    if status != 0:
        raise SpecError(f"sinfo does not answer: {slurm_message(err) or 'exit ' + str(status)}: is Slurm's client installed and SLURM_CONF set?")
    default = [p.rstrip("*") for p in out.split() if p.endswith("*")]
    if not default:
        raise SpecError("partition: the cluster has no default partition: give --partition NAME (sinfo lists them)")
    return default[0]


def _login_probe(record: Dict[str, Any], *, python: Optional[str], trust_new_host: bool, progress: Callable[[str], None]) -> Any:
    """The login node over SSH, as an SSH attach sees a node: gaudi_nb there (installed into its GAUDI_NB_HOME/env unless --python)."""
    from .attach import _inspect
    from .ssh import parse_ssh_url, run_sync

    address = parse_ssh_url(f"ssh://{record['user']}@{record['host']}:{record['port']}", identity_file=record.get("identity_file"))
    return run_sync(lambda: _inspect(address, python=python, trust_new_host=trust_new_host, progress=progress))


def refresh_nodes(record: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The cluster's nodes now (state, GRES), for `nodes list` and `nodes check`."""
    slurm = (record.get("resources") or {}).get("slurm") or {}
    return cluster_nodes(Login(record), slurm.get("partition") or "")


def cluster_check(record: Dict[str, Any]) -> Tuple[bool, List[Tuple[str, bool]]]:
    """`gaudi-nb nodes check` of a cluster: sinfo answers, the partition, each node's state and GRES, gaudi_nb under the run root."""
    login, slurm = Login(record), (record.get("resources") or {}).get("slurm") or {}
    lines: List[Tuple[str, bool]] = []
    try:
        check_partition(login, slurm.get("partition") or "")
        lines.append((f"✓ partition {slurm.get('partition')}: sinfo answers", True))
        for node in cluster_nodes(login, slurm.get("partition") or ""):
            usable = not any(word in node["state"] for word in ("down", "drain", "fail"))
            lines.append((f"{'✓' if usable else '✗'} node {describe_nodes([node])}, {node['cpus']} CPUs, at {node['addr']}", usable))
        version = _check_gaudi_nb(login, record.get("python") or "python3", record.get("home") or ".")
        lines.append((f"✓ gaudi_nb {version} under {record.get('home')}", True))
    except (SpecError, GaudiNbError) as exc:
        lines.append((f"✗ {exc}", False))
    return all(fine for _, fine in lines), lines


def describe_nodes(nodes: List[Dict[str, Any]]) -> str:
    """`n1 idle gpu:hl225:4, n2 mixed gpu:hl225:4`: one line of a cluster's nodes."""
    def gres(node: Dict[str, Any]) -> str:
        g = node.get("gres")
        return Gres(g["name"], g["type"], g["count"]).request(g["count"]) if g else f"{node.get('cpus')} CPUs"

    return ", ".join(f"{node['name']} {node.get('state')} {gres(node)}" for node in nodes)


def job(login: Login, job_id: str) -> Dict[str, Any]:
    """A job's state now: {state, reason, nodes (names, once allocated), partition}; state GONE once Slurm has forgotten it.

    squeue while it is queued or running; after the end scontrol, which keeps it MinJobAge seconds
    (there is no sacct without slurmdbd)."""
    status, out, _ = login.run(["squeue", "-h", "-j", job_id, "-o", SQUEUE_FORMAT])
    found = parse_squeue(out) if status == 0 else []
    if found:
        line = found[0]
        nodes = expand_hosts(line["nodes"]) if line["nodes"] and line["state"] != "PENDING" else []
        return {"state": line["state"], "reason": line["reason"] if line["reason"] not in ("None", "(null)") else None,
                "nodes": nodes, "partition": line["partition"]}
    status, out, _ = login.run(["scontrol", "-o", "show", "job", job_id])
    record = parse_record(out) if status == 0 else {}
    if not record.get("JobState"):
        return {"state": "GONE", "reason": None, "nodes": [], "partition": None}
    listed = record.get("NodeList") or ""
    return {"state": job_state(record), "reason": record.get("Reason") if record.get("Reason") not in (None, "None") else None,
            "nodes": expand_hosts(listed) if listed and listed != "(null)" else [], "partition": record.get("Partition")}
