"""gaudi_nb.launch: whole argv lists against the documented forms, the environment, the choice of
Gaudi modules, cores per mpirun rank from real lscpu output, Intel's DeepSpeed fork, and real launches."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import typing
from pathlib import Path

import psutil
import pytest
from conftest import free_port

import gaudi_nb
from gaudi_nb.errors import GaudiNbError, NotFoundError, SpecError
from gaudi_nb.launch import (
    FORK_PIP,
    CpuTopology,
    LaunchPlan,
    build_launch,
    choose_modules,
    cpu_topology,
    deepspeed_env_text,
    deepspeed_install,
    hostfile_text,
    launchers,
    mpirun_cores_per_process,
    parse_lscpu,
    pick_launcher,
    read_module_state,
)
from gaudi_nb.launch.cpus import mpirun_map_by
from gaudi_nb.launch.deepspeed_fork import parse_deepspeed_version
from gaudi_nb.launch.modules import parse_hlsmi_summary, parse_ids, parse_index_module_csv
from gaudi_nb.spec import LauncherName, RunSpec

PY = "/opt/venv/bin/python"
WORKER = ["-m", "gaudi_nb.worker", "--run-dir", "/runs/r1"]
EVERY_MODULE = list(range(8))
# this machine, as --bind-to core sees it
SMALL = CpuTopology(sockets=1, cores_per_socket=2, threads_per_core=1)


def plan(launcher="auto", devices=2, nodes=1, lazy_mode=True, environ=None, **kwargs) -> LaunchPlan:
    spec = RunSpec(devices=devices, nodes=nodes, launcher=launcher, lazy_mode=lazy_mode)
    if kwargs.get("accelerator") == "hpu":
        kwargs.setdefault("free_modules", EVERY_MODULE)  # hermetic: never ask this node's hl-smi
    return build_launch(spec, WORKER, python=PY, environ=environ if environ is not None else {}, **kwargs)


def install_distribution(root: Path, name: str, version: str) -> None:
    """A distribution's metadata on sys.path, as pip leaves it: what importlib.metadata reads."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def deepspeed_fork(tmp_path, monkeypatch):
    """Intel's fork as its setup.py versions it: version.txt + build.txt (+hpu.synapse.v<release>)."""
    root = tmp_path / "site"
    install_distribution(root, "deepspeed", "0.16.1+hpu.synapse.v1.24.0")
    monkeypatch.syspath_prepend(str(root))
    return root


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

def test_torch_distributed_run_form_passes_the_address_and_port():
    p = build_launch(RunSpec(devices=8, lazy_mode=True), WORKER, python=PY, accelerator="hpu",
                     launcher="torch.distributed.run", environ={}, master_port=29517, free_modules=EVERY_MODULE)
    assert p.argv == [PY, "-um", "torch.distributed.run", "--nproc_per_node=8",
                      "--master_addr=127.0.0.1", "--master_port=29517", *WORKER]
    assert p.env == {"PT_HPU_LAZY_MODE": "1"}  # 8 devices: every module, nothing to choose
    # the options are the ones torch.distributed.run's own parser reads
    from torch.distributed.run import parse_args

    args = parse_args(p.argv[3:])
    assert (args.master_addr, args.master_port, args.nproc_per_node) == ("127.0.0.1", 29517, "8")


# lscpu as util-linux 2.37 prints it (Ubuntu 22.04, Intel's Gaudi images) on a 2-socket Gaudi 2
# server (2 × Xeon Platinum 8380: 40 cores, 2 threads each, 160 logical CPUs)
LSCPU_GAUDI_HOST = """\
Architecture:                    x86_64
  CPU op-mode(s):                32-bit, 64-bit
  Address sizes:                 46 bits physical, 57 bits virtual
  Byte Order:                    Little Endian
CPU(s):                          160
  On-line CPU(s) list:           0-159
Vendor ID:                       GenuineIntel
  Model name:                    Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz
    CPU family:                  6
    Model:                       106
    Thread(s) per core:          2
    Core(s) per socket:          40
    Socket(s):                   2
    Stepping:                    6
    CPU max MHz:                 3400.0000
    CPU min MHz:                 800.0000
Caches (sum of all):
  L1d:                           3.8 MiB (80 instances)
  L2:                            100 MiB (80 instances)
  L3:                            120 MiB (2 instances)
NUMA:
  NUMA node(s):                  2
  NUMA node0 CPU(s):             0-39,80-119
  NUMA node1 CPU(s):             40-79,120-159
"""
# a VM that shows each vCPU as its own socket (DistributedRunner then maps by slot)
LSCPU_ONE_CORE_SOCKETS = "CPU(s): 8\nThread(s) per core: 1\nCore(s) per socket: 1\nSocket(s): 8\n"


