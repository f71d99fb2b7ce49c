"""Mailman 2.1.39's posting pipeline, ported handler by handler from ``Mailman/Handlers``.

Mailman 2 runs a list post through ``GLOBAL_PIPELINE`` (``Defaults.py``); a handler
that refuses the post raises (``DiscardMessage``, ``RejectMessage``, or
``HoldMessage`` after ``Hold.hold_for_approval``), which ends the pipeline at once.
Each function here is one check of one handler, reading the values that handler reads
the way Python 2.7 reads them (:mod:`listgate.mm2compat`: raw byte strings, ASCII
case folding, byte regexps, Python 2's RFC 2047 decoding where SpamDetect decodes).
The order, and where a hit sends the post, is :data:`listgate.chain.MAILMAN2_PIPELINE`.
What the list file says arrives in :class:`~listgate.model.Mailman2Facts`.

Where Python 3 cannot tell what Python 2 would have done (a regexp Python 3 refuses,
a non-ASCII pattern whose bytes the list file no longer shows), the check raises
:class:`~listgate.compat32.Unevaluable`: a miss where it can only refuse, the post
left to Mailman where it could have let the post through.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from email.iterators import typed_subpart_iterator
from typing import Any

from listgate import mm2compat as mm2
from listgate.compat32 import Unevaluable
from listgate.model import NONMEMBER_LISTS, Mailman2Facts
from listgate.rules import Hit, Input, Pass, password_hit

MEMBER, NONMEMBER = "member", "nonmember"

#: what compiling a regexp from a list file can raise (a repeat too large, groups
#: nested too deep are not re.error)
RE_ERRORS = (re.error, OverflowError, RecursionError)

#: ``Defaults.py`` action codes (header_filter_rules use DEFER, REJECT, DISCARD,
#: ACCEPT and HOLD)
DEFER, APPROVE, REJECT, DISCARD, SUBSCRIBE, UNSUBSCRIBE, ACCEPT, HOLD = range(8)
_FILTER_ACTIONS = {REJECT: "reject", DISCARD: "discard", HOLD: "hold"}

#: ``Approve.py``: the headers looked for, in order; the body line's names
APPROVE_HEADERS = ("approved", "approve", "x-approved", "x-approve")
_APPROVE_NAMES = (b"approve", b"approved", b"x-approve", b"x-approved")

#: ``Utils.ADMINDATA``: keyword -> (min args, max args)
ADMINDATA = {
    b"confirm": (1, 1), b"help": (0, 0), b"info": (0, 0), b"lists": (0, 0),
    b"options": (0, 0), b"password": (2, 2), b"remove": (0, 0), b"set": (3, 3),
    b"subscribe": (0, 3), b"unsubscribe": (0, 1), b"who": (0, 1),
}
#: ``Defaults.py`` DEFAULT_MAIL_COMMANDS_MAX_LINES (a site setting, at its default)
MAIL_COMMANDS_MAX_LINES = 25
#: ``Defaults.py`` NORMALIZE_FORM (a site setting, at its default)
NORMALIZE_FORM = "NFKC"

#: headers an MTA adds after listgate has seen the message -- its own Received line
#: and the local delivery agent's Return-Path, Delivered-To, X-Original-To (Exim:
#: Envelope-to, Delivery-date) -- which SpamDetect's header text includes
ADDED_AFTER_US = frozenset({"received", "return-path", "delivered-to", "x-original-to",
                            "envelope-to", "delivery-date"})

#: ``inp.state`` key: Approve found the password on the body's first line and removed
#: that line (re-encoding the part), so Hold measures and reads another body
BODY_LINE_REMOVED = "mm2-approve-body-line-removed"
_HEADER_TEXT = "mm2-header-text"

DMARC_REJECT_NOTICE = (
    "You are not allowed to post to this mailing list From: a domain which publishes a "
    "DMARC policy of reject or quarantine, and your message has been automatically "
    "rejected.  If you think that your messages are being rejected in error, contact the "
    "mailing list owner at {owner}.")
NONMEMBER_REJECT_NOTICE = (
    "Your message has been rejected, probably because you are not subscribed to the "
    "mailing list and the list's policy is to prohibit non-members from posting to it.  "
    "If you think that your messages are being rejected in error, contact the mailing "
    "list owner at {owner}.")


def _owner(facts: Mailman2Facts) -> str:
    """``GetOwnerEmail()``: ``name-owner@host_name``."""
    return f"{facts.internal_name}-owner@{facts.host_name}"


def sender_kind(facts: Mailman2Facts) -> str:
    """Whose hold a hold before Moderate is: a member's if any sender is a member."""
    return MEMBER if any(s.member is not None for s in facts.senders) else NONMEMBER


