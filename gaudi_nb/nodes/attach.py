"""Attach a node over SSH: connect, make sure this client's gaudi_nb is there, see what it has, record it in the store."""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from ..errors import NotFoundError, SpecError
from ..version import __version__
from .bootstrap import Probe, ensure_env, probe
from .ssh import SshAddress, open_connection, parse_ssh_url, run_sync

if TYPE_CHECKING:
    from ..store import RunStore

# a node's name is a --target value: the same form spec.parse_target reads as a node
NAME = re.compile(r"^[A-Za-z][\w.\-]{0,127}$")
RESERVED = {"local"}


def address_of(record: Dict[str, Any]) -> SshAddress:
    """The SSH address of a node record, as open_connection takes it."""
    return SshAddress(user=record["user"], host=record["host"], port=int(record.get("port") or 22), identity_file=record.get("identity_file"), jump=record.get("jump"))


def default_name(address: SshAddress) -> str:
    name = address.host if NAME.match(address.host) else "node-" + re.sub(r"[^\w.\-]", "-", address.host)
    return name if address.port == 22 else f"{name}-{address.port}"


def check_name(name: str) -> str:
    if name in RESERVED or not NAME.match(name):
        raise SpecError(f"'{name}' cannot name a node: use a letter, then letters, digits, '.', '_' or '-' (not 'local'), as in --name gaudi1")
    return name


def attach(
    url: str,
    *,
    name: Optional[str] = None,
    identity_file: Optional[str] = None,
    jump: Optional[str] = None,
    python: Optional[str] = None,
    trust_new_host: bool = False,
    kubeconfig: Optional[str] = None,
    image: Optional[str] = None,
    storage_class: Optional[str] = None,
    price_per_hour: Optional[float] = None,
    store: "Optional[RunStore]" = None,
    progress: Optional[Callable[[str], None]] = None,
    **cluster: Any,
) -> Dict[str, Any]:
    """Attach the node at `url` (ssh://user@host[:port]) as `name` and return its record; a Kubernetes
    cluster (k8s://CONTEXT[/NAMESPACE]) is attached by nodes/cluster.py with the options after trust_new_host.

    `python`: an interpreter on the node that has this client's gaudi_nb version (checked);
    without it, this client's own build is installed into `<node GAUDI_NB_HOME>/env`
    (`~/.gaudi_nb/env`) once, and reused by later attaches. Attaching a name again with the
    same address refreshes its record. Nothing is recorded when any step fails.
    A Slurm cluster (`slurm:`, `slurm://USER@LOGIN`) takes `cluster`'s keywords (nodes/slurm.py).
    """
    from ..store import RunStore

    if url.strip().startswith("k8s://"):
        from .cluster import attach_cluster

        return attach_cluster(url, name=name, kubeconfig=kubeconfig, image=image, storage_class=storage_class, price_per_hour=price_per_hour, store=store, progress=progress)
    if url.strip().startswith("slurm:"):
        from .slurm import attach_cluster as attach_slurm

        return attach_slurm(url, name=name, identity_file=identity_file, python=python, trust_new_host=trust_new_host, store=store, progress=progress,
                            price_per_hour=price_per_hour, **cluster)
    if any(value is not None for value in cluster.values()):
        raise SpecError(f"--{next(k for k, v in cluster.items() if v is not None).replace('_', '-')} is for a Slurm cluster (slurm: or slurm://USER@LOGIN)")

    address = parse_ssh_url(url, identity_file=identity_file, jump=jump)
    name = check_name(name or default_name(address))
    store = store or RunStore()
    try:
        existing: Optional[Dict[str, Any]] = store.get_node(name)
    except NotFoundError:
        existing = None
    if existing is not None and existing["url"] != address.url():
        raise SpecError(f"a node named '{name}' is attached already at {existing['url']}: pick another --name, or gaudi-nb nodes detach {name} first")

    found = run_sync(lambda: _inspect(address, python=python, trust_new_host=trust_new_host, progress=progress))
    record = node_record(name, address, found, python=python)
    if existing is not None:
        record.pop("owner", None)  # the teammate who attached it first keeps it
        updated = store.update_node(name, **{k: v for k, v in record.items() if k != "name"})
        store.audit("attach", name, detail={"url": updated["url"], "again": True})
        return updated
    return store.add_node(record)  # its audit entry in the same transaction