def test_lscpu_of_a_hyperthreaded_gaudi_host():
    topology = parse_lscpu(LSCPU_GAUDI_HOST)
    assert topology == CpuTopology(sockets=2, cores_per_socket=40, threads_per_core=2)
    assert (topology.physical_cores, topology.logical_cpus) == (80, 160)
    # DistributedRunner.get_peval: sockets * cores_per_socket // world_size = 80 // 8 = 10
    assert mpirun_cores_per_process(topology, 8) == 10
    # the logical count (os.cpu_count(), the old code) gave 20: 4 ranks × 20 cores do not fit a 40-core socket
    assert 160 // 8 == 20 and 4 * 20 > topology.cores_per_socket


@pytest.mark.parametrize("ranks, pe", [(1, 40), (2, 40), (3, 20), (4, 20), (8, 10), (16, 5), (80, 1)])
def test_cores_per_rank_fit_their_socket(ranks, pe):
    topology = parse_lscpu(LSCPU_GAUDI_HOST)
    assert mpirun_cores_per_process(topology, ranks) == pe
    # ranks go round-robin over the sockets under --map-by socket: each socket must hold its share
    assert math.ceil(ranks / topology.sockets) * pe <= topology.cores_per_socket
    if ranks % topology.sockets == 0:
        assert pe == topology.physical_cores // ranks  # DistributedRunner's number, where it fits


def test_one_core_per_socket_maps_by_slot_and_pe_is_never_0():
    vm = parse_lscpu(LSCPU_ONE_CORE_SOCKETS)
    assert mpirun_map_by(vm) == "slot" and mpirun_cores_per_process(vm, 2) == 4
    # DistributedRunner computes (sockets * cores_per_socket) // world_size: 0 on a 2-core host with 8 ranks
    assert (2 // 8, mpirun_cores_per_process(SMALL, 8)) == (0, 1)
    assert parse_lscpu("CPU(s): 4\nSocket(s): -\nCore(s) per cluster: 4\n") is None  # some ARM hosts


def test_this_machines_lscpu_counts_physical_cores():
    lscpu = shutil.which("lscpu")
    if lscpu is None:
        pytest.skip("lscpu is not installed here")
    text = subprocess.run([lscpu], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}, check=True).stdout
    topology = parse_lscpu(text)
    assert topology is not None and topology.physical_cores == psutil.cpu_count(logical=False)
    assert topology.logical_cpus == psutil.cpu_count(logical=True)
    assert cpu_topology().physical_cores <= topology.physical_cores  # the affinity mask may allow fewer


@pytest.mark.parametrize("lscpu, devices, map_by, pe", [
    (LSCPU_GAUDI_HOST, 8, "socket", 10), (LSCPU_GAUDI_HOST, 2, "socket", 40),
    (LSCPU_GAUDI_HOST, 1, "socket", 40), (LSCPU_ONE_CORE_SOCKETS, 2, "slot", 4),
])
def test_mpirun_form(lscpu, devices, map_by, pe):
    p = plan("mpirun", devices=devices, topology=parse_lscpu(lscpu), accelerator="hpu", master_port=29501)
    assert p.argv == ["mpirun", "-n", str(devices), "--bind-to", "core", "--map-by", f"{map_by}:PE={pe}",
                      "--rank-by", "slot", "--report-bindings", "--allow-run-as-root", PY, *WORKER]
    assert p.env["MASTER_ADDR"] == "127.0.0.1" and p.env["MASTER_PORT"] == "29501"


def test_mpirun_refuses_more_ranks_than_cores():
    with pytest.raises(SpecError, match="4 ranks need 4 physical cores, this node has 2"):
        plan("mpirun", devices=4, topology=SMALL)


def test_deepspeed_single_node(deepspeed_fork):
    p = plan("deepspeed", devices=8, accelerator="hpu", master_port=29502)
    assert p.argv == ["deepspeed", "--num_nodes", "1", "--num_gpus", "8", "--no_local_rank",
                      "--master_port", "29502", "--module", "gaudi_nb.worker", "--run-dir", "/runs/r1"]
    assert p.files == {}