def _items(inp: Input) -> list[tuple[str, bytes]]:
    return inp.post.mailman2_items


def get_pattern(sender: str, entries: tuple[str, ...], facts: Mailman2Facts,
                at_list: bool) -> tuple[str | None, str | None]:
    """``MailList.GetPattern(sender, entries, at_list=...)``: (the entry that matches or
    None, a ``^`` entry Python 3 cannot compile or None).

    Plain entries (stripped, not starting with ``^`` or ``@``) are compared
    case-insensitively (ASCII) and all of them first; then, in order, ``^`` entries
    with ``re.search(entry, sender, re.IGNORECASE)`` on the bytes, as Python 2 matches
    a byte string, and (with ``at_list``) ``@name`` entries: ``sender`` is a member of
    the Mailman 2 list ``name`` (this list itself and unknown lists never match).  A
    pattern Python 3 refuses is reported: Mailman 2 logs its bad ones and goes on, but
    Python 2 took some that Python 3 does not (unknown escapes), so whether it matched
    there is unknown.
    """
    low = mm2.ascii_lower(sender)
    ws = mm2.PY2_WS_TEXT
    plain = {mm2.ascii_lower(e.strip(ws)): e for e in entries
             if e.strip(ws) and not e.startswith(("^", "@"))}
    if low in plain:
        return plain[low], None
    unsure = None
    raw = mm2.to_bytes(sender)
    for entry in entries:
        if entry.startswith("^"):
            try:
                if re.search(mm2.to_bytes(entry), raw, re.IGNORECASE):
                    return entry, None
            except RE_ERRORS:
                unsure = unsure or entry
        elif at_list and entry.startswith("@"):
            name = mm2.ascii_lower(entry[1:]).strip(ws)
            if name != facts.internal_name and name in facts.primary_member_of:
                return entry, None
    return None, unsure


# -- SpamDetect.py -------------------------------------------------------------------------


def dmarc_moderation(inp: Input) -> Hit | None:
    """``SpamDetect.process``, first: with ``dmarc_moderation_action`` 3 (reject) or 4
    (discard), a From address in ``dmarc_moderation_addresses`` (``GetPattern``) or at
    a domain whose DMARC policy is reject, or quarantine with
    ``dmarc_quarantine_moderation_action`` (``Utils.IsDMARCProhibited``), refuses the
    post before anything else, approved or not.  1 (munge) and 2 (wrap) accept it.

    The address is ``parseaddr(msg.get('from'))``'s, raw.  A DNS answer listgate does
    not have is a miss (Mailman mostly goes on after a DNS failure too)."""
    facts = inp.facts
    action = facts.dmarc_moderation_action
    if action not in (3, 4):
        return None
    value = mm2.get(_items(inp), "from")
    pairs = mm2.getaddresses([value]) if value else []
    address = mm2.to_text(pairs[0][1]) if pairs else ""
    if not address:
        return None
    entry, _unsure = get_pattern(address, facts.dmarc_moderation_addresses, facts, False)
    if entry is not None:
        reason = f"From {address} matches dmarc_moderation_addresses entry {entry!r}"
    else:
        checker = inp.ctx.dmarc
        if checker is None:
            raise Unevaluable("no DMARC checker configured")
        answer = checker.mitigate(address, ())
        if answer.status == "unknown":
            raise Unevaluable(f"DMARC policy unknown: {answer.reason}")
        if answer.status != "mitigate":
            return None
        if not facts.dmarc_quarantine_moderation_action and \
                getattr(answer, "policy", None) != "reject":
            raise Unevaluable("the From domain's DMARC policy may be quarantine, which this "
                              "list does not moderate (dmarc_quarantine_moderation_action "
                              "No)")
        reason = f"DMARC: {answer.reason}"
    if action == 4:
        return Hit(f"dmarc_moderation_action 4 (discard): {reason}", action="discard")
    notice = facts.dmarc_moderation_notice or DMARC_REJECT_NOTICE.format(owner=_owner(facts))
    return Hit(f"dmarc_moderation_action 3 (reject): {reason}", action="reject",
               notice=notice)


