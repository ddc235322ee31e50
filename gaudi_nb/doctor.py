"""What this machine can run: accelerator, software versions, telemetry sources, and how to get what is missing.

On a Gaudi node it also reports what decides whether a run will work there: the driver and
firmware, the Gaudi PyTorch plugin against the release optimum-habana was validated with,
lazy or eager mode, which modules are free, Intel's DeepSpeed fork, hugepages, the card's
generation and whether the installed software supports it, pdsh for runs across nodes, and
the trainer stack's support state (optimum-habana is past end of support).
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import paths
from .accel import detect_name
from .k8s.facts import HUGEPAGES_2MI_MIB

# Intel's Kubernetes jobs for Gaudi request 2 MiB hugepages in every pod (the number and its source:
# k8s/facts.py, which `gaudi-nb k8s render` uses too; no minimum is stated), so a pod without any is
# flagged; outside Kubernetes the amount is only reported.
K8S_HUGEPAGES_MIB = HUGEPAGES_2MI_MIB

Check = Callable[..., None]


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def validated_synapse_version() -> Optional[str]:
    """optimum-habana's CURRENTLY_VALIDATED_SYNAPSE_VERSION ("1.24.0" in 1.21.2), read from the
    source of optimum/habana/utils/misc.py without importing it: importing optimum.habana runs its
    __init__, which fails without the Gaudi plugin (see worker/compat.py)."""
    spec = importlib.util.find_spec("optimum")
    if spec is None or spec.submodule_search_locations is None:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / "habana" / "utils" / "misc.py"
        if path.is_file():
            return parse_validated_version(path.read_text())
    return None


def parse_validated_version(source: str) -> Optional[str]:
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign) or not any(
            isinstance(t, ast.Name) and t.id == "CURRENTLY_VALIDATED_SYNAPSE_VERSION" for t in node.targets
        ):
            continue
        value = node.value
        if isinstance(value, ast.Call) and value.args:  # version.parse("1.24.0")
            value = value.args[0]
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
    return None


def same_release(found: Optional[str], validated: Optional[str]) -> bool:
    """optimum-habana's own rule (check_synapse_version): major and minor must match."""
    def major_minor(text: Optional[str]) -> Optional[tuple]:
        match = re.match(r"\s*v?(\d+)\.(\d+)", text or "")
        return (int(match.group(1)), int(match.group(2))) if match else None

    return major_minor(found) is not None and major_minor(found) == major_minor(validated)


def execution_mode(environ: Mapping[str, str]) -> str:
    """PT_HPU_LAZY_MODE as the Gaudi plugin reads it: unset means 0 (eager) since Gaudi software 1.21."""
    value = environ.get("PT_HPU_LAZY_MODE")
    if value is None or value.strip() == "":
        return "eager with torch.compile (PT_HPU_LAZY_MODE unset, which means 0 since Gaudi software 1.21)"
    if value.strip() == "1":
        return "lazy (PT_HPU_LAZY_MODE=1, the legacy mode)"
    return f"eager with torch.compile (PT_HPU_LAZY_MODE={value.strip()})"


def hugepages_mib(meminfo: str) -> Optional[float]:
    """HugePages_Total × Hugepagesize from /proc/meminfo, in MiB."""
    total = re.search(r"^HugePages_Total:\s*(\d+)", meminfo, re.M)
    size = re.search(r"^Hugepagesize:\s*(\d+)\s*kB", meminfo, re.M)
    if not total or not size:
        return None
    return int(total.group(1)) * int(size.group(1)) / 1024


