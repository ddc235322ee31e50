"""Command builders (pure: spec → argv + environment + files) for torchrun and optimum-habana's launchers."""
from __future__ import annotations

from . import habana as _habana  # noqa: F401  (registers "torch.distributed.run", "mpirun", "deepspeed")
from . import torchrun as _torchrun  # noqa: F401  (registers "torchrun")
from .habana import deepspeed_env_text, hostfile_text, mpirun_cores_per_process
from .plan import LaunchContext, LaunchPlan, build_launch, launch_env, launchers, pick_launcher

__all__ = [
    "LaunchContext",
    "LaunchPlan",
    "build_launch",
    "deepspeed_env_text",
    "hostfile_text",
    "launch_env",
    "launchers",
    "mpirun_cores_per_process",
    "pick_launcher",
]
