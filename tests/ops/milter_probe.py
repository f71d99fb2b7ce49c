"""One member post over a milter socket, spoken as the MTA; prints the replies as JSON.

Run as a script (``python milter_probe.py SOCKET SENDER LIST``) by test_package.py
inside the mount namespace where the packaged daemon's /run/listgate lives.  The
client is INTERNAL (127.0.0.1), so no DNS is needed and the verdict comes from the
packaged SQLite store alone.
"""

from __future__ import annotations

import json
import socket
import sys

from miltertest import MilterConnection
from miltertest import constants as C


def post(path: str, sender: str, rcpt: str) -> dict[str, object]:
    """Negotiate, then connect/HELO/MAIL/RCPT/header/end of message; the replies."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    conn = MilterConnection(s)
    conn.optneg_mta()
    conn._send(C.SMFIC_CONNECT, hostname="localhost", family=C.SMFIA_INET, port=40000,
               address="127.0.0.1")
    conn._send(C.SMFIC_HELO, helo="localhost")
    mail = conn.send_ar(C.SMFIC_MAIL, args=[sender])
    rcpt = conn.send_ar(C.SMFIC_RCPT, args=[rcpt])
    conn._send(C.SMFIC_HEADER, name="From", value=sender)
    eom = conn.send_eom()
    s.close()
    return {"mail": mail[0], "rcpt": rcpt[0], "eom": [m[0] for m in eom]}


if __name__ == "__main__":
    print(json.dumps(post(*sys.argv[1:4])))
