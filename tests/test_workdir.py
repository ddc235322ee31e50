"""--workdir: the files git would keep are snapshot into the run (and onto its node); the script runs there."""
import subprocess
import sys

import pytest

import gaudi_nb
from gaudi_nb import workdir
from gaudi_nb.errors import SpecError

TRAIN = """
import json
from pathlib import Path

from helpers import steps  # a sibling module: imports work as in the user's folder
from gaudi_nb.worker.script import report

config = json.loads(Path("configs/run.json").read_text())  # a path relative to the working directory
for step in range(1, steps(config) + 1):
    report(step=step, loss=1.0 / step, tokens=8)
Path("seen.txt").write_text(",".join(sorted(p.name for p in Path(".").rglob("*") if p.is_file())))
"""


def make_project(root, big_ignored=0):
    (root / "configs").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "helpers.py").write_text("def steps(config):\n    return config['steps']\n")
    (root / "configs" / "run.json").write_text('{"steps": 3}')
    (root / ".gitignore").write_text("data/\n*.bin\n")
    (root / "data" / "shard.txt").write_text("ignored data")
    (root / "weights.bin").write_bytes(b"\0" * big_ignored)
    return root


@pytest.mark.parametrize("in_git", [True, False], ids=["git", "plain-folder"])
def test_the_snapshot_is_what_git_would_keep(tmp_path, in_git):
    root = make_project(tmp_path / "project")
    if in_git:
        subprocess.run(["git", "init", "-q", str(root)], check=True)
    names = [name for _, name, _ in workdir.select(root)]
    assert names == [".gitignore", "configs/run.json", "helpers.py", "train.py"]


def test_a_big_file_is_refused_in_one_line_unless_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("GAUDI_NB_SYNC_LIMIT_MB", "1")
    root = make_project(tmp_path / "project", big_ignored=3 * 2**20)
    assert len(workdir.select(root)) == 4  # ignored: fine
    (root / ".gitignore").write_text("data/\n")
    with pytest.raises(SpecError) as caught:
        workdir.select(root)
    assert "weights.bin is 3 MiB, above the 1 MiB sync limit" in str(caught.value) and "\n" not in str(caught.value)


def test_workdir_without_a_script_is_one_line(gaudi_home, tmp_path):
    with pytest.raises(SpecError, match="for a --script run"):
        gaudi_nb.train(workdir=str(tmp_path))


def test_a_local_script_runs_in_its_snapshot(script_runs, tmp_path, monkeypatch):
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    run = gaudi_nb.train(script="train.py", workdir=".", max_steps=3)
    run.wait(timeout=180)
    assert run.status == "succeeded", run.record()["exit"]
    assert [e["step"] for e in run.events(types=["step"])] == [1, 2, 3]
    seen = (run.run_dir / "code" / "seen.txt").read_text().split(",")
    assert "shard.txt" not in seen and "weights.bin" not in seen and "helpers.py" in seen
    assert not (root / "seen.txt").exists()  # the user's folder is left as it was


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_the_archive_for_a_node_is_written_to_a_file_it_is_streamed_from(tmp_path):
    import tarfile

    root = make_project(tmp_path / "project")
    archive = tmp_path / "code.tar"
    count = workdir.pack(root, archive)  # to disk, then SFTP'd from the file: never the whole archive in memory
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(name for _, name, _ in workdir.select(root)) and count == len(tar.getnames())
