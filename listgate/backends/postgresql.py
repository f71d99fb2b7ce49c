"""listgate's own store on PostgreSQL: one database that several MX hosts share.

The same store as :mod:`listgate.backends.sqlite` -- the same tables, the same
schema version and ``db init``/``db upgrade``, the same CLI and the same answers --
so that every MX host of a site, each with its own daemon, gives every post the same
verdict.  Only where the data lives changes, so the SQL is the SQLite store's own:
its statements run here through :class:`_Conn`, which speaks them to psycopg
(``?`` parameters become ``%s``, ``IS ?`` becomes ``IS NOT DISTINCT FROM``) and
the engine-specific parts (connecting, transactions, the schema version, the DDL)
are overridden.

* :class:`PostgresStore` (the CLI): one connection in autocommit mode; every write
  is one transaction that first takes a transaction-scoped advisory lock, so writes
  from any number of hosts are serialised exactly as SQLite's ``BEGIN IMMEDIATE``
  serialises them on one host (waiting at most ``statement_timeout``, as
  ``lock_timeout``), while the daemons' reads never wait for them (MVCC).
* :class:`PostgresBackend` (the daemon): a psycopg_pool pool of read-only sessions
  (``default_transaction_read_only``: the daemon can neither create nor change the
  store); each question is one ``REPEATABLE READ`` snapshot, bounded by
  ``statement_timeout``.  Every failure -- the server unreachable, restarted, failed
  over, a query past its timeout, an uninitialised database -- is a
  :class:`~listgate.model.BackendError` (the admin's ``on_backend_error``, 451 by
  default); a connection the server dropped is replaced by the pool, and a question
  that met one is asked once more on a fresh connection, so a restart costs no
  tempfail once the server is back.  Every call into libpq runs on a thread of this
  backend's own (a small executor), never on the caller's: libmilter's callbacks run
  on C threads whose Python thread states pymilter recycles, and libpq calls back
  into Python (psycopg's notice receiver, e.g. for the server's "terminating
  connection" as it restarts), which on such a thread crashed the worker (SIGSEGV).

The schema version lives in a one-row table ``listgate_schema`` (SQLite keeps it in
``PRAGMA user_version``).  Text columns use the "C" collation, so that sorted output
(``lists ls``, exports) is byte-identical to SQLite's whatever the database's locale.
psycopg is imported lazily: only a site that configures this backend needs it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import re
import stat
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from listgate import listsettings, model
from listgate.backends import sqlite
from listgate.backends.sqlite import SCHEMA_VERSION, StoreError
from listgate.config import Config, ConfigError

__all__ = ["PostgresBackend", "PostgresStore", "connection_settings", "create"]

#: the key of the advisory lock every write transaction takes (any constant will do;
#: this one spells "listgate")
WRITE_LOCK = 0x6C697374_67617465

_T = TypeVar("_T")


def _pg_ddl(ddl: str) -> str:
    """SQLite's DDL as PostgreSQL takes it: no ``WITHOUT ROWID``; text in the C collation."""
    ddl = ddl.replace(") WITHOUT ROWID;", ");")
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', ddl)


_DDL = _pg_ddl(sqlite._DDL) + "\nCREATE TABLE listgate_schema (version INTEGER NOT NULL);\n"


@functools.lru_cache(maxsize=512)
def _sql(text: str) -> str:
    """A statement of the SQLite store in psycopg's dialect."""
    if text == "BEGIN":  # the store's "one snapshot" (export)
        return "BEGIN ISOLATION LEVEL REPEATABLE READ"
    text = text.replace("%", "%%")
    text = re.sub(r"\bIS \?", "IS NOT DISTINCT FROM ?", text)
    return text.replace("?", "%s")


def _cause(exc: BaseException) -> str:
    """One line: libpq's messages run over several (``connection failed: ...\\n\\tIs the
    server running...``)."""
    return " ".join((str(exc) or type(exc).__name__).split())


