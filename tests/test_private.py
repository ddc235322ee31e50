"""Owner-only folders and files written whole (gaudi_nb/private.py)."""
from __future__ import annotations

import os

import pytest

from gaudi_nb.private import private_dir, private_file, write_atomic


def mode(path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_folders_made_are_owner_only_whatever_the_umask_and_an_existing_one_is_left_alone(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    old = os.umask(0o022)
    try:
        made = private_dir(shared / "home" / "runs")
        made_file = private_file(made / "store.db")
    finally:
        os.umask(old)
    assert (mode(shared), mode(shared / "home"), mode(made), mode(made_file)) == ("0o755", "0o700", "0o700", "0o600")


def test_a_failed_write_leaves_the_old_file_whole_and_nothing_beside_it(tmp_path):
    target = write_atomic(tmp_path / "run.json", '{"run_id": "a"}')
    assert mode(target) == "0o600" and target.read_text() == '{"run_id": "a"}'

    (tmp_path / "logs").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "logs", "x")  # the rename fails: the partial file goes again
    with pytest.raises(TypeError):
        write_atomic(target, None)  # type: ignore[arg-type]
    assert target.read_text() == '{"run_id": "a"}' and sorted(p.name for p in tmp_path.iterdir()) == ["logs", "run.json"]


def test_a_secret_comes_from_a_variable_or_a_file_never_the_command_line(tmp_path, monkeypatch):
    from gaudi_nb import paths
    from gaudi_nb.errors import SpecError
    from gaudi_nb.private import secret_value

    (tmp_path / "url").write_text("postgresql+psycopg://team:pw@db/gaudi\n")
    monkeypatch.setenv("GAUDI_NB_TEST_SECRET", "s3cret")
    assert secret_value("env:GAUDI_NB_TEST_SECRET", "--oauth-secret") == "s3cret"
    assert secret_value(f"file:{tmp_path / 'url'}", "--store") == "postgresql+psycopg://team:pw@db/gaudi"
    assert secret_value("plain", "--basic-auth") == "plain"
    with pytest.raises(SpecError, match="^--cookie-secret: env:GAUDI_NB_UNSET: the variable GAUDI_NB_UNSET is not set here: export it, or give file:PATH$"):
        secret_value("env:GAUDI_NB_UNSET", "--cookie-secret")
    monkeypatch.setenv("GAUDI_NB_STORE_URL", f"file:{tmp_path / 'url'}")
    assert paths.store_url() == "postgresql+psycopg://team:pw@db/gaudi"
