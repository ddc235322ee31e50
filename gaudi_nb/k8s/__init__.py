"""Kubernetes manifests for a run: one builder for `gaudi-nb k8s render` and the Kubernetes target.

render(spec, run_id, kind=..., cluster=ClusterFacts(...)) returns every object to submit; choose_kind(facts)
picks the kind a cluster has. Pure: nothing here imports a Kubernetes client (check.py validates against the
real schemas, with the k8s extra).
"""
from .facts import GAUDI_RESOURCE, HUGEPAGES_2MI, HUGEPAGES_2MI_MIB, INTEL_IMAGE, KINDS, MEMORY, ClusterFacts, choose_kind
from .kinds import AGENT_CONTAINER
from .manifests import render, to_yaml
from .names import RUN_LABEL, object_name
from .pod import FILES_DIR, HOME_DIR, LOG_CONTAINER, MPI_HOSTFILE, part_path

__all__ = [
    "AGENT_CONTAINER",
    "LOG_CONTAINER",
    "RUN_LABEL",
    "FILES_DIR",
    "GAUDI_RESOURCE",
    "HOME_DIR",
    "HUGEPAGES_2MI",
    "HUGEPAGES_2MI_MIB",
    "INTEL_IMAGE",
    "KINDS",
    "MEMORY",
    "MPI_HOSTFILE",
    "ClusterFacts",
    "choose_kind",
    "object_name",
    "render",
    "part_path",
    "to_yaml",
]
