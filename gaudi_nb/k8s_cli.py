"""`gaudi-nb k8s`: render a run spec as Kubernetes manifests (mounted by gaudi_nb.cli)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from . import api
from .cli_options import with_spec_options
from .errors import GaudiNbError, SpecError
from .k8s.facts import HUGEPAGES_2MI, IMAGE_USER, MEMORY
from .spec import RunSpec

# The target is the cluster itself: `gaudi-nb k8s render` prints what `train --target` would submit there.
NOT_IN_A_POD = ("target",)

k8s_app = typer.Typer(
    help="Kubernetes: turn a run spec into the objects a cluster runs it with (a TrainJob, PyTorchJob, MPIJob or indexed Job).",
    no_args_is_help=True,
)


@k8s_app.callback()
def _k8s() -> None:
    """Kubernetes: turn a run spec into manifests for kubectl apply."""


@k8s_app.command("render")
@with_spec_options(skip=NOT_IN_A_POD)
def render_command(
    image: Optional[str] = typer.Option(None, "--image", help="container image with gaudi_nb installed (see infra/docker); default: the --cluster's"),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="an attached Kubernetes cluster: render what `train --target NAME` submits there (its job kind, image, namespace, storage)"),
    kind: Optional[str] = typer.Option(None, "--kind", help="trainjob, pytorchjob, mpijob or job; default: the --cluster's kind, else job for one node and mpijob across nodes (Intel's documented multi-node path)"),
    spec_file: Optional[Path] = typer.Option(
        None, "--spec-file", help="a run spec (JSON or YAML); options given on the command line override it"
    ),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="the run's id (names its objects and its folder on the run volume); default: a new one"),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Kubernetes namespace; default: the --cluster's, else default"),
    storage_class: Optional[str] = typer.Option(None, "--storage-class", help="a ReadWriteMany storage class: the run's folder gets a claim of its own, shared by its pods"),
    claim: Optional[str] = typer.Option(None, "--claim", help="a ReadWriteMany claim already in the namespace, for the run folders"),
    run_as_user: Optional[int] = typer.Option(None, "--run-as-user", help=f"the image's non-root user id (default {IMAGE_USER}, infra/docker's; the --cluster's where given); 0 for an image that needs root, as Intel's does"),
    metrics_port: int = typer.Option(9400, "--metrics-port", help="port of the agent's Prometheus /metrics (on the pod's loopback: kubectl port-forward)"),
    hugepages: str = typer.Option(HUGEPAGES_2MI, "--hugepages", help="hugepages-2Mi limit per Gaudi pod (Intel's example); 'none' to omit"),
    memory: str = typer.Option(MEMORY, "--memory", help="memory limit per Gaudi pod (Intel's example)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the YAML here instead of standard output"),
    check: bool = typer.Option(False, "--check", help="validate the manifests against the Kubernetes and Kubeflow schemas (needs the k8s extra)"),
    **options: Any,
) -> None:
    """Render a run as Kubernetes objects: a Secret for --env, a ConfigMap with the run's inputs, the run volume's claim, and the job."""
    from . import k8s

    try:
        # paths are the container's, not this machine's: taken as written
        base = api.load_spec_file(spec_file, local_paths=False) if spec_file else {}
        spec = RunSpec.from_options(**{**base, **{k: v for k, v in options.items() if v is not None}})
        if not 1 <= metrics_port <= 65535:
            raise SpecError(f"metrics_port: must be 1-65535, got {metrics_port}")
        attached = _attached_facts(cluster) if cluster else None
        image = image or (attached.image if attached else None)
        if not image:
            raise SpecError("--image IMAGE (an image with gaudi_nb, see infra/docker), or --cluster NAME of a cluster attached with one")
        facts = k8s.ClusterFacts(kinds=attached.kinds if attached else (), image=image, namespace=namespace or (attached.namespace if attached else "default"),
                                 storage_class=storage_class or (attached.storage_class if attached else None), claim=claim or (attached.claim if attached else None),
                                 run_as_user=run_as_user if run_as_user is not None else (attached.run_as_user if attached else IMAGE_USER), metrics_port=metrics_port, memory=memory,
                                 hugepages=None if hugepages.lower() in ("", "none", "0") else hugepages)
        chosen = kind or k8s.choose_kind(facts if attached else None, spec.nodes)
        manifests = k8s.render(spec, run_id or api.new_run_id(spec), kind=chosen, cluster=facts)
        if check:
            from .k8s.check import validate

            validate(manifests)
        text = k8s.to_yaml(manifests)
    except (GaudiNbError, json.JSONDecodeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2 if isinstance(exc, (SpecError, json.JSONDecodeError)) else 1) from None

    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        kind_doc = manifests[-1]
        typer.echo(f"wrote {output} ({kind_doc['kind']} {kind_doc['metadata']['name']}): kubectl apply -f {output}", err=True)


def _attached_facts(name: str) -> Any:
    """What `train --target NAME` would build from: the attached cluster's facts, as the Kubernetes target reads them."""
    from .nodes.kube import cluster_facts, is_cluster
    from .store import RunStore
    from .targets.k8s_submit import facts_of

    record = RunStore().get_node(name)
    if not is_cluster(record):
        raise SpecError(f"'{name}' is not a Kubernetes cluster ({record.get('url')}): gaudi-nb nodes attach k8s://CONTEXT/NAMESPACE --name {name}")
    return facts_of(cluster_facts(record))
