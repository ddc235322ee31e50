"""RunFolder: the run folder's layout, its control files and the agent's liveness, shared by agent, ranks and targets."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from .errors import SpecError
from .private import FOLDER_MODE, private_dir

# Written into a checkpoint folder after everything else in it is on disk: a folder without it
# is half-written (a rank died while saving) and is never resumed from.
CHECKPOINT_COMPLETE = "gaudi_nb_complete.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")  # the HF Trainer's naming, which script runs share


# What the agent tells each rank it launches: the attempt (1 for the first launch) and, when the
# attempt continues a run, the complete checkpoint to resume from (a user --script reads it too).
ATTEMPT_ENV = "GAUDI_NB_ATTEMPT"
RESUME_FROM_ENV = "GAUDI_NB_RESUME_FROM"
# ...and who its agent is, so the rank can end itself when the agent is gone (worker/agent_watch.py).
AGENT_PID_ENV = "GAUDI_NB_AGENT_PID"
AGENT_HOST_ENV = "GAUDI_NB_AGENT_HOST"  # a launcher may forward the variables to other nodes: a pid means nothing there
# Where a LoRA run's checkpoint keeps its base model and tokenizer (the ranks write them, export reads them).
BASE_MODEL_DIR = "base_model"
TOKENIZER_DIR = "tokenizer"


# What a run id may be: the one pattern every door, the store and the run folders check, so an id read
# from a shared store is data: never a path (no "/", no ".." or absolute id), never code (no "{", "$",
# quotes, spaces or newlines a magic line or a shell could read), and ASCII (ids are compared byte for byte).
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: Any) -> str:
    """`run_id` if it is a run id (or a prefix of one); SpecError in one line if not."""
    if isinstance(run_id, str) and RUN_ID_PATTERN.fullmatch(run_id):
        return run_id
    shown = repr(run_id)[:60]
    raise SpecError(f"not a run id: {shown} (a run id is letters, digits, '.', '_' and '-', up to 128): gaudi-nb runs lists them")


def agent_environment() -> Dict[str, str]:
    """The variables the agent gives its launcher, so the ranks can watch it."""
    import socket

    return {AGENT_PID_ENV: str(os.getpid()), AGENT_HOST_ENV: socket.gethostname()}


def current_attempt() -> int:
    return int(os.environ.get(ATTEMPT_ENV) or 1)


class Checkpoint(NamedTuple):
    step: int
    path: Path


def heartbeat_timeout_s() -> float:
    """Seconds without an agent heartbeat (and no agent process) before a run counts as lost; one setting."""
    return float(os.environ.get("GAUDI_NB_HEARTBEAT_TIMEOUT_S", "15"))


def node_run_folders(runs: Path) -> List[Tuple[str, "RunFolder"]]:
    """Every run's folder under a node's runs/, each with its name there: runs/<run_id>, or for a run
    across nodes this node's runs/<run_id>/nodes/<name> (named "<run_id>/nodes/<name>"): nodes that
    share a home (NFS) each keep their own folder under the run's."""
    found: List[Tuple[str, RunFolder]] = []
    try:
        entries = sorted(p for p in Path(runs).iterdir() if p.is_dir())
    except OSError:
        return found
    for entry in entries:
        parts = sorted(p for p in (entry / "nodes").glob("*") if (p / "run.json").exists())
        if (entry / "run.json").exists() or not parts:
            found.append((entry.name, RunFolder(entry)))
        else:
            found.extend((f"{entry.name}/nodes/{p.name}", RunFolder(p)) for p in parts)
    return found


