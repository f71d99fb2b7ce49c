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
from dataclasses import dataclass, field

from listgate.model import NONMEMBER_LISTS, ListFacts, SenderFacts

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

    # member-moderation: the first sender that is a member decides
    member = next((s for s in senders if s.is_member), None)
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
        if s.nonmember_action is not None:
            # the first sender with its own action decides; defer makes the rule miss
            return _nonmember(s.nonmember_action, "nonmember-moderation",
                              f"nonmember {s.address}: moderation_action {s.nonmember_action}")
        for list_key in NONMEMBER_LISTS:
            for entry in getattr(policy, list_key):
                if list_key != "accept_these_nonmembers" and entry.startswith("@"):
                    continue  # @list references count in the accept list only
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
    raise TypeError(f"no verdict rules for {type(facts).__name__}")