class _Conn:
    """A psycopg connection that runs the SQLite store's statements (see module docstring)."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(_sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        cur = self.raw.cursor()
        cur.executemany(_sql(sql), rows)
        return cur

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status != TransactionStatus.IDLE


def _import() -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401 - checked here, used by the backend
    except ImportError as e:
        raise ConfigError(f"[lists] backend = postgresql needs psycopg 3 and psycopg_pool "
                          f"(pip install 'listgate[postgresql]'): {e}") from None
    return psycopg


def connection_settings(cfg: Config) -> tuple[str, str]:
    """(conninfo, description) from ``[postgresql]``: the description names server and
    database for messages, never a password.  ConfigError names file, section and key
    for a bad connection string or a password file readable by everyone."""
    psycopg = _import()
    pg = cfg.postgresql
    try:
        params = psycopg.conninfo.conninfo_to_dict(pg.conninfo)
    except psycopg.Error as e:
        raise ConfigError(f"{cfg.path}: [postgresql] conninfo: {_cause(e)}") from None
    if pg.passfile:
        try:
            st = os.stat(pg.passfile)
        except OSError as e:
            raise ConfigError(f"{cfg.path}: [postgresql] passfile: {pg.passfile}: "
                              f"{e.strerror}") from None
        if st.st_mode & stat.S_IROTH:
            raise ConfigError(f"{cfg.path}: [postgresql] passfile: {pg.passfile} is readable "
                              f"by everyone (mode {stat.S_IMODE(st.st_mode):o}); chmod o-r it")
        params["passfile"] = pg.passfile
    params.setdefault("connect_timeout", str(max(1, round(pg.connect_timeout))))
    params.setdefault("application_name", "listgate")
    desc = " ".join(f"{k}={params[k]}" for k in ("service", "host", "port", "dbname")
                    if params.get(k)) or "(libpq defaults)"
    return psycopg.conninfo.make_conninfo(**params), desc


def _version(conn: Any) -> int:
    """The schema version of the database ``conn`` is on; 0 = no listgate tables.
    Never fails for a missing table (it may run inside the caller's transaction)."""
    if conn.execute("SELECT to_regclass('listgate_schema')").fetchone()[0] is None:
        return 0
    row = conn.execute("SELECT max(version) FROM listgate_schema").fetchone()
    return int(row[0] or 0)


def _migrate(conn: _Conn, version: int) -> None:
    """Upgrade the schema from ``version`` inside the caller's transaction: the same steps
    as SQLite's (:func:`listgate.backends.sqlite._migrate`) in PostgreSQL's DDL."""
    if version < 2:
        ddl = {f.name: f.ddl(listsettings.default(f.name)) for f in listsettings.LIST_FIELDS}
        for name in sqlite.LIST_OPTIONS:
            if name not in sqlite._V1_FIELDS:
                conn.execute(f"ALTER TABLE lists ADD COLUMN {_pg_ddl(ddl[name])}")
        conn.execute('CREATE TABLE IF NOT EXISTS site (key TEXT COLLATE "C" PRIMARY KEY '
                     'NOT NULL, value TEXT COLLATE "C" NOT NULL)')
    conn.execute("UPDATE listgate_schema SET version = ?", (SCHEMA_VERSION,))


class PostgresStore(sqlite.SqliteStore):
    """Read/write access for the admin CLI on PostgreSQL (see :class:`SqliteStore`,
    whose methods and validation these are).  ``path`` is the database's description
    (``host=... dbname=...``), for messages."""

    def __init__(self, conninfo: str, desc: str, lock_timeout: float = 2.0) -> None:
        import psycopg

        self.errors = (psycopg.Error,)
        self.conninfo = conninfo
        self.path = desc
        self.lock_timeout = lock_timeout
        self._conn: Any = None

    @classmethod
    def from_config(cls, cfg: Config) -> PostgresStore:
        conninfo, desc = connection_settings(cfg)
        return cls(conninfo, desc, cfg.postgresql.statement_timeout)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.raw.close()
            self._conn = None

    def exists(self) -> bool:
        """Whether the database holds a listgate schema (of any version)."""
        return self.schema_version() > 0

    def _open(self, mode: str = "rw") -> _Conn:
        import psycopg

        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.Error as e:
            raise StoreError(f"postgresql {self.path}: {_cause(e)}") from None
        conn.execute(f"SET lock_timeout = {int(self.lock_timeout * 1000)}")
        return _Conn(conn)

    def _version_problem(self, version: int) -> str:
        return "postgresql " + super()._version_problem(version)

    def _connection(self) -> _Conn:  # type: ignore[override]
        if self._conn is None:
            conn = self._open()
            version = _version(conn.raw)
            if version != SCHEMA_VERSION:
                conn.raw.close()
                raise StoreError(self._version_problem(version))
            self._conn = conn
        return self._conn

    def schema_version(self) -> int:
        conn = self._open()
        try:
            return _version(conn.raw)
        finally:
            conn.raw.close()

    @contextlib.contextmanager
    def _locked(self, conn: _Conn) -> Iterator[_Conn]:
        """One transaction holding the write lock (see module docstring); READ COMMITTED,
        so that its statements see what the writer before it committed."""
        conn.raw.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                conn.raw.execute("ROLLBACK")
            raise
        conn.raw.execute("COMMIT")

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Conn]:  # type: ignore[override]
        with self._locked(self._connection()) as conn:
            yield conn

    def upgrade(self) -> tuple[int, int]:
        conn = self._open()
        try:
            with self._locked(conn):
                old = _version(conn.raw)
                if old == 0 or old > SCHEMA_VERSION:
                    raise StoreError(self._version_problem(old))
                if old < SCHEMA_VERSION:
                    _migrate(conn, old)
        finally:
            conn.raw.close()
        return old, SCHEMA_VERSION

    def init(self) -> bool:
        """Create the tables in the (existing) database; idempotent; an older schema is
        upgraded.  True if the schema was created.  The database itself is the DBA's."""
        self.close()
        conn = self._open()
        try:
            with self._locked(conn):
                version = _version(conn.raw)
                if 0 < version < SCHEMA_VERSION:
                    _migrate(conn, version)
                elif version > SCHEMA_VERSION:
                    raise StoreError(self._version_problem(version))
                elif version == 0:
                    tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = "
                                          "current_schema()").fetchone()[0]
                    if tables:
                        raise StoreError(f"postgresql {self.path} holds tables but is not a "
                                         "listgate database")
                    for stmt in _DDL.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    conn.execute("INSERT INTO listgate_schema (version) VALUES (?)",
                                 (SCHEMA_VERSION,))
        except BaseException:
            conn.raw.close()
            raise
        self._conn = conn
        return version == 0


