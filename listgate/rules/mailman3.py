"""Mailman 3.3.10's posting rules, ported one by one from ``mailman/rules/*.py``.

Each function mirrors the ``check()`` of the Mailman rule of the same name, reading
the same values the same way (see :mod:`listgate.post`), so that edge cases --
header repeats, folds, encodings, MIME structure -- come out as Mailman's do.  The
order they run in, and where a hit sends the post, is the table in
:mod:`listgate.chain`.  Facts a rule needs from Mailman's database (members, bans,
list settings) arrive in :class:`~listgate.model.ListFacts` from the backend.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Iterator
from contextlib import suppress
from email.header import Header
from email.iterators import typed_subpart_iterator
from email.message import Message
from typing import Any

from listgate.compat32 import MailmanFails, NotRead, Unevaluable, Unseen, decoded, getaddresses
from listgate.model import NONMEMBER_LISTS, HeaderMatch, ListFacts, SenderFacts
from listgate.post import Post
from listgate.rules import Hit, Input, Pass, password_hit

MEMBER, NONMEMBER = "member", "nonmember"

#: ``rules/approved.py`` HEADERS, in the order Mailman looks for them
APPROVE_HEADERS = ("approve", "approved", "x-approve", "x-approved")

#: ``rules/administrivia.py``: keyword -> (min args, max args)
EMAIL_COMMANDS = {
    "confirm": (1, 1), "help": (0, 0), "info": (0, 0), "lists": (0, 0), "options": (0, 0),
    "password": (2, 2), "remove": (0, 0), "set": (3, 3), "subscribe": (0, 3),
    "unsubscribe": (0, 1), "who": (0, 2),
}

#: ``rules/digests.py`` DIGRE
_DIGEST_SUBJECT = re.compile(r" Digest, Vol \d+, Issue \d+$", re.IGNORECASE)

#: the text Mailman's reject chain sends for a DMARC reject without a list notice
DMARC_REJECT_NOTICE = (
    "You are not allowed to post to this mailing list From: a domain which publishes a "
    "DMARC policy of reject or quarantine, and your message has been automatically "
    "rejected. If you think that your messages are being rejected in error, contact the "
    "mailing list owner at {owner}.")


def _owner(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local}-owner@{domain}"


def _members(facts: ListFacts) -> list[SenderFacts]:
    return [s for s in facts.senders if s.is_member and s.authenticated]


def sender_kind(inp: Input) -> str:
    """Whose hold a content hold is: a member's (the moderators asked to see those) or
    a nonmember's (the moderation queue's usual spam)."""
    return MEMBER if _members(inp.facts) else NONMEMBER


# -- before the chain: the LMTP and incoming runners --------------------------------------


def lmtp_defects(inp: Input) -> Hit | None:
    """``runners/lmtp.py``: a message whose parse has defects is refused with 501 (the
    MTA in front of Mailman then bounces it to the envelope sender)."""
    msg = inp.post.message  # Unevaluable without the body: only ever a miss, then
    if msg.defects:
        names = ", ".join(sorted({type(d).__name__ for d in msg.defects}))
        return Hit(f"Mailman's LMTP server refuses a malformed message ({names})",
                   notice="Message has defects")
    return None


def autorespond(inp: Input) -> Hit | None:
    """``runners/incoming.py``: ``autorespond_postings = respond_and_discard``.

    Before that, the replybot (``handlers/replybot.py``) answers posts unless X-Ack is
    "no" or Precedence is bulk, junk or list (without "X-Ack: yes"); it creates an
    address for ``msg.sender`` first, which fails for a post without a valid sender."""
    post, action = inp.post, inp.policy.autorespond_postings
    if action != "none":
        ack = post.get("x-ack", "").lower()
        precedence = post.get("precedence", "").lower()
        replies = not (ack == "no" or (ack != "yes" and precedence in ("bulk", "junk", "list")))
        if replies and not post.sender:
            raise MailmanFails("the autoresponder fails on a post without a valid sender")
    if action == "respond_and_discard":
        return Hit("autorespond_postings respond_and_discard: list post replied and "
                   "discarded", notice="This list does not accept posts")
    return None


# -- the built-in chain ---------------------------------------------------------------------


def dmarc_mitigation(inp: Input) -> Hit | None:
    """``rules/dmarc.py``: the From domain publishes p=reject/quarantine (or the From
    address is in ``dmarc_addresses``) and the list rejects or discards such posts.

    Mailman also mitigates when its DNS lookup fails; listgate never refuses for a
    DNS failure (the lookup answers "unknown", which is :class:`Unevaluable`, a miss).
    """
    policy = inp.policy
    action = policy.dmarc_mitigate_action
    if action not in ("reject", "discard"):
        return None  # no_mitigation misses; munge_from/wrap_message miss and accept
    checker = inp.ctx.dmarc
    if checker is None:
        raise Unevaluable("no DMARC checker configured")
    first = inp.post.get("from", "")
    answer = checker.mitigate(str(first), policy.dmarc_addresses)
    if answer.status == "unknown":
        raise Unevaluable(f"DMARC policy unknown: {answer.reason}")
    if answer.status != "mitigate":
        return None
    if action == "discard":
        return Hit(f"DMARC moderation: {answer.reason}", action="discard")
    notice = policy.dmarc_moderation_notice or DMARC_REJECT_NOTICE.format(
        owner=_owner(policy.address))
    return Hit(f"DMARC moderation: {answer.reason}", action="reject", notice=notice)


def no_senders(inp: Input) -> Hit | None:
    """``rules/no_senders.py``: ``msg.sender`` is empty."""
    if not inp.post.sender:
        return Hit("The message has no valid senders")
    return None


def body_approve_line(inp: Input) -> str | None:
    """``rules/approved.py``'s second place: the first non-blank line of the first
    text/plain part, when it reads ``Approve[d]: PASSWORD`` (the line is not stripped
    before the split, so an indented line does not count).  Needs the body."""
    part: Message | None = None
    payload = None
    for part in typed_subpart_iterator(inp.post.message, "text", "plain"):
        payload = part.get_payload(decode=True)
        break
    if payload is None or part is None:
        return None
    charset = part.get_content_charset("us-ascii")
    try:
        text = payload.decode(charset, "replace")
    except LookupError:
        text = payload.decode("us-ascii", "replace")
    line = ""
    for line in text.splitlines(True):
        if line.strip() != "":
            break
    if ":" in line:
        header, value = line.split(":", 1)
        if header.lower() in APPROVE_HEADERS:
            return value.strip()
    return None


def approved(inp: Input) -> Any:
    """``rules/approved.py``: the moderator password in an Approve header (the first of
    Approve, Approved, X-Approve, X-Approved present, its raw value) or on the body's
    first line accepts the post, before every rule but DMARC and no-senders.

    A hash costs ~0.1-0.5 s of CPU, so the password is checked only when it matters:
    when the rest of the chain would have the post refused.  Otherwise the verdict of
    the rest of the chain is the answer (the post is accepted either way).  As in
    Mailman, a password found in a header removes all four headers for the rules after
    this one, right or wrong."""
    policy = inp.policy
    if not policy.approval_passwords:
        return None  # Mailman: moderator_password is None -> miss
    post = inp.post
    header = next((h for h in APPROVE_HEADERS if h in post), None)
    password: str | Header | None = None
    if header is not None:
        password, where = post.get(header), f"{header.title()} header"
        if not isinstance(password, str):
            # a Header object (non-ASCII bytes): passlib's verify raises on it, and the
            # incoming runner shunts the post, whatever the rest of the chain says
            raise MailmanFails(f"Mailman fails on the non-ASCII password in the {where}")
        inp.post = post.without(APPROVE_HEADERS)
    rest = inp.rest()
    if not inp.ctx.refuses(rest):
        return rest
    if header is None:
        password, where = body_approve_line(inp), "first line of the body"
        if password is None:
            return None
    return password_hit(inp, password, policy.approval_passwords,
                        f"moderator password in the {where}")


def loop(inp: Input) -> Hit | None:
    """``rules/loop.py``: a List-Post header equal to the posting address."""
    try:
        posts = {v.strip().lower() for v in inp.post.get_all("list-post")}
    except AttributeError:
        raise MailmanFails("Mailman fails on a non-ASCII List-Post header") from None
    if inp.policy.address in posts:
        return Hit("Message has already been posted to this list",
                   notice="Message has already been posted to this list")
    return None


def banned_address(inp: Input) -> Hit | None:
    """``rules/banned_address.py``: any sender is banned (the backend judged the bans)."""
    for s in inp.facts.senders:
        if s.banned:
            return Hit(f"Message sender {s.address} is banned from this list")
    return None


def _values_matching(pattern: str, values: list[Any]) -> Any:
    """``HeaderMatchRule.check``'s loop: the first value (RFC 2047 decoded) the pattern
    finds, case-insensitively; None if none; ``False`` for a bad regexp (Mailman logs
    it and the rule misses)."""
    for value in values:
        if isinstance(value, Header):
            value = value.encode()
        text = decoded(value)
        try:
            mo = re.search(pattern, text, re.IGNORECASE)
        except re.error:
            return False
        if mo:
            return value
    return None


#: headers an MTA adds to the message after listgate has seen it: Postfix does not
#: show a milter its own Received line, and every hop behind us adds one
ADDED_AFTER_US = frozenset({"received"})
#: what Mailman's LMTP runner adds before the chain runs (``add_message_hash``,
#: ``msg['X-MailFrom']``): header rules see these too
_LMTP_ADDED = ("message-id-hash", "x-message-id-hash", "x-mailfrom")


def _message_id_hash(post: Post) -> str | None:
    """``utilities/email.py`` add_message_hash: base32 of the SHA-1 of the Message-ID
    without its angle brackets (after the LMTP runner's ``<[...]>`` repair)."""
    mid = post.get("message-id")
    if mid is None:
        return None
    mid = re.sub(r"^<?\[(.*)\]>?", r"<\1>", str(mid))
    mid = mid[1:-1] if mid.startswith("<") and mid.endswith(">") else mid.strip()
    return base64.b32encode(hashlib.sha1(mid.encode("utf-8")).digest()).decode("ascii")


def header_values(post: Post, header: str) -> list[Any]:
    """Every value of ``header`` the header-match chain sees: all parts' values, with
    what Mailman's LMTP runner adds or replaces (Message-ID-Hash, X-MailFrom)."""
    name = header.lower()
    if name not in _LMTP_ADDED:
        return post.walk_get_all(header)
    if name == "x-mailfrom":
        return [*post.walk_get_all(header), post.envelope_sender]
    digest = _message_id_hash(post)
    if digest is None:
        return post.walk_get_all(header)
    parts = post.walk_get_all(header)[len(post.get_all(header)):]  # top-level ones replaced
    return [digest, *parts]


def header_match_rule(header: str, pattern: str) -> Any:
    """A ``chains/headers.py`` HeaderMatchRule for one (header, pattern): every
    occurrence of the header in every part of the message counts.

    A Received line the MTA adds after us may match where the ones we see do not: a
    rule on Received that finds nothing here is :class:`Unseen` (a miss where the
    rule can only refuse, undecided where it can accept)."""

    def rule(inp: Input) -> Hit | None:
        if not inp.post.headers_complete:
            raise Unevaluable("the message has more headers than listgate keeps")
        found = _values_matching(pattern, header_values(inp.post, header))
        if found is None and header.lower() in ADDED_AFTER_US:
            raise Unseen(f"the MTA adds a {header} header listgate cannot see, which "
                         f"{pattern!r} may match")
        if found is None or found is False:
            return None
        return Hit(f'Header "{header}" matched a header rule ({header}: '
                   f"{str(found)[:80]}; pattern {pattern!r})",
                   hold_kind=sender_kind(inp),
                   notice=f'Header "{header}" matched a header rule')

    rule.__name__ = f"header_match[{header}: {pattern}]"
    return rule


@functools.lru_cache(maxsize=256)
def site_header_checks(text: str) -> tuple[tuple[str, str], ...]:
    """``HeaderMatchChain.get_links``: the site's ``[antispam] header_checks`` lines as
    (header, pattern); blank and bogus lines (no colon) are skipped, as Mailman does."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(":", 1)
        if len(parts) != 2:
            continue
        out.append((parts[0], parts[1].lstrip()))
    return tuple(out)


def list_header_matches(inp: Input) -> Iterator[HeaderMatch]:
    yield from inp.policy.header_matches


def emergency(inp: Input) -> Hit | None:
    """``rules/emergency.py``: the list is in emergency moderation."""
    if inp.policy.emergency:
        return Hit("Emergency moderation is in effect for this list", hold_kind=MEMBER)
    return None


def member_moderation(inp: Input) -> Hit | Pass | None:
    """``rules/moderation.py`` MemberModeration: the first sender that is a member (or
    whose user has a member address) decides by its action, or the list's default;
    ``defer`` misses (the rest of the chain applies)."""
    facts = inp.facts
    if any(s.banned for s in facts.senders):
        return None
    members = _members(facts)
    if not members:
        return None
    m = members[0]
    if m.member_action is None:
        action, source = inp.policy.default_member_action, "default_member_action"
    else:
        action, source = m.member_action, "member moderation_action"
    if action == "defer":
        return Pass(f"member {m.address}: {source} defer")
    return Hit(f"member {m.address}: {source} {action}", action=action, hold_kind=MEMBER)


def _entry_matches(entry: str, list_key: str, sender: SenderFacts) -> bool:
    """One ``*_these_nonmembers`` entry against one sender, as Mailman 3.3.10 checks it:
    ``^regexp`` (re.match, case-sensitive against the lowercased sender), ``@list@domain``
    (accept list only: a member of that list), or exact (case-sensitive)."""
    if entry.startswith("^") and re.match(entry, sender.address):
        return True
    if list_key == "accept_these_nonmembers" and entry.startswith("@"):
        return entry[1:].lower() in sender.member_of
    return entry == sender.address


def nonmember_moderation(inp: Input) -> Hit | Pass | None:
    """``rules/moderation.py`` NonmemberModeration, for each sender in order: its own
    nonmember record's action, else the accept/hold/reject/discard lists (an accept
    entry makes the rule miss: the rest of the chain applies), else, when no sender
    matched anything, the list's ``default_nonmember_action``."""
    facts, policy = inp.facts, inp.policy
    if any(s.banned for s in facts.senders):
        return None
    if not facts.senders:
        action = policy.default_nonmember_action
        return _nonmember_action(action, "no sender was found in the message: "
                                 f"default_nonmember_action {action}")
    if _members(facts):
        return None
    for s in facts.senders:
        own = s.nonmember_action
        if own is not None and not (own == "accept" and not s.authenticated):
            return _nonmember_action(own, f"nonmember {s.address}: moderation_action {own}")
        for list_key in NONMEMBER_LISTS:
            if list_key == "accept_these_nonmembers" and not s.authenticated:
                continue  # require_authenticated_sender: an unverified address earns nothing
            for entry in getattr(policy, list_key):
                try:
                    hit = _entry_matches(entry, list_key, s)
                except re.error:
                    continue  # Mailman logs the bad regexp and goes on
                if not hit:
                    continue
                why = f"nonmember {s.address}: {list_key} {entry!r}"
                if list_key == "accept_these_nonmembers":
                    return Pass(why)
                return _nonmember_action(list_key.split("_", 1)[0], why)
    action = policy.default_nonmember_action
    who = ", ".join(dict.fromkeys(s.address for s in facts.senders))
    return _nonmember_action(action, f"nonmember {who}: default_nonmember_action {action}")


