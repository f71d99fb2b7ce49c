"""listgate's own membership store: one SQLite file modelled on Mailman 3's policy data.

Two classes share one schema:

* :class:`SqliteStore` is the read/write API behind ``listgate db|lists|members|bans``
  (:mod:`listgate.admin`).  Every write is one transaction, validated before it
  touches the file, so a typo never leaves a half-applied change.
* :class:`SqliteBackend` is what the daemon queries.  It opens the file read-only
  (it can never create or modify it), keeps one connection per thread, and stats
  the path before every query so that a file replaced under it (``mv restored.db
  listgate.db``) is picked up and a vanished or corrupt one becomes a
  :class:`~listgate.model.BackendError` -- a tempfail -- rather than a wrong answer.
  It deliberately caches nothing: the engine caches above the backend.

The SQL of both classes is also that of the same store on PostgreSQL
(:mod:`listgate.backends.postgresql`, whose classes derive from these): keep it to
what both engines take (``ON CONFLICT``, no ``IN ()``), or give the engines their own.

The database runs in WAL mode so that the daemon's readers never block the admin's
writes and vice versa.  WAL needs the ``-wal``/``-shm`` files next to the database,
so the daemon's user needs write access to the directory (or to those files).
After every write the store truncates the WAL (``wal_checkpoint(TRUNCATE)``), so
the file on disk is complete on its own: copying it, or replacing it with ``mv``,
does not leave committed data behind in a ``-wal`` file.  ``listgate lists import``
remains the gentlest way to restore, as it needs no file juggling at all.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`):

* ``lists``: posting address (lowercased ``name@domain``, primary key), then one
  column per setting of :data:`listgate.listsettings.LIST_FIELDS` (the two default
  actions, ``emergency``, the four ``*_these_nonmembers`` lists, the approval password
  hashes, header rules, size and recipient limits...); lists are JSON arrays (order
  matters: Mailman checks them in order).
* ``site``: the site-wide settings (``header_checks``, ``jump_chain``...) as
  (key, JSON value) rows; a missing row is the setting's default.
* ``members``: (list, address, role ``member``|``nonmember``, moderation_action
  NULL or an action); primary key (list, address, role), which is also the index
  for lookups by (list, address).  Addresses are stored lowercased.
* ``bans``: (list NULL = global, entry); an entry is an exact address or a
  ``^regexp``.  Exact entries are stored as given, like Mailman does, so a
  mixed-case exact ban never matches (senders are compared lowercased).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from listgate import listsettings, model
from listgate.config import Config
from listgate.listsettings import (
    validate_action,
    validate_address,
    validate_nonmember_entry,
    validate_regexp,
)
from listgate.verdict import is_banned

__all__ = ["SCHEMA_VERSION", "SqliteBackend", "SqliteStore", "StoreError", "validate_action",
           "validate_address", "validate_ban_entry", "validate_nonmember_entry"]

#: bumped whenever the DDL changes; stored in ``PRAGMA user_version``.  1: sender
#: rules only; 2: every setting of the posting chain, and the ``site`` table
SCHEMA_VERSION = 2

#: the version of the JSON document written by :meth:`SqliteStore.export_json`;
#: version 1 documents (no chain settings, no ``site``) are still read
EXPORT_VERSION = 2

ROLES = ("member", "nonmember")

#: the keys :meth:`SqliteStore.set_list_option` accepts
LIST_OPTIONS = listsettings.LIST_FIELD_NAMES

#: version 1's columns after the address (what ``db upgrade`` finds)
_V1_FIELDS = LIST_OPTIONS[:7]

_ACTIONS_SQL = ", ".join(f"'{a}'" for a in model.ACTIONS)

_DDL = f"""
CREATE TABLE lists (
    address TEXT PRIMARY KEY NOT NULL,
    {listsettings.list_ddl()}
);
-- the primary key doubles as the index for lookups by (list, address)
CREATE TABLE members (
    list TEXT NOT NULL REFERENCES lists(address) ON DELETE CASCADE,
    address TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('member', 'nonmember')),
    moderation_action TEXT
        CHECK (moderation_action IS NULL OR moderation_action IN ({_ACTIONS_SQL})),
    PRIMARY KEY (list, address, role)
) WITHOUT ROWID;
CREATE TABLE bans (
    list TEXT REFERENCES lists(address) ON DELETE CASCADE,
    entry TEXT NOT NULL
);
CREATE UNIQUE INDEX bans_list_entry ON bans(list, entry) WHERE list IS NOT NULL;
CREATE UNIQUE INDEX bans_global_entry ON bans(entry) WHERE list IS NULL;
CREATE TABLE site (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
"""

_LIST_COLUMNS = "address, " + ", ".join(LIST_OPTIONS)


class StoreError(Exception):
    """An operational problem with the store (missing database, unknown list, ...).

    Validation problems (a bad address or action) are :class:`ValueError` instead,
    so the CLI can tell "you typed it wrong" (exit 2) from "it is not there" (exit 1).
    """


class ListNotFound(StoreError):
    """The named list does not exist."""


class ListExists(StoreError):
    """``create_list`` for a list that already exists."""


# -- validation (listgate.listsettings has the settings' own)


def validate_ban_entry(value: Any) -> str:
    """Check a ban entry: ``^regexp`` or an exact address (kept as given, like Mailman)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"invalid ban entry {value!r}: expected a non-empty string")
    if value.startswith("^"):
        return validate_regexp(value, "ban entry")
    validate_address(value, "ban entry")
    return value