async def _inspect(address: SshAddress, *, python: Optional[str], trust_new_host: bool, progress: Optional[Callable[[str], None]]) -> Probe:
    connection = await open_connection(address, trust_new_host=trust_new_host)
    try:
        if python:
            return _checked_python(python, await probe(connection, python, "doctor", "modules"))
        return await ensure_env(connection, progress=progress)
    finally:
        connection.close()
        await connection.wait_closed()


def _checked_python(python: str, found: Optional[Probe]) -> Probe:
    install = "or leave out --python to have attach install this client's build into ~/.gaudi_nb/env on the node"
    if found is None:
        raise SpecError(f"--python {python} does not run on the node: give the path of a Python 3.10+ there, {install}")
    if found.version is None:
        raise SpecError(f"--python {python} has no gaudi_nb ({found.get('gaudi_nb_error') or 'not importable'}): pip install gaudi_nb=={__version__} with it, {install}")
    if found.version != __version__:
        raise SpecError(f"--python {python} has gaudi_nb {found.version} and this client is {__version__}: pip install gaudi_nb=={__version__} with it, {install}")
    return found


def node_record(name: str, address: SshAddress, found: Probe, *, python: Optional[str] = None) -> Dict[str, Any]:
    """The store's record of a node from what its gaudi_nb reported (doctor and hl-smi).

    `python`: the path the user gave, kept as given (a wrapper script or a conda shim may set up
    more than the interpreter it ends in); otherwise the env's interpreter.
    """
    doctor = found.get("doctor") or {}
    modules = found.get("modules") or {}
    accelerator = doctor.get("accelerator") or "unknown"
    return {
        "name": name,
        "url": address.url(),
        "user": address.user,
        "host": address.host,
        "port": address.port,
        "identity_file": address.identity_file,
        "jump": address.jump,
        "python": python or found.executable,
        "home": found.home,
        "accelerator": accelerator,
        "device_count": _device_count(accelerator, modules),
        "driver_version": modules.get("driver_version") or _doctor_found(doctor, "Gaudi driver"),
        "firmware_version": modules.get("firmware_version") or _doctor_found(doctor, "Gaudi firmware"),
        "gaudi_nb_version": found.version,
        "attached_at": time.time(),
    }


def _device_count(accelerator: str, modules: Dict[str, Any]) -> Optional[int]:
    if modules.get("present") is not None:
        return len(modules["present"])
    if accelerator == "cpu":
        return 0  # no accelerator card; runs use the CPU
    return None  # unknown (a CUDA node: the doctor does not count GPUs)


def _doctor_found(doctor: Dict[str, Any], row: str) -> Optional[str]:
    """A version from the doctor's row; None where the row says there is no card."""
    for check in doctor.get("checks") or []:
        if check.get("name") == row:
            text = str(check.get("found") or "")
            return text if re.match(r"^\s*v?\d", text) else None
    return None


def detach(name: str, *, store: "Optional[RunStore]" = None) -> Dict[str, Any]:
    """Forget a node (nothing on the node is touched); returns the record it had.

    A machine gaudi_nb provisioned that still exists is not forgotten: it is billed until
    `gaudi-nb nodes down`, and its record is what `down` finds it by."""
    from ..store import RunStore

    store = store or RunStore()
    record = store.get_node(name)
    if record.get("provider") and record.get("state") != "terminated":
        raise SpecError(f"{name} is an {record['provider']} machine gaudi_nb provisioned, still {record.get('state')}: gaudi-nb nodes down {name} terminates it")
    return store.remove_node(name)


def nodes(*, store: "Optional[RunStore]" = None) -> List[Dict[str, Any]]:
    from ..store import RunStore

    return (store or RunStore()).list_nodes()
