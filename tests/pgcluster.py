"""A private PostgreSQL cluster for the tests: Debian's postgresql binaries, never the
system cluster.

``initdb`` and ``pg_ctl`` run as user postgres (when the tests run as root; as the
current user otherwise) on a data directory under /var/tmp, with their own port on
127.0.0.1 and their own unix socket directory, so nothing here can touch, or be
touched by, a PostgreSQL the machine runs for real.  Durability is switched off
(fsync, synchronous_commit): the cluster lives for one test session.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _bindir() -> str:
    """The newest installed PostgreSQL's bin directory (postgresql-NN)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                  key=lambda p: int(p.split("/")[4]))
    if not dirs:
        raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): "
                           "run scripts/install-debian-deps.sh test")
    return os.path.dirname(dirs[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One running cluster: ``conninfo(dbname)``, ``create_database()``, ``restart()``."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.dir = tempfile.mkdtemp(prefix="lg-pg-", dir="/var/tmp")
        self.data = os.path.join(self.dir, "data")
        self.socket_dir = self.dir
        self.port = _free_port()
        self.log = os.path.join(self.dir, "postgresql.log")
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count(1)
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8")
        with open(os.path.join(self.data, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.socket_dir}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 300\nlog_min_messages = warning\n")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        r = subprocess.run([*self._as, os.path.join(self.bindir, tool), *args],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            tail = ""
            if os.path.exists(self.log):
                with open(self.log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-2000:]
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({r.returncode}): "
                               f"{r.stdout}{r.stderr}{tail}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-m", mode, "-w", "-t", "60",
                  "restart")

    def conninfo(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} dbname={dbname} user={user}"

    @contextmanager
    def admin(self) -> Iterator[object]:
        """A superuser connection (autocommit) to the maintenance database."""
        import psycopg

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            yield conn

    def create_database(self) -> str:
        name = f"lg_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def store_config_for(engine: str, tmp_path: Path, request: Any) -> str:
    """The config text for a store on ``engine`` ("sqlite" or "postgresql"); asks the
    pytest ``request`` for a fresh ``pg_database`` (so PostgreSQL starts only when used)."""
    if engine == "sqlite":
        return f"[sqlite]\npath = {tmp_path}/db.sqlite\n"
    conninfo = request.getfixturevalue("pg_database")
    return f"[lists]\nbackend = postgresql\n[postgresql]\nconninfo = {conninfo}\n"
