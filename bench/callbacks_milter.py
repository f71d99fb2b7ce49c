"""listgate's callback set with none of listgate's work: the floor listgate stands on.

It negotiates exactly what listgate negotiates (header actions only; no body, no
DATA/EOH/unknown callbacks; no reply at connect, HELO and each header) and is called
at connect, HELO, MAIL, RCPT, each header and end of message, where it inserts the
two headers listgate inserts (Authentication-Results and Received-SPF, fixed text)
and continues.  It looks nothing up, parses nothing, logs nothing.

Measured beside ``minimal_milter.py`` (3 callbacks) and listgate itself by
``bench/protocol.py``: (callbacks - minimal) is what pymilter/libmilter charge for the
callbacks listgate cannot do without (it must see HELO, MAIL FROM and the headers),
and (listgate - callbacks) is listgate's own work.

Usage: ``python bench/callbacks_milter.py SOCKET``; stops on SIGTERM.
"""

from __future__ import annotations

import os
import sys

import Milter

AR = "mx.bench.test; spf=pass smtp.mailfrom=bounce@bench.test"
RSPF = ("Pass (mx.bench.test: domain of bench.test designates 192.0.2.7 as permitted "
        "sender) client-ip=192.0.2.7; envelope-from=bounce@bench.test; helo=mail.bench.test;")


class CallbacksMilter(Milter.Base):
    """connect, helo, envfrom, envrcpt, header, eom: listgate's callbacks, no work."""

    def negotiate(self, opts: list[int]) -> int:
        rc = super().negotiate(opts)
        if rc == Milter.CONTINUE:
            opts[0] &= Milter.ADDHDRS | Milter.CHGHDRS
            opts[1] = (opts[1] | Milter.P_NOBODY) & ~Milter.P_NR_BODY
        return rc

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, name):
        return Milter.CONTINUE

    def envfrom(self, sender, *params):
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        return Milter.CONTINUE

    def eom(self):
        self.addheader("Authentication-Results", AR, 0)
        self.addheader("Received-SPF", RSPF, 0)
        return Milter.CONTINUE


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    os.umask(0)
    Milter.factory = CallbacksMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
    Milter.runmilter("callbacks", argv[1], 600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
