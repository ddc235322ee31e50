"""What a cluster offers a run (ClusterFacts), Intel's numbers for a Gaudi pod, and which job kind to submit.

Pure: no Kubernetes client here. Attaching a cluster (the Kubernetes target) fills ClusterFacts from the
API server; `gaudi-nb k8s render` fills it from its options.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import SpecError

# The job kinds the builder renders, in the order a cluster's installed kinds are preferred (issue 20):
# Kubeflow Trainer v2's TrainJob, the Training Operator's PyTorchJob, the MPI Operator's MPIJob; a plain
# indexed Job with a headless Service is always there.
KINDS = ("trainjob", "pytorchjob", "mpijob", "job")

# Intel's Kubernetes example for Gaudi software 1.24 (docs.habana.ai, "Running Workloads on Kubernetes",
# Quick_Start_Guides/Kubernetes_Quick_Start.html, and Orchestration/Gaudi_Kubernetes): every pod asks for
# `hugepages-2Mi: 95000Mi` and `memory: 409Gi` beside `habana.ai/gaudi`, with hostIPC and SYS_NICE.
# One source: `gaudi-nb doctor` reads HUGEPAGES_2MI_MIB from here.
HUGEPAGES_2MI_MIB = 95000
HUGEPAGES_2MI = f"{HUGEPAGES_2MI_MIB}Mi"
MEMORY = "409Gi"
GAUDI_RESOURCE = "habana.ai/gaudi"
INTEL_IMAGE = "vault.habana.ai/gaudi-docker/1.24.0/ubuntu22.04/habanalabs/pytorch-installer-2.10.0:latest"
# infra/docker's image runs as this non-root user (a member of the groups that may open the cards).
IMAGE_USER = 1000


@dataclass(frozen=True)
class ClusterFacts:
    """What one cluster offers a run; the defaults are a cluster nobody has asked yet.

    kinds: the job kinds installed besides the always-present "job" (from API discovery).
    image: a container image with gaudi_nb of the client's version (infra/docker builds one).
    storage_class / claim: a ReadWriteMany storage class for a claim made per run, or a ReadWriteMany
    claim already there that runs share; across nodes one of the two is needed (every pod reads the run folder).
    gaudi_nodes: whether the nodes advertise habana.ai/gaudi (False: a CPU cluster, pods ask for no cards).
    run_as_user: the image's non-root user (runAsNonRoot); 0 for an image that needs root, as Intel's does.
    client_wheel: a wheel of the client's gaudi_nb build (a file here) that each pod installs at start, where the
    image has no gaudi_nb (no `image`: Intel's image); None: the image has it.
    """

    kinds: Tuple[str, ...] = ()
    image: Optional[str] = None
    namespace: str = "default"
    storage_class: Optional[str] = None
    claim: Optional[str] = None
    gaudi_nodes: bool = True
    memory: str = MEMORY
    hugepages: Optional[str] = HUGEPAGES_2MI
    volume_size: str = "100Gi"
    run_as_user: int = IMAGE_USER
    metrics_port: int = 9400
    client_wheel: Optional[str] = None


def choose_kind(facts: Optional[ClusterFacts] = None, nodes: int = 2) -> str:
    """The kind to submit: one node is a Job; several are TrainJob, PyTorchJob, MPIJob in that order of what
    the cluster has installed, else an indexed Job. Without facts: an MPIJob, Intel's documented multi-node path."""
    if nodes <= 1:
        return "job"
    if facts is None:
        return "mpijob"
    for kind in KINDS:
        if kind == "job" or kind in facts.kinds:
            return kind
    return "job"


def check_kind(kind: str) -> str:
    """The kind's canonical name, or a one-line refusal that lists the kinds."""
    name = (kind or "").strip().lower()
    if name not in KINDS:
        raise SpecError(f"kind: {kind!r} is not a job kind gaudi_nb renders: use one of {', '.join(KINDS)}")
    return name