def test_deepspeed_multi_node_hostfile_and_env(deepspeed_fork):
    p = plan("deepspeed", devices=8, nodes=2, accelerator="hpu", lazy_mode=False,
             hosts=["gaudi-a", "gaudi-b"], environ={"HABANA_VISIBLE_MODULES": "0,1,2,3,4,5,6,7"})
    assert p.argv == ["deepspeed", "--hostfile", "hostfile", "--master_addr", "gaudi-a", "--no_local_rank",
                      "--master_port", "29500", "--module", "gaudi_nb.worker", "--run-dir", "/runs/r1"]
    assert p.files == {
        "hostfile": "gaudi-a slots=8\ngaudi-b slots=8\n",
        ".deepspeed_env": "PT_HPU_LAZY_MODE=0\nHABANA_VISIBLE_MODULES=0,1,2,3,4,5,6,7\n",
    }


def test_deepspeed_explicit_master_and_errors(deepspeed_fork):
    p = plan("deepspeed", devices=8, nodes=2, accelerator="hpu", hosts=["a", "b"], master_addr="10.1.1.1")
    assert p.argv[3:5] == ["--master_addr", "10.1.1.1"]
    assert p.files[".deepspeed_env"] == "PT_HPU_LAZY_MODE=1\n"  # whole nodes: HABANA_VISIBLE_MODULES unset means every card
    with pytest.raises(SpecError, match="hosts="):
        plan("deepspeed", devices=8, nodes=2, accelerator="hpu")
    with pytest.raises(SpecError, match="node 0 only"):
        plan("deepspeed", devices=8, nodes=2, accelerator="hpu", hosts=["a", "b"], node_rank=1)
    with pytest.raises(SpecError, match="shell-safe|without spaces"):
        deepspeed_env_text({"X": "a b"})
    assert hostfile_text(["h"], 2) == "h slots=2\n"


@pytest.mark.parametrize("launcher, devices", [("deepspeed", 4), ("deepspeed", 2), ("torchrun", 4), ("deepspeed", 1)])
def test_across_gaudi_nodes_a_run_takes_whole_nodes(deepspeed_fork, launcher, devices):
    # Intel's scale-out rule: HABANA_VISIBLE_MODULES names every card of the server; node 0's free quad
    # would otherwise travel to every node in .deepspeed_env
    with pytest.raises(SpecError) as caught:
        plan(launcher, devices=devices, nodes=2, accelerator="hpu", hosts=["a", "b"], free_modules=list(range(8)))
    assert "\n" not in str(caught.value) and "every card of each node" in str(caught.value) and "devices=8" in str(caught.value)
    # one node keeps its pairs and quads; off Gaudi, any count
    assert plan(launcher, devices=devices, accelerator="hpu", free_modules=list(range(8))).env["PT_HPU_LAZY_MODE"] == "1"
    assert plan(launcher, devices=devices, nodes=2, hosts=["a", "b"]).launcher == launcher


def test_one_node_launchers_refuse_several_nodes():
    for name in ("mpirun", "torch.distributed.run"):
        with pytest.raises(SpecError, match="deepspeed"):
            build_launch(RunSpec(nodes=2), WORKER, launcher=name, environ={})


# ---- Intel's DeepSpeed fork ------------------------------------------------------------------------

def test_the_fork_is_told_by_its_version():
    # HabanaAI/DeepSpeed's setup.py: version.txt "0.16.1" + build.txt "+hpu.synapse.v1.21.0"
    fork = parse_deepspeed_version("0.16.1+hpu.synapse.v1.21.0")
    assert (fork.fork, fork.synapse) == (True, "1.21.0")
    assert parse_deepspeed_version("0.16.1").fork is False  # PyPI
    assert parse_deepspeed_version("0.16.1+a1b2c3d").fork is False  # public, built from a git checkout
    assert parse_deepspeed_version(None).describe() == "not installed"


