"""Where this node stands in a multi-node job that a cluster started (Kubernetes operators), read from its environment.

The Kubeflow training operator gives every PyTorchJob pod MASTER_ADDR, MASTER_PORT, WORLD_SIZE
(nodes) and RANK (this pod's node rank); `gaudi-nb k8s render` points the MPIJob launcher at the
hostfile the MPI operator mounts (GAUDI_NB_HOSTFILE). Pure: the environment and the hostfile's
text come in, build_launch's keywords go out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..errors import SpecError

HOSTFILE_ENV = "GAUDI_NB_HOSTFILE"


def parse_hostfile(text: str) -> List[str]:
    """Hosts of an MPI/DeepSpeed hostfile (`host slots=N` lines; comments and blank lines skipped), in order."""
    hosts = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            hosts.append(line.split()[0])
    return hosts


def cluster_launch_options(environ: Mapping[str, str], nodes: int, read: Any = None) -> Dict[str, Any]:
    """build_launch keywords (node_rank, master_addr, master_port, hosts) for a node of a cluster-started job; {} when there is none."""
    options: Dict[str, Any] = {}
    hostfile = environ.get(HOSTFILE_ENV)
    if hostfile:
        try:
            text = (read or (lambda p: Path(p).read_text()))(hostfile)
        except OSError as exc:
            raise SpecError(f"{HOSTFILE_ENV}={hostfile}: cannot read the hostfile ({exc}); the MPI operator mounts it at /etc/mpi/hostfile") from None
        hosts = parse_hostfile(text)
        if len(hosts) != nodes:
            raise SpecError(f"{HOSTFILE_ENV}={hostfile} lists {len(hosts)} host(s) but the run has nodes={nodes}: render the job again with --nodes {len(hosts)}")
        options.update(hosts=hosts, master_addr=hosts[0])
    if nodes > 1 and "RANK" in environ and "MASTER_ADDR" in environ:
        options.update(node_rank=_int(environ, "RANK"), master_addr=environ["MASTER_ADDR"])
        if "MASTER_PORT" in environ:
            options["master_port"] = _int(environ, "MASTER_PORT")
    return options


def _int(environ: Mapping[str, str], name: str) -> Optional[int]:
    try:
        return int(environ[name])
    except ValueError:
        raise SpecError(f"{name}={environ[name]!r} is not a number: the cluster set it; check the job's pod environment") from None
