"""A run's working directory (--workdir): the files git would keep, snapshot into the run folder and synced to nodes."""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import List, Tuple

from .errors import SpecError

# One place for the size rule: a file bigger than this is refused unless the limit is raised.
SYNC_LIMIT_ENV = "GAUDI_NB_SYNC_LIMIT_MB"
MAX_FILES = 20_000  # a workdir with more is almost surely a data or environment folder


def sync_limit_mb() -> float:
    return float(os.environ.get(SYNC_LIMIT_ENV, "512"))


def check_size(path: Path, shown: str) -> int:
    """The file's size in bytes; a one-line SpecError if it is above the sync limit."""
    size = path.stat().st_size
    limit = sync_limit_mb()
    if size > limit * 2**20:
        raise SpecError(f"{shown} is {size / 2**20:,.0f} MiB, above the {limit:,.0f} MiB sync limit: add it to .gitignore or put it on the node, or raise {SYNC_LIMIT_ENV}")
    return size


def _git_files(root: Path) -> List[str] | None:
    """Files under root that git would keep (tracked, or untracked and not ignored); None outside a git work tree.

    git applies every ignore source (nested .gitignore files, .git/info/exclude, the global
    excludes file) exactly as the user's own `git status` does, so we ask it rather than re-implement it."""
    if shutil.which("git") is None:
        return None
    probe = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != "true":
        return None
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."],
                            capture_output=True, check=True)
    # paths come relative to root (git -C root ... -- . lists only below it); deleted-but-tracked files are skipped
    return [name for name in listed.stdout.decode().split("\0") if name and (root / name).is_file()]


def _walk_files(root: Path) -> List[str]:
    """Outside git: every file, less what .gitignore files in the tree exclude (git's own pattern rules, via pathspec)."""
    import pathspec

    kept: List[str] = []
    specs: List[Tuple[Path, pathspec.GitIgnoreSpec]] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        ignore = here / ".gitignore"
        if ignore.is_file():
            specs.append((here, pathspec.GitIgnoreSpec.from_lines(ignore.read_text().splitlines())))

        def ignored(path: Path, is_dir: bool) -> bool:
            for base, spec in specs:
                if base == path or base in path.parents:
                    relative = path.relative_to(base).as_posix() + ("/" if is_dir else "")
                    if spec.match_file(relative):
                        return True
            return False

        dirs[:] = sorted(d for d in dirs if d != ".git" and not ignored(here / d, True))
        kept.extend((here / f).relative_to(root).as_posix() for f in sorted(files) if not ignored(here / f, False))
    return kept


def select(root: Path) -> List[Tuple[Path, str, int]]:
    """(file, path relative to root, size) for what a run takes from its working directory; refuses big files and huge trees."""
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise SpecError(f"workdir: no such folder {root}")
    names = _git_files(root)
    if names is None:
        names = _walk_files(root)
    if len(names) > MAX_FILES:
        raise SpecError(f"workdir: {root} has {len(names):,} files to sync (more than {MAX_FILES:,}): add data and environments to .gitignore, or give a smaller folder")
    return [(root / name, name, check_size(root / name, f"workdir: {name}")) for name in sorted(names)]


def copy_into(root: Path, destination: Path) -> int:
    """Snapshot the working directory into destination (the run's code/ folder); returns the number of files."""
    files = select(root)
    for path, name, _ in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    destination.mkdir(parents=True, exist_ok=True)
    return len(files)


def pack(root: Path, destination: Path) -> int:
    """The working directory as one tar archive in `destination` (one transfer to a node instead of one per
    file, streamed from disk: never the whole archive in memory); returns its file count."""
    files = select(root)
    with tarfile.open(destination, mode="w") as archive:
        for path, name, _ in files:
            archive.add(str(path), arcname=name, recursive=False)
    return len(files)


def code_dir(run_dir: Path) -> Path:
    """Where a run keeps its snapshot of the working directory, on the client and on every node."""
    return Path(run_dir) / "code"


def script_in_snapshot(run_dir: Path, script: str, workdir: str) -> Path | None:
    """The snapshot's copy of a script that lives inside the working directory (so paths relative to
    `__file__` and sibling imports work as they did on the user's machine); None if it lives elsewhere."""
    try:
        relative = Path(script).relative_to(Path(workdir))
    except ValueError:
        return None
    copy = code_dir(run_dir) / relative
    return copy if copy.is_file() else None
