"""Preflight: before a launch, say in one line what is wrong on a node (no Python, another gaudi_nb version, too little disk, busy cards,
first-generation Gaudi with Gaudi software newer than 1.21)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..errors import SpecError
from ..gaudi_stack import first_gen_stack
from ..version import __version__
from .bootstrap import Probe, client_build, probe

# Checkpoints, logs and the env itself live in the node's GAUDI_NB_HOME: below this a run
# would likely die on its first checkpoint, after the node was paid for.
MIN_FREE_GIB = 5.0
GIB = 1024**3


@dataclass(frozen=True)
class NodeCheck:
    name: str
    ok: bool
    found: str
    hint: str = ""  # what to do, when not ok

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:<16} {self.found}" + ("" if self.ok else f" — {self.hint}")


def _field(spec: Any, name: str, default: Any) -> Any:
    if spec is None:
        return default
    value = spec.get(name) if isinstance(spec, dict) else getattr(spec, name, None)
    return default if value is None else value


def _devices(spec: Any) -> int:
    return int(_field(spec, "devices", 1) or 1)


def evaluate(record: Dict[str, Any], found: Optional[Probe], spec: Any = None, *, first: bool = True, client_version: str = __version__,
             client_build_id: Optional[str] = None) -> List[NodeCheck]:
    """The checks, pure: the node's record, what its Python reported (None: it did not run), the run's spec;
    `first`: this is node 0 of the run (the node DeepSpeed's launcher starts the others from)."""
    name, python = record.get("name") or record.get("host"), record.get("python") or "(none recorded)"
    attach_again = f"gaudi-nb nodes attach {record.get('url')} --name {name}"
    checks: List[NodeCheck] = []
    if found is None:
        checks.append(NodeCheck("python", False, f"{python} does not run", f"Python is gone from the node: attach it again ({attach_again})"))
        return checks
    checks.append(NodeCheck("python", True, f"{found.executable} ({found.get('python_version')})"))

    version = found.version
    if version is None:
        checks.append(NodeCheck("gaudi_nb", False, f"missing in {python} ({found.get('gaudi_nb_error') or 'not importable'})", f"attach again to install it ({attach_again})"))
    elif version != client_version:
        checks.append(NodeCheck("gaudi_nb", False, f"{version} on the node, {client_version} here", f"the versions must match: attach again to install this client's build ({attach_again})"))
    else:
        other_build = client_build_id and found.build and found.build != client_build_id
        checks.append(NodeCheck("gaudi_nb", True, version + (" (another build of it than this client's: attach again to update)" if other_build else "")))

    free = found.get("disk_free_bytes")
    home = found.get("home") or record.get("home")
    if free is None:
        checks.append(NodeCheck("disk", False, f"unknown free space in {home}", f"check that {home} exists and is readable on the node"))
    else:
        gib = free / GIB
        checks.append(NodeCheck("disk", gib >= MIN_FREE_GIB, f"{gib:,.1f} GiB free in {home}",
                                f"runs need at least {MIN_FREE_GIB:g} GiB there for checkpoints and logs: free some space, or set GAUDI_NB_HOME on the node to a larger disk and attach again"))

    nodes = int(_field(spec, "nodes", 1) or 1)
    checks.append(_cards(record, found, _devices(spec), nodes))
    pin = first_gen_stack(*(found.get("stack") or [None, None]))  # first-generation Gaudi: pinned to Gaudi software 1.21
    if pin is not None:
        checks.append(NodeCheck("Gaudi stack", *pin))
    if first and nodes > 1 and record.get("accelerator") == "hpu" and _field(spec, "launcher", "auto") in ("auto", "deepspeed"):
        pdsh = found.get("pdsh")
        checks.append(NodeCheck("pdsh", bool(pdsh), pdsh or "missing",
                                "DeepSpeed starts the other nodes of a run across Gaudi nodes through pdsh from node 0: "
                                "apt-get install pdsh there (Intel's image has it: infra/docker/Dockerfile)"))
    return checks


def _cards(record: Dict[str, Any], found: Probe, wanted: int, nodes: int = 1) -> NodeCheck:
    modules = found.get("modules")
    accelerator = record.get("accelerator")
    if modules is None:
        if accelerator == "hpu":
            why = found.get("modules_error") or "hl-smi did not answer"
            return NodeCheck("Gaudi cards", False, why, "hl-smi comes with the Gaudi driver: run it on the node to see why")
        return NodeCheck("devices", True, f"no Gaudi card ({accelerator or 'unknown accelerator'}): runs there use it")
    present = [int(m) for m in modules.get("present") or []]
    busy = {int(m): pids for m, pids in (modules.get("busy") or {}).items()}
    free = [m for m in present if m not in busy]
    held = ", ".join(f"{m} (pid {','.join(str(p) for p in pids)})" for m, pids in sorted(busy.items()))
    found_text = f"{len(free)} of {len(present)} free" + (f"; busy: {held}" if held else "")
    if wanted > len(present):
        return NodeCheck("Gaudi cards", False, found_text, f"the run asks for {wanted} cards and the node has {len(present)}: ask for fewer --devices")
    if nodes > 1 and wanted != len(present):
        # Intel's scale-out rule: HABANA_VISIBLE_MODULES names every card of the server ("Gaudi-to-process Assignment")
        return NodeCheck("Gaudi cards", False, found_text,
                         f"a run across Gaudi nodes takes every card of each node (Intel's scale-out rule): ask for --devices {len(present)}")
    if len(free) < wanted:
        return NodeCheck("Gaudi cards", False, found_text,
                         f"the run needs {wanted} and another process holds the rest: wait for it to end (hl-smi lists them), or ask for fewer --devices")
    return NodeCheck("Gaudi cards", True, found_text)


async def check_over(connection: Any, record: Dict[str, Any], spec: Any = None, *, first: bool = True) -> List[NodeCheck]:
    """Run the checks on an open connection (the link manager's, say)."""
    python = record.get("python")
    # the cards' state is hl-smi's (and imports the launch package there): asked of Gaudi nodes only,
    # which keeps a CPU or CUDA node's preflight to one short Python start
    extras = ("modules",) if record.get("accelerator") == "hpu" else ()
    found = await probe(connection, python, *extras) if python else None
    return evaluate(record, found, spec, first=first, client_build_id=client_build()[1])


def failure_line(record: Dict[str, Any], checks: List[NodeCheck]) -> Optional[str]:
    failed = [check for check in checks if not check.ok]
    if not failed:
        return None
    name = record.get("name") or record.get("host")
    return f"node {name}: " + "; ".join(f"{check.name}: {check.found}: {check.hint}" for check in failed)


def check(node_record: Dict[str, Any], spec: Any = None, *, first: bool = True) -> List[NodeCheck]:
    """Run every check on the node over its link (what `gaudi-nb nodes check NAME` prints); a launch
    that follows uses the same connection."""
    from .link import links

    return links().over(node_record, lambda connection: check_over(connection, node_record, spec, first=first))


def preflight(node_record: Dict[str, Any], spec: Any = None, *, first: bool = True) -> None:
    """Before a launch: SpecError, in one line, naming every check that fails on the node (`first`: node 0 of the run)."""
    line = failure_line(node_record, check(node_record, spec, first=first))
    if line:
        raise SpecError(line)
