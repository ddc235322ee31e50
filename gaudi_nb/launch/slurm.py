"""Slurm's text, read and written: GRES strings, squeue lines, scontrol records, host lists, the job's script.

Pure (text in, values out), so the client that asks the cluster (nodes/slurm.py), the target that
submits (targets/slurm.py) and the task srun starts on each node (agent/slurm_task.py) read Slurm
the same way, and a table of the forms Slurm prints is tested without a cluster.

GRES comes in several spellings, by version and by command (SkyPilot #10283 collected them):
`gpu:8`, `gpu:hl225:8`, `gpu:hl225:8(S:0-1)`, `gres/gpu=1`, `gres/gpu:h100:4`, `gres:hpu:8`,
`N/A`, `(null)`; several are joined by commas.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

NONE_WORDS = ("", "n/a", "(null)", "none")
# squeue -o with these fields, | between (no field of them holds a |)
SQUEUE_FORMAT = "%i|%T|%r|%N|%P|%b"
SQUEUE_FIELDS = ("job_id", "state", "reason", "nodes", "partition", "gres")
# states of a job that has ended (scontrol keeps it MinJobAge seconds): what a run's end says
ENDED_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT")
BAD_ENDS = tuple(state for state in ENDED_STATES if state != "COMPLETED")


@dataclass(frozen=True)
class Gres:
    """One generic resource of a node or a job: its name (gpu, hpu), type (hl225; None when untyped) and count."""

    name: str
    type: Optional[str]
    count: int

    def request(self, count: int) -> str:
        """--gres's value for `count` of these, typed as the node names it (an untyped request of a typed
        GRES fails on some versions: "Step requested GRES (gpu:(null)) not found")."""
        return f"{self.name}:{self.type}:{count}" if self.type else f"{self.name}:{count}"


def parse_gres(text: Optional[str]) -> List[Gres]:
    """Every GRES in a node's or job's GRES string, in any of the spellings above; [] for none."""
    found = []
    for item in _split_outside_parens(text or ""):
        item = re.sub(r"\(.*?\)$", "", item.strip())  # (S:0-1), (IDX:0-3)
        if item.lower() in NONE_WORDS:
            continue
        item = re.sub(r"^gres[/:]", "", item)  # squeue's gres/gpu=1, gres:hpu:8
        if "=" in item:  # gres/gpu=1, gres/gpu:h100=4 (TRES form)
            name_type, _, count_text = item.partition("=")
        else:
            pieces = item.split(":")
            count_text = pieces.pop() if len(pieces) > 1 and pieces[-1].isdigit() else "1"
            name_type = ":".join(pieces)
        name, _, kind = name_type.partition(":")
        found.append(Gres(name, kind or None, int(count_text) if count_text.isdigit() else 1))
    return found


def _split_outside_parens(text: str) -> List[str]:
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item for item in (*items, current) if item.strip()]


def accelerators(gres: List[Gres]) -> Optional[Gres]:
    """The node's accelerator GRES (gpu first, Intel's documented name; hpu where a site counts them so), or None."""
    for name in ("gpu", "hpu"):
        for item in gres:
            if item.name == name:
                return item
    return None


def expand_hosts(text: str) -> List[str]:
    """Slurm's host list (`n[1-2]`, `node[01-03,07],gpu1`) as names, in order."""
    names: List[str] = []
    for item in _split_outside_brackets(text.strip()):
        match = re.fullmatch(r"(.*?)\[([^\]]+)\](.*)", item)
        if not match:
            names.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            for number in range(int(low), int(high or low) + 1):
                names.extend(expand_hosts(f"{prefix}{str(number).zfill(len(low))}{suffix}"))
    return names


def _split_outside_brackets(text: str) -> List[str]:
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item for item in (*items, current) if item]


