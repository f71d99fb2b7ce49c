"""Membership backends.  Each is a module of its own, imported only when configured,
so an optional dependency (an HTTP client, say) is needed only by those who use it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from listgate.config import Config
from listgate.model import Backend

if TYPE_CHECKING:
    from listgate.backends.sqlite import SqliteStore

#: ``[lists] backend`` value -> module that defines ``create(cfg) -> Backend``
BACKENDS = {
    "sqlite": "listgate.backends.sqlite",
    "postgresql": "listgate.backends.postgresql",
    "mailman3": "listgate.backends.mailman3",
    "mailman2": "listgate.backends.mailman2",
}


def open_backend(cfg: Config) -> Backend:
    """Create the backend named by ``[lists] backend`` (validated by the config schema)."""
    module = importlib.import_module(BACKENDS[cfg.lists.backend])
    return module.create(cfg)


def open_store(cfg: Config) -> SqliteStore:
    """The read/write store the admin CLI edits: on PostgreSQL with ``[lists] backend =
    postgresql``, else the SQLite file (also the target of imports from a Mailman)."""
    if cfg.lists.backend == "postgresql":
        from listgate.backends.postgresql import PostgresStore

        return PostgresStore.from_config(cfg)
    from listgate.backends.sqlite import SqliteStore

    return SqliteStore.from_config(cfg)
