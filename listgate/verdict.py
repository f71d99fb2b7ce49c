"""What Mailman 3 would do with a post: the list verdict, as a pure function.

The order and semantics are Mailman 3.3.10's posting chain (``chains/builtin.py``,
``rules/moderation.py``, ``model/bans.py``), restricted to the rules that depend on
who the sender is; see shared reference ``mailman-posting-semantics.md``.  Rules that
need the body or a moderator password (approved, loop, administrivia, size...) are
left to the list manager: listgate only refuses what the list would certainly not
post.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from listgate.model import NONMEMBER_LISTS, ListFacts, Mailman2Facts, SenderFacts

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


def _entry_matches(entry: str, sender: SenderFacts) -> bool:
    """Mailman 3.3.10 ``_does_nonmember_match``: ^regexp (re.match, case-sensitive
    against the lowercased sender), exact (case-sensitive), or @list@domain membership."""
    if entry.startswith("^"):
        try:
            return re.match(entry, sender.address) is not None
        except re.error:
            return False  # Mailman logs and skips a bad regexp
    if entry.startswith("@") and "@" in entry[1:]:
        return entry[1:].lower() in sender.member_of
    return entry == sender.address


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


def mailman3_verdict(facts: ListFacts) -> ListVerdict:
    """Decide as Mailman 3's posting chain would, from the sender facts alone."""
    policy, senders = facts.policy, facts.senders

    if not senders:
        return ListVerdict("discard", rule="no-senders",
                           reasons=("no valid sender in From, envelope, Reply-To or Sender",))

    for s in senders:
        if s.banned:
            return ListVerdict("discard", rule="banned-address",
                               reasons=(f"{s.address} is banned from {policy.address}",))

    if policy.emergency:
        return ListVerdict("hold", MEMBER, rule="emergency",
                           reasons=(f"{policy.address} is in emergency moderation",))

    # member-moderation: the first sender that is a member decides (an unauthenticated
    # member address, with require_authenticated_sender, is a nonmember)
    member = next((s for s in senders if s.is_member and s.authenticated), None)
    if member is not None:
        if member.member_action is None:
            action, source = policy.default_member_action, "default_member_action"
        else:
            action, source = member.member_action, "member moderation_action"
        if action != "defer":
            return ListVerdict(action, MEMBER if action == "hold" else None,
                               rule="member-moderation",
                               reasons=(f"member {member.address}: {source} {action}",))
        # defer: member-moderation misses; nonmember-moderation misses for members
        return ListVerdict("accept", rule="member-moderation",
                           reasons=(f"member {member.address}: {source} defer -> accept",))

    # nonmember-moderation
    for s in senders:
        if s.nonmember_action is not None and not (
                s.nonmember_action == "accept" and not s.authenticated):
            # the first sender with its own action decides; defer makes the rule miss
            return _nonmember(s.nonmember_action, "nonmember-moderation",
                              f"nonmember {s.address}: moderation_action {s.nonmember_action}")
        for list_key in NONMEMBER_LISTS:
            for entry in getattr(policy, list_key):
                if list_key != "accept_these_nonmembers" and entry.startswith("@"):
                    continue  # @list references count in the accept list only
                if list_key == "accept_these_nonmembers" and not s.authenticated:
                    continue  # an unverified address earns no acceptance
                if _entry_matches(entry, s):
                    action = list_key.split("_", 1)[0]
                    return _nonmember(action, "nonmember-moderation",
                                      f"nonmember {s.address}: {list_key} {entry!r}")
    action = policy.default_nonmember_action
    who = ", ".join(s.address for s in senders)
    return _nonmember(action, "nonmember-moderation",
                      f"nonmember {who}: default_nonmember_action {action}")


def _nonmember(action: str, rule: str, reason: str) -> ListVerdict:
    if action in ("accept", "defer"):
        # an accept_these_nonmembers hit (or a deferring default) falls through to accept
        return ListVerdict("accept", rule=rule, reasons=(reason,))
    return ListVerdict(action, NONMEMBER if action == "hold" else None, rule=rule,
                       reasons=(reason,))


def list_verdict(facts: object) -> ListVerdict:
    """The verdict for whatever facts a backend returned (Mailman 3's rules for ListFacts)."""
    if isinstance(facts, ListFacts):
        return mailman3_verdict(facts)
    if isinstance(facts, Mailman2Facts):
        return mailman2_verdict(facts)
    raise TypeError(f"no verdict rules for {type(facts).__name__}")


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
