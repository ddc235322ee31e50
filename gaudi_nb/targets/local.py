"""This machine: the run's folder is here, and its agent runs here, detached in its own session.

The transport is the identity: files are copied, and a node command is the node CLI's own
function called in this process (agent/commands.py), so a local run pays no process start for it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import workdir
from ..agent import commands
from ..errors import SpecError
from ..spec import RunSpec
from .base import Files, Part, Target


class LocalTarget(Target):
    name = "local"
    max_nodes = 1

    def check(self, spec: RunSpec) -> None:
        """On a Gaudi machine: the first-generation pin (an HL-205 card with Gaudi software newer than 1.21 is
        refused in one line), as a remote node's preflight checks it. hl-smi is asked only where a card is."""
        from ..accel import detect_name

        if detect_name() != "hpu":
            return
        from ..doctor import installed_stack
        from ..gaudi_stack import first_gen_refusal

        refusal = first_gen_refusal(*installed_stack())
        if refusal:
            raise SpecError(refusal)

    def place(self, run_id: str) -> List[Part]:
        return [Part(self.name, 0, str(self.run_dir(run_id)))]

    def put_file(self, part: Part, local: Path, relative: str) -> None:
        there = Path(part.path) / relative
        there.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, there)

    def put_bytes(self, part: Part, relative: str, data: bytes) -> None:
        there = Path(part.path) / relative
        there.parent.mkdir(parents=True, exist_ok=True)
        there.write_bytes(data)

    def put_workdir(self, part: Part, root: Path) -> None:
        workdir.copy_into(root, workdir.code_dir(Path(part.path)))

    def node_call(self, part: Part, *argv: str, files: Optional[Files] = None, timeout: float = 120.0) -> Dict[str, Any]:
        return commands.answer(list(argv), files)

    def sent_files(self, spec: RunSpec) -> Files:
        return {}  # the agent starts from this process: it has this environment already

    def local_run(self, parts: List[Part], runs: List[Dict[str, Any]]) -> Dict[str, Any]:
        return runs[0]  # the run's folder is here: there is nowhere else to find it
