"""Stage time budgets (listgate.budget) and what uses them: SPF's DNS, the Mailman 3
backend's REST requests, libmilter's stranded-command rescue."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from listgate import budget
from listgate.daemon import Rescuer
from listgate.milter import Busy


def test_no_stage_gives_the_cap():
    assert budget.remaining(7.0) == 7.0


def test_stage_bounds_every_wait_within_it():
    with budget.stage(0.5):
        assert budget.remaining(10.0) <= 0.5
        assert budget.remaining(0.1) == 0.1
        time.sleep(0.55)
        with pytest.raises(budget.BudgetExceeded):
            budget.remaining(10.0)
    assert budget.remaining(10.0) == 10.0  # restored on exit


def test_inner_stage_never_extends_the_outer_one():
    with budget.stage(0.2), budget.stage(60):
        assert budget.remaining(60) <= 0.2


def test_stage_is_per_thread():
    seen: list[float] = []
    with budget.stage(0.1):
        t = threading.Thread(target=lambda: seen.append(budget.remaining(9.0)))
        t.start()
        t.join()
    assert seen == [9.0]


def test_busy_reports_the_longest_running_callback():
    b = Busy()
    assert b.longest() == 0.0
    first = b.enter()
    time.sleep(0.05)
    second = b.enter()
    assert b.longest() >= 0.05
    b.leave(first)
    assert b.longest() < 0.05
    b.leave(second)
    assert b.longest() == 0.0


def test_rescuer_connects_only_while_a_callback_waits(tmp_path):
    """The rescue is a connection to the milter's own socket: none while callbacks
    answer promptly, one every ``every`` seconds while one waits."""
    path = tmp_path / "m.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(64)
    srv.settimeout(0.05)
    accepted = 0

    def count(seconds: float) -> int:
        nonlocal accepted
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            c.close()
            n += 1
        accepted += n
        return n

    busy = Busy()
    r = Rescuer(busy, lambda: f"unix:{path}")
    r.start()
    try:
        assert count(0.4) == 0
        token = busy.enter()
        time.sleep(Rescuer.after)
        assert count(0.5) >= 3
        busy.leave(token)
        # a poke decided just before leave() may still land (and sit in the backlog
        # under load): let it, then nothing more may come
        time.sleep(0.2)
        count(0.1)
        assert count(0.4) == 0
    finally:
        r.stop()
        srv.close()
    assert r.pokes == accepted


class StrandedCommands:
    """A milter socket with ``n`` commands left waiting for a worker: each connection
    accepted frees one, which begins its callback (``Busy.began``), as libmilter's
    worker does after it ends a poke's empty session."""

    def __init__(self, path, busy: Busy, n: int) -> None:
        self.busy, self.left, self.accepted = busy, n, 0
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(128)
        self.srv.settimeout(0.05)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.srv.accept()
            except TimeoutError:
                continue
            c.close()
            self.accepted += 1
            if self.left:
                self.left -= 1
                self.busy.began()

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        self.srv.close()


@pytest.fixture
def rescue(tmp_path):
    """``rescue(n)``: a StrandedCommands socket with ``n`` commands waiting, and a
    Rescuer poking it; (server, rescuer)."""
    made = []

    def make(n: int) -> tuple[StrandedCommands, Rescuer]:
        busy = Busy()
        srv = StrandedCommands(tmp_path / "m.sock", busy, n)
        made.append(srv)
        r = Rescuer(busy, lambda: f"unix:{tmp_path}/m.sock")
        r.settle = 0.3  # generous: what is tested is the count, not the speed
        return srv, r

    yield make
    for srv in made:
        srv.close()


def test_rescue_pokes_again_while_its_pokes_free_commands(rescue):
    """40 sessions behind one slow domain left commands stranded: one poke per tick
    freed one per 50 ms (the last banner after 1-2 s); a round of pokes continues,
    doubling, while each batch is followed by callbacks beginning."""
    srv, r = rescue(10)
    r._rescue(usual=0.0)
    time.sleep(0.1)
    assert srv.left == 0
    # batches of 1, 2 and 4 free 7, the batch of 8 frees the last 3, and the batch
    # of 16 frees nothing: the round ends
    assert r.pokes == 31 == srv.accepted


def test_rescue_stops_at_a_poke_that_frees_nothing(rescue):
    """Nothing stranded (every worker waits on its own callback): one poke per tick, as
    before; and callbacks beginning no faster than the tick before are ordinary traffic,
    not the pokes' doing."""
    srv, r = rescue(0)
    r._rescue(usual=0.0)
    assert r.pokes == 1
    srv.left = 5  # a callback begins after each poke, but that is the usual rate
    r._rescue(usual=1.0)
    assert r.pokes == 2


def test_rescue_pokes_at_most_most_per_tick(rescue):
    _srv, r = rescue(1000)
    r._rescue(usual=0.0)
    assert r.pokes == Rescuer.most