def header_filter_text(inp: Input) -> str:
    """``SpamDetect.process``: ``getDecodedHeaders`` of every part (``msg.walk()``),
    once per post.  Raises :class:`Unevaluable` where Mailman 2 fails or listgate lacks
    headers (more than it keeps, or a part's, with the body unread)."""
    cached = inp.state.get(_HEADER_TEXT)
    if cached is None:
        try:
            if not inp.post.headers_complete:
                raise Unevaluable("the message has more headers than listgate keeps")
            cached = "".join(mm2.decoded_headers(items, NORMALIZE_FORM)
                             for items in inp.post.mailman2_walk_items())
        except Unevaluable as e:
            cached = e
        inp.state[_HEADER_TEXT] = cached
    if isinstance(cached, Unevaluable):
        raise cached
    return cached


@functools.lru_cache(maxsize=512)
def filter_pattern(line: str) -> re.Pattern[str] | Unevaluable:
    """One ``header_filter_rules`` pattern as SpamDetect compiles it:
    ``xml_to_unicode``, ``normalize(NORMALIZE_FORM)``, then ``re.search`` with
    IGNORECASE, MULTILINE and UNICODE.  An :class:`Unevaluable` (returned, so that it
    is cached) for a non-ASCII pattern -- Mailman 2 decodes its bytes with the list's
    charset, and the list file as listgate reads it no longer tells which bytes they
    were -- or one Python 3 refuses (Python 2 may have taken it; if not, Mailman logs
    it and, before any other pattern was tried, fails on an unbound variable)."""
    if not line.isascii():
        return Unevaluable(f"header_filter_rules pattern {line[:60]!r} is not ASCII")
    pattern = unicodedata.normalize(NORMALIZE_FORM, mm2.xml_to_unicode(line))
    try:
        return re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    except RE_ERRORS as e:
        return Unevaluable(f"header_filter_rules pattern {line[:60]!r} is not a Python 3 "
                           f"regexp ({e})")


def filter_entries(facts: Mailman2Facts) -> list[tuple[int, int, str, int]]:
    """The patterns SpamDetect tries, in order: (rule index, line index, pattern,
    action), leaving out ``DEFER`` rules, ``#`` lines, blank lines, and rules whose
    action does nothing when they match (codes other than reject, discard, hold and
    accept)."""
    out = []
    for i, rule in enumerate(facts.header_filter_rules):
        if rule.action == DEFER or (rule.action != ACCEPT and rule.action not in
                                    _FILTER_ACTIONS):
            continue
        for j, raw in enumerate(mm2.to_bytes(rule.patterns).splitlines()):
            line = mm2.to_text(raw)
            if line.startswith("#") or not line.strip(mm2.PY2_WS_TEXT):
                continue
            out.append((i, j, line, rule.action))
    return out


_LITERAL_NAME = re.compile(r"\^((?:[A-Za-z0-9_]|-|\\-)+):")


def names_visible_header(line: str) -> bool:
    """The pattern can only match a header line listgate sees: it starts with ``^``
    and a literal header name that no MTA adds after us."""
    mo = _LITERAL_NAME.match(line)
    return mo is not None and mo.group(1).replace("\\-", "-").lower() not in ADDED_AFTER_US


def _would_refuse_later(inp: Input, later: list[tuple[int, int, str, int]]) -> bool:
    """Would a pattern after this one refuse the post (or might it: a pattern listgate
    cannot judge), before an accept pattern matches?"""
    try:
        text = header_filter_text(inp)
    except Unevaluable:
        return False
    for _i, _j, line, action in later:
        cre = filter_pattern(line)
        if isinstance(cre, Unevaluable):
            if action != ACCEPT:
                return True
            continue
        if cre.search(text):
            return action != ACCEPT
    return False


