"""The reproducibility manifest of a batch run: code, software, hardware, seeds, parameters, environment.

No secrets: any value whose name looks like a key, token, password, secret or credential is masked,
here and everywhere the batch room records or shows parameters (events, store, output notebook, CLI).

Cheap to build (a few hundredths of a second): package versions come from the metadata files' headers (no pip
subprocess, no full metadata parse), git answers in two calls, and the accelerator is named
without importing torch where no GPU device exists.
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
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

MASK = "***"
MANIFEST_VERSION = 1
ENV_PREFIXES = ("PT_HPU_", "HABANA_")
_SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|PASSWD|PWD|PASSPHRASE|SECRET|CREDENTIAL|AUTH|PRIVATE|COOKIE|SESSION|DSN|WEBHOOK)", re.IGNORECASE)
_VERSIONS = {"torch": "torch", "transformers": "transformers", "optimum_habana": "optimum-habana", "papermill": "papermill"}


def looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


class SecretValue(str):
    """A parameter's value that came from env:VAR or file:PATH (`-p NAME env:VAR`): the notebook gets it, nothing recorded shows it."""


def mask(mapping: Mapping[str, Any]) -> Dict[str, Any]:
    """The mapping with secret values masked: by their name (token, password, pwd, dsn, webhook, ...), where they came
    from (SecretValue), and inside nested mappings and lists too."""
    return {k: (MASK if looks_secret(str(k)) else _masked(v)) for k, v in mapping.items()}


def _masked(value: Any) -> Any:
    if isinstance(value, SecretValue):
        return MASK
    if isinstance(value, Mapping):
        return mask(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_masked(item) for item in value)
    return value


_ASSIGNMENT = re.compile(r"^(\s*)([A-Za-z_]\w*)(\s*(?::[^=]*)?=(?!=)).*$")


def mask_source(source: str, names: Iterable[str] = ()) -> str:
    """Python source (papermill's injected parameters cell: one `name = value` per line) with the
    values of secret-looking names (and of `names`: those given as env:VAR or file:PATH) replaced by "***"."""
    names = set(names)
    lines = []
    for line in source.splitlines(keepends=True):
        found = _ASSIGNMENT.match(line.rstrip("\r\n"))
        if found and (looks_secret(found.group(2)) or found.group(2) in names):
            end = line[len(line.rstrip("\r\n")) :]
            line = f'{found.group(1)}{found.group(2)}{found.group(3)} "{MASK}"{end}'
        lines.append(line)
    return "".join(lines)


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
    # one call for the top folder, the commit and the branch; a repository without commits fails it
    answer = _git(["rev-parse", "--show-toplevel", "HEAD", "--abbrev-ref", "HEAD"], folder)
    if answer is not None and len(answer.splitlines()) == 3:
        top, commit, branch = (line.decode().strip() for line in answer.splitlines())
        diff = _git(["diff", "HEAD", "--no-color", "--no-ext-diff"], folder) or b""
    else:
        only_top = _git(["rev-parse", "--show-toplevel"], folder)
        if only_top is None:
            return None
        top, commit, branch, diff = only_top.decode().strip(), None, None, b""  # commit None: a repository without commits
    return {
        "root": top,
        "commit": commit,
        "branch": branch,
        "dirty": bool(diff.strip()),
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff.strip() else None,
    }


def _name_version(dist: Any) -> Tuple[Optional[str], Optional[str]]:
    """Name and Version from the metadata file's header lines: the same values as dist.name and
    dist.version without parsing the whole file (long descriptions make that 10x slower)."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line
        if line.startswith("Name:"):
            name = line[5:].strip()
        elif line.startswith("Version:"):
            version = line[8:].strip()
        if name and version:
            return name, version
    return dist.name, dist.version


def installed_packages() -> List[str]:
    """NAME==VERSION of every installed distribution (what `pip freeze` lists), first on sys.path wins."""
    from importlib import metadata

    seen = {}
    for dist in metadata.distributions():
        name, version = _name_version(dist)
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={version}"
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


# Device files without which torch cannot see a GPU: NVIDIA, WSL's GPU paravirtualization, ROCm.
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