def _nonmember_action(action: str, reason: str) -> Hit | Pass:
    if action == "defer":
        return Pass(reason)
    return Hit(reason, action=action, hold_kind=NONMEMBER)


# -- the deferred holds (each only records a reason; "any" then holds) ------------------------


def administrivia(inp: Input) -> Hit | None:
    """``rules/administrivia.py``: the Subject or one of the first
    ``email_commands_max_lines`` non-blank lines of the first text/plain part looks like
    an email command (keyword plus an allowed number of arguments)."""
    if not inp.policy.administrivia:
        return None
    post = inp.post
    lines = []
    subject = str(post.get("subject", ""))
    if subject != "":
        lines.append(subject)
    limit = inp.facts.site.email_commands_max_lines
    for part in typed_subpart_iterator(post.message, "text", "plain"):
        payload = part.get_payload(decode=True)
        text = payload.decode(part.get_content_charset("utf-8"), errors="replace")
        n = 0
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            n += 1
            if n > limit:
                break
            lines.append(line)
        break
    for line in lines:
        words = [w.lower() for w in line.split()]
        if words[0] not in EMAIL_COMMANDS:
            continue
        lo, hi = EMAIL_COMMANDS[words[0]]
        if lo <= len(words) - 1 <= hi:
            return Hit(f"Message contains administrivia ({line[:60]!r})",
                       notice="Message contains administrivia")
    return None


