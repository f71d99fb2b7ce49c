"""Stage time budgets (listgate.budget)."""

from __future__ import annotations

import threading
import time

import pytest

from listgate import budget


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
