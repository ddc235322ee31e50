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


def reset_postgres(url: str) -> None:
    """Empty the test database: every table (alembic_version too), sequence and type a test left, and the cached engine."""
    import sqlalchemy

    import gaudi_nb.store as store_module

    cached = store_module._engines.pop(url, None)
    if cached is not None:
        cached.dispose()  # its pooled connections would otherwise outlive the schema they saw
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        yield url
        import gaudi_nb.store as store_module

        cached = store_module._engines.pop(url, None)
        if cached is not None:
            cached.dispose()
        return
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 (./scripts/setup-and-test starts one)")
    reset_postgres(url)  # whatever an earlier run left, even one that was killed
    yield url
    reset_postgres(url)
