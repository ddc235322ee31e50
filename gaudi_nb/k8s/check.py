"""Check rendered objects against the real schemas, before a cluster sees them (`gaudi-nb k8s render --check`).

Core kinds (and every pod template inside a custom resource) go through kubernetes-validate's strict
schemas of Kubernetes 1.34 (the newest release Intel supports with Gaudi software 1.24); PyTorchJob through
the Training Operator's models (kubeflow-training), TrainJob and TrainingRuntime through Trainer v2's
(kubeflow-trainer-api); MPIJob v2beta1, which has no model package, through the MPI Operator's own CRD schema
(schemas/mpijob-v2beta1.json). A field a model does not know is an error, as the API server's strict field
validation makes it, not silently dropped.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List

from ..errors import SpecError, require

KUBERNETES_VERSION = "1.34.0"
CORE = {"v1": ("ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "PodTemplate"), "batch/v1": ("Job",)}
MPIJOB_SCHEMA = Path(__file__).with_name("schemas") / "mpijob-v2beta1.json"

Doc = Dict[str, Any]


def validate(manifests: List[Doc]) -> None:
    """Raise SpecError naming the object and the field at the first problem."""
    for doc in manifests:
        kind, where = doc.get("kind"), f"{doc.get('kind')} {doc.get('metadata', {}).get('name', '?')}"
        if kind in CORE.get(doc.get("apiVersion", ""), ()):
            _core(doc, where)
        elif kind == "PyTorchJob":
            _pytorchjob(doc, where)
        elif kind in ("TrainJob", "TrainingRuntime"):
            _trainer(doc, where)
        elif kind == "MPIJob":
            _mpijob(doc, where)
        else:
            raise SpecError(f"{where}: no schema for {doc.get('apiVersion')} {kind}")
        for path, template in pod_templates(doc):
            _core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}, f"{where} {path}")


def pod_templates(doc: Doc) -> List[tuple]:
    """(where, pod template) of every pod a custom resource makes."""
    spec = doc.get("spec", {})
    found = []
    for field in ("pytorchReplicaSpecs", "mpiReplicaSpecs"):
        for role, replica in spec.get(field, {}).items():
            found.append((f"{field}.{role}", replica.get("template", {})))
    for job in spec.get("template", {}).get("spec", {}).get("replicatedJobs", []):
        found.append((f"replicatedJobs.{job.get('name')}", job.get("template", {}).get("spec", {}).get("template", {})))
    return found


def _core(doc: Doc, where: str) -> None:
    kv = require("kubernetes_validate", "k8s", "validating Kubernetes manifests")
    try:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        at = ".".join(str(p) for p in exc.path)
        raise SpecError(f"{where}: {at or 'object'}: {exc.message}") from None


def _pytorchjob(doc: Doc, where: str) -> None:
    require("kubeflow.training", "k8s", "validating a PyTorchJob")
    from kubeflow.training import ApiClient

    client = ApiClient()
    try:
        model = client._ApiClient__deserialize(doc, "KubeflowOrgV1PyTorchJob")  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}: not a valid PyTorchJob: {exc}") from None
    _same(doc, client.sanitize_for_serialization(model), where)


def _trainer(doc: Doc, where: str) -> None:
    models = require("kubeflow_trainer_api.models", "k8s", "validating a TrainJob")
    from pydantic import ValidationError

    model = getattr(models, f"TrainerV1alpha1{doc['kind']}")
    try:
        parsed = model.from_dict(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SpecError(f"{where}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    _same(doc, json.loads(parsed.to_json()), where)


@lru_cache(maxsize=1)
def _mpijob_validator() -> Any:
    jsonschema = require("jsonschema", "k8s", "validating an MPIJob")
    schema = _strict(json.loads(MPIJOB_SCHEMA.read_text()))
    return jsonschema.Draft7Validator(schema)


def _mpijob(doc: Doc, where: str) -> None:
    if doc.get("apiVersion") != "kubeflow.org/v2beta1":
        raise SpecError(f"{where}: apiVersion must be kubeflow.org/v2beta1 (the MPI Operator's)")
    errors = sorted(_mpijob_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise SpecError(f"{where}: {'.'.join(str(p) for p in first.absolute_path) or 'object'}: {first.message}")


def _strict(schema: Any) -> Any:
    """A CRD's structural schema, with unknown fields refused where the API server would prune them."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def _same(given: Any, known: Any, where: str, path: str = "") -> None:
    """What the model serializes back must be what was given: a field it dropped was unknown to it."""
    if isinstance(given, dict) and isinstance(known, dict):
        for key, value in given.items():
            if key not in known:
                raise SpecError(f"{where}: {(path + '.' + key).lstrip('.')}: a field the schema does not know")
            _same(value, known[key], where, f"{path}.{key}")
    elif isinstance(given, list) and isinstance(known, list):
        for i, (a, b) in enumerate(zip(given, known, strict=False)):
            _same(a, b, where, f"{path}[{i}]")
    elif given != known:
        raise SpecError(f"{where}: {path.lstrip('.')}: {given!r} became {known!r}")
