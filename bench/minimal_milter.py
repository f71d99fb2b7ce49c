"""A reference pymilter milter: the cost of the milter protocol and pymilter alone.

It does the least a useful milter does: it looks at the connection, at each
recipient, and at end of message adds one header (``X-Bench-Minimal: 1``), then
accepts.  Every other callback is negotiated away (pymilter drops the callbacks a
subclass does not override), nothing is looked up, nothing is logged.  It is a stock
libmilter milter: no TCP_NODELAY on an inet socket (that is what an admin gets from
any libmilter-based milter today).

Usage: ``python bench/minimal_milter.py SOCKET`` where SOCKET is a libmilter socket
spec, e.g. ``unix:/tmp/minimal.sock`` or ``inet:8894@127.0.0.1``.  Stops on SIGTERM.
"""

from __future__ import annotations

import os
import sys

import Milter


class MinimalMilter(Milter.Base):
    """connect, envrcpt, eom: one header added at end of message."""

    def __init__(self) -> None:
        self.rcpts = 0

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        self.rcpts += 1
        return Milter.CONTINUE

    def eom(self):
        self.addheader("X-Bench-Minimal", "1")
        return Milter.ACCEPT


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    os.umask(0)  # the MTA's user must be able to connect to a unix socket
    Milter.factory = MinimalMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("minimal", argv[1], 600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
