"""A run's names on a cluster: its objects' DNS-1123 name, and the run id every object is labelled with."""
from __future__ import annotations

import re

from ..errors import SpecError

RUN_LABEL = "gaudi-nb/run"  # on every object and pod of a run; its value is the run id
_MAX_NAME = 52  # the operators and the Job controller add "-launcher", "-worker-12", "-3-x7k2p" within 63
_NOT_IN_A_NAME = re.compile(r"[^a-z0-9-]+")


def check_run_id(run_id: str) -> str:
    """A run id fit for a label value and a shell word; a one-line refusal otherwise."""
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", run_id or ""):
        raise SpecError(f"run id {run_id!r}: up to 63 letters, digits, '.', '_' and '-', starting and ending with a letter or digit (it labels the run's objects)")
    return run_id


def object_name(run_id: str) -> str:
    """A DNS-1123 label (starting with a letter) for the run's objects, from its id."""
    slug = _NOT_IN_A_NAME.sub("-", run_id.lower()).strip("-") or "run"
    if not slug[0].isalpha():
        slug = f"r-{slug}"
    return slug[:_MAX_NAME].rstrip("-")
