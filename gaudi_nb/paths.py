"""Where gaudi_nb keeps its store and run folders: everything lives under $GAUDI_NB_HOME."""
from __future__ import annotations

import os
from pathlib import Path

from .rundir import check_run_id


def home() -> Path:
    path = Path(os.environ.get("GAUDI_NB_HOME", "~/.gaudi_nb")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    path = home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir(run_id: str) -> Path:
    """runs/<run_id> under the home; SpecError for anything that is not a run id (a path, "..")."""
    return runs_dir() / check_run_id(run_id)


def store_url() -> str:
    """The SQLAlchemy URL of the store: $GAUDI_NB_STORE_URL, else SQLite under the home."""
    return os.environ.get("GAUDI_NB_STORE_URL") or f"sqlite:///{home() / 'store.db'}"
