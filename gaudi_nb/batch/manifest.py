"""The reproducibility manifest of a batch run: code, software, hardware, seeds, parameters, environment.

No secrets: any value whose name looks like a key, token, password, secret or credential is masked.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

MASK = "***"
MANIFEST_VERSION = 1
ENV_PREFIXES = ("PT_HPU_", "HABANA_")
_SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|PASSWD|PASSPHRASE|SECRET|CREDENTIAL|AUTH|PRIVATE|COOKIE|SESSION)", re.IGNORECASE)
_VERSIONS = {"torch": "torch", "transformers": "transformers", "optimum_habana": "optimum-habana", "papermill": "papermill"}


def looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def mask(mapping: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: (MASK if looks_secret(k) else v) for k, v in mapping.items()}


def environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Every PT_HPU_* and HABANA_* variable, secret-looking ones masked."""
    environ = os.environ if environ is None else environ
    return mask({k: environ[k] for k in sorted(environ) if k.startswith(ENV_PREFIXES)})


def _git(args: List[str], cwd: Path) -> Optional[bytes]:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(where: Path) -> Optional[Dict[str, Any]]:
    """Commit, and sha256 of `git diff HEAD` (empty diff: dirty False); None outside a repository."""
    where = Path(where)
    folder = where if where.is_dir() else where.parent
    if shutil.which("git") is None or not folder.exists():
        return None
    top = _git(["rev-parse", "--show-toplevel"], folder)
    if top is None:
        return None
    commit = _git(["rev-parse", "HEAD"], folder)
    diff = _git(["diff", "HEAD", "--no-color", "--no-ext-diff"], folder) or b""
    branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], folder)
    return {
        "root": top.decode().strip(),
        "commit": commit.decode().strip() if commit else None,  # None: a repository without commits
        "branch": branch.decode().strip() if branch else None,
        "dirty": bool(diff.strip()),
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff.strip() else None,
    }


def installed_packages() -> List[str]:
    from importlib import metadata

    seen = {}
    for dist in metadata.distributions():
        name = dist.name
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return [seen[k] for k in sorted(seen)]


def versions() -> Dict[str, Optional[str]]:
    """Python and the training stack's versions, from package metadata (nothing is imported)."""
    from importlib import metadata

    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for key, dist in _VERSIONS.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


_DRIVER = re.compile(r"^\s*Driver Version\s*:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)
_FIRMWARE = re.compile(r"^\s*(?:Firmware \[?FIT\]? Version|FW Version|Firmware Version)\s*:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)


def parse_hlsmi_query(text: str) -> Dict[str, Optional[str]]:
    """Driver and firmware versions from `hl-smi -q` (the first device's; they match across a node)."""
    driver = _DRIVER.search(text)
    firmware = _FIRMWARE.search(text)
    return {"driver": driver.group(1) if driver else None, "firmware": firmware.group(1) if firmware else None}


def gaudi_versions(run: Callable[[List[str]], Optional[str]] | None = None) -> Dict[str, Optional[str]]:
    """{"driver", "firmware"} from hl-smi where it exists, else both None."""
    if run is None:
        if shutil.which("hl-smi") is None:
            return {"driver": None, "firmware": None}

        def run(argv: List[str]) -> Optional[str]:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            except (OSError, subprocess.TimeoutExpired):
                return None
            return done.stdout if done.returncode == 0 else None

    text = run(["hl-smi", "-q"])
    return parse_hlsmi_query(text) if text else {"driver": None, "firmware": None}


def seeds_from(parameters: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in parameters.items() if "seed" in k.lower()}


def build_manifest(
    parameters: Mapping[str, Any],
    seeds: Optional[Mapping[str, Any]] = None,
    *,
    notebook: Optional[Path] = None,
    run_id: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
    accelerator: Optional[str] = None,
) -> Dict[str, Any]:
    """Everything needed to run this notebook again the same way. Seeds default to parameters named *seed*."""
    if accelerator is None:
        from ..accel import detect_name

        accelerator = detect_name()
    where = Path(notebook).resolve() if notebook else Path.cwd()
    return {
        "manifest_version": MANIFEST_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": run_id,
        "notebook": str(notebook) if notebook else None,
        "notebook_sha256": hashlib.sha256(Path(notebook).read_bytes()).hexdigest() if notebook and Path(notebook).is_file() else None,
        "git": git_state(where),
        "versions": versions(),
        "gaudi": gaudi_versions(),
        "accelerator": accelerator,
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(), "executable": sys.executable},
        "seeds": mask(dict(seeds_from(parameters) if seeds is None else seeds)),
        "parameters": mask(dict(parameters)),
        "environment": environment(environ),
        "packages": installed_packages(),
    }
