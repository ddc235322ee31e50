"""torchrun (``python -u -m torch.distributed.run``) with dashed options: one node, or several with static rendezvous."""
from __future__ import annotations

from typing import List

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