def implicit_dest(inp: Input) -> Hit | None:
    """``rules/implicit_dest.py``: with ``require_explicit_destination``, neither the
    posting address nor an acceptable alias is in To, Cc, Resent-To or Resent-Cc."""
    policy = inp.policy
    if not policy.require_explicit_destination:
        return None
    aliases = {a for a in policy.acceptable_aliases if not a.startswith("^")}
    patterns = [a for a in policy.acceptable_aliases if a.startswith("^")]
    aliases.add(policy.address)
    recipients = set()
    for header in ("to", "cc", "resent-to", "resent-cc"):
        for _name, address in getaddresses(inp.post.get_all(header)):
            address = address.lower()
            if address in aliases:
                return None
            recipients.add(address)
    for pattern in patterns:
        for recipient in recipients:
            try:
                if re.match(pattern, recipient, re.IGNORECASE):
                    return None
            except re.error:
                with suppress(re.error):
                    if re.match(re.escape(pattern), recipient, re.IGNORECASE):
                        return None
    return Hit("Message has implicit destination")


def max_recipients(inp: Input) -> Hit | None:
    """``rules/max_recipients.py``: To + Cc hold max_num_recipients addresses or more."""
    limit = inp.policy.max_num_recipients
    if limit == 0:
        return None
    post = inp.post
    if len(getaddresses(post.get_all("to") + post.get_all("cc"))) >= limit:
        return Hit(f"Message has more than {limit} recipients")
    return None


