"""Command builders (pure: spec → argv + environment + files) for torchrun and optimum-habana's launchers."""
from __future__ import annotations

from . import habana as _habana  # noqa: F401  (registers "torch.distributed.run", "mpirun", "deepspeed")
from . import torchrun as _torchrun  # noqa: F401  (registers "torchrun")
from .cpus import CpuTopology, cpu_topology, mpirun_cores_per_process, parse_lscpu
from .deepspeed_fork import FORK_PIP, deepspeed_install, require_deepspeed_fork
from .habana import deepspeed_env_text, hostfile_text
from .modules import SUPPORTED_SETS, choose_modules, read_module_state
from .plan import LaunchContext, LaunchPlan, build_launch, launch_env, launchers, pick_launcher

__all__ = [
    "FORK_PIP",
    "SUPPORTED_SETS",
    "CpuTopology",
    "LaunchContext",
    "LaunchPlan",
    "build_launch",
    "choose_modules",
    "cpu_topology",
    "deepspeed_env_text",
    "deepspeed_install",
    "hostfile_text",
    "launch_env",
    "launchers",
    "mpirun_cores_per_process",
    "parse_lscpu",
    "pick_launcher",
    "read_module_state",
    "require_deepspeed_fork",
]
