"""Shared fixtures: an isolated GAUDI_NB_HOME per test, and the real PostgreSQL server .ci/run starts."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def gaudi_home(tmp_path, monkeypatch):
    home = tmp_path / "gaudi_home"
    monkeypatch.setenv("GAUDI_NB_HOME", str(home))
    monkeypatch.delenv("GAUDI_NB_STORE_URL", raising=False)
    return home


def postgres_url() -> str | None:
    """The test server's URL; in CI it must be there (a missing server is a failure, not a skip)."""
    url = os.environ.get("GAUDI_NB_TEST_POSTGRES_URL", "postgresql+psycopg://gaudi:gaudi@127.0.0.1:5432/gaudi_test")
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
        return url
    except Exception as exc:
        if os.environ.get("CI"):
            raise RuntimeError(f"PostgreSQL at {url} is not reachable in CI ({exc}); .ci/run starts it") from exc
        return None


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 (./scripts/setup-and-test starts one)")
    import sqlalchemy

    # a clean schema per test: drop what an earlier test left
    from gaudi_nb.store import Base

    engine = sqlalchemy.create_engine(url)
    Base.metadata.drop_all(engine)
    engine.dispose()
    import gaudi_nb.store as store_module

    store_module._engines.pop(url, None)
    return url
