"""Fixtures shared by every test directory: listgate's store on either engine.

``pg_cluster`` (session)
    a private PostgreSQL cluster (:class:`pgcluster.PgCluster`), started on first use
    and stopped at the end of the session.
``pg_database`` (function)
    the libpq conninfo of a new, empty database in it (dropped afterwards).
``engine`` (function, parametrized)
    "sqlite" and "postgresql": a test that asks for ``store_config`` runs on both.
``store_config`` (function)
    the INI text that puts the store on ``engine``: ``[sqlite] path`` in tmp_path, or
    ``[lists] backend = postgresql`` with a fresh ``pg_database``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pgcluster import PgCluster, store_config_for

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    yield cluster
    cluster.close()


@pytest.fixture
def pg_database(pg_cluster: PgCluster) -> Iterator[str]:
    name = pg_cluster.create_database()
    yield pg_cluster.conninfo(name)
    pg_cluster.drop_database(name)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_config(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return store_config_for(engine, tmp_path, request)
