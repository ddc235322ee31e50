"""optimum-habana's three launch forms (gaudi_spawn.py / DistributedRunner): torch.distributed.run, mpirun, deepspeed."""
from __future__ import annotations

from typing import Dict, List, Mapping

from ..errors import SpecError
from ..spec import RunSpec
from .cpus import check_cores_for_ranks, cpu_topology, mpirun_cores_per_process, mpirun_map_by
from .deepspeed_fork import require_deepspeed_fork
from .plan import LOOPBACK, LaunchContext, LaunchPlan, launch_env, launchers

HOSTFILE = "hostfile"
DEEPSPEED_ENV_FILE = ".deepspeed_env"  # DeepSpeed's runner reads it from its working directory (or ~)


def _one_node(spec: RunSpec, launcher: str) -> None:
    if spec.nodes > 1:
        raise SpecError(
            f"launcher '{launcher}' starts one node (optimum-habana runs several nodes only through DeepSpeed): "
            "use launcher='deepspeed', or 'torchrun'"
        )


def check_nodes(spec: RunSpec, launcher: str) -> None:
    """The refusal the builders below make at run time, for a caller that checks before (gaudi-nb k8s render)."""
    if launcher in ("torch.distributed.run", "mpirun"):
        _one_node(spec, launcher)


@launchers.register("torch.distributed.run")
def build_torch_distributed_run(spec: RunSpec, worker: List[str], ctx: LaunchContext) -> LaunchPlan:
    """``python -um torch.distributed.run --nproc_per_node=N --master_addr=A --master_port=P <worker>``:
    DistributedRunner's single-node form, with the address and port it leaves out (without them
    every such run on a node rendezvouses on 29500 and the second one fails)."""
    _one_node(spec, "torch.distributed.run")
    argv = [ctx.python, "-um", "torch.distributed.run", f"--nproc_per_node={spec.devices}",
            f"--master_addr={ctx.master_addr}", f"--master_port={ctx.master_port}"] + worker
    return LaunchPlan(argv=argv, env=launch_env(spec, ctx), launcher="torch.distributed.run")


@launchers.register("mpirun")
def build_mpirun(spec: RunSpec, worker: List[str], ctx: LaunchContext) -> LaunchPlan:
    """``mpirun -n N --bind-to core --map-by socket:PE=<cores> --rank-by slot --report-bindings
    --allow-run-as-root python <worker>``, PE counted in physical cores (see cpus.py); like
    DistributedRunner, MASTER_ADDR/PORT go in the environment."""
    _one_node(spec, "mpirun")
    topology = ctx.topology or cpu_topology()
    check_cores_for_ranks(topology, spec.devices)
    pe = mpirun_cores_per_process(topology, spec.devices)
    argv = ["mpirun", "-n", str(spec.devices), "--bind-to", "core", "--map-by", f"{mpirun_map_by(topology)}:PE={pe}",
            "--rank-by", "slot", "--report-bindings", "--allow-run-as-root", ctx.python] + worker
    env = {"MASTER_ADDR": ctx.master_addr, "MASTER_PORT": str(ctx.master_port)}
    env.update(launch_env(spec, ctx))
    return LaunchPlan(argv=argv, env=env, launcher="mpirun")


def hostfile_text(hosts: List[str], slots: int) -> str:
    """DeepSpeed's (MPI-style) hostfile: one ``hostname slots=N`` line per node, node 0 first."""
    return "".join(f"{host} slots={slots}\n" for host in hosts)


def deepspeed_env_text(env: Mapping[str, str]) -> str:
    """``.deepspeed_env``: KEY=VALUE lines; DeepSpeed splits every line at '=' (no blanks, no comments)
    and exports it through a shell on each node, so values must be shell-safe words."""
    for key, value in env.items():
        if not value or any(ch in value for ch in " \t\n'\"$`\\;&|<>()"):
            raise SpecError(f"{key}={value!r} cannot travel in {DEEPSPEED_ENV_FILE}: use a value without spaces or quotes")
    return "".join(f"{key}={value}\n" for key, value in env.items())


def _deepspeed_worker(worker: List[str]) -> List[str]:
    # DeepSpeed's runner knows only the long form --module
    return ["--module"] + worker[1:] if worker[0] in ("-m", "--module") else worker


@launchers.register("deepspeed")
def build_deepspeed(spec: RunSpec, worker: List[str], ctx: LaunchContext) -> LaunchPlan:
    """One node: ``deepspeed --num_nodes 1 --num_gpus N --no_local_rank --master_port P <worker>``.
    Several: ``deepspeed --hostfile hostfile --master_addr A --no_local_rank --master_port P <worker>``
    with the hostfile and ``.deepspeed_env`` returned as files; node 0 starts every node over ssh (pdsh).
    On Gaudi, Intel's DeepSpeed fork must be installed (checked here, on node 0; a GaudiNbError
    with the pip line otherwise)."""
    if ctx.accelerator == "hpu":
        require_deepspeed_fork()
    env = launch_env(spec, ctx)
    files: Dict[str, str] = {}
    if spec.nodes == 1:
        argv = ["deepspeed", "--num_nodes", "1", "--num_gpus", str(spec.devices),
                "--no_local_rank", "--master_port", str(ctx.master_port)]
    else:
        if ctx.node_rank != 0:
            raise SpecError("deepspeed starts every node from node 0 over ssh: build and run the plan on node 0 only")
        if not ctx.hosts:
            raise SpecError(f"deepspeed needs the address of each of the {spec.nodes} nodes: pass hosts=[node0, node1, ...]")
        # DistributedRunner takes the hostfile's first host as master; a loopback address cannot reach other nodes
        master = ctx.hosts[0] if ctx.master_addr in LOOPBACK else ctx.master_addr
        argv = ["deepspeed", "--hostfile", HOSTFILE, "--master_addr", master,
                "--no_local_rank", "--master_port", str(ctx.master_port)]
        files[HOSTFILE] = hostfile_text(ctx.hosts, spec.devices)
        if env:
            files[DEEPSPEED_ENV_FILE] = deepspeed_env_text(env)
    return LaunchPlan(argv=argv + _deepspeed_worker(worker), env=env, files=files, launcher="deepspeed")
