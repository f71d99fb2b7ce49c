"""Time budgets: every SMTP stage answers within a bound below the MTA's milter timeouts.

The MTA gives a milter a fixed time per command (Postfix ``milter_command_timeout``,
30 s; ``milter_content_timeout``, 300 s, for end of message; sendmail's ``T=``): past
it, the client gets the MTA's default action and the MTA's log says the milter timed
out.  listgate must answer first, with its own 4xx and a reason in its log.  So each
stage that waits on the outside world (SPF's DNS, the backend's REST requests) runs
under a deadline: :func:`stage` sets it for the current call, :func:`remaining` gives
what a wait may still take.

The deadline is kept per thread, set on entry and restored on exit of one stage's
call: under libmilter a thread's Python state may serve another connection in a later
callback, but never during one, so nothing leaks between connections.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

_local = threading.local()


class BudgetExceeded(Exception):
    """The stage's time budget is used up: answer 4xx now rather than keep waiting."""


@contextlib.contextmanager
def stage(seconds: float) -> Iterator[float]:
    """Run the enclosed waits under a deadline ``seconds`` from now (or the enclosing
    stage's, if that comes first).  Yields the deadline (``time.monotonic()``)."""
    outer = getattr(_local, "deadline", None)
    deadline = time.monotonic() + seconds
    if outer is not None:
        deadline = min(deadline, outer)
    _local.deadline = deadline
    try:
        yield deadline
    finally:
        _local.deadline = outer


def remaining(cap: float) -> float:
    """How long a wait may take now: ``cap``, or less when the stage's deadline is
    nearer; raises :class:`BudgetExceeded` when it has passed."""
    deadline = getattr(_local, "deadline", None)
    if deadline is None:
        return cap
    left = deadline - time.monotonic()
    if left <= 0:
        raise BudgetExceeded("the stage's time budget is used up")
    return min(cap, left)
