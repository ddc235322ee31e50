"""Where gaudi_nb keeps its store and run folders: everything lives under $GAUDI_NB_HOME."""
from __future__ import annotations

import os
from pathlib import Path

from .private import private_dir, secret_value
from .rundir import check_run_id


def home() -> Path:
    """$GAUDI_NB_HOME (default ~/.gaudi_nb); made owner-only (0700) when gaudi_nb makes it: it holds the store and every run."""
    return private_dir(Path(os.environ.get("GAUDI_NB_HOME", "~/.gaudi_nb")).expanduser())


def runs_dir() -> Path:
    return private_dir(home() / "runs")


def run_dir(run_id: str) -> Path:
    """runs/<run_id> under the home; SpecError for anything that is not a run id (a path, "..")."""
    return runs_dir() / check_run_id(run_id)


def store_url() -> str:
    """The SQLAlchemy URL of the store: $GAUDI_NB_STORE_URL (a URL with a password may be file:PATH), else SQLite under the home."""
    given = os.environ.get("GAUDI_NB_STORE_URL")
    return secret_value(given, "GAUDI_NB_STORE_URL") if given else f"sqlite:///{home() / 'store.db'}"
