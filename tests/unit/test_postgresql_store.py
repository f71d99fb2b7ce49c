"""What only the PostgreSQL store has to get right: a server that is not there, goes
away, comes back or is slow; databases that are not listgate's; many hosts writing.
On a private cluster (tests/conftest.py); the store's answers themselves are tested on
both engines in test_sqlite_backend.py and test_admin_cli.py."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pgcluster import PgCluster

from listgate import config, model
from listgate.backends import open_backend, open_store
from listgate.backends.sqlite import SCHEMA_VERSION, StoreError
from listgate.config import ConfigError

LIST = "dev@example.org"


def pg_cfg(conninfo: str, extra: str = "") -> config.Config:
    return config.parse(f"[lists]\nbackend = postgresql\n[postgresql]\nconninfo = {conninfo}\n"
                        f"{extra}")


def tables(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone()[0]


def test_daemon_never_creates_the_store(pg_database: str) -> None:
    """An empty database is a backend error (451), loudly named; only `db init` makes
    the tables, and the daemon then answers without being restarted."""
    cfg = pg_cfg(pg_database)
    backend = open_backend(cfg)
    with pytest.raises(model.BackendError) as e:
        backend.find_list(LIST)
    assert str(e.value).startswith("postgresql host=")
    assert str(e.value).endswith(": not an initialised listgate database")
    assert tables(pg_database) == 0
    with open_store(cfg) as store:
        assert store.init() is True
        store.create_list(LIST)
    assert backend.find_list(LIST) == LIST
    backend.close()


def test_the_daemon_session_is_read_only(pg_database: str) -> None:
    cfg = pg_cfg(pg_database)
    backend = open_backend(cfg)
    with open_store(cfg) as store:
        store.init()
    with pytest.raises(model.BackendError, match="read-only transaction"), \
            backend._read() as conn:
        conn.execute("CREATE TABLE x (y INTEGER)")
    backend.close()


def test_init_refuses_a_database_with_other_tables(pg_database: str) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER)")
    with open_store(pg_cfg(pg_database)) as store, \
            pytest.raises(StoreError, match="holds tables but is not a listgate database"):
        store.init()


def test_unreachable_server_is_a_backend_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = pg_cfg(f"host=127.0.0.1 port={port} dbname=listgate",
                 "connect_timeout = 1\n")
    backend = open_backend(cfg)
    start = time.monotonic()
    with pytest.raises(model.BackendError) as e:
        backend.list_facts(LIST, ["a@example.org"])
    assert time.monotonic() - start < 3
    assert str(e.value).startswith(f"postgresql host=127.0.0.1 port={port} dbname=listgate: ")
    assert "refused" in str(e.value) and "\n" not in str(e.value)
    backend.close()
    with open_store(cfg) as store, pytest.raises(StoreError, match="refused"):
        store.list_lists()


def test_restart_and_outage_recover_without_a_restart(pg_cluster: PgCluster,
                                                       pg_database: str) -> None:
    cfg = pg_cfg(pg_database, "connect_timeout = 1\n")
    with open_store(cfg) as store:
        store.init()
        store.create_list(LIST)
        store.add_members(LIST, ["m@example.org"])
    backend = open_backend(cfg)
    for _ in range(3):  # several pooled connections, all of them killed by the restart
        assert backend.list_facts(LIST, ["m@example.org"]).senders[0].is_member
    pg_cluster.restart()
    # a dropped connection is replaced and the question asked again: no error at all
    assert backend.list_facts(LIST, ["m@example.org"]).senders[0].is_member
    pg_cluster.stop()
    try:
        with pytest.raises(model.BackendError, match="postgresql host="):
            backend.list_facts(LIST, ["m@example.org"])
    finally:
        pg_cluster.start()
    deadline = time.monotonic() + 15
    while True:
        try:
            assert backend.list_facts(LIST, ["m@example.org"]).senders[0].is_member
            break
        except model.BackendError:
            assert time.monotonic() < deadline, "no recovery within 15 s"
            time.sleep(0.2)
    backend.close()


def test_statement_timeout_is_a_backend_error(pg_database: str) -> None:
    cfg = pg_cfg(pg_database, "statement_timeout = 0.3\n")
    with open_store(cfg) as store:
        store.init()
        store.create_list(LIST)
    backend = open_backend(cfg)
    assert backend.find_list(LIST) == LIST
    with psycopg.connect(pg_database) as blocker:  # what an ALTER TABLE would hold
        blocker.execute("LOCK TABLE members IN ACCESS EXCLUSIVE MODE")
        start = time.monotonic()
        with pytest.raises(model.BackendError, match="statement timeout"):
            backend.list_facts(LIST, ["a@example.org"])
        assert time.monotonic() - start < 2
    assert not backend.list_facts(LIST, ["a@example.org"]).senders[0].is_member
    backend.close()


def test_passfile_readable_by_everyone_is_refused(pg_database: str, tmp_path: Path) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text("*:*:*:*:secret\n")
    os.chmod(passfile, 0o644)
    cfg = pg_cfg(pg_database, f"passfile = {passfile}\n")
    with pytest.raises(ConfigError) as e:
        open_backend(cfg)
    assert str(e.value) == (f"<string>: [postgresql] passfile: {passfile} is readable by "
                            "everyone (mode 644); chmod o-r it")
    os.chmod(passfile, 0o600)
    with open_store(cfg) as store:
        store.init()
    backend = open_backend(cfg)
    assert backend.find_list(LIST) is None
    backend.close()


def test_bad_conninfo_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[postgresql\] conninfo: "):
        open_backend(pg_cfg("host='unterminated"))


def test_a_change_on_one_host_is_seen_by_every_daemon(pg_database: str) -> None:
    """Two daemons, two CLIs, one database: the backends cache nothing (the engine's
    cache_ttl is the only delay)."""
    cfg = pg_cfg(pg_database)
    with open_store(cfg) as a:
        a.init()
        a.create_list(LIST)
    daemons = [open_backend(cfg), open_backend(cfg)]
    with open_store(cfg) as cli_on_mx1, open_store(cfg) as cli_on_mx2:
        cli_on_mx1.add_members(LIST, ["new@example.org"])
        assert all(d.list_facts(LIST, ["new@example.org"]).senders[0].is_member
                   for d in daemons)
        cli_on_mx2.add_ban("new@example.org", list=LIST)
        assert all(d.list_facts(LIST, ["new@example.org"]).senders[0].banned for d in daemons)
    for d in daemons:
        d.close()


def test_upgrade_keeps_the_schema_version_in_one_place(pg_database: str) -> None:
    with open_store(pg_cfg(pg_database)) as store:
        store.init()
        assert store.schema_version() == SCHEMA_VERSION
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT version FROM listgate_schema").fetchall() == [
            (SCHEMA_VERSION,)]


def test_many_daemon_threads_share_the_pool(pg_database: str) -> None:
    cfg = pg_cfg(pg_database, "pool_size = 2\n")
    with open_store(cfg) as store:
        store.init()
        store.create_list(LIST)
        store.add_members(LIST, ["m@example.org"])
    backend = open_backend(cfg)
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(20):
                assert backend.list_facts(LIST, ["m@example.org"]).senders[0].is_member
        except BaseException as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    backend.close()