def header_filter_check(entries: list[tuple[int, int, str, int]], k: int) -> Any:
    """The check of ``entries[k]``: SpamDetect's ``re.search(pattern, headers, ...)``.

    A refusing pattern's hit discards, rejects (``Message rejected by filter rule
    match``) or holds the post.  An accept pattern's hit ends SpamDetect (the rest of
    the pipeline still runs).  Where an accept pattern misses or cannot be judged,
    and a later pattern would refuse the post, the miss is not certain: the pattern
    may match a header line the MTA adds after us, unless it names a header we see --
    then the post goes to Mailman."""
    _i, _j, line, action = entries[k]

    def check(inp: Input) -> Hit | None:
        if action == ACCEPT:
            try:
                text = header_filter_text(inp)
            except Unevaluable:
                return None  # the refusing patterns after it cannot be judged either
            cre = filter_pattern(line)
            if not isinstance(cre, Unevaluable) and cre.search(text):
                return Hit(f"header_filter_rules accept pattern {line!r} matched")
            if isinstance(cre, Unevaluable):
                unsure = cre
            elif names_visible_header(line):
                return None
            else:
                unsure = Unevaluable(f"header_filter_rules accept pattern {line!r} may match "
                                     "a header the MTA adds after listgate (Received, "
                                     "Return-Path, Delivered-To...)")
            if _would_refuse_later(inp, entries[k + 1:]):
                raise unsure
            return None
        text = header_filter_text(inp)
        cre = filter_pattern(line)
        if isinstance(cre, Unevaluable):
            raise cre
        mo = cre.search(text)
        if not mo:
            return None
        what = _FILTER_ACTIONS[action]
        reason = (f"header_filter_rules {what} pattern {line!r} matched "
                  f"{mo.group(0)[:80]!r}")
        if what == "reject":
            return Hit(reason, action="reject", notice="Message rejected by filter rule match")
        if what == "hold":
            return Hit(reason, action="hold", hold_kind=sender_kind(inp.facts))
        return Hit(reason, action="discard")

    check.__name__ = f"header_filter[{line}]"
    return check


# -- Approve.py ------------------------------------------------------------------------------


def loop(inp: Input) -> Hit | None:
    """``Approve.process``, last: an ``X-BeenThere`` header naming the list's address
    raises ``LoopError``, a ``DiscardMessage`` -- approved or not (so it is checked
    before the password: the verdict is the same and no hash is spent)."""
    facts = inp.facts
    own = mm2.to_bytes(f"{facts.internal_name}@{facts.host_name}").lower()
    for value in mm2.get_all(_items(inp), "x-beenthere"):
        if value.strip(mm2.PY2_WS).lower() == own:
            return Hit("Message has already been posted to this list (X-BeenThere)")
    return None


def body_approve_line(inp: Input) -> bytes | None:
    """``Approve.process``: with none of the headers, the first non-blank line of the
    first text/plain part, if it reads ``Approve[d]:`` or ``X-Approve[d]:`` (the name
    not stripped, so an indented line does not count); the password is the rest,
    ``lstrip()``-ed only.  Raw bytes (Python 2 does not decode the charset)."""
    msg = inp.post.mailman2_message
    part = next(typed_subpart_iterator(msg, "text", "plain"), None)
    if part is None or part.get_payload() is None:
        return None
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    line = b""
    for line in payload.splitlines():
        if line.strip(mm2.PY2_WS):
            break
    i = line.find(b":")
    if i >= 0 and line[:i].lower() in _APPROVE_NAMES:
        return line[i + 1:].lstrip(mm2.PY2_WS)
    return None


