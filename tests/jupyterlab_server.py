"""A real JupyterLab for the browser tests: its own port and token, a log beside its root, stopped whatever happened."""
from __future__ import annotations

import secrets
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator

from conftest import BIN, free_port, wait_for_http


@contextmanager
def jupyterlab(root: Path, env: Dict[str, str]) -> Iterator[Dict[str, str]]:
    """JupyterLab serving root with env; yields its base URL and token once /api/status answers."""
    port, token = free_port(), secrets.token_hex(8)
    log_path = root / "jupyter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "jupyter"), "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_http(f"{base}/api/status?token={token}", proc, log_path, "JupyterLab")
            yield {"base": base, "token": token}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
