"""Where runs execute: a registry of targets (base.py: the seam each way of reaching machines implements)."""
from __future__ import annotations

from ..errors import GaudiNbError, SpecError
from ..registry import Registry
from ..spec import parse_target
from .base import Part, Target
from .local import LocalTarget

targets: Registry = Registry("targets")
targets.register("local", LocalTarget)

# Accepted by the spec so plans and configs can name them; not runnable yet.
PLANNED = {
    "aws": "provisioning a node on AWS (aws:INSTANCE_TYPE)",
}


def target_for(target: str) -> Target:
    """The Target for a spec's target string."""
    try:
        kind = parse_target(target).kind
    except ValueError as exc:
        raise SpecError(f"target: {exc}") from None
    if kind in ("node", "nodes"):  # NAME, or NAME1,NAME2: one run across attached nodes, node 0 first
        from .ssh import ssh_target

        return ssh_target(target.strip())
    if kind == "ssh":
        raise SpecError(f"target: attach the node first: gaudi-nb nodes attach {target.strip()} --name NAME (or %gaudi_attach), then --target NAME")
    if kind in targets:
        return targets.get(kind)()
    if kind in PLANNED:
        raise GaudiNbError(f"target '{target}': {PLANNED[kind]} is not available in this version yet; use --target local")
    return targets.get(kind)()


__all__ = ["LocalTarget", "Part", "Target", "target_for", "targets"]