def approve(inp: Input) -> Any:
    """``Approve.process`` and ``SecurityManager.Authenticate``: the password in the
    first of Approved, Approve, X-Approved, X-Approve present (its raw value), else on
    the body's first line, approves the post when its SHA-1 is the list's poster,
    moderator or administrator password (the site password deliberately not): Moderate,
    Hold and Emergency then let it through.

    As for Mailman 3, the hash is spent only when the rest of the pipeline would have
    the post refused; otherwise the rest's verdict is the answer.  A password found on
    the body's first line is removed from the body, right or wrong, which changes what
    Hold measures (:data:`BODY_LINE_REMOVED`)."""
    facts, post = inp.facts, inp.post
    password: bytes | None = None
    where = ""
    for header in APPROVE_HEADERS:
        value = mm2.get(post.mailman2_items, header)
        if value is not None:
            password, where = value, f"{header.title()} header"
            break
    pending: Unevaluable | None = None
    if password is None:
        try:
            password = body_approve_line(inp)
        except Unevaluable as e:
            pending = e
        if password is not None:
            where = "first line of the body"
            inp.state[BODY_LINE_REMOVED] = True
    if not facts.approval_passwords and not facts.legacy_admin_password:
        return None  # no password is set: Authenticate never succeeds
    rest = inp.rest()
    if not inp.ctx.refuses(rest):
        return rest
    if pending is not None:
        raise Unevaluable(f"an Approved: line in the body cannot be looked for: {pending}")
    if not password:
        return None  # Authenticate: "Don't authenticate null passwords"
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        raise Unevaluable(f"the password in the {where} is not UTF-8; Mailman 2 hashes "
                          "its bytes, which listgate's checker does not take") from None
    if facts.approval_passwords:
        hit = password_hit(inp, text, facts.approval_passwords,
                           f"list password in the {where}")
        if hit is not None:
            return hit
    if facts.legacy_admin_password:
        raise Unevaluable("the list administrator password is stored in a pre-2.1 form "
                          "(MD5 or crypt) that listgate does not check")
    return None


# -- Moderate.py -----------------------------------------------------------------------------

#: ``member_moderation_action`` codes
_MEMBER_ACTIONS = {0: "hold", 1: "reject", 2: "discard"}
#: ``generic_nonmember_action`` codes; 4 passes Moderate's ``assert 0 <= x <= 4`` but no
#: branch handles it, so the post goes on as if accepted
_NONMEMBER_ACTIONS = {0: "accept", 1: "hold", 2: "reject", 3: "discard", 4: "accept"}


def _shunted(kind: str, what: str) -> Hit:
    """An action code Mailman 2 does not know: its assert fails and the post lands in
    the shunt queue for the site admin, which for the sender is a hold."""
    return Hit(f"{what} (Mailman 2 would shunt the post)", action="hold", hold_kind=kind)


def member_moderation(inp: Input) -> Hit | Pass | None:
    """``Moderate.process``, members: the first sender (From, envelope, Reply-To,
    Sender) that is a member, or whose address at one of the list's
    ``equivalent_domains`` is, decides; its moderate flag applies
    ``member_moderation_action``, else the post goes on (to Hold).  An action code
    Mailman 2 does not know fails its ``assert``: shunted, a hold here."""
    facts = inp.facts
    member = next((s for s in facts.senders if s.member is not None), None)
    if member is None:
        return None
    what = "digest member" if member.digest else "member"
    who = member.address if member.member == member.address else (
        f"{member.address} (as {member.member}, equivalent_domains)")
    if not member.moderated:
        return Pass(f"{what} {who} is not moderated")
    code = facts.member_moderation_action
    action = _MEMBER_ACTIONS.get(code)
    if action is None:
        return _shunted(MEMBER, f"{what} {who} is moderated, but "
                                f"member_moderation_action {code} is invalid")
    reason = f"{what} {who} is moderated: member_moderation_action {code} ({action})"
    return Hit(reason, action=action, hold_kind=MEMBER,
               notice=facts.member_moderation_notice if action == "reject" else "")


def nonmember_moderation(inp: Input) -> Hit | Pass | None:
    """``Moderate.process``, nonmembers (no sender is a member): only ``primary``
    (``get_sender()``) is checked, against accept, hold, reject and
    discard_these_nonmembers in that order (``GetPattern``), then
    ``generic_nonmember_action``.  An accept entry Python 3 cannot compile leaves a
    refusal undecided: Python 2 may have matched it."""
    facts = inp.facts
    if any(s.member is not None for s in facts.senders):
        return None
    sender = facts.primary
    shown = sender or "<>"
    unsure = None
    result: Hit | Pass | None = None
    for list_key in NONMEMBER_LISTS:
        if list_key == "accept_these_nonmembers" and not facts.primary_authenticated:
            continue  # an unverified address earns no acceptance
        entry, bad = get_pattern(sender, getattr(facts, list_key), facts, True)
        if list_key == "accept_these_nonmembers":
            unsure = bad
        if entry is None:
            continue
        result = _nonmember(facts, list_key.split("_", 1)[0],
                            f"nonmember {shown}: {list_key} {entry!r}")
        break
    if result is None:
        code = facts.generic_nonmember_action
        action = _NONMEMBER_ACTIONS.get(code)
        if action is None:
            result = _shunted(NONMEMBER, f"nonmember {shown}: generic_nonmember_action "
                                         f"{code} is invalid")
        else:
            result = _nonmember(facts, action, f"nonmember {shown}: generic_nonmember_action "
                                               f"{code} ({action})")
    if unsure is not None and isinstance(result, Hit):
        raise Unevaluable(f"accept_these_nonmembers entry {unsure!r} is not a Python 3 "
                          "regexp; Mailman 2's Python 2 may have matched it")
    return result


