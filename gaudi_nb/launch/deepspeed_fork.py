"""Intel's DeepSpeed fork, which DeepSpeed runs on Gaudi need (Intel does not support public DeepSpeed there).

How the fork is told apart: HabanaAI/DeepSpeed ships a ``build.txt`` holding
``+hpu.synapse.v<release>`` (``+hpu.synapse.v1.21.0`` on its 1.21.0 branch), and its
setup.py appends build.txt to version.txt, so the installed distribution's version reads
``0.16.1+hpu.synapse.v1.21.0``. Public DeepSpeed from PyPI has no such local version (and
public DeepSpeed also ships ``accelerator/hpu_accelerator.py``, so that module proves nothing).
"""
from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from typing import Optional

from ..errors import GaudiNbError

GAUDI_SOFTWARE = "1.24.0"  # the Intel Gaudi software release this project is written for
FORK_PIP = f"pip install git+https://github.com/HabanaAI/DeepSpeed.git@{GAUDI_SOFTWARE}"

_FORK_VERSION = re.compile(r"\+hpu(?:\.synapse\.v(?P<synapse>\d+(?:\.\d+)*))?")


@dataclass(frozen=True)
class DeepSpeedInstall:
    version: Optional[str]  # None: not installed
    fork: bool
    synapse: Optional[str] = None  # the Gaudi software release the fork was built for

    def describe(self) -> str:
        if self.version is None:
            return "not installed"
        kind = f"Intel's fork for Gaudi software {self.synapse}" if self.fork and self.synapse else ("Intel's fork" if self.fork else "public DeepSpeed")
        return f"{self.version} ({kind})"


def parse_deepspeed_version(version: Optional[str]) -> DeepSpeedInstall:
    if version is None:
        return DeepSpeedInstall(None, False)
    match = _FORK_VERSION.search(version)
    if match is None:
        return DeepSpeedInstall(version, False)
    return DeepSpeedInstall(version, True, match.group("synapse"))


def deepspeed_install() -> DeepSpeedInstall:
    """The DeepSpeed this Python would import, read from its distribution metadata (nothing is imported)."""
    try:
        version: Optional[str] = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return parse_deepspeed_version(version)


def require_deepspeed_fork() -> DeepSpeedInstall:
    """Raise a GaudiNbError with the pip line unless Intel's fork is installed."""
    install = deepspeed_install()
    if install.fork:
        return install
    found = "DeepSpeed is not installed" if install.version is None else f"deepspeed {install.version} is public DeepSpeed, which Intel does not support on Gaudi"
    raise GaudiNbError(f"DeepSpeed runs on Gaudi need Intel's DeepSpeed fork: {found}; on every node: {FORK_PIP}")
