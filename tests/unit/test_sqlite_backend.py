"""listgate's store and the daemon's read-only backend, on both engines: SQLite files
and a private PostgreSQL cluster (tests/conftest.py).  Tests of what only a file can
do (WAL, being replaced or deleted) are SQLite's alone."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from listgate import config, model
from listgate.backends import open_backend, open_store
from listgate.backends.sqlite import (
    SCHEMA_VERSION,
    ListExists,
    ListNotFound,
    SqliteBackend,
    SqliteStore,
    StoreError,
)

LIST = "dev@example.org"


SQLITE_ONLY = pytest.mark.parametrize("engine", ["sqlite"])


@pytest.fixture
def cfg(store_config: str) -> config.Config:
    return config.parse(store_config)


@pytest.fixture
def store(cfg: config.Config) -> SqliteStore:
    s = open_store(cfg)
    s.init()
    s.create_list(LIST)
    yield s
    s.close()


@pytest.fixture
def backend(cfg: config.Config, store: SqliteStore) -> SqliteBackend:
    b = open_backend(cfg)
    yield b
    b.close()


def raw_execute(cfg: config.Config, sql: str, params: tuple = ()) -> None:
    """One statement behind the store's back (what a hand edit or old data would do)."""
    if cfg.lists.backend == "sqlite":
        conn = sqlite3.connect(cfg.sqlite.path)
        with conn:
            conn.execute(sql, params)
        conn.close()
        return
    import psycopg

    with psycopg.connect(cfg.postgresql.conninfo, autocommit=True) as conn:
        conn.execute(sql.replace("?", "%s"), params)


def facts(backend: SqliteBackend, *senders: str) -> dict[str, model.SenderFacts]:
    result = backend.list_facts(LIST, senders)
    return {f.address: f for f in result.senders}


# -- the store