class _ConnectionLost(model.BackendError):
    """The server dropped the connection (a restart, a failover): worth one more try."""


class PostgresBackend(sqlite.SqliteBackend):
    """The daemon's pooled, read-only sessions on the shared database.  The questions
    (:meth:`lists`, :meth:`find_list`, :meth:`list_facts`) are SqliteBackend's; this
    class decides where they run (see module docstring)."""

    name = "postgresql"

    def __init__(self, conninfo: str, desc: str, pool_size: int = 4,
                 connect_timeout: float = 5.0, statement_timeout: float = 2.0) -> None:
        import psycopg

        self._psycopg = psycopg
        self.path = desc
        options = psycopg.conninfo.conninfo_to_dict(conninfo).get("options", "")
        self.conninfo = psycopg.conninfo.make_conninfo(
            conninfo, options=f"{options} -c default_transaction_read_only=on "
                              f"-c statement_timeout={int(statement_timeout * 1000)}".strip())
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._pool: Any = None
        #: the threads every libpq call runs on (see module docstring)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        #: the schema version each pooled connection found when it was opened
        self._versions: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        #: the last reason the pool could not connect, for the BackendError
        self._connect_error = ""

    def _error(self, cause: str) -> model.BackendError:
        return model.BackendError(f"postgresql {self.path}: {cause}")

    def _configure(self, conn: Any) -> None:
        """psycopg_pool's hook for a new connection: note the schema version it finds
        (a wrong one is reported at checkout, naming the problem, not as a pool timeout)."""
        self._versions[conn] = _version(conn)

    def _get_pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                import psycopg_pool

                backend = self

                class Pool(psycopg_pool.ConnectionPool):  # type: ignore[misc]
                    """Remembers why the last connection attempt failed."""

                    def _connect(self, *args: Any, **kwargs: Any) -> Any:
                        try:
                            conn = super()._connect(*args, **kwargs)
                        except Exception as e:
                            backend._connect_error = _cause(e)
                            raise
                        backend._connect_error = ""
                        return conn

                self._pool = Pool(
                    self.conninfo, min_size=1, max_size=self.pool_size, open=False,
                    timeout=self.connect_timeout, kwargs={"autocommit": True},
                    configure=self._configure, name="listgate",
                    # give up a reconnection attempt soon: the next question starts a
                    # new one at once rather than after an ever longer back-off
                    reconnect_timeout=max(2 * self.connect_timeout, 10.0))
                self._pool.open(wait=False)
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.pool_size, thread_name_prefix="postgresql")
            return self._pool

    def close(self) -> None:
        """Close the pool (a later question opens a new one)."""
        with self._lock:
            pool, self._pool = self._pool, None
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        if pool is not None:
            pool.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[_Conn]:  # type: ignore[override]
        """One read-only snapshot on a pooled connection; psycopg's and the pool's
        errors become BackendError (:class:`_ConnectionLost` if the connection died)."""
        psycopg = self._psycopg
        import psycopg_pool

        pool = self._get_pool()
        try:
            cm = pool.connection(timeout=self.connect_timeout)
            raw = cm.__enter__()
        except psycopg_pool.PoolTimeout as e:
            raise self._error(self._connect_error or _cause(e)) from None
        except psycopg_pool.PoolClosed as e:
            raise self._error(_cause(e)) from None
        try:
            try:
                if self._versions.get(raw) != SCHEMA_VERSION:
                    version = self._versions[raw] = _version(raw)  # after a db init
                    if version != SCHEMA_VERSION:
                        what = ("not an initialised listgate database" if version == 0 else
                                f"schema version {version}, expected {SCHEMA_VERSION}")
                        raise model.BackendError(f"postgresql {self.path}: {what}")
                raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield _Conn(raw)
                raw.execute("COMMIT")
            except psycopg.Error as e:
                if not getattr(raw, "broken", False) and not raw.closed:
                    with contextlib.suppress(psycopg.Error):
                        raw.execute("ROLLBACK")
                dead = getattr(raw, "broken", False) or raw.closed
                lost = _ConnectionLost if dead else model.BackendError
                raise lost(f"postgresql {self.path}: {_cause(e)}") from None
            except BaseException:
                if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        raw.execute("ROLLBACK")
                raise
        finally:
            cm.__exit__(None, None, None)  # back to the pool, which drops a dead one

    def _retry(self, ask: Callable[[], _T]) -> _T:
        """Ask on one of the backend's own threads (see module docstring)."""
        self._get_pool()
        executor = self._executor
        if executor is None:  # closed meanwhile
            raise self._error("the backend was closed")
        try:
            future = executor.submit(self._asked, ask)
        except RuntimeError as e:  # shut down meanwhile (a reload closing it)
            raise self._error(_cause(e)) from None
        # each libpq wait is bounded (connect_timeout, statement_timeout); this bounds
        # the retries together, so no caller waits for the MTA's own timeout
        limit = (self.pool_size + 1) * (self.connect_timeout + 1) + 5
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            raise self._error(f"no answer within {limit:g} s") from None

    def _asked(self, ask: Callable[[], _T]) -> _T:
        """Ask; again while the connection turns out dead (after a restart every idle
        one is: the pool drops each, and the next question uses another or a new one)."""
        for _ in range(self.pool_size):
            try:
                return ask()
            except _ConnectionLost:
                continue
        return ask()

    def lists(self) -> list[str]:
        return self._retry(super().lists)

    def find_list(self, address: str) -> str | None:
        return self._retry(lambda: sqlite.SqliteBackend.find_list(self, address))

    def list_facts(self, list_address: str, senders: Sequence[str],
                   primary: str = "", max_age: float | None = None) -> model.ListFacts:
        return self._retry(lambda: sqlite.SqliteBackend.list_facts(
            self, list_address, senders, primary, max_age))


def create(cfg: Config) -> PostgresBackend:
    """The factory :func:`listgate.backends.open_backend` calls."""
    conninfo, desc = connection_settings(cfg)
    pg = cfg.postgresql
    return PostgresBackend(conninfo, desc, pg.pool_size, pg.connect_timeout,
                           pg.statement_timeout)