def test_a_multi_node_gaudi_plan_needs_the_fork(tmp_path, monkeypatch):
    if deepspeed_install().version is None:
        with pytest.raises(GaudiNbError, match="not installed") as missing:
            plan("deepspeed", devices=8, nodes=2, accelerator="hpu", hosts=["a", "b"])
        assert FORK_PIP in str(missing.value) and "HabanaAI/DeepSpeed.git@1.24.0" in FORK_PIP
    public = tmp_path / "public"
    install_distribution(public, "deepspeed", "0.16.1")
    monkeypatch.syspath_prepend(str(public))
    with pytest.raises(GaudiNbError, match="public DeepSpeed") as refused:
        plan("deepspeed", devices=8, nodes=2, accelerator="hpu", hosts=["a", "b"])
    assert FORK_PIP in str(refused.value)
    # off Gaudi DeepSpeed is DeepSpeed: no fork needed
    assert plan("deepspeed", devices=2, nodes=2, hosts=["a", "b"]).launcher == "deepspeed"


def test_the_fork_on_sys_path_passes(deepspeed_fork):
    assert deepspeed_install().describe() == "0.16.1+hpu.synapse.v1.24.0 (Intel's fork for Gaudi software 1.24.0)"
    assert plan("deepspeed", devices=8, nodes=2, accelerator="hpu", hosts=["a", "b"]).launcher == "deepspeed"


# ---- environment and Gaudi modules ---------------------------------------------------------------

def test_hpu_env_lazy_and_eager():
    lazy = plan("torchrun", devices=8, accelerator="hpu", lazy_mode=True)
    eager = plan("torchrun", devices=8, accelerator="hpu", lazy_mode=False)
    assert lazy.env == {"PT_HPU_LAZY_MODE": "1"}
    assert eager.env == {"PT_HPU_LAZY_MODE": "0"}


@pytest.mark.parametrize("count, free, expected", [
    (8, None, None), (8, EVERY_MODULE, None),          # the whole node: nothing to set
    (4, None, [0, 1, 2, 3]), (2, None, [0, 1]), (1, None, [0]),
    (4, [4, 5, 6, 7], [4, 5, 6, 7]),
    (2, [1, 2, 3, 4, 5, 6, 7], [2, 3]),                # 0 busy: 0,1 is not a free pair
    (2, [2, 3, 4, 5, 6, 7], [2, 3]),                   # packs into the broken quad, keeps 4-7 whole
    (2, [0, 1, 4, 5, 6, 7], [0, 1]),
    (4, [0, 1, 2, 4, 5, 6, 7], [4, 5, 6, 7]),
    (1, [0, 2, 3, 4, 5, 6, 7], [0]),                   # the module whose partner is busy
    (1, [2, 3, 5, 6, 7], [5]),                          # keeps 2,3 and 6,7 as pairs
])
def test_choose_modules(count, free, expected):
    assert choose_modules(count, free=free) == expected


@pytest.mark.parametrize("count", [3, 5, 6, 7, 9, 16])
def test_unsupported_counts_are_refused_in_one_line(count):
    with pytest.raises(SpecError) as refused:
        choose_modules(count)
    message = str(refused.value)
    assert "\n" not in message and f"devices={count}" in message and "1, 2, 4 or 8" in message
    with pytest.raises(SpecError, match="1, 2, 4 or 8"):
        plan("torchrun", devices=count, accelerator="hpu")
    assert "HABANA_VISIBLE_MODULES" not in plan("torchrun", devices=count, cpus=16).env  # only Gaudi has modules


def test_no_free_set_says_what_is_free():
    with pytest.raises(SpecError, match=r"no free set of 4 .*\(free: 0,1,2,4,5,6\)"):
        choose_modules(4, free=[0, 1, 2, 4, 5, 6])
    with pytest.raises(SpecError, match=r"\(free: 1,2,5,6\)"):
        choose_modules(2, free=[1, 2, 5, 6])  # four free cards, but no supported pair
    with pytest.raises(SpecError, match="no free set of 8"):
        choose_modules(8, free=[0, 1, 2, 3, 4, 5, 6])


