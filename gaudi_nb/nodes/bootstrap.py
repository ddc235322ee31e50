"""Bootstrap: find Python on a node and put this client's own gaudi_nb build into the node's `<GAUDI_NB_HOME>/env`, once.

The wheel is repacked from the package this client imported (its files and its installed
metadata), so an editable checkout, an installed wheel and a build being worked on all send
exactly the code the client runs; nothing is written into the source tree. A build id (a
hash of those files) marks the node's env: a second attach of the same build reuses it.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import json
import shlex
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import paths
from ..errors import GaudiNbError, SpecError
from ..version import __version__
from .ssh import CommandResult, run_command

DIST = "gaudi_nb"
ENV_DIR = "env"  # under the node's GAUDI_NB_HOME
BUILD_MARKER = "gaudi_nb-build.json"  # in the env's prefix: which build was installed there
MIN_PYTHON = (3, 10)
Progress = Callable[[str], None]

# Runs on the node under any Python (it may lack gaudi_nb): prints one JSON line of what that
# interpreter has. Arguments: "doctor" adds gaudi_nb's doctor report, "modules" hl-smi's cards and the Gaudi stack.
PROBE = r'''
import json, os, platform, shutil, sys
out = {"executable": sys.executable, "python_version": platform.python_version(),
       "python_ok": sys.version_info >= (3, 10), "venv": sys.prefix != sys.base_prefix, "prefix": sys.prefix}
home = os.path.abspath(os.path.expanduser(os.environ.get("GAUDI_NB_HOME") or "~/.gaudi_nb"))
out["home"] = home
out["pdsh"] = shutil.which("pdsh")  # DeepSpeed's launcher across nodes starts them through it
existing = home
while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
try:
    out["disk_free_bytes"] = shutil.disk_usage(existing).free
except OSError:
    out["disk_free_bytes"] = None
try:
    import importlib.util
    out["torch"] = importlib.util.find_spec("torch") is not None
    out["pip"] = importlib.util.find_spec("pip") is not None
except Exception:
    out["torch"] = out["pip"] = False
try:
    import site
    out["site_packages"] = [p for p in site.getsitepackages() if os.path.isdir(p)]
except Exception:
    out["site_packages"] = []
try:
    with open(os.path.join(sys.prefix, "gaudi_nb-build.json")) as handle:
        out["build"] = json.load(handle)
except Exception:
    out["build"] = None
try:
    import gaudi_nb
    out["gaudi_nb_version"] = gaudi_nb.__version__
    out["gaudi_nb_path"] = os.path.dirname(gaudi_nb.__file__)
except Exception as exc:
    out["gaudi_nb_version"] = None
    out["gaudi_nb_error"] = (type(exc).__name__ + ": " + str(exc))[:300]
if out["gaudi_nb_version"] and "doctor" in sys.argv[1:]:
    try:
        from gaudi_nb.doctor import report
        out["doctor"] = report()
    except Exception as exc:
        out["doctor_error"] = (type(exc).__name__ + ": " + str(exc))[:300]
if out["gaudi_nb_version"] and "modules" in sys.argv[1:]:
    try:
        from gaudi_nb.launch.modules import read_module_state
        state = read_module_state()
        out["modules"] = None if state is None else {
            "present": list(state.present), "busy": {str(k): list(v) for k, v in state.busy.items()},
            "driver_version": state.driver_version, "firmware_version": state.firmware_version}
    except Exception as exc:
        out["modules_error"] = (type(exc).__name__ + ": " + str(exc))[:300]
    try:
        from gaudi_nb.doctor import installed_stack
        out["stack"] = list(installed_stack())  # [card, Gaudi software]: the first-generation pin reads them
    except Exception as exc:
        out["stack_error"] = (type(exc).__name__ + ": " + str(exc))[:300]
print("GAUDI_NB_PROBE " + json.dumps(out))
'''

# Every python3 / python on the node's PATH (as a non-interactive SSH session sees it), each probed.
FIND_PYTHONS = r'''
IFS=:
for d in $PATH; do
  for n in python3 python; do
    if [ -x "$d/$n" ] && [ ! -d "$d/$n" ]; then "$d/$n" -c "$GAUDI_NB_PROBE" 2>/dev/null; fi
  done
done
true
'''


# -- the client's build ---------------------------------------------------------------------


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]  # gaudi_nb/ (not `import gaudi_nb`: the package root imports every room)


def _package_files() -> List[Tuple[str, Path]]:
    """(name in the wheel, file) for every file of the imported package, bytecode left out."""
    root = _package_dir()
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix in (".pyc", ".pyo") or any(p.startswith(".") for p in relative.parts):
            continue
        found.append((f"{DIST}/{relative.as_posix()}", path))
    return found


@functools.lru_cache(maxsize=1)
def client_build() -> Tuple[str, str]:
    """(version, build id) of the gaudi_nb this process imported. Computed once per process: the
    code loaded here is what a run from here expects on the node, even if the files change later."""
    digest = hashlib.sha256()
    for name, path in _package_files():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return __version__, digest.hexdigest()[:16]


def _metadata() -> Tuple[str, str]:
    """METADATA and entry_points.txt of the installed distribution (dependencies, the gaudi-nb script).

    Several may be on the path (a venv's dist-info, an egg-info a build left in the checkout):
    the first of this version that lists dependencies wins.
    """
    found: List[Tuple[bool, bool, str, str]] = []
    for dist in importlib.metadata.distributions(name=DIST):
        installed = dist.read_text("METADATA")  # a dist-info: what pip installed, rather than a build's egg-info
        text = installed or dist.read_text("PKG-INFO")
        if text and f"\nVersion: {__version__}\n" in text:
            found.append(("Requires-Dist:" not in text, installed is None, text, dist.read_text("entry_points.txt") or ""))
    if found:
        best = min(found, key=lambda item: item[:2])
        return best[2], best[3]
    # imported from a source tree that was never installed: no dependency list to send
    return (f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {__version__}\n", "[console_scripts]\ngaudi-nb = gaudi_nb.cli:main\n")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(cache_dir: Optional[Path] = None) -> Path:
    """A wheel of this client's gaudi_nb (repacked from the imported package), cached by build id."""
    version, build = client_build()
    folder = Path(cache_dir or paths.home() / "wheels") / build
    wheel = folder / f"{DIST}-{version}-py3-none-any.whl"
    if wheel.is_file():
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{DIST}-{version}.dist-info"
    metadata, entry_points = _metadata()
    extra = {
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: gaudi_nb.nodes.bootstrap\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": entry_points.encode(),
        f"{info}/top_level.txt": f"{DIST}\n".encode(),
    }
    partial = folder / (wheel.name + f".{time.time_ns()}.part")
    record: List[str] = []
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in _package_files():
            data = path.read_bytes()
            archive.writestr(name, data)
            record.append(f"{name},{_record_hash(data)},{len(data)}")
        for name, data in extra.items():
            archive.writestr(name, data)
            record.append(f"{name},{_record_hash(data)},{len(data)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    partial.replace(wheel)  # atomic: a concurrent attach sees a whole wheel or none
    return wheel


# -- what the node has -----------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What one interpreter on the node has (the JSON PROBE prints)."""

    facts: Dict[str, Any]

    @property
    def executable(self) -> str:
        return str(self.facts.get("executable") or "")

    @property
    def home(self) -> str:
        return str(self.facts["home"])

    @property
    def version(self) -> Optional[str]:
        return self.facts.get("gaudi_nb_version")

    @property
    def build(self) -> Optional[str]:
        return (self.facts.get("build") or {}).get("build")

    def get(self, key: str, default: Any = None) -> Any:
        return self.facts.get(key, default)


def _probes(result: CommandResult) -> List[Probe]:
    found = []
    for line in result.stdout.splitlines():
        if line.startswith("GAUDI_NB_PROBE "):
            try:
                found.append(Probe(json.loads(line[len("GAUDI_NB_PROBE "):])))
            except ValueError:
                continue
    return found


async def probe(connection: Any, python: str, *extras: str, timeout: float = 120.0) -> Optional[Probe]:
    """Run PROBE with one interpreter on the node; None when it does not run (missing, not Python 3)."""
    result = await run_command(connection, [python, "-c", PROBE, *extras], timeout=timeout)
    found = _probes(result)
    return found[-1] if found else None


async def find_pythons(connection: Any) -> List[Probe]:
    """Every Python on the node's PATH, probed, in PATH order, each interpreter once."""
    script = f"GAUDI_NB_PROBE={shlex.quote(PROBE)}; export GAUDI_NB_PROBE; {FIND_PYTHONS}"
    result = await run_command(connection, ["sh", "-c", script], timeout=120.0)
    seen, found = set(), []
    for item in _probes(result):
        key = item.get("prefix"), item.executable
        if key not in seen:
            seen.add(key)
            found.append(item)
    return found


def choose_base(pythons: List[Probe]) -> Probe:
    """The interpreter the env is built on: the first Python 3.10+ with torch (a Gaudi node's Intel
    PyTorch), else the first Python 3.10+; SpecError when there is none."""
    usable = [p for p in pythons if p.get("python_ok")]
    if not usable:
        seen = ", ".join(f"{p.executable} {p.get('python_version')}" for p in pythons) or "none"
        raise SpecError(
            f"no Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ on the node's PATH (found: {seen}): install python3 there, "
            "or pass --python PATH to an interpreter that has gaudi_nb"
        )
    with_torch = [p for p in usable if p.get("torch")]
    return (with_torch or usable)[0]


# -- installing ------------------------------------------------------------------------------


async def _check(connection: Any, argv: List[str], what: str, hint: str, timeout: float = 900.0) -> CommandResult:
    result = await run_command(connection, argv, timeout=timeout)
    if result.exit_status != 0:
        raise GaudiNbError(f"{what} failed on the node ({result.last_line()}): {hint}")
    return result


async def ensure_env(connection: Any, *, progress: Optional[Progress] = None) -> Probe:
    """Make sure `<node GAUDI_NB_HOME>/env` has this client's gaudi_nb build; returns its probe.

    Reuses the env when it already has this build; otherwise builds it on the first Python
    that has torch (with --system-site-packages, and that Python's own packages when it is a
    venv) and pip-installs the client's wheel, uploaded with sftp.
    """
    say = progress or (lambda _message: None)
    version, build = client_build()
    current = await _probe_default_env(connection)
    if current is not None and current.version == version and current.build == build:
        say(f"gaudi_nb {version} is installed in {current.get('prefix')} already")
        return current
    pythons = await find_pythons(connection)
    base = choose_base(pythons)
    env = f"{base.home}/{ENV_DIR}"
    env_python = f"{env}/bin/python"
    if current is None or current.get("prefix") != env:
        current = await probe(connection, env_python, "doctor", "modules")

    wheel = build_wheel()
    say(f"installing gaudi_nb {version} (build {build}) into {env} on the node, on {base.executable}")
    remote_wheels = f"{base.home}/wheels/{build}"
    await _check(connection, ["mkdir", "-p", remote_wheels], "creating the wheel folder", f"check that {base.home} is writable")
    remote_wheel = f"{remote_wheels}/{wheel.name}"
    async with connection.start_sftp_client() as sftp:
        await sftp.put(str(wheel), remote_wheel + ".part")
        await sftp.posix_rename(remote_wheel + ".part", remote_wheel)

    if current is None:
        await _create_env(connection, base, env)
    pip = [env_python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"]
    if current is not None and current.version == version:
        # the same version, another build (a checkout being worked on): replace gaudi_nb alone, then
        # add any dependency the build gained (pip leaves the ones already there as they are)
        steps = [pip + ["--force-reinstall", "--no-deps", remote_wheel], pip + [remote_wheel]]
    else:
        # its dependencies too; those the base interpreter has (torch) count as installed
        steps = [pip + ["--upgrade", remote_wheel]]
    for argv in steps:
        await _check(connection, argv, "pip install of gaudi_nb", "the node needs its dependencies from PyPI (or a mirror pip is configured for), or pass --python PATH to an interpreter that has gaudi_nb")
    marker = json.dumps({"version": version, "build": build, "installed_at": time.time(), "base": base.executable})
    await _check(connection, [env_python, "-c", "import json, os, sys; open(os.path.join(sys.prefix, sys.argv[1]), 'w').write(sys.argv[2])", BUILD_MARKER, marker],
                 "recording the installed build", f"check that {env} is writable")
    installed = await probe(connection, env_python, "doctor", "modules")
    if installed is None or installed.version != version:
        why = (installed.get("gaudi_nb_error") if installed else None) or "the env's Python does not run"
        raise GaudiNbError(f"gaudi_nb {version} did not import in {env} after installing ({why}): remove {env} on the node and attach again")
    return installed


async def _probe_default_env(connection: Any) -> Optional[Probe]:
    """The env's probe in one round trip when GAUDI_NB_HOME (or ~/.gaudi_nb) holds one; None otherwise."""
    script = (
        f"GAUDI_NB_PROBE={shlex.quote(PROBE)}; export GAUDI_NB_PROBE; "
        f'p="${{GAUDI_NB_HOME:-$HOME/.gaudi_nb}}/{ENV_DIR}/bin/python"; [ -x "$p" ] && exec "$p" -c "$GAUDI_NB_PROBE" doctor modules; true'
    )
    found = _probes(await run_command(connection, ["sh", "-c", script], timeout=120.0))
    if not found:
        return None
    # a relative or ~ GAUDI_NB_HOME reads differently in sh: trust the env only where Python agrees
    return found[-1] if found[-1].get("prefix") == f"{found[-1].home}/{ENV_DIR}" else None


async def _create_env(connection: Any, base: Probe, env: str) -> None:
    argv = [base.executable, "-m", "venv", "--clear", "--without-pip"]
    if base.get("torch"):
        # use the node's torch (Intel's Gaudi build) rather than a PyPI one
        argv.append("--system-site-packages")
    await _check(connection, argv + [env], f"{base.executable} -m venv", "install the venv module for that Python (Debian: apt-get install python3-venv)")
    if base.get("torch") and base.get("venv"):
        # --system-site-packages reaches only the base of a venv; its own packages (torch) come through a .pth
        site_dirs = base.get("site_packages") or []
        script = (
            "import os, site, sys\n"
            "target = [p for p in site.getsitepackages() if p.startswith(sys.prefix)][0]\n"
            "open(os.path.join(target, '_gaudi_nb_base.pth'), 'w').write(''.join(p + '\\n' for p in sys.argv[1:]))\n"
        )
        await _check(connection, [f"{env}/bin/python", "-c", script, *site_dirs], "linking the base Python's packages", f"check that {env} is writable")
    pip_ok = await run_command(connection, [f"{env}/bin/python", "-m", "pip", "--version"], timeout=120.0)
    if pip_ok.exit_status != 0:
        await _check(connection, [f"{env}/bin/python", "-m", "ensurepip", "--default-pip"], "ensurepip",
                     "install pip for that Python (Debian: apt-get install python3-pip python3-venv)")