@dataclass(frozen=True)
class RunFolder:
    """runs/<run_id>/ on the node that runs it (and, for remote runs, its local mirror)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- layout ------------------------------------------------------------------
    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def run(self) -> Path:
        return self.path / "run.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def train_log(self) -> Path:
        return self.logs / "train.log"

    @property
    def agent_log(self) -> Path:
        return self.logs / "agent.log"

    @property
    def control(self) -> Path:
        return self.path / "control"

    @property
    def sent_environment(self) -> Path:
        """Settings the client sent with a run on a node (tracker settings, maybe a key): mode 0600, read and
        deleted when the agent starts, which passes them on to the agent's environment."""
        return self.control / "environment.json"

    def take_sent_environment(self) -> Dict[str, str]:
        try:
            data = json.loads(self.sent_environment.read_text())
        except FileNotFoundError:
            return {}
        self.sent_environment.unlink()
        return {str(k): str(v) for k, v in data.items()}

    @property
    def stop_request(self) -> Path:
        """Written by the agent (budget) or a client (user stop); the first request wins."""
        return self.control / "stop_request.json"

    @property
    def stop_at(self) -> Path:
        """Written by rank 0: the step every rank stops after."""
        return self.control / "stop_at.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def resume_request(self) -> Path:
        """Written by `gaudi-nb resume` before it starts a new agent: the attempt and the checkpoint it resumes from."""
        return self.control / "resume.json"

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"checkpoint-{step}"

    @property
    def script(self) -> Path:
        """The run's own copy of a user script (%%gaudi_train --script)."""
        return self.path / "script.py"

    @property
    def agent_pid(self) -> Path:
        return self.path / "agent.pid"

    @property
    def heartbeat(self) -> Path:
        return self.path / "heartbeat"

    def create(self) -> "RunFolder":
        """Make a new run folder, owner-only (its events, checkpoints and code are the user's); refuses one that exists (run ids are unique)."""
        private_dir(self.path.parent)
        self.path.mkdir(mode=FOLDER_MODE)
        os.chmod(self.path, FOLDER_MODE)
        self.logs.mkdir()
        self.control.mkdir()
        return self

    def read_run(self) -> Dict[str, Any]:
        data: Dict[str, Any] = json.loads(self.run.read_text())
        return data

    # -- stop requests -------------------------------------------------------------
    def request_stop(self, reason: str, why: Optional[str] = None) -> bool:
        """Ask the run to stop after saving a checkpoint; True if this request was the first.
        why: what asked, where it is not a person or the budget (Slurm's time limit), for the run's end to say."""
        self.control.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.stop_request, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"reason": reason, "t": time.time(), **({"why": why} if why else {})}, fh)
        return True

    def stop_reason(self) -> Optional[str]:
        """Why a stop was requested, or None if none was."""
        try:
            return str(json.loads(self.stop_request.read_text()).get("reason", "stopped"))
        except (OSError, json.JSONDecodeError):
            return "stopped" if self.stop_request.exists() else None

    # -- the agent's liveness ------------------------------------------------------------
    def beat(self) -> None:
        self.heartbeat.write_text(str(time.time()))

    def last_beat(self) -> Optional[float]:
        """When the agent last beat (or, before its first beat, when it wrote its pid)."""
        for path in (self.heartbeat, self.agent_pid):
            try:
                return path.stat().st_mtime
            except OSError:
                continue
        return None

    def agent_process_id(self) -> Optional[int]:
        try:
            return int(self.agent_pid.read_text().strip())
        except (OSError, ValueError):
            return None


    # -- checkpoints -----------------------------------------------------------------
    def checkpoint_folders(self) -> List[Checkpoint]:
        """Every checkpoint-N folder, complete or not, oldest step first."""
        found = []
        try:
            entries = list(os.scandir(self.checkpoints))
        except OSError:
            return []
        for entry in entries:
            match = _CHECKPOINT_NAME.match(entry.name)
            if match and entry.is_dir():
                found.append(Checkpoint(int(match.group(1)), Path(entry.path)))
        return sorted(found)

    def complete_checkpoints(self) -> List[Checkpoint]:
        return [c for c in self.checkpoint_folders() if (c.path / CHECKPOINT_COMPLETE).is_file()]

    def last_checkpoint(self) -> Optional[Checkpoint]:
        """The newest complete checkpoint: what a restart or `gaudi-nb resume` continues from."""
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def discard_unfinished_checkpoints(self) -> List[Path]:
        """Remove half-written checkpoint folders (no rank is running: called between attempts); returns them."""
        removed = []
        for checkpoint in self.checkpoint_folders():
            if not (checkpoint.path / CHECKPOINT_COMPLETE).is_file():
                shutil.rmtree(checkpoint.path, ignore_errors=True)
                removed.append(checkpoint.path)
        return removed


def mark_checkpoint_complete(path: Path, step: int) -> None:
    """Flush a saved checkpoint folder to disk, then write its completion marker (atomically, last).

    A crash before the rename leaves no marker, so the folder is never taken for a checkpoint;
    after it, every file the marker vouches for is already on disk.
    """
    path = Path(path)
    for root, _dirs, files in os.walk(path):
        for name in files:
            _fsync(Path(root) / name)
        _fsync_dir(Path(root))
    tmp = path / (CHECKPOINT_COMPLETE + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({"step": int(step), "t": time.time()}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path / CHECKPOINT_COMPLETE)
    _fsync_dir(path)


def prune_checkpoints(folder: RunFolder, keep: Optional[int]) -> List[Path]:
    """Keep the newest `keep` complete checkpoints (all when None) and drop half-written folders
    older than the newest complete one; the newest complete checkpoint is never removed. Returns what was removed."""
    folders = folder.checkpoint_folders()
    complete = [c for c in folders if (c.path / CHECKPOINT_COMPLETE).is_file()]
    if not complete:
        return []
    newest = complete[-1]
    doomed = [c for c in folders if c.step < newest.step and c not in complete]  # half-written by a crashed attempt
    if keep is not None:
        doomed += complete[: max(0, len(complete) - max(1, keep))]
    for checkpoint in doomed:
        shutil.rmtree(checkpoint.path, ignore_errors=True)
    return [c.path for c in doomed]


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync(path)  # a folder's fsync makes the names in it durable (a no-op where the system has none)
