"""A real Slurm cluster on this machine for the tests: munge, slurmctld and two slurmd (n1, n2).

Debian's slurm-wlm (22.05) as /work/shared/TESTING.md describes it: both "nodes" are this host,
each slurmd on its own port, each with GRES gpu:hl225:4 backed by fake device files (copies of
/dev/null), in one partition `gaudi`, and a partition `urgent` over the same nodes whose jobs preempt
gaudi's, as a site's high-priority partition does (Slurm requeues a preempted job that allows it). Everything lives in one folder (config, state, logs,
munge's socket), the ports are picked free, and every daemon is stopped by its pid file.
`SLURM_CONF` pointed at the folder's slurm.conf is all a Slurm command needs to reach it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
NODES = ("n1", "n2")
CARDS = 4  # GRES gpu:hl225:4 on each node
URGENT = "urgent"  # a partition over the same nodes whose jobs preempt gaudi's (PreemptMode=REQUEUE: requeued where they allow it)


def missing() -> Optional[str]:
    """Why no cluster can start here (None: it can)."""
    absent = [name for name in BINARIES if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} missing): apt-get install slurmd slurmctld slurm-client munge"
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root (SlurmdUser=root): run the tests as root"
    return None


def _free_ports(count: int) -> List[int]:
    """`count` consecutive free ports (slurmctld, then one per slurmd)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65000:
            continue
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return list(range(base, base + count))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no run of free ports for the Slurm daemons")


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.port = _free_ports(1 + len(NODES))[0]
        self.conf = self.folder / "slurm.conf"

    @property
    def env(self) -> Dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        d = self.folder
        for sub in ("state", "run", "log", *(f"spool/{n}" for n in NODES), *(f"dev/{n}" for n in NODES)):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for node in NODES:
            for card in range(CARDS):
                dev = d / "dev" / node / f"accel{card}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null
        nodes = "\n".join(
            f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={self.port + 1 + i} CPUs=4 RealMemory=4000 Gres=gpu:hl225:{CARDS} State=UNKNOWN"
            for i, node in enumerate(NODES)
        )
        self.conf.write_text(f"""ClusterName=test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=60
KillWait=5
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
GresTypes=gpu
{nodes}
PartitionName=gaudi Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1
PartitionName={URGENT} Nodes={','.join(NODES)} MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=10
""")
        (d / "gres.conf").write_text("".join(f"NodeName={n} Name=gpu Type=hl225 File={d}/dev/{n}/accel[0-{CARDS - 1}]\n" for n in NODES))

    def start(self) -> "SlurmCluster":
        d = self.folder
        self._write_config()
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        shutil.chown(d, "munge")  # munged wants its socket's folder its own
        subprocess.run(["runuser", "-u", "munge", "--", _sbin("munged"), f"--key-file={key}", f"--socket={d}/munge.sock",
                        f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munge.seed"], check=True, timeout=30)
        subprocess.run([_sbin("slurmctld"), "-i"], env=self.env, check=True, timeout=30)
        for node in NODES:
            subprocess.run([_sbin("slurmd"), "-N", node], env=self.env, check=True, timeout=30)
        self.wait_idle()
        return self

    def sinfo(self) -> str:
        return subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True, timeout=30).stdout

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = dict(line.split() for line in self.sinfo().splitlines() if line.strip())
            if all(states.get(node) == "idle" for node in NODES):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the Slurm nodes are not idle after {timeout:.0f} s: {self.sinfo()!r}; see {self.folder}/log")

    def preempt(self, seconds: float = 1) -> str:
        """A job in `urgent` that needs every node: Slurm preempts what runs there now; its id."""
        return subprocess.run(["sbatch", "--parsable", "-p", URGENT, f"-N{len(NODES)}", "--exclusive", "--output=/dev/null", "--wrap", f"sleep {seconds}"],
                              env=self.env, capture_output=True, text=True, check=True, timeout=30).stdout.strip()

    def squeue(self) -> str:
        return subprocess.run(["squeue", "-h", "-o", "%i %T %R"], env=self.env, capture_output=True, text=True, timeout=30).stdout

    def cancel_all(self) -> None:
        """No job left behind by a test (the next test starts with an empty queue)."""
        subprocess.run(["scancel", "--full", "-p", f"gaudi,{URGENT}"], env=self.env, capture_output=True, timeout=30)

    def stop(self) -> None:
        """Every daemon by its pid file, all signalled first and then waited for (one wait, not one each)."""
        self.cancel_all()
        pid_files = [self.folder / "run" / f"slurmd-{n}.pid" for n in NODES] + [self.folder / "run" / "slurmctld.pid", self.folder / "munged.pid"]
        pids = []
        for pid_file in pid_files:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (OSError, ValueError):
                continue
        for pid in self._step_daemons():  # a job's slurmstepd outlives a stopped slurmd, waiting to report to it
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _step_daemons(self) -> List[int]:
        """This cluster's slurmstepd processes (their environment names this cluster's SLURM_CONF)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "comm").read_text().strip() == "slurmstepd" and _alive(int(proc.name)) and mine in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
        return found


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaps is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
