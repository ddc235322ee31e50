"""`gaudi-nb k8s`: render a run spec as Kubernetes manifests (mounted by gaudi_nb.cli)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import typer

from .errors import GaudiNbError, SpecError
from .spec import RunSpec

k8s_app = typer.Typer(
    help="Kubernetes: turn a run spec into manifests for kubectl apply (a Job, or a Kubeflow MPIJob / PyTorchJob).",
    no_args_is_help=True,
)


@k8s_app.callback()
def _k8s() -> None:
    """Kubernetes: turn a run spec into manifests for kubectl apply."""


def _load_spec_file(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"--spec-file: cannot read {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SpecError(f"--spec-file: {path} must hold a mapping of run options")
    return data


@k8s_app.command("render")
def render_command(
    image: str = typer.Option(..., "--image", help="container image with gaudi_nb installed (see infra/docker)"),
    model: Optional[str] = typer.Option(None, "--model", help="preset name, local path or hub id (org/name)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="preset, local file(s) or hub id"),
    devices: Optional[int] = typer.Option(None, "--devices", help="Gaudi devices per node (habana.ai/gaudi)"),
    nodes: Optional[int] = typer.Option(None, "--nodes", help="number of nodes; more than 1 needs Kubeflow's training operator"),
    precision: Optional[str] = typer.Option(None, "--precision", help="bf16, fp32 or auto"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="sequences per device per step"),
    sequence_length: Optional[int] = typer.Option(None, "--sequence-length", help="tokens per sequence"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="optimizer steps to run"),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="peak learning rate"),
    launcher: Optional[str] = typer.Option(
        None, "--launcher", help="auto, torchrun, mpirun or deepspeed (several nodes: torchrun gives a PyTorchJob, else an MPIJob)"
    ),
    budget_usd: Optional[float] = typer.Option(None, "--budget-usd", help="stop cleanly when spend reaches this"),
    price_per_hour: Optional[float] = typer.Option(None, "--price-per-hour", help="USD per node-hour"),
    instance_type: Optional[str] = typer.Option(None, "--instance-type", help="an instance type from the price catalog"),
    name: Optional[str] = typer.Option(None, "--name", help="a label for the run; names the Kubernetes objects"),
    spec_file: Optional[Path] = typer.Option(
        None, "--spec-file", help="a run spec (JSON or YAML); options given on the command line override it"
    ),
    namespace: str = typer.Option("default", "--namespace", "-n", help="Kubernetes namespace"),
    metrics_port: int = typer.Option(9400, "--metrics-port", help="port of the agent's Prometheus /metrics"),
    hugepages: str = typer.Option("42000Mi", "--hugepages", help="hugepages-2Mi limit per Gaudi pod; 'none' to omit"),
    memory: str = typer.Option("400Gi", "--memory", help="memory limit per Gaudi pod"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the YAML here instead of standard output"),
    check: bool = typer.Option(False, "--check", help="validate the manifests with the kubernetes client's models (needs the k8s extra)"),
) -> None:
    """Render a run as Kubernetes manifests: a ConfigMap with the spec, and a Job (one node) or an MPIJob / PyTorchJob (several)."""
    from . import k8s

    try:
        options = _load_spec_file(spec_file) if spec_file else {}
        options.update(
            {
                key: value
                for key, value in dict(
                    model=model,
                    dataset=dataset,
                    devices=devices,
                    nodes=nodes,
                    precision=precision,
                    batch_size=batch_size,
                    sequence_length=sequence_length,
                    max_steps=max_steps,
                    learning_rate=learning_rate,
                    launcher=launcher,
                    budget_usd=budget_usd,
                    price_per_hour=price_per_hour,
                    instance_type=instance_type,
                    name=name,
                ).items()
                if value is not None
            }
        )
        spec = RunSpec.from_options(**options)
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
