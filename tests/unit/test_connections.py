"""The open-connection bookkeeping the daemon drains on SIGTERM and reloads with."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from listgate.milter import Connections


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def engine() -> SimpleNamespace:
    """What Connections needs of an Engine: its backend, and close() (backend and hash
    workers), which is what retiring calls."""
    backend = FakeBackend()
    return SimpleNamespace(backend=backend, close=backend.close)


def test_retired_engine_backend_closed_when_its_last_connection_ends():
    c, old, new = Connections(), engine(), engine()
    c.opened(old)
    c.opened(old)
    c.retire(old)  # a reload: old keeps its two connections
    c.opened(new)
    assert old.backend.closed == 0
    c.closed(old)
    assert old.backend.closed == 0
    c.closed(old)
    assert old.backend.closed == 1
    assert c.count() == 1 and new.backend.closed == 0


def test_retiring_an_idle_engine_closes_at_once():
    c, e = Connections(), engine()
    c.retire(e)
    assert e.backend.closed == 1


def test_wait_idle_returns_when_the_last_connection_closes():
    c, e = Connections(), engine()
    c.opened(e)
    threading.Timer(0.1, c.closed, args=(e,)).start()
    t0 = time.monotonic()
    assert c.wait_idle(5) == 0
    assert time.monotonic() - t0 < 2


def test_wait_idle_times_out_with_the_number_left():
    c, e = Connections(), engine()
    c.opened(e)
    c.opened(e)
    assert c.wait_idle(0.05) == 2