def test_what_the_container_made_visible_is_respected():
    # exactly the cards asked for: used as given, in the given order (local rank i takes the i-th)
    assert choose_modules(2, visible=[5, 4]) == [5, 4]
    assert choose_modules(2, visible=[1, 2]) == [1, 2]  # the pod chose an unusual pair: its call
    with pytest.raises(SpecError, match="module\\(s\\) 4 are busy"):
        choose_modules(2, visible=[4, 5], free=[0, 1, 5])
    # more visible than asked for: a supported set inside them (the list must match the devices used)
    assert choose_modules(2, visible=[4, 5, 6, 7]) == [4, 5]
    assert choose_modules(2, visible=[4, 5, 6, 7], free=[0, 1, 2, 3, 6, 7]) == [6, 7]
    with pytest.raises(SpecError, match="among HABANA_VISIBLE_MODULES=4,5,6,7"):
        choose_modules(4, visible=[4, 5, 6, 7, 0], free=[0, 4, 5, 6])
    with pytest.raises(SpecError, match="names 2 module"):
        choose_modules(4, visible=[4, 5])
    # HABANA_VISIBLE_DEVICES (the container runtime's indices) mounted some cards
    assert choose_modules(4, mounted=4) is None  # all of them: nothing to set
    assert choose_modules(2, mounted=4, free=[4, 5, 6, 7]) == [4, 5]  # hl-smi in the container lists only its cards
    with pytest.raises(SpecError, match="gives this container 2 card"):
        choose_modules(4, mounted=2)
    with pytest.raises(SpecError, match="set HABANA_VISIBLE_MODULES to 2"):
        choose_modules(2, mounted=4)  # which module ids? nobody can say


def test_hpu_visible_modules_in_the_plan():
    assert plan("torchrun", devices=4, accelerator="hpu").env["HABANA_VISIBLE_MODULES"] == "0,1,2,3"
    assert plan("torchrun", devices=2, accelerator="hpu", free_modules=[2, 3, 4, 5, 6, 7]).env["HABANA_VISIBLE_MODULES"] == "2,3"
    # the user's choice wins, and is checked against devices
    assert plan("torchrun", devices=2, accelerator="hpu",
                environ={"HABANA_VISIBLE_MODULES": "4,5"}).env["HABANA_VISIBLE_MODULES"] == "4,5"
    assert plan("torchrun", devices=2, accelerator="hpu",
                environ={"HABANA_VISIBLE_MODULES": "0,1,2,3,4,5,6,7"}).env["HABANA_VISIBLE_MODULES"] == "0,1"
    with pytest.raises(SpecError, match="HABANA_VISIBLE_MODULES"):
        plan("torchrun", devices=4, accelerator="hpu", environ={"HABANA_VISIBLE_MODULES": "4,5"})
    with pytest.raises(SpecError, match="comma-separated"):
        plan("torchrun", devices=2, accelerator="hpu", environ={"HABANA_VISIBLE_MODULES": "hpu0"})
    assert "HABANA_VISIBLE_MODULES" not in plan("torchrun", devices=2, accelerator="hpu",
                                                 environ={"HABANA_VISIBLE_DEVICES": "3,7"}).env
    assert "HABANA_VISIBLE_MODULES" not in plan("torchrun", devices=8, accelerator="hpu",
                                                 environ={"HABANA_VISIBLE_DEVICES": "all"}).env
    assert parse_ids(" 0, 1,2 ") == [0, 1, 2]


# ---- hl-smi: which modules are free --------------------------------------------------------------

# Plain hl-smi on a Gaudi 3 node (format of hl-smi 1.23, as Intel's guides print it): device 6
# and 7 are held by a training process; -Q index,module_id maps indices to modules as on a real
# node (not the identity).
HLSMI_TABLE = """\
+-----------------------------------------------------------------------------+
| HL-SMI Version:                              hl-1.23.0-fw-62.2.1.1          |
| Driver Version:                                     1.23.0-2eae87a          |
| Nic Driver Version:                                 1.23.0-2eae87a          |
|-------------------------------+----------------------+----------------------+
| AIP  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncor-Events|
| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | AIP-Util  Compute M. |
|===============================+======================+======================|
""" + "".join(
    f"|   {i}  HL-325L             N/A  | 0000:{0x19 + i:02x}:00.0     N/A |                   0  |\n"
    f"| N/A   36C   P0  {'612' if i >= 6 else '231'}W /  900W  | {'98304' if i >= 6 else '672'}MiB / 131072MiB |"
    f"    {'93' if i >= 6 else '0'}%            0% |\n"
    "|-------------------------------+----------------------+----------------------+\n"
    for i in range(8)
) + """\
| Compute Processes:                                               AIP Memory |
|  AIP       PID   Type   Process name                             Usage      |
|=============================================================================|
|   0        N/A   N/A    N/A                                      N/A        |
|   1        N/A   N/A    N/A                                      N/A        |
|   2        N/A   N/A    N/A                                      N/A        |
|   3        N/A   N/A    N/A                                      N/A        |
|   4        N/A   N/A    N/A                                      N/A        |
|   5        N/A   N/A    N/A                                      N/A        |
|   6        2006754   C   python3                                 97632MiB   |
|   7        2006755   C   python3                                 97632MiB   |
+=============================================================================+
"""
INDEX_TO_MODULE = {0: 5, 1: 4, 2: 7, 3: 6, 4: 2, 5: 3, 6: 0, 7: 1}
HLSMI_MODULE_CSV = "".join(f"{i}, {m}\n" for i, m in INDEX_TO_MODULE.items())