def parse_squeue(text: str) -> List[Dict[str, str]]:
    """Lines of `squeue -h -o SQUEUE_FORMAT` as dicts (job_id, state, reason, nodes, partition, gres)."""
    jobs = []
    for line in text.splitlines():
        if line.strip():
            values = line.strip().split("|")
            jobs.append(dict(zip(SQUEUE_FIELDS, (values + [""] * len(SQUEUE_FIELDS))[: len(SQUEUE_FIELDS)], strict=True)))
    return jobs


def parse_record(text: str) -> Dict[str, str]:
    """One `scontrol -o show node|job` line as its Key=Value pairs (values may hold spaces: OS=Linux 6.1 ...)."""
    pairs = re.findall(r"(?:^|\s)([A-Za-z][\w/:.]*)=(.*?)(?=\s+[A-Za-z][\w/:.]*=|\s*$)", text.strip())
    return {key: value.strip() for key, value in pairs}


def job_state(record: Mapping[str, str]) -> str:
    """JobState of an scontrol job record, without the flags some versions add (CANCELLED by 0 → CANCELLED)."""
    return str(record.get("JobState") or "").split()[0] if record.get("JobState") else ""


# what slurmstepd writes into the job's output when Slurm ends it ("*** JOB 12 ON n1 CANCELLED AT 2026-12-07T23:34:30
# DUE TO PREEMPTION ***"; no DUE TO for a scancel); while the job completes, squeue and scontrol say only COMPLETING,
# so this line is where a client reads the end in time
_ENDED_BY_SLURM = re.compile(r"\*\*\* (?:JOB|STEP) (\d+)(?:\.\d+)? ON \S+ CANCELLED AT \S+(?: DUE TO (TIME LIMIT|PREEMPTION|NODE FAILURE|JOB REQUEUE))?")
_OUTPUT_STATES = {None: "CANCELLED", "TIME LIMIT": "TIMEOUT", "PREEMPTION": "PREEMPTED", "NODE FAILURE": "NODE_FAIL", "JOB REQUEUE": "REQUEUED"}
# the line a requeue-able job's script prints first: its output is appended to across Slurm's requeues,
# and only what follows the last of these lines is about the job's current start
START_MARK = "gaudi-nb: the job starts"


def ended_by_slurm(output: str, job_id: str, start: int = -1) -> Optional[str]:
    """The state Slurm ended one start of the job with (CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, REQUEUED: an
    operator's `scontrol requeue`), from its output; None if Slurm did not end it. start: -1 the current start,
    -2 the one before Slurm's requeue."""
    starts = output.split(START_MARK)
    current = starts[start] if len(starts) >= -start else ""
    found = None
    for match in _ENDED_BY_SLURM.finditer(current):
        if match.group(1) == str(job_id):
            found = _OUTPUT_STATES[match.group(2)]
    return found


def visible_modules(environ: Mapping[str, str]) -> Dict[str, str]:
    """What this node's ranks need to see the cards Slurm gave the job.

    Intel's Slurm fork sets HABANA_VISIBLE_DEVICES itself: then nothing is added. Stock Slurm exports
    only the indexes of the allocated GRES (SLURM_STEP_GPUS in a step, SLURM_JOB_GPUS in the job):
    those are the Gaudi modules to use, HABANA_VISIBLE_MODULES. A user's own setting stands."""
    if "HABANA_VISIBLE_DEVICES" in environ or "HABANA_VISIBLE_MODULES" in environ:
        return {}
    cards = environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS")
    return {"HABANA_VISIBLE_MODULES": cards} if cards else {}


TIMER_S = 30  # slurmctld checks time limits and sends --signal's warnings every 30 s (PERIODIC_TIMEOUT, not configurable)


