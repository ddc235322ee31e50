"""LaunchPlan, the launcher registry and build_launch: a RunSpec becomes argv, environment and files."""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import SpecError
from ..registry import Registry
from ..spec import RunSpec
from .cpus import CpuTopology
from .modules import MODULES_PER_NODE, choose_modules, read_module_state, visible_from_environ

ACCELERATORS = ("hpu", "cuda", "cpu")

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class LaunchPlan:
    """What to run on one node: argv, the variables the launcher adds to the inherited
    environment, and files (relative to the launch working directory) to write first."""

    argv: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)
    launcher: str = ""

    def describe(self) -> str:
        """One shell line (environment first) for logs and docs; files are not shown."""
        assignments = [f"{key}={shlex.quote(value)}" for key, value in self.env.items()]
        return " ".join(assignments + [shlex.join(self.argv)])


@dataclass(frozen=True)
class LaunchContext:
    """Everything about the node a builder needs besides the spec (see build_launch)."""

    python: str
    node_rank: int
    master_addr: str
    master_port: int
    hosts: Optional[List[str]]
    cpus: int
    local_addr: Optional[str]
    rdzv_host: Optional[bool]
    accelerator: str
    ifname: Optional[str]
    environ: Mapping[str, str]
    topology: Optional[CpuTopology] = None  # None: read from lscpu where a builder needs it
    free_modules: Optional[Tuple[int, ...]] = None  # Gaudi modules no other process holds; None: unknown


Builder = Callable[[RunSpec, List[str], LaunchContext], LaunchPlan]

launchers: Registry[Builder] = Registry("launchers")


def pick_launcher(spec: RunSpec, accelerator: str = "cpu") -> str:
    """Resolve launcher "auto": the rank itself for one card, torchrun for several, deepspeed for several Gaudi nodes
    (optimum-habana starts a single card's script with plain python, and multi-node runs only through DeepSpeed)."""
    if spec.launcher != "auto":
        return spec.launcher
    if spec.nodes > 1 and accelerator == "hpu":
        return "deepspeed"
    return "python" if spec.nodes == 1 and spec.devices == 1 else "torchrun"


def launch_env(spec: RunSpec, ctx: LaunchContext) -> Dict[str, str]:
    """The variables every rank on every node needs, beyond what it inherits."""
    env: Dict[str, str] = {}
    if ctx.accelerator == "hpu":
        if spec.nodes > 1 and spec.devices != MODULES_PER_NODE:
            # Intel's scale-out rule: HABANA_VISIBLE_MODULES names every card of the server; a pair or quad
            # chosen on node 0 would also travel to every node in .deepspeed_env
            raise SpecError(f"devices={spec.devices} across {spec.nodes} Gaudi nodes: a run across nodes takes every card of "
                            f"each node (Intel's scale-out rule): use devices={MODULES_PER_NODE}, or one node")
        env["PT_HPU_LAZY_MODE"] = "1" if spec.lazy_mode else "0"
        visible, mounted = visible_from_environ(ctx.environ)
        modules = choose_modules(spec.devices, free=ctx.free_modules, visible=visible, mounted=mounted)
        if modules is not None:
            # carried explicitly (even when the container set it) so that .deepspeed_env repeats it on the other nodes
            env["HABANA_VISIBLE_MODULES"] = ",".join(str(m) for m in modules)
    elif ctx.accelerator == "cpu":
        # torchrun would set 1 thread per rank; an even share of the cores is faster and never oversubscribes
        env["OMP_NUM_THREADS"] = ctx.environ.get("OMP_NUM_THREADS") or str(max(1, ctx.cpus // spec.devices))
        if spec.nodes > 1 and ctx.ifname:
            env["GLOO_SOCKET_IFNAME"] = ctx.ifname
    return env


def _free_modules(accelerator: str, given: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
    if given is not None:
        return tuple(given)
    if accelerator != "hpu":
        return None
    state = read_module_state()
    return None if state is None else tuple(state.free)


def build_launch(
    spec: RunSpec,
    worker_argv: Sequence[str],
    *,
    python: str = sys.executable,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    hosts: Optional[List[str]] = None,
    cpus: Optional[int] = None,
    local_addr: Optional[str] = None,
    rdzv_host: Optional[bool] = None,
    accelerator: str = "cpu",
    ifname: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
    launcher: Optional[str] = None,
    topology: Optional[CpuTopology] = None,
    free_modules: Optional[Sequence[int]] = None,
) -> LaunchPlan:
    """Build the command that starts ``worker_argv`` (a script path or ``-m module``, with its
    arguments) on every rank of this node.

    ``cpus`` is the node's core count (default: this machine's); ``hosts`` the node addresses,
    node 0 first (deepspeed's hostfile); ``rdzv_host`` switches torchrun to c10d rendezvous with
    this node hosting the store (True) or not (False); ``environ`` is the environment the
    launcher will inherit (default ``os.environ``, read only for user overrides);
    ``launcher`` overrides ``spec.launcher`` with any registered name; ``topology`` is the node's
    CPU layout (mpirun's cores per rank; default: lscpu); ``free_modules`` the Gaudi module ids no
    other process holds (default on HPU: hl-smi, unknown where it cannot say).
    Nothing is written or started; on HPU the node is read (hl-smi) unless ``free_modules`` is given.
    """
    worker = list(worker_argv)
    if not worker:
        raise SpecError("worker_argv is empty: pass a script path or ['-m', 'module', ...]")
    accelerator = accelerator.lower()
    if accelerator not in ACCELERATORS:
        raise SpecError(f"accelerator must be one of {', '.join(ACCELERATORS)} (got {accelerator!r})")
    if not 0 <= node_rank < spec.nodes:
        raise SpecError(f"node_rank must be between 0 and {spec.nodes - 1} for nodes={spec.nodes} (got {node_rank})")
    if hosts is not None and len(hosts) != spec.nodes:
        raise SpecError(f"hosts lists {len(hosts)} node(s) but nodes={spec.nodes}: give one address per node")
    ctx = LaunchContext(
        python=python,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        hosts=list(hosts) if hosts is not None else None,
        cpus=max(1, cpus if cpus is not None else (os.cpu_count() or 1)),
        local_addr=local_addr,
        rdzv_host=rdzv_host,
        accelerator=accelerator,
        ifname=ifname,
        environ=os.environ if environ is None else environ,
        topology=topology,
        free_modules=_free_modules(accelerator, free_modules),
    )
    name = launcher or pick_launcher(spec, accelerator)
    return launchers.get(name)(spec, worker, ctx)