def install_fake_hlsmi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str = HLSMI_TABLE,
                       module_csv: str = HLSMI_MODULE_CSV, query_csv: str = "") -> Path:
    """A stand-in hl-smi on PATH (there is no Gaudi driver here): plain output for no arguments,
    the index/module map for ``-Q index,module_id``, ``query_csv`` for any other ``-Q``."""
    folder = tmp_path / "fake-bin"
    folder.mkdir(exist_ok=True)
    for name, text in (("table.txt", table), ("modules.csv", module_csv), ("query.csv", query_csv)):
        (folder / name).write_text(text)
    tool = folder / "hl-smi"
    tool.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        args = sys.argv[1:]
        if not args:
            name = "table.txt"
        elif args[:2] == ["-Q", "index,module_id"]:
            name = "modules.csv"
        else:
            name = "query.csv"
        sys.stdout.write(open({str(folder)!r} + "/" + name).read())
    """))
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return tool


def test_hlsmi_summary_parses_versions_and_busy_cards():
    summary = parse_hlsmi_summary(HLSMI_TABLE)
    assert (summary.hlsmi_version, summary.firmware_version, summary.driver_version) == ("1.23.0", "62.2.1.1", "1.23.0-2eae87a")
    assert summary.busy == {6: (2006754,), 7: (2006755,)}
    assert parse_index_module_csv(HLSMI_MODULE_CSV) == INDEX_TO_MODULE
    # a process row that a narrow terminal wrapped still counts
    wrapped = "| Compute Processes:   AIP Memory |\n|   1       2006754     C   python\n      31742Mib\n"
    assert parse_hlsmi_summary(wrapped).busy == {1: (2006754,)}


def test_free_modules_from_the_tool(tmp_path, monkeypatch):
    install_fake_hlsmi(tmp_path, monkeypatch)
    state = read_module_state()
    assert state is not None
    assert state.present == tuple(range(8))
    assert state.busy == {0: (2006754,), 1: (2006755,)}  # devices 6 and 7 are modules 0 and 1
    assert state.free == [2, 3, 4, 5, 6, 7]
    # the plan asks hl-smi itself when not told: a 2-card run takes 2,3, not the busy 0,1
    spec = RunSpec(devices=2, lazy_mode=False)
    assert build_launch(spec, WORKER, accelerator="hpu", environ={}).env["HABANA_VISIBLE_MODULES"] == "2,3"
    with pytest.raises(SpecError, match="no free set of 8"):
        build_launch(RunSpec(devices=8), WORKER, accelerator="hpu", environ={})


def test_without_hlsmi_nothing_is_known(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no hl-smi anywhere
    assert read_module_state() is None
    assert build_launch(RunSpec(devices=2), WORKER, accelerator="hpu", environ={}).env["HABANA_VISIBLE_MODULES"] == "0,1"


# ---- choice, registry, describe ----------------------------------------------------------------

@pytest.mark.parametrize("nodes, devices, accelerator, expected", [
    (1, 1, "cpu", "python"), (1, 1, "hpu", "python"), (1, 2, "cpu", "torchrun"), (1, 8, "hpu", "torchrun"),
    (2, 1, "cpu", "torchrun"), (2, 1, "cuda", "torchrun"), (2, 8, "hpu", "deepspeed"),
])
def test_auto_launcher(nodes, devices, accelerator, expected):
    assert pick_launcher(RunSpec(nodes=nodes, devices=devices), accelerator) == expected
    assert pick_launcher(RunSpec(nodes=nodes, devices=devices, launcher="mpirun"), accelerator) == "mpirun"


def test_one_card_is_the_rank_itself_with_torchruns_variables():
    """optimum-habana starts a single card's script with plain python: no launcher process imports torch first."""
    plan = build_launch(RunSpec(devices=1), WORKER, python="py", accelerator="hpu", master_port=29611, environ={}, free_modules=[3])
    assert plan.launcher == "python" and plan.argv == ["py", "-u", *WORKER]
    assert {k: plan.env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_PORT")} == {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_PORT": "29611"}
    assert plan.env["HABANA_VISIBLE_MODULES"] == "3" and plan.env["PT_HPU_LAZY_MODE"] == "0"  # the HPU variables as under torchrun
    with pytest.raises(SpecError, match="launcher python starts one rank"):
        build_launch(RunSpec(devices=2, launcher="python"), WORKER, accelerator="cpu")


