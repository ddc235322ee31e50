"""A real JupyterLab for the browser tests: its own port and token, a log beside its root, stopped whatever happened."""
from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator

from conftest import BIN, free_port, wait_for_http

# jsonschema imports rfc3987_syntax when it is installed, and that builds a Lark grammar at import: 1.2 CPU-s
# of every JupyterLab start (jupyter_events loads jsonschema) for the "iri" format check, which no schema
# JupyterLab or gaudi_nb validates uses. jsonschema treats the package as optional: this one refuses to load.
NO_RFC3987 = Path(tempfile.mkdtemp(prefix="gaudi_nb_no_rfc3987_"))
(NO_RFC3987 / "rfc3987_syntax.py").write_text('raise ImportError("left out by the tests: jsonschema\'s iri check is not used")\n')


def without_rfc3987(env: Dict[str, str]) -> Dict[str, str]:
    """env for a Jupyter process that need not build jsonschema's iri grammar."""
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(NO_RFC3987), env.get("PYTHONPATH")) if p)}


@contextmanager
def jupyterlab(root: Path, env: Dict[str, str]) -> Iterator[Dict[str, str]]:
    """JupyterLab serving root with env; yields its base URL and token once /api/status answers."""
    port, token = free_port(), secrets.token_hex(8)
    log_path = root / "jupyter.log"
    env = without_rfc3987(env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "jupyter"), "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             # window.jupyterapp: a test opens its next notebook in the page it has, not in a new page (a page load costs ~5 CPU-s)
             "--LabApp.expose_app_in_browser=True"],
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