def test_init_is_idempotent_and_uses_wal(cfg: config.Config, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "db.sqlite"
    s = SqliteStore(str(path))
    assert s.init() is True
    assert s.init() is False
    s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()


def test_store_refuses_missing_database(tmp_path: Path) -> None:
    s = SqliteStore(str(tmp_path / "none.sqlite"))
    with pytest.raises(StoreError, match=r"no database at .*none\.sqlite"):
        s.list_lists()
    assert not (tmp_path / "none.sqlite").exists()


def test_store_validation_names_the_value(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="'bob'"):
        store.add_members(LIST, ["ok@example.org", "bob"])
    with pytest.raises(ValueError, match=r"'a b@example\.org'"):
        store.add_members(LIST, ["a b@example.org"])
    with pytest.raises(ValueError, match="'a@b@c'"):
        store.create_list("a@b@c")
    with pytest.raises(ValueError, match="'maybe'"):
        store.set_list_option(LIST, "default_member_action", "maybe")
    with pytest.raises(ValueError, match="'colour'"):
        store.set_list_option(LIST, "colour", "red")
    with pytest.raises(ValueError, match="emergency"):
        store.set_list_option(LIST, "emergency", "yes")
    with pytest.raises(ValueError, match="bad regular expression"):
        store.set_list_option(LIST, "hold_these_nonmembers", ["^("])
    with pytest.raises(ValueError, match="expected a list"):
        store.set_list_option(LIST, "hold_these_nonmembers", "a@b.c")
    # nothing of the failed batch was written
    assert store.members(LIST) == []


def test_store_lists_and_options(store: SqliteStore) -> None:
    with pytest.raises(ListExists):
        store.create_list("DEV@example.org")
    with pytest.raises(ListNotFound):
        store.get_list("nope@example.org")
    store.create_list("b@example.org", default_nonmember_action="reject", emergency=True)
    assert store.list_lists() == ["b@example.org", LIST]
    p = store.set_list_option(LIST, "accept_these_nonmembers", ["^.*@example\\.org$", "x@y.z"])
    assert p.accept_these_nonmembers == ("^.*@example\\.org$", "x@y.z")
    p = store.set_list_option(LIST, "accept_these_nonmembers", [])
    assert p.accept_these_nonmembers == ()
    assert store.get_list("b@example.org").emergency is True
    store.add_members("b@example.org", ["m@example.org"])
    store.add_ban("x@example.org", list="b@example.org")
    store.delete_list("b@example.org")
    assert store.list_lists() == [LIST]
    assert store.bans() == []


def test_add_members_is_an_upsert(store: SqliteStore) -> None:
    store.add_members(LIST, ["A@Example.org", "b@example.org"], moderation_action="hold")
    store.add_members(LIST, ["a@example.org"])
    assert store.members(LIST) == [("a@example.org", None), ("b@example.org", "hold")]
    assert store.remove_members(LIST, ["B@example.org", "zz@example.org"]) == 1
    assert store.members(LIST) == [("a@example.org", None)]
    assert store.members(LIST, role="nonmember") == []


# -- the backend's answers


def test_find_list_is_case_insensitive(backend: SqliteBackend) -> None:
    assert backend.find_list("DEV@Example.ORG") == LIST
    assert backend.find_list(LIST) == LIST
    assert backend.find_list("dev-request@example.org") is None


def test_open_backend_uses_this_module(cfg: config.Config, store: SqliteStore) -> None:
    b = open_backend(cfg)
    assert isinstance(b, SqliteBackend) and b.name == cfg.lists.backend
    assert b.find_list(LIST) == LIST
    b.close()


def test_list_facts_policy(store: SqliteStore, backend: SqliteBackend) -> None:
    store.set_list_option(LIST, "default_member_action", "hold")
    store.set_list_option(LIST, "emergency", True)
    store.set_list_option(LIST, "discard_these_nonmembers", ["^spam", "Eve@example.org"])
    policy = backend.list_facts("Dev@Example.org", []).policy
    assert policy == model.ListPolicy(
        address=LIST, default_member_action="hold", default_nonmember_action="hold",
        emergency=True, discard_these_nonmembers=("^spam", "Eve@example.org"),
    )


def test_list_facts_members_and_nonmembers(store: SqliteStore, backend: SqliteBackend) -> None:
    store.add_members(LIST, ["plain@example.org"])
    store.add_members(LIST, ["mod@example.org"], moderation_action="hold")
    store.add_members(LIST, ["bot@example.net"], role="nonmember", moderation_action="accept")
    store.add_members(LIST, ["rec@example.net"], role="nonmember")
    # a member who also has a nonmember record: both facts are reported
    store.add_members(LIST, ["both@example.org"])
    store.add_members(LIST, ["both@example.org"], role="nonmember", moderation_action="discard")
    senders = ["Plain@Example.org", "mod@example.org", "bot@example.net", "rec@example.net",
               "stranger@example.com", "both@example.org", "plain@example.org"]
    result = backend.list_facts(LIST, senders)
    assert [f.address for f in result.senders] == [s.lower() for s in senders]
    f = {x.address: x for x in result.senders}
    assert f["plain@example.org"] == model.SenderFacts("plain@example.org", is_member=True)
    assert f["mod@example.org"].is_member and f["mod@example.org"].member_action == "hold"
    assert not f["bot@example.net"].is_member
    assert f["bot@example.net"].nonmember_action == "accept"
    assert f["rec@example.net"] == model.SenderFacts("rec@example.net")
    assert f["stranger@example.com"] == model.SenderFacts("stranger@example.com")
    assert f["both@example.org"].is_member
    assert f["both@example.org"].nonmember_action == "discard"


def test_members_of_other_lists_do_not_leak(store: SqliteStore, backend: SqliteBackend) -> None:
    store.create_list("other@example.org")
    store.add_members("other@example.org", ["x@example.org"], moderation_action="reject")
    assert facts(backend, "x@example.org")["x@example.org"] == model.SenderFacts("x@example.org")


def test_bans_exact_and_patterns(store: SqliteStore, backend: SqliteBackend) -> None:
    store.create_list("other@example.org")
    store.add_ban("listban@example.org", list=LIST)
    store.add_ban("global@example.org")
    store.add_ban("Mixed@example.org")  # exact, mixed case: never matches (as in Mailman)
    store.add_ban("^.*@SPAM\\.example$", list=LIST)  # patterns are case-insensitive
    store.add_ban("^troll\\d+@")
    store.add_ban("elsewhere@example.org", list="other@example.org")
    store.add_ban("^.*@other-only\\.example$", list="other@example.org")
    f = facts(backend, "listban@example.org", "global@example.org", "mixed@example.org",
              "joe@spam.example", "troll42@example.net", "troll@example.net",
              "elsewhere@example.org", "x@other-only.example", "fine@example.org")
    banned = {a for a, x in f.items() if x.banned}
    assert banned == {"listban@example.org", "global@example.org", "joe@spam.example",
                      "troll42@example.net"}


def test_bad_ban_regexp_is_skipped(cfg: config.Config, store: SqliteStore,
                                   backend: SqliteBackend) -> None:
    # the store refuses bad patterns, so plant one as a hand edit (or old data) would
    raw_execute(cfg, "INSERT INTO bans (list, entry) VALUES (?, '^(')", (LIST,))
    raw_execute(cfg, "INSERT INTO bans (list, entry) VALUES (NULL, '^[')")
    store.add_ban("^bad@")
    f = facts(backend, "bad@example.org", "good@example.org")
    assert f["bad@example.org"].banned
    assert not f["good@example.org"].banned


def test_member_of_referenced_lists(store: SqliteStore, backend: SqliteBackend) -> None:
    store.create_list("announce@example.org")
    store.create_list("staff@example.org")
    store.add_members("announce@example.org", ["x@example.org", "y@example.org"])
    store.add_members("staff@example.org", ["x@example.org"])
    store.add_members("staff@example.org", ["y@example.org"], role="nonmember")
    store.set_list_option(LIST, "accept_these_nonmembers", [
        "@Announce@Example.org", "@staff@example.org", "@missing@example.org", "z@example.org",
    ])
    f = facts(backend, "x@example.org", "y@example.org", "z@example.org")
    assert f["x@example.org"].member_of == {"announce@example.org", "staff@example.org"}
    assert f["y@example.org"].member_of == {"announce@example.org"}
    assert f["z@example.org"].member_of == frozenset()
    assert not f["x@example.org"].is_member


def test_unknown_list_is_a_backend_error(backend: SqliteBackend) -> None:
    with pytest.raises(model.BackendError, match=r"no such list: nope@example\.org"):
        backend.list_facts("nope@example.org", ["a@example.org"])
    # the connection survived: the next question is answered
    assert backend.find_list(LIST) == LIST


# -- the file going away, rotting or being replaced


def test_missing_database_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.sqlite"
    b = SqliteBackend(str(path))
    with pytest.raises(model.BackendError) as e:
        b.find_list(LIST)
    assert str(e.value) == (f"sqlite {path}: the store is missing (no such file); restore "
                            "it from a backup or an export (listgate lists import), or "
                            "create an empty one with listgate db init")
    assert not path.exists()


def test_uninitialised_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    with pytest.raises(model.BackendError, match="not an initialised listgate database"):
        SqliteBackend(str(path)).find_list(LIST)


def test_backend_cannot_write(cfg: config.Config, store: SqliteStore,
                              backend: SqliteBackend) -> None:
    with pytest.raises(model.BackendError, match=r"readonly|read-only"), \
            backend._read() as conn:
        conn.execute("DELETE FROM lists")
    assert backend.find_list(LIST) == LIST


def test_connections_move_between_threads(store: SqliteStore, backend: SqliteBackend) -> None:
    """A pooled connection is handed to whichever thread asks next (libmilter runs
    callbacks on C threads whose Python identities get recycled, which defeated
    per-thread connections; the end-to-end tests showed it), so it must work anywhere."""
    import threading

    results: list[object] = []

    def lookup() -> None:
        try:
            results.append(backend.find_list(LIST))
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            results.append(e)

    for _ in range(20):
        t = threading.Thread(target=lookup)
        t.start()
        t.join()
        lookup()
    assert results == [LIST] * 40


@SQLITE_ONLY
def test_replaced_by_garbage(cfg: config.Config, store: SqliteStore, backend: SqliteBackend,
                             tmp_path: Path) -> None:
    assert backend.find_list(LIST) == LIST
    store.close()
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not an SQLite database, not at all. " * 200)
    os.replace(junk, cfg.sqlite.path)
    with pytest.raises(model.BackendError) as e:
        backend.list_facts(LIST, ["a@example.org"])
    assert str(e.value) == f"sqlite {cfg.sqlite.path}: file is not a database"
    assert "\n" not in str(e.value)
    with pytest.raises(model.BackendError, match="file is not a database"):
        backend.find_list(LIST)


@SQLITE_ONLY
def test_replaced_by_a_new_database(cfg: config.Config, store: SqliteStore,
                                    backend: SqliteBackend, tmp_path: Path) -> None:
    store.add_members(LIST, ["old@example.org"])
    assert facts(backend, "old@example.org")["old@example.org"].is_member
    new_path = tmp_path / "restored.sqlite"
    with SqliteStore(str(new_path)) as new:
        new.init()
        new.create_list(LIST)
        new.create_list("new@example.org")
        new.add_members(LIST, ["new@example.org"])
    os.replace(new_path, cfg.sqlite.path)  # the admin's "mv restored.sqlite db.sqlite"
    assert backend.find_list("new@example.org") == "new@example.org"
    f = facts(backend, "old@example.org", "new@example.org")
    assert not f["old@example.org"].is_member
    assert f["new@example.org"].is_member


@SQLITE_ONLY
def test_deleted_then_recreated(cfg: config.Config, store: SqliteStore,
                                backend: SqliteBackend) -> None:
    assert backend.find_list(LIST) == LIST
    store.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(cfg.sqlite.path + suffix):
            os.unlink(cfg.sqlite.path + suffix)
    with pytest.raises(model.BackendError, match="the store is missing"):
        backend.find_list(LIST)
    with SqliteStore(cfg.sqlite.path) as s:
        s.init()
        s.create_list("again@example.org")
    assert backend.find_list("again@example.org") == "again@example.org"
    assert backend.find_list(LIST) is None


def test_close_then_use_again(store: SqliteStore, backend: SqliteBackend) -> None:
    assert backend.find_list(LIST) == LIST
    backend.close()
    assert backend.find_list(LIST) == LIST


def test_concurrent_readers_while_the_cli_writes(cfg: config.Config, store: SqliteStore,
                                                 backend: SqliteBackend) -> None:
    store.add_members(LIST, [f"seed{i}@example.org" for i in range(50)])
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = [0] * 8
    expected: dict[str, str] = {}

    def reader(n: int) -> None:
        try:
            while not stop.is_set():
                result = backend.list_facts(LIST, ["seed1@example.org", f"w{n}@example.org"])
                assert result.senders[0].is_member
                assert backend.find_list(LIST) == LIST
                reads[n] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def writer() -> None:
        try:
            with open_store(cfg) as w:
                for i in range(30):
                    action = model.ACTIONS[i % len(model.ACTIONS)]
                    w.add_members(LIST, [f"w{i % 8}@example.org"], moderation_action=action)
                    expected[f"w{i % 8}@example.org"] = action
                    w.set_list_option(LIST, "emergency", i % 2 == 0)
                    if i % 3 == 0:
                        w.remove_members(LIST, [f"w{(i + 1) % 8}@example.org"])
                        expected.pop(f"w{(i + 1) % 8}@example.org", None)
                    w.add_ban(f"ban{i}@example.org")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join(timeout=60)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert all(reads), reads
    # every thread sees the final state
    final = facts(backend, *(f"w{n}@example.org" for n in range(8)), "ban29@example.org")
    assert {a: f.member_action for a, f in final.items() if f.is_member} == expected
    assert final["ban29@example.org"].banned
    assert backend.list_facts(LIST, []).policy.emergency is False  # i = 29 is odd
    if cfg.lists.backend == "sqlite":
        conn = sqlite3.connect(cfg.sqlite.path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


# -- several writers, schema upgrades: both engines


def test_concurrent_cli_writes_are_safe(cfg: config.Config, store: SqliteStore,
                                        backend: SqliteBackend) -> None:
    """Four CLIs at once (on two hosts, with PostgreSQL), two of them importing the
    same list: every write is one transaction, writers queue, nothing is lost."""
    doc = {"version": 2, "lists": [{"address": "shared@example.org",
                                    "members": [{"address": f"s{i}@example.org"}
                                                for i in range(200)]}]}
    errors: list[BaseException] = []

    def run(work: Callable[[SqliteStore], None]) -> None:
        try:
            with open_store(cfg) as s:
                work(s)
        except BaseException as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    def adder(prefix: str) -> Callable[[SqliteStore], None]:
        def work(s: SqliteStore) -> None:
            for i in range(40):
                s.add_members(LIST, [f"{prefix}{i}@example.org"])
        return work

    def importer(s: SqliteStore) -> None:
        for _ in range(5):
            s.import_json(doc)

    threads = [threading.Thread(target=run, args=(w,))
               for w in (adder("a"), adder("b"), importer, importer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert {a for a, _ in store.members(LIST)} == {
        f"{p}{i}@example.org" for p in "ab" for i in range(40)}
    assert len(store.members("shared@example.org")) == 200
    assert backend.list_facts("shared@example.org", ["s7@example.org"]).senders[0].is_member


def test_upgrade_from_schema_version_1(cfg: config.Config, store: SqliteStore,
                                       backend: SqliteBackend) -> None:
    """`db upgrade` on a version 1 store (sender rules only): the chain settings appear
    at Mailman's defaults, members stay; the same command on both engines."""
    from listgate import listsettings
    from listgate.backends.sqlite import _V1_FIELDS

    store.add_members(LIST, ["m@example.org"], moderation_action="hold")
    store.set_list_option(LIST, "max_message_size", 99)
    store.close()
    backend.close()
    for name in listsettings.LIST_FIELD_NAMES:
        if name not in _V1_FIELDS:
            raw_execute(cfg, f"ALTER TABLE lists DROP COLUMN {name}")
    raw_execute(cfg, "DROP TABLE site")
    raw_execute(cfg, "PRAGMA user_version = 1" if cfg.lists.backend == "sqlite"
                else "UPDATE listgate_schema SET version = 1")
    with pytest.raises(model.BackendError, match="schema version 1, expected 2"):
        open_backend(cfg).find_list(LIST)
    with open_store(cfg) as s:
        with pytest.raises(StoreError, match="run 'listgate db upgrade'"):
            s.list_lists()
        assert s.upgrade() == (1, SCHEMA_VERSION)
        assert s.upgrade() == (SCHEMA_VERSION, SCHEMA_VERSION)
        assert s.get_list(LIST).max_message_size == 40
        assert s.members(LIST) == [("m@example.org", "hold")]
    b = open_backend(cfg)
    assert b.list_facts(LIST, ["m@example.org"]).senders[0].member_action == "hold"
    b.close()
