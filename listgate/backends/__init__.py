"""Membership backends.  Each is a module of its own, imported only when configured,
so an optional dependency (an HTTP client, say) is needed only by those who use it."""

from __future__ import annotations

import importlib

from listgate.config import Config
from listgate.model import Backend

#: ``[lists] backend`` value -> module that defines ``create(cfg) -> Backend``
BACKENDS = {
    "sqlite": "listgate.backends.sqlite",
    "mailman3": "listgate.backends.mailman3",
    "mailman2": "listgate.backends.mailman2",
}


def open_backend(cfg: Config) -> Backend:
    """Create the backend named by ``[lists] backend`` (validated by the config schema)."""
    module = importlib.import_module(BACKENDS[cfg.lists.backend])
    return module.create(cfg)
