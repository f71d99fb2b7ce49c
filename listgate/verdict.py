"""The list verdict: what the list manager would do with a post.

:class:`ListVerdict` is what :mod:`listgate.chain` returns for Mailman 3's posting chain;
:func:`is_banned` is Mailman 3's ban rule (``model/bans.py``), shared by the backends
that judge bans themselves; the rest is Mailman 2.1's Moderate handler.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from listgate.model import NONMEMBER_LISTS, Mailman2Facts

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


# -- Mailman 2.1 (Mailman/Handlers/Moderate.py, MailList.GetPattern, Handlers/Emergency.py)

#: ``member_moderation_action`` codes
_MM2_MEMBER_ACTIONS = {0: "hold", 1: "reject", 2: "discard"}
#: ``generic_nonmember_action`` codes; 4 passes Moderate's ``assert 0 <= x <= 4`` but no
#: branch handles it, so the post goes on as if accepted
_MM2_NONMEMBER_ACTIONS = {0: "accept", 1: "hold", 2: "reject", 3: "discard", 4: "accept"}


def _mm2_pattern(sender: str, entries: tuple[str, ...], facts: Mailman2Facts) -> str | None:
    """Mailman 2.1 ``MailList.GetPattern(sender, entries, at_list=...)``: the entry that
    matches, or None.

    Plain entries (stripped, not starting with ``^`` or ``@``) are compared
    case-insensitively and all of them first; then, in order, ``^`` entries with
    ``re.search(entry, sender, re.IGNORECASE)`` (a bad regexp is skipped) and
    ``@name`` entries: ``sender`` is a member of the Mailman 2 list ``name``
    (this list itself and unknown lists never match).
    """
    plain = {e.strip().lower(): e for e in entries
             if e.strip() and not e.startswith(("^", "@"))}
    if sender.lower() in plain:
        return plain[sender.lower()]
    for entry in entries:
        if entry.startswith("^"):
            try:
                if re.search(entry, sender, re.IGNORECASE):
                    return entry
            except re.error:
                continue  # Mailman logs "has bad regexp" and goes on
        elif entry.startswith("@"):
            name = entry[1:].lower().strip()
            if name != facts.internal_name and name in facts.primary_member_of:
                return entry
    return None


def _mm2_passed(facts: Mailman2Facts, rule: str, reason: str) -> ListVerdict:
    """Moderate let the post through: Emergency (later in the pipeline) holds it if set."""
    if facts.emergency:
        return ListVerdict("hold", MEMBER, rule="emergency",
                           reasons=(reason, f"{facts.list_address} is in emergency moderation"))
    return ListVerdict("accept", rule=rule, reasons=(reason,))


def mailman2_verdict(facts: Mailman2Facts) -> ListVerdict:
    """Decide as Mailman 2.1's Moderate handler (then Emergency) would.

    Members: the first sender (From, envelope, Reply-To, Sender) that is a member,
    or whose address at one of the list's ``equivalent_domains`` is, decides; its
    moderate flag applies ``member_moderation_action``, else the post passes.
    Nonmembers: only ``primary`` (``get_sender()``) is checked, against accept,
    hold, reject and discard_these_nonmembers in that order, then
    ``generic_nonmember_action``.  ``emergency`` is Mailman 2's Emergency handler,
    which runs after Moderate: it holds (a MEMBER hold: the moderators asked to see
    everything) only what Moderate let through, so a moderated member's reject or
    discard, and every nonmember hold/reject/discard, stay what Moderate decided.
    An action code Mailman 2 does not know makes its ``assert`` fail and the post
    end up in the shunt queue, for the site admin: a hold here.
    """
    member = next((s for s in facts.senders if s.member is not None), None)
    if member is not None:
        what = "digest member" if member.digest else "member"
        who = member.address if member.member == member.address else (
            f"{member.address} (as {member.member}, equivalent_domains)")
        if not member.moderated:
            return _mm2_passed(facts, "member-moderation", f"{what} {who} is not moderated")
        code = facts.member_moderation_action
        action = _MM2_MEMBER_ACTIONS.get(code)
        if action is None:
            return _mm2_shunted(MEMBER, "member-moderation",
                                f"{what} {who} is moderated, but member_moderation_action "
                                f"{code} is invalid")
        return ListVerdict(action, MEMBER if action == "hold" else None,
                           rule="member-moderation",
                           reasons=(f"{what} {who} is moderated: "
                                    f"member_moderation_action {code} ({action})",))

    sender = facts.primary
    shown = sender or "<>"
    for list_key in NONMEMBER_LISTS:
        if list_key == "accept_these_nonmembers" and not facts.primary_authenticated:
            continue  # an unverified address earns no acceptance
        entry = _mm2_pattern(sender, getattr(facts, list_key), facts)
        if entry is None:
            continue
        action = list_key.split("_", 1)[0]
        reason = f"nonmember {shown}: {list_key} {entry!r}"
        if action == "accept":
            return _mm2_passed(facts, "nonmember-moderation", reason)
        return ListVerdict(action, NONMEMBER if action == "hold" else None,
                           rule="nonmember-moderation", reasons=(reason,))
    code = facts.generic_nonmember_action
    action = _MM2_NONMEMBER_ACTIONS.get(code)
    if action is None:
        return _mm2_shunted(NONMEMBER, "nonmember-moderation",
                            f"nonmember {shown}: generic_nonmember_action {code} is invalid")
    reason = f"nonmember {shown}: generic_nonmember_action {code} ({action})"
    if action == "accept":
        return _mm2_passed(facts, "nonmember-moderation", reason)
    return ListVerdict(action, NONMEMBER if action == "hold" else None,
                       rule="nonmember-moderation", reasons=(reason,))


def _mm2_shunted(kind: str, rule: str, what: str) -> ListVerdict:
    """An action code Mailman 2 does not know: its assert fails and the post lands in
    the shunt queue for the site admin, which for the sender is a hold."""
    return ListVerdict("hold", kind, rule=rule,
                       reasons=(f"{what} (Mailman 2 would shunt the post)",))
