"""Where runs execute: a registry of targets (base.py: the seam each way of reaching machines implements; local, and attached nodes by name over SSH)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..errors import SpecError
from ..registry import Registry
from ..spec import attach_first, parse_target
from .base import Part, Target
from .local import LocalTarget

targets: Registry = Registry("targets")
targets.register("local", LocalTarget)


def target_for(target: str) -> Target:
    """The Target for a spec's target string."""
    try:
        kind = parse_target(target).kind
    except ValueError as exc:
        raise SpecError(f"target: {exc}") from None
    if kind == "node":  # an attached Slurm cluster is a name too
        cluster = _cluster(target.strip())
        if cluster is not None:
            from .slurm import SlurmTarget

            return SlurmTarget(cluster)
    if kind in ("node", "nodes"):  # NAME, or NAME1,NAME2: one run across attached nodes, node 0 first
        from .ssh import ssh_target

        return ssh_target(target.strip())
    if kind == "ssh":
        raise SpecError(f"target: {attach_first(target.strip())}")
    return targets.get(kind)()


def _cluster(name: str) -> Optional[Dict[str, Any]]:
    """The record of an attached Slurm cluster of that name, or None (a node, or nothing attached)."""
    from ..errors import NotFoundError
    from ..nodes.slurm import is_cluster
    from ..store import RunStore

    try:
        record = RunStore().get_node(name)
    except NotFoundError:
        return None
    return record if is_cluster(record) else None


__all__ = ["LocalTarget", "Part", "Target", "target_for", "targets"]