def max_size(inp: Input) -> Hit | None:
    """``rules/max_size.py``: the message (as received, in KB) exceeds max_message_size.

    listgate counts what it will hand on, a lower bound of what Mailman receives, so a
    hit is certain; a post just under the limit here may still be held there."""
    policy = inp.policy
    if policy.max_message_size == 0:
        return None
    size = inp.post.size
    if size is None:
        raise NotRead("the message size is unknown (the body was not read)")
    if size / 1024.0 <= policy.max_message_size:
        return None
    if policy.filter_content and inp.facts.site.check_max_size_on_filtered_message:
        raise Unevaluable("the size after Mailman's content filter cannot be known here")
    notice = f"The message is larger than the {policy.max_message_size} KB maximum size"
    return Hit(f"{notice} ({size} octets)", notice=notice)


def news_moderation(inp: Input) -> Hit | None:
    """``rules/news_moderation.py``: the list gateways to a moderated newsgroup."""
    if inp.policy.newsgroup_moderation == "moderated":
        return Hit("Post to a moderated newsgroup gateway")
    return None


def no_subject(inp: Input) -> Hit | None:
    """``rules/no_subject.py``: no Subject, or one that is blank (as ``str()`` of it)."""
    if str(inp.post.get("subject", "")).strip() == "":
        return Hit("Message has no subject")
    return None


