"""Kubernetes manifests for a run: one builder for `gaudi-nb k8s render` and the Kubernetes target.

render(spec, run_id, kind=..., cluster=ClusterFacts(...)) returns every object to submit; choose_kind(facts)
picks the kind a cluster has. Pure: nothing here imports a Kubernetes client (check.py validates against the
real schemas, with the k8s extra).
"""
from .facts import GAUDI_RESOURCE, HUGEPAGES_2MI, HUGEPAGES_2MI_MIB, INTEL_IMAGE, KINDS, MEMORY, ClusterFacts, choose_kind
from .manifests import object_name, render, to_yaml
from .pod import FILES_DIR, HOME_DIR, MPI_HOSTFILE, run_folder

__all__ = [
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
    "run_folder",
    "to_yaml",
]
