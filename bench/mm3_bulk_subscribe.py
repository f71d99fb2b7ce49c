"""Subscribe many addresses to one Mailman 3 list in ONE database transaction.

Run with *Mailman's* Python (its venv), not listgate's::

    MAILMAN_CONFIG_FILE=.../mailman.cfg $MM3_VENV/bin/python bench/mm3_bulk_subscribe.py \
        LIST@DOMAIN FILE

FILE has one address per line.  Why not ``mailman addmembers``: it commits once per
member and measured ~31 ms per member here (1e4 members = 5 minutes, beyond the
benchmark's budget); one transaction through Mailman's own model API (the same
``IUserManager.create_address`` + ``IMailingList.subscribe`` that ``addmembers``
ends up calling, minus the per-member commit and welcome message) measured ~6 ms
per member (1e4 in ~60 s; bench/protocol.py caches the resulting database, so this
runs once per machine).
Members are created pre-verified, with no welcome message and no owner
notification.  Prints ``subscribed N in S s``.
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    from mailman.core.initialize import initialize

    initialize(os.environ["MAILMAN_CONFIG_FILE"])
    from mailman.config import config
    from mailman.interfaces.listmanager import IListManager
    from mailman.interfaces.member import MemberRole
    from mailman.interfaces.usermanager import IUserManager
    from mailman.utilities.datetime import now
    from zope.component import getUtility

    t0 = time.monotonic()
    mlist = getUtility(IListManager).get(argv[1])
    if mlist is None:
        print(f"no such list {argv[1]}", file=sys.stderr)
        return 1
    mlist.send_welcome_message = False
    mlist.admin_notify_mchanges = False
    users = getUtility(IUserManager)
    stamp = now()
    n = 0
    with open(argv[2]) as f:
        for line in f:
            address = line.strip()
            if not address:
                continue
            addr = users.create_address(address)
            addr.verified_on = stamp
            mlist.subscribe(addr, MemberRole.member)
            n += 1
    config.db.commit()
    print(f"subscribed {n} in {time.monotonic() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