def digests(inp: Input) -> Hit | None:
    """``rules/digests.py``, only with the site's ``hold_digest = yes``: a digest-like
    Subject.  (Its second test, quoting the digest masthead, needs Mailman's templates
    and is not evaluated: it could only add a hold.)"""
    if not inp.facts.site.hold_digest:
        return None
    if _DIGEST_SUBJECT.search(str(inp.post.get("subject", "")).strip()):
        return Hit("Message has a digest subject")
    return None


def suspicious_header(inp: Input) -> Hit | None:
    """``rules/suspicious.py``: a header matches a ``bounce_matching_headers`` line
    (``Header: regexp``, case-insensitive search; ``#`` lines are comments)."""
    text = inp.policy.bounce_matching_headers
    if not text:
        return None
    for header, cre in _bounce_matchers(text):
        for value in inp.post.get_all(header):
            if cre.search(str(value)):
                return Hit(f'Header "{str(value)[:80]}" matched a bounce_matching_header line',
                           notice="A header matched a bounce_matching_header line")
    return None


@functools.lru_cache(maxsize=256)
def _bounce_matchers(text: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        i = line.find(":")
        if i < 0:
            continue
        try:
            out.append((line[:i], re.compile(line[i + 1:].lstrip(), re.IGNORECASE)))
        except re.error:
            continue
    return tuple(out)


def any_hit(inp: Input) -> Hit | None:
    """``rules/any.py``: some earlier rule hit (in the built-in chain: the deferred
    holds, which concern a post whose sender passed moderation: a member's hold)."""
    if inp.hits:
        return Hit("; ".join(h.reason for _name, h in inp.hits), hold_kind=MEMBER)
    return None


def any_site_check(inp: Input) -> Hit | None:
    """``rules/any.py`` in the header-match chain: a site ``header_checks`` line hit;
    whose hold it is depends on the senders."""
    if inp.hits:
        return Hit("; ".join(h.reason for _name, h in inp.hits), hold_kind=sender_kind(inp))
    return None


def truth(inp: Input) -> Hit:
    """``rules/truth.py``: always."""
    return Hit("")