def _role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"invalid role {role!r}: expected member or nonmember")
    return role


@functools.lru_cache(maxsize=256)
def _policy(row: Sequence[Any]) -> model.ListPolicy:
    """A ``lists`` row (in ``_LIST_COLUMNS`` order) -> ListPolicy; ValueError on bad JSON.

    Remembered per row (a tuple: the same row means the same policy), as the row is
    read again with every sender the facts cache has not seen."""
    return listsettings.policy_from_row(row[0], row[1:])


def _site(rows: Iterable[tuple[str, str]]) -> model.SiteFacts:
    """The ``site`` table's (key, JSON value) rows -> SiteFacts (unknown keys ignored:
    a newer listgate may have written them)."""
    values = {}
    for key, raw in rows:
        try:
            f = listsettings.site_field(key)
            values[key] = f.kind.check(json.loads(raw), f"site {key}")
        except ValueError:
            continue
    return listsettings.site_from_values(values)


@functools.lru_cache(maxsize=16)
def _site_cached(rows: tuple[tuple[str, str], ...]) -> model.SiteFacts:
    return _site(rows)


def _uri(path: str, mode: str) -> str:
    """A ``file:`` URI for ``path``; quoted so that ``?``, ``#`` or ``%`` in a path are safe."""
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Upgrade the schema from ``version`` inside the caller's transaction.  1 -> 2: the
    chain settings as new columns at Mailman 3's defaults, and the ``site`` table."""
    if version < 2:
        ddl = {f.name: f.ddl(listsettings.default(f.name)) for f in listsettings.LIST_FIELDS}
        for name in LIST_OPTIONS:
            if name not in _V1_FIELDS:
                conn.execute(f"ALTER TABLE lists ADD COLUMN {ddl[name]}")
        conn.execute("CREATE TABLE IF NOT EXISTS site (key TEXT PRIMARY KEY NOT NULL, "
                     "value TEXT NOT NULL)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class SqliteStore:
    """Read/write access for the admin CLI.  One connection; not shared between threads.

    Every public method that writes runs in a single ``BEGIN IMMEDIATE`` transaction
    and validates all of its input first, raising :class:`ValueError` naming the
    offending value.  Operations on a list that does not exist raise
    :class:`ListNotFound`; opening a database that does not exist raises
    :class:`StoreError` (only :meth:`init` creates one).
    """

    #: the engine's own exceptions (the CLI reports them as operational errors)
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: str, busy_timeout: float = 2.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> SqliteStore:
        return cls(cfg.sqlite.path, cfg.sqlite.busy_timeout)

    # -- connection handling

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def exists(self) -> bool:
        """Whether the database file exists (read commands refuse to create it)."""
        return os.path.exists(self.path)

    def _open(self, mode: str) -> sqlite3.Connection:
        conn = sqlite3.connect(_uri(self.path, mode), uri=True, timeout=self.busy_timeout,
                               isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.exists():
                raise StoreError(self._missing())
            conn = self._open("rw")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                conn.close()
                raise StoreError(self._version_problem(version))
            self._conn = conn
        return self._conn

    def _missing(self) -> str:
        return (f"no database at {self.path}: if it was lost, restore it (from a backup, or "
                f"'listgate db init' then 'listgate lists import' of an export); on a new "
                f"host, create it with 'listgate db init'")

    def _version_problem(self, version: int) -> str:
        if version == 0:
            return f"{self.path} is not an initialised listgate database (run 'listgate db init')"
        if version < SCHEMA_VERSION:
            return (f"{self.path} has schema version {version}; run 'listgate db upgrade' "
                    f"to bring it to version {SCHEMA_VERSION}")
        return (f"{self.path} has schema version {version}; this listgate understands "
                f"version {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        """The file's ``PRAGMA user_version`` (0 = not a listgate database)."""
        if not self.exists():
            raise StoreError(self._missing())
        conn = self._open("ro")
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()

    def upgrade(self) -> tuple[int, int]:
        """Bring an existing store to :data:`SCHEMA_VERSION`, in one transaction (the
        daemon keeps reading the old schema until the commit, then the new one).
        Returns (old version, new version); never creates a database."""
        old = self.schema_version()
        if old == 0:
            raise StoreError(self._version_problem(0))
        if old > SCHEMA_VERSION:
            raise StoreError(self._version_problem(old))
        if old < SCHEMA_VERSION:
            self.close()
            conn = self._open("rw")
            try:
                conn.execute("BEGIN IMMEDIATE")
                if int(conn.execute("PRAGMA user_version").fetchone()[0]) == old:
                    _migrate(conn, old)
                conn.execute("COMMIT")
            finally:
                conn.close()
        return old, SCHEMA_VERSION

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the WAL is truncated afterwards (see module docstring)."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        with contextlib.suppress(sqlite3.OperationalError):  # busy: the next write retries
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def init(self) -> bool:
        """Create the directory, the file and the schema; switch to WAL.  Idempotent; an
        older schema is upgraded (:meth:`upgrade`).

        Returns True if the schema was created, False if it was already there.
        """
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self.close()
        conn = self._open("rwc")
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                created = False
            elif 0 < version < SCHEMA_VERSION:
                _migrate(conn, version)
                conn.execute("COMMIT")
                created = False
            elif version == 0:
                tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
                if tables:
                    conn.execute("ROLLBACK")
                    raise StoreError(f"{self.path} holds tables but is not a listgate database")
                for stmt in _DDL.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
                created = True
            else:
                conn.execute("ROLLBACK")
                raise StoreError(self._version_problem(version))
            # persistent; outside a transaction by necessity
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return created

    # -- lists

    def _require_list(self, conn: sqlite3.Connection, address: str) -> str:
        addr = validate_address(address, "list address")
        if conn.execute("SELECT 1 FROM lists WHERE address = ?", (addr,)).fetchone() is None:
            raise ListNotFound(f"no such list: {addr}")
        return addr

    def create_list(self, address: str, default_member_action: str = "defer",
                    default_nonmember_action: str = "hold",
                    emergency: bool = False) -> model.ListPolicy:
        """Create a list with Mailman 3's defaults (or the given ones); ListExists if present."""
        addr = validate_address(address, "list address")
        dma = validate_action(default_member_action, "default_member_action")
        dna = validate_action(default_nonmember_action, "default_nonmember_action")
        emer = listsettings.list_field("emergency").kind.check(emergency, "emergency")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM lists WHERE address = ?", (addr,)).fetchone():
                raise ListExists(f"list {addr} already exists")
            conn.execute(
                "INSERT INTO lists (address, default_member_action, default_nonmember_action,"
                " emergency) VALUES (?, ?, ?, ?)",
                (addr, dma, dna, int(emer)),
            )
        return self.get_list(addr)

    def delete_list(self, address: str) -> None:
        """Delete a list with its members, nonmembers and list bans."""
        with self._write() as conn:
            addr = self._require_list(conn, address)
            conn.execute("DELETE FROM members WHERE list = ?", (addr,))
            conn.execute("DELETE FROM bans WHERE list = ?", (addr,))
            conn.execute("DELETE FROM lists WHERE address = ?", (addr,))

    def get_list(self, address: str) -> model.ListPolicy:
        """The list's policy; ListNotFound if there is no such list."""
        addr = validate_address(address, "list address")
        row = self._connection().execute(
            f"SELECT {_LIST_COLUMNS} FROM lists WHERE address = ?", (addr,)
        ).fetchone()
        if row is None:
            raise ListNotFound(f"no such list: {addr}")
        return _policy(row)

    def list_lists(self) -> list[str]:
        """All posting addresses, sorted."""
        rows = self._connection().execute("SELECT address FROM lists ORDER BY address")
        return [r[0] for r in rows]

    def set_list_option(self, address: str, key: str, value: Any) -> model.ListPolicy:
        """Set one option (see :data:`LIST_OPTIONS`), validated as the import validates
        it (:mod:`listgate.listsettings`); lists are replaced whole."""
        f = listsettings.list_field(key)
        stored = f.kind.to_sql(f.kind.check(value, key))
        with self._write() as conn:
            addr = self._require_list(conn, address)
            conn.execute(f"UPDATE lists SET {key} = ? WHERE address = ?", (stored, addr))
        return self.get_list(addr)

    # -- site-wide settings

    def site(self) -> model.SiteFacts:
        """The site-wide settings (defaults where none was set)."""
        return _site(self._connection().execute("SELECT key, value FROM site"))

    def set_site_option(self, key: str, value: Any) -> model.SiteFacts:
        """Set one site-wide setting (``header_checks``, ``jump_chain``...)."""
        f = listsettings.site_field(key)
        checked = f.kind.check(value, f"site {key}")
        with self._write() as conn:
            conn.execute("INSERT INTO site (key, value) VALUES (?, ?) ON CONFLICT (key) DO "
                         "UPDATE SET value = excluded.value", (key, json.dumps(checked)))
        return self.site()

    # -- members

    def add_members(self, address: str, addresses: Iterable[str], role: str = "member",
                    moderation_action: str | None = None) -> int:
        """Add (or update) members or nonmembers; returns how many addresses were given.

        An upsert: an existing row gets ``moderation_action`` as given (None = the
        list default for members, "no record action" for nonmembers).
        """
        _role(role)
        action = None if moderation_action is None else validate_action(
            moderation_action, "moderation_action")
        addrs = list(dict.fromkeys(validate_address(a) for a in addresses))
        with self._write() as conn:
            lst = self._require_list(conn, address)
            conn.executemany(
                "INSERT INTO members (list, address, role, moderation_action) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (list, address, role) DO UPDATE"
                " SET moderation_action = excluded.moderation_action",
                [(lst, a, role, action) for a in addrs],
            )
        return len(addrs)

    def remove_members(self, address: str, addresses: Iterable[str],
                       role: str = "member") -> int:
        """Remove members or nonmembers; returns how many rows were actually removed."""
        _role(role)
        addrs = list(dict.fromkeys(validate_address(a) for a in addresses))
        removed = 0
        with self._write() as conn:
            lst = self._require_list(conn, address)
            for a in addrs:
                cur = conn.execute(
                    "DELETE FROM members WHERE list = ? AND address = ? AND role = ?",
                    (lst, a, role),
                )
                removed += cur.rowcount
        return removed

    def members(self, address: str, role: str = "member") -> list[tuple[str, str | None]]:
        """(address, moderation_action) pairs of the given role, sorted by address."""
        _role(role)
        conn = self._connection()
        lst = self._require_list(conn, address)
        rows = conn.execute(
            "SELECT address, moderation_action FROM members WHERE list = ? AND role = ?"
            " ORDER BY address",
            (lst, role),
        )
        return [(r[0], r[1]) for r in rows]

    def counts(self, address: str) -> dict[str, int]:
        """Number of members, nonmembers and list bans (for ``lists show``)."""
        conn = self._connection()
        lst = self._require_list(conn, address)
        out = {"member_count": 0, "nonmember_count": 0}
        for role, n in conn.execute(
            "SELECT role, count(*) FROM members WHERE list = ? GROUP BY role", (lst,)
        ):
            out[f"{role}_count"] = n
        out["ban_count"] = conn.execute(
            "SELECT count(*) FROM bans WHERE list = ?", (lst,)
        ).fetchone()[0]
        return out

    # -- bans (``list`` None = global, as in Mailman)

    def add_ban(self, entry: str, list: str | None = None) -> bool:
        """Ban an address or ``^pattern``; returns False if it was already banned."""
        e = validate_ban_entry(entry)
        with self._write() as conn:
            lst = None if list is None else self._require_list(conn, list)
            cur = conn.execute("INSERT INTO bans (list, entry) VALUES (?, ?)"
                               " ON CONFLICT DO NOTHING", (lst, e))
            return cur.rowcount > 0

    def remove_ban(self, entry: str, list: str | None = None) -> bool:
        """Lift a ban; returns False if there was no such ban."""
        with self._write() as conn:
            lst = None if list is None else self._require_list(conn, list)
            cur = conn.execute("DELETE FROM bans WHERE list IS ? AND entry = ?", (lst, entry))
            return cur.rowcount > 0

    def bans(self, list: str | None = None) -> list[str]:
        """The ban entries of one list, or the global ones (``list`` None), sorted."""
        conn = self._connection()
        lst = None if list is None else self._require_list(conn, list)
        rows = conn.execute("SELECT entry FROM bans WHERE list IS ? ORDER BY entry", (lst,))
        return [r[0] for r in rows]

    # -- JSON export / import (schema documented in listgate.admin)

    def export_json(self) -> dict[str, Any]:
        """The whole store as a JSON-able dict, sorted so that exports diff cleanly."""
        conn = self._connection()
        conn.execute("BEGIN")  # one snapshot, even while someone else writes
        try:
            lists = []
            for row in conn.execute(f"SELECT {_LIST_COLUMNS} FROM lists ORDER BY address"):
                lists.append({**listsettings.policy_to_json(_policy(row)),
                              "members": [], "nonmembers": []})
            by_addr = {d["address"]: d for d in lists}
            for lst, addr, role, action in conn.execute(
                "SELECT list, address, role, moderation_action FROM members"
                " ORDER BY list, role, address"
            ):
                by_addr[lst][f"{role}s"].append({"address": addr, "moderation_action": action})
            bans = [
                {"list": lst, "entry": entry}
                for lst, entry in conn.execute(
                    "SELECT list, entry FROM bans ORDER BY list IS NOT NULL, list, entry"
                )
            ]
            site = listsettings.site_to_json(_site(conn.execute("SELECT key, value FROM site")))
        finally:
            conn.execute("ROLLBACK")
        return {"version": EXPORT_VERSION, "site": site, "lists": lists, "bans": bans}

    def import_json(self, data: Any, prune: bool = False) -> dict[str, int]:
        """Sync the store with an export document; idempotent.

        Each list in ``data`` is replaced entirely (settings, members, nonmembers).
        With ``prune``, lists absent from ``data`` are deleted.  If ``data`` has a
        ``bans`` key, its bans replace the global bans and those of the lists it
        names; without the key bans are left alone.  A ``site`` key sets the site-wide
        settings it names.  Everything is validated before anything is written, and
        the whole import is one transaction.  Returns counts: lists, members,
        nonmembers, bans, pruned.
        """
        lists, bans, site = _parse_document(data)
        names = [d["address"] for d in lists]
        summary = {"lists": len(lists), "members": 0, "nonmembers": 0, "bans": 0, "pruned": 0}
        updates = ", ".join(f"{k} = excluded.{k}" for k in LIST_OPTIONS)
        with self._write() as conn:
            if prune:
                keep = set(names)
                existing = [r[0] for r in conn.execute("SELECT address FROM lists")]
                gone = [a for a in existing if a not in keep]
                for a in gone:
                    conn.execute("DELETE FROM members WHERE list = ?", (a,))
                    conn.execute("DELETE FROM bans WHERE list = ?", (a,))
                    conn.execute("DELETE FROM lists WHERE address = ?", (a,))
                summary["pruned"] = len(gone)
            for d in lists:
                conn.execute(
                    f"INSERT INTO lists ({_LIST_COLUMNS}) VALUES "
                    f"({_placeholders(1 + len(LIST_OPTIONS))})"
                    f" ON CONFLICT (address) DO UPDATE SET {updates}",
                    (d["address"], *(listsettings.to_sql(k, d[k]) for k in LIST_OPTIONS)),
                )
                conn.execute("DELETE FROM members WHERE list = ?", (d["address"],))
                for role in ROLES:
                    rows = [(d["address"], a, role, act) for a, act in d[f"{role}s"].items()]
                    conn.executemany(
                        "INSERT INTO members (list, address, role, moderation_action)"
                        " VALUES (?, ?, ?, ?)",
                        rows,
                    )
                    summary[f"{role}s"] += len(rows)
            if bans is not None:
                conn.execute("DELETE FROM bans WHERE list IS NULL")
                for name in names:
                    conn.execute("DELETE FROM bans WHERE list = ?", (name,))
                conn.executemany("INSERT INTO bans (list, entry) VALUES (?, ?) "
                                 "ON CONFLICT DO NOTHING", bans)
                summary["bans"] = len(bans)
            for key, value in site.items():
                conn.execute("INSERT INTO site (key, value) VALUES (?, ?) ON CONFLICT (key) DO "
                             "UPDATE SET value = excluded.value", (key, json.dumps(value)))
        return summary


_LIST_KEYS = {"address", *LIST_OPTIONS, "members", "nonmembers"}


def _parse_document(data: Any) -> tuple[list[dict[str, Any]], list[tuple[str | None, str]] | None,
                                        dict[str, Any]]:
    """Validate an export document; return normalised lists, bans (None = no ``bans``
    key) and site settings."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with 'version' and 'lists'")
    unknown = set(data) - {"version", "lists", "bans", "site"}
    if unknown:
        raise ValueError(f"unknown top-level key {sorted(unknown)[0]!r}")
    if data.get("version") not in (1, EXPORT_VERSION):
        raise ValueError(f"unsupported version {data.get('version')!r}: expected 1 or "
                         f"{EXPORT_VERSION}")
    site = listsettings.check_site(data.get("site", {}))
    raw_lists = data.get("lists")
    if not isinstance(raw_lists, list):
        raise ValueError("'lists' must be an array")
    lists: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_lists):
        if not isinstance(raw, dict):
            raise ValueError(f"lists[{i}]: expected an object")
        unknown = set(raw) - _LIST_KEYS
        if unknown:
            raise ValueError(f"lists[{i}]: unknown key {sorted(unknown)[0]!r}")
        if "address" not in raw:
            raise ValueError(f"lists[{i}]: missing 'address'")
        addr = validate_address(raw["address"], "list address")
        if addr in seen:
            raise ValueError(f"list {addr} appears twice")
        seen.add(addr)
        d: dict[str, Any] = {"address": addr, **listsettings.check_list(raw, addr)}
        for role in ROLES:
            key = f"{role}s"
            people = raw.get(key, [])
            if not isinstance(people, list):
                raise ValueError(f"{addr} {key}: expected an array of objects")
            out: dict[str, str | None] = {}
            for m in people:
                if not isinstance(m, dict) or "address" not in m or set(m) - {
                        "address", "moderation_action"}:
                    raise ValueError(
                        f"{addr} {key}: expected {{\"address\": ..., \"moderation_action\": ...}},"
                        f" got {m!r}")
                a = validate_address(m["address"], f"{addr} {role} address")
                act = m.get("moderation_action")
                out[a] = None if act is None else validate_action(
                    act, f"{addr} {role} {a} moderation_action")
            d[key] = out
        lists.append(d)
    if "bans" not in data:
        return lists, None, site
    raw_bans = data["bans"]
    if not isinstance(raw_bans, list):
        raise ValueError("'bans' must be an array")
    bans: list[tuple[str | None, str]] = []
    for b in raw_bans:
        if not isinstance(b, dict) or "entry" not in b or set(b) - {"list", "entry"}:
            raise ValueError(f"bans: expected {{\"list\": ..., \"entry\": ...}}, got {b!r}")
        lst = b.get("list")
        if lst is not None:
            lst = validate_address(lst, "ban list")
            if lst not in seen:
                raise ValueError(f"ban {b['entry']!r} is for list {lst}, which is not in the file")
        bans.append((lst, validate_ban_entry(b["entry"])))
    return lists, bans, site


# -- the daemon's side


#: the BackendError cause when the database file is gone (a bad restore, a wrong path)
STORE_MISSING = ("the store is missing (no such file); restore it from a backup or an "
                 "export (listgate lists import), or create an empty one with "
                 "listgate db init")


def _cause(exc: BaseException) -> str:
    """A one-line reason: ``No such file or directory``, ``file is not a database``."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class SqliteBackend(model.Backend):
    """Read-only pooled connections to the store; safe while the CLI writes.

    A query borrows an idle connection from a small pool and gives it back, so one
    connection is never used by two threads at once.  (Per-thread connections do not
    work under libmilter: its callbacks run on C threads whose Python thread states
    are recycled, so a ``threading.local`` can hand one thread another's connection.)
    Connections are opened with ``mode=ro`` so a missing file is an error and never a
    new empty database.  Before each query the path is stat'ed: a different
    (st_dev, st_ino) means the file was replaced, and connections to the old file are
    closed instead of reused.  A failing connection is closed and BackendError
    ``sqlite PATH: cause`` raised.
    """

    name = "sqlite"
    #: idle connections kept; more are opened under load and closed when returned
    POOL_SIZE = 16

    def __init__(self, path: str, busy_timeout: float = 2.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._uri = _uri(path, "ro")
        self._lock = threading.Lock()
        #: idle connections with the (st_dev, st_ino) of the file they were opened on
        self._idle: list[tuple[sqlite3.Connection, tuple[int, int]]] = []

    # -- connections

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._uri, uri=True, timeout=self.busy_timeout,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except BaseException:
            conn.close()
            raise
        if version != SCHEMA_VERSION:
            conn.close()
            what = "not an initialised listgate database" if version == 0 else (
                f"schema version {version}, expected {SCHEMA_VERSION}")
            raise self._error(what)
        return conn

    def _checkout(self, ident: tuple[int, int]) -> sqlite3.Connection:
        stale = []
        with self._lock:
            while self._idle:
                conn, conn_ident = self._idle.pop()
                if conn_ident == ident:
                    break
                stale.append(conn)
            else:
                conn = None
        for old in stale:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        return conn if conn is not None else self._open()

    def _checkin(self, conn: sqlite3.Connection, ident: tuple[int, int]) -> None:
        with self._lock:
            if len(self._idle) < self.POOL_SIZE:
                self._idle.append((conn, ident))
                return
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _error(self, cause: str) -> model.BackendError:
        return model.BackendError(f"sqlite {self.path}: {cause}")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction (one snapshot) on a borrowed connection.

        sqlite and OS errors become BackendError and close the connection; a
        BackendError raised inside (unknown list) gives the connection back.
        """
        try:
            st = os.stat(self.path)
            ident = (st.st_dev, st.st_ino)
            conn = self._checkout(ident)
        except FileNotFoundError as e:
            # never created here (the daemon opens read-only): a lost store must not
            # become an empty one that gates nothing
            raise self._error(STORE_MISSING) from e
        except (sqlite3.Error, OSError, ValueError) as e:
            raise self._error(_cause(e)) from e
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except (sqlite3.Error, OSError, ValueError) as e:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            raise self._error(_cause(e)) from e
        except BaseException:
            self._checkin(conn, ident)
            raise
        self._checkin(conn, ident)

    def close(self) -> None:
        """Close the idle connections (borrowed ones are closed when given back... or
        reused: the backend stays usable)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ident in idle:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- the Backend interface

    def lists(self) -> list[str]:
        with self._read() as conn:
            return [r[0] for r in conn.execute("SELECT address FROM lists ORDER BY address")]

    def find_list(self, address: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT address FROM lists WHERE address = ?", (address.lower(),)
            ).fetchone()
        return None if row is None else row[0]

    def list_facts(self, list_address: str, senders: Sequence[str],
                   primary: str = "", max_age: float | None = None) -> model.ListFacts:
        addr = list_address.lower()
        order = [s.lower() for s in senders]
        uniq = list(dict.fromkeys(order))
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_LIST_COLUMNS} FROM lists WHERE address = ?", (addr,)
            ).fetchone()
            if row is None:
                raise self._error(f"no such list: {addr}")
            policy = _policy(row)
            site = _site_cached(tuple(conn.execute("SELECT key, value FROM site")))
            if not uniq:
                return model.ListFacts(policy, (), site)
            marks = _placeholders(len(uniq))
            records = conn.execute(
                "SELECT address, role, moderation_action FROM members"
                f" WHERE list = ? AND address IN ({marks})",
                (addr, *uniq),
            ).fetchall()
            # exact bans can only be the senders themselves; patterns all need a look
            bans = conn.execute(
                "SELECT list, entry FROM bans WHERE (list = ? OR list IS NULL)"
                f" AND (substr(entry, 1, 1) = '^' OR entry IN ({marks}))",
                (addr, *uniq),
            ).fetchall()
            refs = list(dict.fromkeys(policy.referenced_lists()))
            elsewhere: list[tuple[str, str]] = []
            if refs:
                elsewhere = conn.execute(
                    "SELECT list, address FROM members WHERE role = 'member'"
                    f" AND list IN ({_placeholders(len(refs))}) AND address IN ({marks})",
                    (*refs, *uniq),
                ).fetchall()
        return model.ListFacts(policy, tuple(
            _sender_facts(s, records, bans, elsewhere) for s in order
        ), site)


def _sender_facts(sender: str, records: list[tuple[str, str, str | None]],
                  bans: list[tuple[str | None, str]],
                  elsewhere: list[tuple[str, str]]) -> model.SenderFacts:
    is_member = False
    member_action = nonmember_action = None
    for address, role, action in records:
        if address != sender:
            continue
        if role == "member":
            is_member, member_action = True, action
        else:
            nonmember_action = action
    return model.SenderFacts(
        address=sender,
        is_member=is_member,
        member_action=member_action,
        nonmember_action=nonmember_action,
        banned=is_banned(sender, bans),
        member_of=frozenset(lst for lst, address in elsewhere if address == sender),
    )


def create(cfg: Config) -> SqliteBackend:
    """The factory :func:`listgate.backends.open_backend` calls."""
    return SqliteBackend(cfg.sqlite.path, cfg.sqlite.busy_timeout)
