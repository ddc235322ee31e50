"""What this machine can run: accelerator, software versions, telemetry sources, and how to get what is missing."""
from __future__ import annotations

import importlib.metadata
import platform
import shutil
from typing import Any, Dict, List, Optional

from . import paths
from .accel import detect_name


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def report() -> Dict[str, Any]:
    from .telemetry.base import SOURCE_ORDER, telemetry_sources

    checks: List[Dict[str, Any]] = []

    def check(name: str, found: Any, ok: bool, hint: str = "") -> None:
        checks.append({"name": name, "found": found, "ok": ok, "hint": "" if ok else hint})

    accelerator = detect_name()
    check("accelerator", accelerator, accelerator == "hpu", "no Gaudi card here: runs use CPU (reported as CPU); on a Gaudi node use Intel's PyTorch image")
    check("python", platform.python_version(), True)
    for dist, _extra, hint in (
        ("torch", None, "pip install torch"),
        ("transformers", None, "pip install 'transformers>=4.55,<4.56'"),
        ("optimum-habana", "habana", "pip install 'gaudi_nb[habana]' (GaudiTrainer; optimum-habana 1.21.2)"),
        ("habana-torch-plugin", None, "comes with Intel Gaudi software 1.24 (Docker image or installer), not PyPI"),
        ("habana-pyhlml", "habana", "pip install 'gaudi_nb[habana]' (HLML telemetry)"),
        ("nvidia-ml-py", "nvidia", "pip install 'gaudi_nb[nvidia]' (NVML telemetry)"),
        ("asyncssh", "ssh", "pip install 'gaudi_nb[ssh]' (attach nodes over SSH)"),
        ("boto3", "aws", "pip install 'gaudi_nb[aws]' (provision on AWS)"),
        ("panel", "dashboard", "pip install 'gaudi_nb[dashboard]' (team dashboard)"),
        ("papermill", "notebook", "pip install 'gaudi_nb[notebook]' (batch notebooks)"),
    ):
        found = _version(dist)
        check(dist, found or "missing", found is not None, hint)
    check("hl-smi", shutil.which("hl-smi") or "missing", shutil.which("hl-smi") is not None, "installed with the Habana driver on Gaudi nodes")
    available = [name for name in SOURCE_ORDER if telemetry_sources.get(name).available()]
    check("telemetry source", available[0] if available else "none", bool(available), "psutil missing")
    check("GAUDI_NB_HOME", str(paths.home()), True)
    check("store", shown_url(paths.store_url()), True)
    return {"accelerator": accelerator, "telemetry_sources": available, "checks": checks}


def shown_url(url: str) -> str:
    """A store URL fit to print: a PostgreSQL password never reaches a terminal or a shared log."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(a store URL that does not parse: check GAUDI_NB_STORE_URL)"
