"""`gaudi-nb k8s`: render a run spec as Kubernetes manifests (mounted by gaudi_nb.cli)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from . import api
from .cli_options import with_spec_options
from .errors import GaudiNbError, SpecError
from .spec import RunSpec

# RunSpec fields that mean nothing inside a cluster: the target is the cluster, and a script is a file on this machine.
NOT_IN_A_POD = ("target", "script", "workdir")

k8s_app = typer.Typer(
    help="Kubernetes: turn a run spec into manifests for kubectl apply (a Job, or a Kubeflow MPIJob / PyTorchJob).",
    no_args_is_help=True,
)


@k8s_app.callback()
def _k8s() -> None:
    """Kubernetes: turn a run spec into manifests for kubectl apply."""


@k8s_app.command("render")
@with_spec_options(skip=NOT_IN_A_POD)
def render_command(
    image: str = typer.Option(..., "--image", help="container image with gaudi_nb installed (see infra/docker)"),
    spec_file: Optional[Path] = typer.Option(
        None, "--spec-file", help="a run spec (JSON or YAML); options given on the command line override it"
    ),
    namespace: str = typer.Option("default", "--namespace", "-n", help="Kubernetes namespace"),
    metrics_port: int = typer.Option(9400, "--metrics-port", help="port of the agent's Prometheus /metrics"),
    hugepages: str = typer.Option("42000Mi", "--hugepages", help="hugepages-2Mi limit per Gaudi pod; 'none' to omit"),
    memory: str = typer.Option("400Gi", "--memory", help="memory limit per Gaudi pod"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the YAML here instead of standard output"),
    check: bool = typer.Option(False, "--check", help="validate the manifests with the kubernetes client's models (needs the k8s extra)"),
    **options: Any,
) -> None:
    """Render a run as Kubernetes manifests: a ConfigMap with the spec, and a Job (one node) or an MPIJob / PyTorchJob (several)."""
    from . import k8s

    try:
        # paths are the container's, not this machine's: taken as written
        base = api.load_spec_file(spec_file, local_paths=False) if spec_file else {}
        spec = RunSpec.from_options(**{**base, **{k: v for k, v in options.items() if v is not None}})
        manifests = k8s.render(
            spec,
            image=image,
            namespace=namespace,
            metrics_port=metrics_port,
            memory=memory,
            hugepages_2mi=None if hugepages.lower() in ("", "none", "0") else hugepages,
        )
        if check:
            k8s.validate(manifests)
        text = k8s.to_yaml(manifests)
    except (GaudiNbError, json.JSONDecodeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2 if isinstance(exc, (SpecError, json.JSONDecodeError)) else 1) from None

    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        kind = manifests[-1]["kind"]
        typer.echo(f"wrote {output} ({kind} {manifests[-1]['metadata']['name']}): kubectl apply -f {output}", err=True)
