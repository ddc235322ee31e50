"""Files and folders only their owner reads, files written whole, and secrets that never sit on a command line.

A shared host (a login node, a team's Gaudi box) has other users: what gaudi_nb keeps (the store, run
folders with events, checkpoints, code and the token a multi-node run's agents share) is theirs to
read only if the owner says so. And a file another process reads (run.json, spec.json, agent.pid,
resume.json) is never seen half-written: it is written beside its place and renamed over it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from .errors import SpecError

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Union[str, Path]) -> Path:
    """Make the folder and any missing parents owner-only (0700); a folder that exists already is left as its owner set it."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            continue  # made by another process at the same moment: its maker set the mode
        os.chmod(folder, FOLDER_MODE)  # the umask may have taken bits away; never added any
    return path


def private_file(path: Union[str, Path]) -> Path:
    """Create the file empty and owner-only (0600) when it does not exist yet, so whatever opens it next (SQLite) keeps that mode."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
    return path


def write_atomic(path: Union[str, Path], data: Union[str, bytes], mode: int = FILE_MODE) -> Path:
    """Write the whole file or nothing: a reader (or a crash) never finds it half-written; owner-only by default."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, mode)
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise
    return path


SECRET_FORMS = "env:VAR or file:PATH"


def secret_value(text: str, what: str) -> str:
    """A secret option's value: env:VAR reads the variable here, file:PATH the file (stripped); other text is the value itself.

    A value typed on a command line is in `ps` for every user of the host and in shell history; these forms keep it out."""
    if text.startswith("env:"):
        value = os.environ.get(text[4:])
        if not value:
            raise SpecError(f"{what}: {text}: the variable {text[4:]} is not set here: export it, or give file:PATH")
        return value
    if text.startswith("file:"):
        path = Path(text[5:]).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise SpecError(f"{what}: cannot read {path} ({exc.strerror or exc}): give a readable file:PATH, or env:VAR") from None
    return text


__all__ = ["FILE_MODE", "FOLDER_MODE", "SECRET_FORMS", "private_dir", "private_file", "secret_value", "write_atomic"]