def test_registry_and_bad_input():
    assert launchers.names() == ["deepspeed", "mpirun", "python", "torch.distributed.run", "torchrun"]
    assert set(typing.get_args(LauncherName)) - {"auto"} <= set(launchers.names())
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

@pytest.mark.slow
def test_real_torchrun_starts_both_ranks(tmp_path):
    script = tmp_path / "show_rank.py"
    script.write_text(textwrap.dedent("""
        import os
        print(f"rank={os.environ['RANK']} world={os.environ['WORLD_SIZE']} omp={os.environ['OMP_NUM_THREADS']}", flush=True)
    """))
    p = build_launch(RunSpec(devices=2), [str(script)], master_port=free_port(), cpus=2, environ={})
    done = subprocess.run(p.argv, env={**os.environ, **p.env}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "rank=0 world=2 omp=1" in done.stdout
    assert "rank=1 world=2 omp=1" in done.stdout
    assert p.argv[0] == sys.executable


# ---- two runs started at the same moment on one node ----------------------------------------------

def _selectable(name: str) -> bool:
    return name in typing.get_args(LauncherName)


CONCURRENT_FORMS = [
    pytest.param("torchrun", id="torchrun"),
    pytest.param("mpirun", id="mpirun", marks=pytest.mark.skipif(
        shutil.which("mpirun") is None, reason="Open MPI is not installed here (apt-get install openmpi-bin)")),
    pytest.param("torch.distributed.run", id="torch.distributed.run", marks=pytest.mark.skipif(
        not _selectable("torch.distributed.run"), reason="RunSpec.launcher does not offer 'torch.distributed.run' yet")),
    pytest.param("deepspeed", id="deepspeed", marks=pytest.mark.skipif(
        shutil.which("deepspeed") is None, reason="DeepSpeed is not installed here")),
]


def _master_port(run) -> int:
    import re

    command = run.events(types=["run_start"])[0]["command"]
    match = re.search(r"(?:--master[-_]port[= ]|MASTER_PORT=)(\d+)", command)
    assert match, command
    return int(match.group(1))


# the ranks join a process group on the port the agent picked, as a trainer's do, then report 3 steps (no model)
JOINS_THE_GROUP = """
from gaudi_nb.worker.script import init_distributed, report
import torch.distributed as dist

init_distributed()
for step in range(1, 4):
    dist.barrier()
    report(step=step, loss=1.0, tokens=8)
"""


@pytest.mark.slow
@pytest.mark.parametrize("launcher", CONCURRENT_FORMS)
def test_two_runs_started_at_once_on_one_node_both_succeed(gaudi_home, tmp_path, launcher):
    script = tmp_path / "joins_the_group.py"
    script.write_text(JOINS_THE_GROUP)
    barrier = threading.Barrier(2)
    runs: list = []
    errors: list = []

    def start() -> None:
        barrier.wait()
        try:
            runs.append(gaudi_nb.train(script=str(script), devices=2, max_steps=3, launcher=launcher))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(runs) == 2
    for run in runs:
        run.wait(timeout=300)
    records = [run.record() for run in runs]
    assert [r["status"] for r in records] == ["succeeded", "succeeded"], [r.get("exit") for r in records]
    assert [r["steps_completed"] for r in records] == [3, 3]
    assert {run.events(types=["run_start"])[0]["launcher"] for run in runs} == {launcher}
    assert len({_master_port(run) for run in runs}) == 2  # each rendezvous on its own port
