"""The list verdict: what the list manager would do with a post.

:class:`ListVerdict` is what :mod:`listgate.chain` returns for either list manager;
:func:`is_banned` is Mailman 3's ban rule (``model/bans.py``), shared by the backends
that judge bans themselves.  (Mailman 2.1's pipeline is :mod:`listgate.rules.mailman2`.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

#: who a hold concerns: "member" holds are what the list's moderators asked to see
#: (moderated member, moderated list, emergency); "nonmember" holds are the
#: moderation queue's usual spam.
MEMBER, NONMEMBER = "member", "nonmember"


@dataclass(frozen=True)
class ListVerdict:
    """Mailman's decision for one list: accept, hold, reject or discard."""

    action: str
    #: MEMBER or NONMEMBER for holds (which hold action applies); None otherwise
    hold_kind: str | None = None
    #: the rule that decided, in Mailman's words (``member-moderation``...)
    rule: str = ""
    reasons: tuple[str, ...] = field(default_factory=tuple)
    #: a rule that could have accepted the post could not be evaluated: the post goes
    #: to the list manager (``action`` is accept), and the reasons say why
    undecided: bool = False
    #: what a refusal tells the sender when the list manager has words of its own
    #: (a loop, a header rule, DMARC...); empty = the configured reject_message
    notice: str = ""


def is_banned(sender: str, bans: Iterable[tuple[str | None, str]]) -> bool:
    """Mailman 3 ``model/bans.py``: exact list, exact global, list patterns, global patterns.

    ``bans`` are (list or None for global, entry).  Exact entries are compared to the
    (lowercased) sender as stored, so a mixed-case exact entry never matches; ``^``
    patterns match case-insensitively.  A bad pattern is skipped, as Mailman skips it.
    """
    bans = list(bans)
    if any(entry == sender for _lst, entry in bans if not entry.startswith("^")):
        return True
    for _lst, entry in sorted(bans, key=lambda b: b[0] is None):  # list ones first
        if entry.startswith("^"):
            try:
                if re.match(entry, sender, re.IGNORECASE):
                    return True
            except re.error:
                continue
    return False