def _nonmember(facts: Mailman2Facts, action: str, reason: str) -> Hit | Pass:
    if action == "accept":
        return Pass(reason)
    notice = ""
    if action == "reject":
        notice = facts.nonmember_rejection_notice or NONMEMBER_REJECT_NOTICE.format(
            owner=_owner(facts))
    return Hit(reason, action=action, hold_kind=NONMEMBER, notice=notice)


# -- Hold.py (each hit holds at once: hold_for_approval raises) -------------------------------


def _changed_body(inp: Input, what: str) -> None:
    if inp.state.get(BODY_LINE_REMOVED):
        raise Unevaluable(f"{what}: Approve removed the body's Approved: line and re-encoded "
                          "the part, so Mailman 2 reads another body")


def administrivia(inp: Input) -> Hit | None:
    """``Hold.process`` / ``Utils.is_administrivia``: with ``administrivia``, a body of
    at most MAIL_COMMANDS_MAX_LINES (25) non-blank lines (every part's payload,
    counted until a ``-- `` line) that is one command word, or one of whose first five
    lines (blank ones included) or whose Subject is a command with an allowed number
    of arguments (``set`` only with on/off)."""
    if not inp.facts.administrivia:
        return None
    _changed_body(inp, "administrivia")
    lines: list[bytes] = []
    count = 0
    for line in mm2.body_lines(inp.post.mailman2_message):
        if line == b"-- ":
            break
        if line.strip(mm2.PY2_WS):
            count += 1
        if count > MAIL_COMMANDS_MAX_LINES:
            return None
        lines.append(line)
    body = b"\n".join(lines).strip(mm2.PY2_WS).lower()
    if body in ADMINDATA:
        return Hit(f"Message may contain administrivia (the body is {body.decode('latin-1')!r})")
    subject = mm2.get(_items(inp), "subject") or b""
    for line in [*lines[:5], subject]:
        if not line.strip(mm2.PY2_WS):
            continue
        words = [w.lower() for w in line.split()]
        limits = ADMINDATA.get(words[0])
        if limits is None:
            continue
        if limits[0] <= len(words) - 1 <= limits[1]:
            if words[0] == b"set" and words[2] not in (b"on", b"off"):
                continue
            shown = line.strip(mm2.PY2_WS)[:60].decode("latin-1")
            return Hit(f"Message may contain administrivia ({shown!r})")
    return None


def max_recipients(inp: Input) -> Hit | None:
    """``Hold.process``: To + Cc hold ``max_num_recipients`` addresses or more."""
    limit = inp.facts.max_num_recipients
    if limit <= 0:
        return None
    items = _items(inp)
    recips = mm2.getaddresses(mm2.get_all(items, "to") + mm2.get_all(items, "cc"))
    if len(recips) >= limit:
        return Hit(f"Too many recipients to the message ({len(recips)}; "
                   f"max_num_recipients {limit})")
    return None


class _Unsure(Exception):
    """A regexp Python 3 refuses: what Python 2 made of it is unknown."""


def _domatch(pattern: bytes, address: bytes) -> bool:
    """``HasExplicitDest``'s ``domatch``: ``re.match`` ignoring case; a malformed
    pattern is matched as a literal string instead."""
    try:
        return re.match(pattern, address, re.IGNORECASE) is not None
    except RE_ERRORS:
        if re.match(re.escape(pattern), address, re.IGNORECASE):
            return True
        raise _Unsure from None


