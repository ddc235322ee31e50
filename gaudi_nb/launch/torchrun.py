"""torchrun (``python -u -m torch.distributed.run``) with dashed options: one node, or several with static rendezvous;
and one card's rank started directly (``python -u``), as optimum-habana's launcher does for a world of one."""
from __future__ import annotations

from typing import List

from ..errors import SpecError
from ..spec import RunSpec
from .plan import LaunchContext, LaunchPlan, launch_env, launchers


@launchers.register("torchrun")
def build_torchrun(spec: RunSpec, worker: List[str], ctx: LaunchContext) -> LaunchPlan:
    """torchrun reads ``-m module`` and a script path alike, so the worker argv is appended as is.

    Several nodes rendezvous statically at master_addr:master_port, node 0 hosting the store;
    ``ctx.rdzv_host`` (True/False) switches to c10d rendezvous, for networks where the node that
    should host the store cannot be told from its address.
    """
    argv = [ctx.python, "-u", "-m", "torch.distributed.run"]
    if spec.nodes == 1:
        argv += ["--nproc-per-node", str(spec.devices),
                 "--master-addr", ctx.master_addr, "--master-port", str(ctx.master_port)]
    elif ctx.rdzv_host is None:
        argv += ["--nnodes", str(spec.nodes), "--node-rank", str(ctx.node_rank),
                 "--nproc-per-node", str(spec.devices),
                 "--master-addr", ctx.master_addr, "--master-port", str(ctx.master_port)]
    else:
        argv += ["--nnodes", str(spec.nodes), "--nproc-per-node", str(spec.devices),
                 "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{ctx.master_addr}:{ctx.master_port}",
                 "--rdzv-id", spec.name or "gaudi_nb",
                 "--rdzv-conf", f"is_host={'true' if ctx.rdzv_host else 'false'}"]
    if spec.nodes > 1 and ctx.local_addr:
        argv += ["--local-addr", ctx.local_addr]
    return LaunchPlan(argv=argv + worker, env=launch_env(spec, ctx), launcher="torchrun")


# torchrun's variables for a world of one: a Trainer (or init_process_group's env://) joins the same one-rank group
# it would under torchrun, and every rank reads where it stands from the same names
ONE_RANK_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0"}


@launchers.register("python")
def build_one_card(spec: RunSpec, worker: List[str], ctx: LaunchContext) -> LaunchPlan:
    """One rank on one node: the worker started by the interpreter itself (optimum-habana's DistributedRunner runs a
    single card's script with plain ``python``). No launcher process stands between the agent and the rank, so a run
    starts without importing torch twice and the rank's exit code is the attempt's."""
    if spec.nodes != 1 or spec.devices != 1:
        raise SpecError(f"launcher python starts one rank (nodes=1, devices=1), not {spec.nodes} node(s) × {spec.devices}: use launcher auto or torchrun")
    env = {**launch_env(spec, ctx), **ONE_RANK_ENV, "MASTER_ADDR": ctx.master_addr, "MASTER_PORT": str(ctx.master_port)}
    return LaunchPlan(argv=[ctx.python, "-u", *worker], env=env, launcher="python")
