"""gaudi_nb.launch: whole argv lists against the documented forms, the environment, and one real torchrun."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from gaudi_nb.errors import NotFoundError, SpecError
from gaudi_nb.launch import (
    LaunchPlan,
    build_launch,
    deepspeed_env_text,
    hostfile_text,
    launchers,
    mpirun_cores_per_process,
    pick_launcher,
)
from gaudi_nb.spec import RunSpec

PY = "/opt/venv/bin/python"
WORKER = ["-m", "gaudi_nb.worker", "--run-dir", "/runs/r1"]


def plan(launcher="auto", devices=2, nodes=1, lazy_mode=True, environ=None, **kwargs) -> LaunchPlan:
    spec = RunSpec(devices=devices, nodes=nodes, launcher=launcher, lazy_mode=lazy_mode)
    return build_launch(spec, WORKER, python=PY, environ=environ if environ is not None else {}, **kwargs)


# ---- torchrun --------------------------------------------------------------------------------

def test_torchrun_single_node():
    p = plan("torchrun", devices=4, cpus=16, master_port=29511)
    assert p.argv == [PY, "-u", "-m", "torch.distributed.run", "--nproc-per-node", "4",
                      "--master-addr", "127.0.0.1", "--master-port", "29511", *WORKER]
    assert p.launcher == "torchrun"
    assert p.env == {"OMP_NUM_THREADS": "4"}
    assert p.files == {}


def test_torchrun_two_nodes_static_rendezvous():
    p = plan("torchrun", devices=2, nodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29600,
             local_addr="10.0.0.2", cpus=8, ifname="eth0")
    assert p.argv == [PY, "-u", "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "1",
                      "--nproc-per-node", "2", "--master-addr", "10.0.0.1", "--master-port", "29600",
                      "--local-addr", "10.0.0.2", *WORKER]
    assert p.env == {"OMP_NUM_THREADS": "4", "GLOO_SOCKET_IFNAME": "eth0"}


def test_torchrun_c10d_when_told_who_hosts_the_store():
    p = plan("torchrun", devices=1, nodes=2, master_addr="head", rdzv_host=True, cpus=1)
    assert p.argv[4:] == ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                          "--rdzv-endpoint", "head:29500", "--rdzv-id", "gaudi_nb",
                          "--rdzv-conf", "is_host=true", *WORKER]


def test_torchrun_parses_our_argv():
    # the options we emit are the ones torch.distributed.run's own parser knows
    from torch.distributed.run import parse_args

    p = plan("torchrun", devices=2, nodes=2, node_rank=1, master_addr="10.0.0.1", local_addr="10.0.0.2", cpus=2)
    args = parse_args(p.argv[4:])
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "2")
    assert (args.master_addr, args.master_port, args.local_addr) == ("10.0.0.1", 29500, "10.0.0.2")
    assert args.module and args.training_script == "gaudi_nb.worker"
    assert args.training_script_args == ["--run-dir", "/runs/r1"]


# ---- optimum-habana's forms (gaudi_spawn.py / DistributedRunner) --------------------------------

def test_torch_distributed_run_form():
    p = build_launch(RunSpec(devices=8), WORKER, python=PY, accelerator="hpu",
                     launcher="torch.distributed.run", environ={})
    assert p.argv == [PY, "-um", "torch.distributed.run", "--nproc_per_node=8", *WORKER]
    assert p.env == {"PT_HPU_LAZY_MODE": "1"}  # 8 devices: every module, nothing to choose


@pytest.mark.parametrize("cpus, devices, pe", [(2, 2, 1), (2, 8, 1), (160, 8, 20), (160, 1, 160)])
def test_mpirun_form_and_cores_per_process(cpus, devices, pe):
    p = plan("mpirun", devices=devices, cpus=cpus, accelerator="hpu", master_port=29501)
    assert p.argv == ["mpirun", "-n", str(devices), "--bind-to", "core", "--map-by", f"socket:PE={pe}",
                      "--rank-by", "slot", "--report-bindings", "--allow-run-as-root", PY, *WORKER]
    assert p.env["MASTER_ADDR"] == "127.0.0.1" and p.env["MASTER_PORT"] == "29501"


def test_mpirun_never_binds_zero_cores():
    # DistributedRunner computes (sockets * cores_per_socket) // world_size: 0 on a 2-core host with 8 ranks
    assert (2 // 8, mpirun_cores_per_process(2, 8)) == (0, 1)


def test_deepspeed_single_node():
    p = plan("deepspeed", devices=8, accelerator="hpu", master_port=29502)
    assert p.argv == ["deepspeed", "--num_nodes", "1", "--num_gpus", "8", "--no_local_rank",
                      "--master_port", "29502", "--module", "gaudi_nb.worker", "--run-dir", "/runs/r1"]
    assert p.files == {}


def test_deepspeed_multi_node_hostfile_and_env():
    p = plan("deepspeed", devices=8, nodes=2, accelerator="hpu", lazy_mode=False,
             hosts=["gaudi-a", "gaudi-b"], environ={"HABANA_VISIBLE_MODULES": "0,1,2,3,4,5,6,7"})
    assert p.argv == ["deepspeed", "--hostfile", "hostfile", "--master_addr", "gaudi-a", "--no_local_rank",
                      "--master_port", "29500", "--module", "gaudi_nb.worker", "--run-dir", "/runs/r1"]
    assert p.files == {
        "hostfile": "gaudi-a slots=8\ngaudi-b slots=8\n",
        ".deepspeed_env": "PT_HPU_LAZY_MODE=0\nHABANA_VISIBLE_MODULES=0,1,2,3,4,5,6,7\n",
    }


def test_deepspeed_explicit_master_and_errors():
    p = plan("deepspeed", devices=4, nodes=2, accelerator="hpu", hosts=["a", "b"], master_addr="10.1.1.1")
    assert p.argv[3:5] == ["--master_addr", "10.1.1.1"]
    assert p.files[".deepspeed_env"] == "PT_HPU_LAZY_MODE=1\nHABANA_VISIBLE_MODULES=0,1,2,3\n"
    with pytest.raises(SpecError, match="hosts="):
        plan("deepspeed", nodes=2, accelerator="hpu")
    with pytest.raises(SpecError, match="node 0 only"):
        plan("deepspeed", nodes=2, accelerator="hpu", hosts=["a", "b"], node_rank=1)
    with pytest.raises(SpecError, match="shell-safe|without spaces"):
        deepspeed_env_text({"X": "a b"})
    assert hostfile_text(["h"], 2) == "h slots=2\n"


def test_one_node_launchers_refuse_several_nodes():
    for name in ("mpirun", "torch.distributed.run"):
        with pytest.raises(SpecError, match="deepspeed"):
            build_launch(RunSpec(nodes=2), WORKER, launcher=name, environ={})


# ---- environment -------------------------------------------------------------------------------

def test_hpu_env_lazy_and_eager():
    lazy = plan("torchrun", devices=8, accelerator="hpu", lazy_mode=True)
    eager = plan("torchrun", devices=8, accelerator="hpu", lazy_mode=False)
    assert lazy.env == {"PT_HPU_LAZY_MODE": "1"}
    assert eager.env == {"PT_HPU_LAZY_MODE": "0"}


def test_hpu_visible_modules():
    assert plan("torchrun", devices=4, accelerator="hpu").env["HABANA_VISIBLE_MODULES"] == "0,1,2,3"
    # the user's choice wins, and is checked against devices
    assert plan("torchrun", devices=2, accelerator="hpu",
                environ={"HABANA_VISIBLE_MODULES": "4,5"}).env["HABANA_VISIBLE_MODULES"] == "4,5"
    with pytest.raises(SpecError, match="HABANA_VISIBLE_MODULES"):
        plan("torchrun", devices=4, accelerator="hpu", environ={"HABANA_VISIBLE_MODULES": "4,5"})


def test_cpu_env_has_no_hpu_variables_and_shares_cores():
    env = plan("torchrun", devices=4, cpus=2).env
    assert env == {"OMP_NUM_THREADS": "1"}
    assert plan("torchrun", devices=2, cpus=16, environ={"OMP_NUM_THREADS": "3"}).env == {"OMP_NUM_THREADS": "3"}
    # GLOO_SOCKET_IFNAME only matters between nodes
    assert "GLOO_SOCKET_IFNAME" not in plan("torchrun", cpus=2, ifname="eth0").env
    assert plan("torchrun", accelerator="cuda").env == {}


# ---- choice, registry, describe ----------------------------------------------------------------

@pytest.mark.parametrize("nodes, accelerator, expected", [
    (1, "cpu", "torchrun"), (1, "hpu", "torchrun"), (2, "cpu", "torchrun"),
    (2, "cuda", "torchrun"), (2, "hpu", "deepspeed"),
])
def test_auto_launcher(nodes, accelerator, expected):
    assert pick_launcher(RunSpec(nodes=nodes), accelerator) == expected
    assert pick_launcher(RunSpec(nodes=nodes, launcher="mpirun"), accelerator) == "mpirun"


def test_registry_and_bad_input():
    assert launchers.names() == ["deepspeed", "mpirun", "torch.distributed.run", "torchrun"]
    with pytest.raises(NotFoundError, match="torchrun"):
        build_launch(RunSpec(), WORKER, launcher="slurm", environ={})
    with pytest.raises(SpecError, match="accelerator"):
        build_launch(RunSpec(), WORKER, accelerator="tpu")
    with pytest.raises(SpecError, match="node_rank"):
        build_launch(RunSpec(nodes=2), WORKER, node_rank=2)
    with pytest.raises(SpecError, match="worker_argv"):
        build_launch(RunSpec(), [])


def test_describe_is_one_shell_line():
    p = LaunchPlan(argv=["python", "-m", "w", "--run-dir", "/a b"], env={"A": "1", "B": "x y"})
    assert p.describe() == "A=1 B='x y' python -m w --run-dir '/a b'"


# ---- one real launch -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_torchrun_starts_both_ranks(tmp_path):
    script = tmp_path / "show_rank.py"
    script.write_text(textwrap.dedent("""
        import os
        print(f"rank={os.environ['RANK']} world={os.environ['WORLD_SIZE']} omp={os.environ['OMP_NUM_THREADS']}", flush=True)
    """))
    p = build_launch(RunSpec(devices=2), [str(script)], master_port=_free_port(), cpus=2, environ={})
    done = subprocess.run(p.argv, env={**os.environ, **p.env}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "rank=0 world=2 omp=1" in done.stdout
    assert "rank=1 world=2 omp=1" in done.stdout
    assert p.argv[0] == sys.executable