def implicit_dest(inp: Input) -> Hit | None:
    """``Hold.process`` / ``MailList.HasExplicitDest``: with
    ``require_explicit_destination``, no To, Cc, Resent-To or Resent-Cc address has the
    list's name as its local part (at any domain) or is ``name@host_name``, and none
    matches an ``acceptable_aliases`` line (``re.match``, ignoring case: against the
    local part too when the line has no ``@``)."""
    facts = inp.facts
    if not facts.require_explicit_destination:
        return None
    items = _items(inp)
    name = mm2.to_bytes(facts.internal_name)
    full = mm2.to_bytes(f"{facts.internal_name}@{facts.host_name}")
    recips = []
    for header in ("to", "cc", "resent-to", "resent-cc"):
        for _name, address in mm2.getaddresses(mm2.get_all(items, header)):
            address = address.lower()
            localpart = address.split(b"@")[0]
            if localpart == name or address == full:
                return None
            recips.append((address, localpart))
    unsure = None
    for address, localpart in recips:
        for alias in mm2.to_bytes(facts.acceptable_aliases).splitlines():
            stripped = alias.strip(mm2.PY2_WS)
            if not stripped:
                continue
            try:
                if b"@" not in stripped and _domatch(stripped, localpart):
                    return None
                if _domatch(stripped, address):
                    return None
            except _Unsure:
                unsure = stripped
    if unsure is not None:
        raise Unevaluable(f"acceptable_aliases line {mm2.to_text(unsure)!r} is not a Python 3 "
                          "regexp; Mailman 2's Python 2 may match it")
    return Hit("Message has implicit destination")


def suspicious_header(inp: Input) -> Hit | None:
    """``Hold.process`` / ``MailList.hasMatchingHeader``: a top-level header matches a
    ``bounce_matching_headers`` line (``Header: regexp``, stripped; ``#`` lines are
    comments; the regexp searched ignoring case in the raw value)."""
    text = inp.facts.bounce_matching_headers
    if not text:
        return None
    items = _items(inp)
    unsure = None
    for line in mm2.to_bytes(text).split(b"\n"):
        line = line.strip(mm2.PY2_WS)
        if not line or line[:1] == b"#":
            continue
        i = line.find(b":")
        if i < 0:
            continue
        header, value = line[:i], line[i + 1:].lstrip(mm2.PY2_WS)
        try:
            cre = re.compile(value, re.IGNORECASE)
        except RE_ERRORS:
            unsure = line
            continue
        for found in mm2.get_all(items, header.decode("latin-1")):
            if cre.search(found):
                return Hit(f"Message has a suspicious header ({mm2.to_text(line)[:80]!r})")
    if unsure is not None:
        raise Unevaluable(f"bounce_matching_headers line {mm2.to_text(unsure)!r} is not a "
                          "Python 3 regexp")
    return None


def max_size(inp: Input) -> Hit | None:
    """``Hold.process``: the body -- every leaf part's payload as received, plus the
    preambles and epilogues, in the LF form Mailman 2 is handed -- exceeds
    ``max_message_size`` KB.  Headers do not count, so what an MTA adds does not
    matter."""
    limit = inp.facts.max_message_size
    if limit <= 0:
        return None
    _changed_body(inp, "max size")
    msg = inp.post.mailman2_message
    size = sum(len(line) for line in mm2.body_lines(msg))
    for part in msg.walk():
        if part.preamble:
            size += len(part.preamble)
        if part.epilogue:
            size += len(part.epilogue)
    if size / 1024.0 > limit:
        return Hit(f"Message body is too big: {size} bytes with a limit of {limit} KB",
                   notice=f"Your message was too big; please trim it to less than "
                          f"{limit} KB in size.")
    return None


def news_moderation(inp: Input) -> Hit | None:
    """``Hold.process``: the list gateways to a moderated newsgroup (``gateway_to_news``
    and ``news_moderation`` 2)."""
    if inp.facts.gateway_to_news and inp.facts.news_moderation == 2:
        return Hit("Posting to a moderated newsgroup")
    return None


# -- Emergency.py ------------------------------------------------------------------------------


def emergency(inp: Input) -> Hit | None:
    """``Emergency.process``: in emergency moderation, every post not approved with a
    password (``adminapproved``) is held; it runs after Moderate and Hold, so what
    they refused stays refused."""
    if inp.facts.emergency:
        return Hit(f"{inp.facts.list_address} is in emergency moderation")
    return None