def gaudi_checks(check: Check, on_gaudi: bool, state: Any, validated: Optional[str], environ: Mapping[str, str], meminfo: str) -> None:
    """The rows that decide whether a Gaudi run will work; off Gaudi they say there is no card."""
    from .launch.deepspeed_fork import FORK_PIP, deepspeed_install

    no_card = "no Gaudi card here"
    against = f"optimum-habana was validated with Intel Gaudi software {validated}" if validated else "optimum-habana is not installed"
    if state is not None:
        driver = state.driver_version
        check("Gaudi driver", driver or "not in hl-smi's output", driver is not None and (validated is None or same_release(driver, validated)),
              f"{against}, this driver is {driver}: install the driver and software of one release (Intel's support matrix)")
        check("Gaudi firmware", state.firmware_version or "not in hl-smi's output", state.firmware_version is not None,
              "hl-smi --fw-versions shows each component; update it with the driver (Intel's firmware update guide)")
        busy = ", ".join(f"{m} (pid {','.join(str(p) for p in pids)})" for m, pids in sorted(state.busy.items()))
        free = ",".join(str(m) for m in state.free) or "none"
        check("free Gaudi modules", f"{free} of {','.join(str(m) for m in state.present)}" + (f"; busy: {busy}" if busy else ""),
              bool(state.free), "every card is held by another process: wait for it to end (hl-smi lists them)")
    elif on_gaudi:
        for name in ("Gaudi driver", "Gaudi firmware", "free Gaudi modules"):
            check(name, "hl-smi did not answer", False, "hl-smi comes with the Gaudi driver: run it in a terminal to see why")
    else:
        for name in ("Gaudi driver", "Gaudi firmware", "free Gaudi modules"):
            check(name, no_card, True)
    check("HPU execution mode", execution_mode(environ) if on_gaudi else f"{no_card} (runs set PT_HPU_LAZY_MODE from lazy_mode)", True)

    deepspeed = deepspeed_install()
    if on_gaudi:
        fork_ok = deepspeed.fork and (validated is None or deepspeed.synapse is None or same_release(deepspeed.synapse, validated))
        why = ("needed for runs on several Gaudi nodes (launcher deepspeed)" if deepspeed.version is None else
               "Intel does not support public DeepSpeed on Gaudi" if not deepspeed.fork else
               f"this fork is for Gaudi software {deepspeed.synapse}, {against}")
        check("DeepSpeed", deepspeed.describe(), fork_ok, f"{why}: {FORK_PIP}")
    else:
        check("DeepSpeed", deepspeed.describe() + " (Intel's fork is needed only on Gaudi)", True)

    mib = hugepages_mib(meminfo)
    found = "unknown (no /proc/meminfo)" if mib is None else f"{mib:,.0f} MiB"
    in_k8s = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    if on_gaudi and in_k8s:
        check("hugepages", found, mib is not None and mib > 0,
              f"Intel's Kubernetes jobs for Gaudi request 2 MiB hugepages (hugepages-2Mi: {K8S_HUGEPAGES_MIB}Mi in its guide): "
              "add them to the pod's resources.limits")
    elif on_gaudi:
        check("hugepages", f"{found} (Intel's Kubernetes jobs ask for them; elsewhere shown for information)", True)
    else:
        check("hugepages", f"{found} ({no_card}: not needed)", True)


def card_name() -> Optional[str]:
    """The first card's name as hl-smi prints it (HL-205, HL-225, HL-325L); None without hl-smi."""
    import subprocess

    if shutil.which("hl-smi") is None:
        return None
    try:
        done = subprocess.run(["hl-smi", "-Q", "name", "-f", "csv,noheader"], capture_output=True, text=True, timeout=15,
                              env={**os.environ, "ENABLE_CONSOLE": "true"})
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return lines[0] if done.returncode == 0 and lines else None


def installed_stack() -> Tuple[Optional[str], Optional[str]]:
    """This machine's card name (hl-smi's) and Gaudi software release (the PyTorch plugin's version, else the
    driver's): what the first-generation pin reads before a run. (None, None) without hl-smi."""
    card = card_name()
    if card is None:
        return None, None
    software = _version("habana-torch-plugin")
    if software is None:
        from .launch.modules import read_module_state

        state = read_module_state()
        software = state.driver_version if state is not None else None
    return card, software


