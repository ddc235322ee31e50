"""Where runs execute: a registry of targets (base.py: the seam each way of reaching machines implements; local, attached nodes by name over SSH, and Kubernetes clusters attached by name)."""
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
    if kind == "node":  # a cluster attached by name: Kubernetes (one pod per node) or Slurm (one job)
        cluster = _cluster_record(target.strip())
        if cluster is not None and str(cluster.get("url") or "").startswith("k8s://"):
            from .k8s import K8sTarget

            return K8sTarget(target.strip(), cluster)
        if cluster is not None:
            from .slurm import SlurmTarget

            return SlurmTarget(cluster)
    if kind in ("node", "nodes"):  # NAME, or NAME1,NAME2: one run across attached nodes, node 0 first
        from .ssh import ssh_target

        return ssh_target(target.strip())
    if kind == "ssh":
        raise SpecError(f"target: {attach_first(target.strip())}")
    return targets.get(kind)()


def _cluster_record(name: str) -> Optional[Dict[str, Any]]:
    """The record of a cluster (Kubernetes or Slurm) attached as `name`, else None (an SSH node, or nothing attached by that name)."""
    from ..errors import NotFoundError
    from ..nodes.slurm import is_cluster as is_slurm
    from ..store import RunStore

    try:
        record = RunStore().get_node(name)
    except NotFoundError:
        return None
    return record if str(record.get("url") or "").startswith("k8s://") or is_slurm(record) else None


__all__ = ["LocalTarget", "Part", "Target", "target_for", "targets"]