def warning_seconds(limit_s: float) -> int:
    """How long before the time limit Slurm is asked to warn the job: a quarter of the limit, at most 120 s, and
    at least 45 s, so that slurmctld's 30 s timer meets the warning's window at least once (a 1-minute limit, Slurm's
    smallest: the warning comes 15 to 45 s after the start, and the run has 15 s or more to checkpoint)."""
    limit = max(60, -(-int(limit_s) // 60) * 60)  # --time is whole minutes, rounded up
    return int(min(120, max(TIMER_S * 3 / 2, limit / 4)))


def minutes(seconds: float) -> str:
    """--time's D-HH:MM:SS form, rounded up to a whole second."""
    total = int(-(-seconds // 1))
    days, rest = divmod(total, 86400)
    return f"{days}-{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


@dataclass(frozen=True)
class JobRequest:
    """What one run asks of Slurm: the options its sbatch script carries."""

    run_id: str
    root: str  # the run's folder on the cluster's shared filesystem
    nodes: int
    devices: int
    partition: str
    gres: Optional[Gres] = None  # the partition's accelerator GRES; None: no --gres
    exclusive: bool = False  # D is every card of a node
    account: Optional[str] = None
    qos: Optional[str] = None
    time_limit_s: Optional[float] = None
    requeue: bool = False  # Slurm requeues the job after a preemption or a node failure (--max-restarts on one node)

    @property
    def warning_s(self) -> int:
        """The checkpoint's warning before the time limit (--signal=B:USR1@N): warning_seconds."""
        return warning_seconds(self.time_limit_s or 0)

    def options(self) -> List[str]:
        options = [f"--job-name=gaudi-nb-{self.run_id}", f"--nodes={self.nodes}", "--ntasks-per-node=1", f"--partition={self.partition}",
                   f"--output={self.root}/job/slurm-%j.out", f"--chdir={self.root}/job"]
        if self.gres is not None:
            options.append(f"--gres={self.gres.request(self.devices)}")
        options += ["--exclusive"] if self.exclusive else []
        options += [f"--account={self.account}"] if self.account else []
        options += [f"--qos={self.qos}"] if self.qos else []
        if self.time_limit_s:
            # B: the warning goes to the batch shell only (sent to the step it would kill torchrun); its trap asks the stop
            options += [f"--time={minutes(self.time_limit_s)}", f"--signal=B:USR1@{self.warning_s}"]
        # Slurm's requeue starts the job again after a preemption or a node failure: its task goes on from the last
        # checkpoint as the next attempt (agent/slurm_task.py), its output appended to; without --max-restarts, never
        options += ["--requeue", "--open-mode=append"] if self.requeue else ["--no-requeue"]
        return options

    def script(self, python: str, home: Optional[str]) -> str:
        """The batch script: one srun step that starts the run's task (agent/slurm_task.py) on every allocated node.

        With a time limit, Slurm's warning (USR1 to this shell, which runs on node 0) asks node 0's agent for
        the checkpoint-then-stop that `gaudi-nb stop` asks for; the shell waits on srun again after the trap."""
        head = "\n".join(f"#SBATCH {option}" for option in self.options())
        env = f"export GAUDI_NB_HOME={shlex.quote(home)}\n" if home else ""
        env += f"echo {shlex.quote(START_MARK)} $SLURM_JOB_ID \"(restart ${{SLURM_RESTART_COUNT:-0}})\"\n" if self.requeue else ""
        commands = (python, "-m", "gaudi_nb.agent.commands")
        task = " ".join(shlex.quote(p) for p in (*commands, "slurm-task", "--run-dir", self.root))
        srun = f"srun --kill-on-bad-exit=0 --ntasks-per-node=1 {task}"
        if not self.time_limit_s:
            return f"#!/bin/bash\n{head}\n{env}exec {srun}\n"
        stop = " ".join(shlex.quote(p) for p in (*commands, "slurm-stop", "--reason", "stopped", "--time-limit", "--nodes", str(self.nodes), "--run-dir"))
        # node 0's part: on one node the run's only part, which a requeued job keeps wherever Slurm starts it again
        part = f"{shlex.quote(self.root)}/nodes/" + ("*/" if self.nodes == 1 else '"$SLURMD_NODENAME"')
        return (f"#!/bin/bash\n{head}\n{env}warned() {{ {stop} {part}; }}\ntrap warned USR1\n{srun} &\nstep=$!\n"
                "until wait $step; status=$?; [ $status -lt 128 ] || ! kill -0 $step 2>/dev/null; do :; done\nexit $status\n")