def stack_checks(check: Check, on_gaudi: bool, card: Optional[str], software: Optional[str], trainer_installed: bool, pdsh: Optional[str]) -> None:
    """The card's generation against the installed Gaudi software, pdsh for runs on several nodes, and
    the trainer stack's support state (optimum-habana is past end of support)."""
    from . import gaudi_stack

    if not on_gaudi:
        check("Gaudi generation", "no Gaudi card here", True)
    else:
        label = gaudi_stack.generation(card) or f"unknown ({card or 'hl-smi gave no name'})"
        supported = gaudi_stack.generation_supported(card, software)
        release = f"Gaudi software {software}" if software else "Gaudi software of unknown release"
        verdict = {True: f"supported by {release}", False: f"NOT supported by {release}", None: "support unknown"}[supported]
        pin = gaudi_stack.first_gen_stack(card, software)  # first-generation Gaudi: the run's own check, word for word
        shown = f"{label}, {verdict}" + (f"; {pin[1]}" if pin is not None and pin[0] else "")
        check("Gaudi generation", shown, supported is not False, gaudi_stack.first_gen_refusal(card, software) or "")
    if on_gaudi:
        check("pdsh", pdsh or "missing", pdsh is not None,
              "runs on several Gaudi nodes start every node through DeepSpeed's pdsh: apt-get install pdsh (one node needs none)")
    else:
        check("pdsh", (pdsh or "missing") + " (needed only on node 0 of a run on several Gaudi nodes)", True)
    line = f"--trainer auto on Gaudi: {gaudi_stack.SUPPORTED_HPU_TRAINER}, {gaudi_stack.trainer_support(gaudi_stack.SUPPORTED_HPU_TRAINER)}"
    if trainer_installed:
        line += f"; --trainer optimum-habana: {gaudi_stack.OPTIMUM_HABANA_EOS}"
    check("trainer stack", line, True)


def report() -> Dict[str, Any]:
    from .launch.modules import read_module_state
    from .telemetry.base import SOURCE_ORDER, telemetry_sources

    checks: List[Dict[str, Any]] = []

    def check(name: str, found: Any, ok: bool, hint: str = "") -> None:
        checks.append({"name": name, "found": found, "ok": ok, "hint": "" if ok else hint})

    accelerator = detect_name()
    check("accelerator", accelerator, accelerator == "hpu", "no Gaudi card here: runs use CPU (reported as CPU); on a Gaudi node use Intel's PyTorch image")
    check("python", platform.python_version(), True)
    validated = validated_synapse_version()
    for dist, _extra, hint in (
        ("torch", None, "pip install torch"),
        ("transformers", None, "pip install 'transformers>=4.55,<4.56'"),
        ("optimum-habana", "optimum-habana", "optional, past end of support: pip install 'gaudi_nb[optimum-habana]' for --trainer optimum-habana (GaudiTrainer)"),
        ("habana-torch-plugin", None, "comes with Intel Gaudi software 1.24 (Docker image or installer), not PyPI"),
        ("habana-pyhlml", "habana", "pip install 'gaudi_nb[habana]' (HLML telemetry)"),
        ("nvidia-ml-py", "nvidia", "pip install 'gaudi_nb[nvidia]' (NVML telemetry)"),
        ("asyncssh", "ssh", "pip install 'gaudi_nb[ssh]' (attach nodes over SSH)"),
        ("boto3", "aws", "pip install 'gaudi_nb[aws]' (provision on AWS)"),
        ("panel", "dashboard", "pip install 'gaudi_nb[dashboard]' (team dashboard)"),
        ("papermill", "notebook", "pip install 'gaudi_nb[notebook]' (batch notebooks)"),
    ):
        found = _version(dist)
        ok = found is not None
        if dist == "habana-torch-plugin" and found is not None and validated is not None and not same_release(found, validated):
            ok, hint = False, f"optimum-habana was validated with Intel Gaudi software {validated}: use Intel's {validated} image or installer"
        check(dist, found or "missing", ok, hint)
    check("hl-smi", shutil.which("hl-smi") or "missing", shutil.which("hl-smi") is not None, "installed with the Habana driver on Gaudi nodes")
    state = read_module_state()
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        meminfo = ""
    on_gaudi = accelerator == "hpu" or state is not None
    gaudi_checks(check, on_gaudi, state, validated, os.environ, meminfo)
    software = _version("habana-torch-plugin") or (state.driver_version if state is not None else None)
    stack_checks(check, on_gaudi, card_name() if on_gaudi else None, software, _version("optimum-habana") is not None, shutil.which("pdsh"))
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
