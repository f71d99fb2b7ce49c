"""Mailman 2.1.39's pipeline, handler by handler, on real Mailman 2 list files.

Every list here starts from a real ``config.pck`` (``tests/data/mailman2``, see its
README): loaded with listgate's own reader, changed where a test needs another setting,
and written back the way Python 2's cPickle writes it (``test_mailman2.py2_pickle``),
strings as the byte strings they were.  ``config.pck`` is list ``test`` at
heresy.example.org: members dperson@example.org, bperson@example.com and
cris.person@example.net, administrator password ``foo`` (its SHA-1), no moderator
password, Mailman's sample ``bounce_matching_headers``, 40 KB, 10 recipients,
explicit destination required, administrivia on.

Posts are real :class:`~listgate.post.Post` objects, as the milter builds them (folds
as LF, bodies with CRLF), and the verdict is ``list_verdict(facts, post, ctx)`` with
the facts the backend gives for the post's ``get_senders()`` and ``get_sender()``.
Each test's docstring names the Mailman 2.1.39 code whose behaviour it asserts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_mailman2 import BounceInfo, Unicode, py2_pickle

from listgate.backends.mailman2 import Mailman2Backend, load_config
from listgate.chain import MAILMAN2_PIPELINE, list_verdict, needs_body
from listgate.mm2compat import decode_header, decoded_headers
from listgate.model import HeaderFilterRule, Mailman2Facts
from listgate.post import Post
from listgate.rules import Context
from listgate.verdict import MEMBER, NONMEMBER, ListVerdict

DATA = Path(__file__).resolve().parents[1] / "data" / "mailman2"
LIST = "test@heresy.example.org"
MEMBER_ADDR = "dperson@example.org"
STRANGER = "stranger@z.org"
FOO = "{sha1}" + hashlib.sha1(b"foo").hexdigest()  # the real file's admin password
#: mm_cfg action codes
DEFER, REJECT, DISCARD, ACCEPT, HOLD = 0, 2, 3, 6, 7


# -- real list files, changed and written back as Python 2 writes them --------------------


def _as_py2(value: Any) -> Any:
    """A value read by load_config -> what py2_pickle writes as the same Python 2 value
    (strings back to their bytes, _BounceInfo stubs back to instances)."""
    if type(value).__name__ == "_BounceInfo":
        return BounceInfo({k: _as_py2(v) for k, v in vars(value).items()})
    if isinstance(value, Unicode):
        return value
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return Unicode(value)
    if isinstance(value, dict):
        return {_as_py2(k): _as_py2(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_py2(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_as_py2(v) for v in value)
    return value


def real_list(lists_dir: Path, name: str = "test", base: str = "config.pck",
              **changes: Any) -> Mailman2Backend:
    """Install the real list file ``base`` as list ``name``, with ``changes``."""
    _ident, d = load_config(str(DATA / base))
    d = _as_py2(d)
    for key, value in changes.items():
        if value is _DROP:
            d.pop(key.encode(), None)
        else:
            d[key.encode()] = value
    path = lists_dir / name / "config.pck"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("config.pck.tmp")
    tmp.write_bytes(py2_pickle(d))
    os.rename(tmp, path)
    return Mailman2Backend(str(lists_dir))


_DROP = object()


@pytest.fixture
def lists_dir(tmp_path: Path) -> Path:
    d = tmp_path / "lists"
    d.mkdir()
    return d


# -- posts and the services the engine lends --------------------------------------------------


def post(*headers: tuple[str, str], body: str | bytes = "Hello.\r\n",
         envelope: str | None = None, sender: str = MEMBER_ADDR,
         to: str | None = LIST, subject: str | None = "A question") -> Post:
    """A post as the milter sees it: From, To, Subject unless given (None: left out)."""
    names = {n.lower() for n, _v in headers}
    hs = list(headers)
    if "from" not in names:
        hs.insert(0, ("From", sender))
    if to is not None and "to" not in names:
        hs.append(("To", to))
    if subject is not None and "subject" not in names:
        hs.append(("Subject", subject))
    raw = body.encode() if isinstance(body, str) else body
    return Post(hs, sender if envelope is None else envelope, raw, len(raw))


@dataclass
class Answer:
    status: str
    reason: str = "checked"
    policy: str | None = None


class Passwords:
    """The bounded checker's contract (``check`` -> ok/wrong/busy/unknown): Mailman 2's
    digests are ``{sha1}`` + the hex SHA-1 of the password's bytes."""

    def __init__(self, status: str | None = None) -> None:
        self.status = status
        self.calls: list[tuple[str, tuple[str, ...], str]] = []

    def check(self, password: str, stored: Any, scheme: str = "mailman3",
              source: str | None = None) -> Answer:
        self.calls.append((password, tuple(stored), scheme))
        if self.status:
            return Answer(self.status)
        digest = "{sha1}" + hashlib.sha1(password.encode("utf-8")).hexdigest()
        return Answer("ok" if digest in stored else "wrong")


class Dmarc:
    def __init__(self, status: str = "no", policy: str | None = "reject") -> None:
        self.status, self.policy = status, policy
        self.calls: list[str | None] = []

    def mitigate(self, from_value: str | None, dmarc_addresses: Any) -> Answer:
        self.calls.append(from_value)
        return Answer(self.status, f"p={self.policy}", self.policy)


def decide(backend: Mailman2Backend, p: Post, ctx: Context | None = None,
           list_address: str = LIST) -> ListVerdict:
    facts = backend.list_facts(list_address, p.mailman2_senders(), p.mailman2_sender())
    return list_verdict(facts, p, ctx or Context(passwords=Passwords(), dmarc=Dmarc()))


def check(v: ListVerdict, action: str, kind: str | None = None, rule: str | None = None,
          undecided: bool = False) -> None:
    assert (v.action, v.hold_kind, v.undecided) == (action, kind, undecided), v
    if rule is not None:
        assert v.rule == rule, v


# -- the real files ----------------------------------------------------------------------------


def test_real_files_give_the_pipeline_settings(lists_dir: Path) -> None:
    """``MailList`` attributes as Mailman 2.1 saved them (data_version 97, before the
    DMARC settings: those get ``Defaults.py``'s values)."""
    b = real_list(lists_dir)
    f = b.list_facts(LIST, (MEMBER_ADDR,), MEMBER_ADDR)
    assert (f.internal_name, f.host_name) == ("test", "heresy.example.org")
    assert f.approval_passwords == (FOO,) and not f.legacy_admin_password
    assert "to: friend@public.com" in f.bounce_matching_headers
    assert (f.max_message_size, f.max_num_recipients, f.require_explicit_destination,
            f.acceptable_aliases, f.administrivia) == (40, 10, True, "\n", True)
    assert (f.dmarc_moderation_action, f.dmarc_quarantine_moderation_action,
            f.dmarc_moderation_addresses) == (0, True, ())
    assert f.header_filter_rules == () and f.pipeline is None
    assert f.senders[0].member == MEMBER_ADDR
    for base, host in [("config-greek.pck", "heresy.example.org"),
                       ("config-with-instances.pck", "lists.examplexxxxxx.org")]:
        b = real_list(lists_dir, "other", base)
        g = b.list_facts(f"other@{host}", (), "")
        assert g.approval_passwords and g.approval_passwords[0].startswith("{sha1}")
    # a real post by a member of the real list goes through every handler
    check(decide(real_list(lists_dir), post()), "accept", None, "member-moderation")


def test_mailman2_needs_the_body(lists_dir: Path) -> None:
    """``Approve.process`` reads the body's first line, and every Mailman 2 list has an
    administrator password; a list without any password needs it only for the
    content holds that can refuse, or header_filter_rules (MIME parts' headers)."""
    f = real_list(lists_dir).list_facts(LIST, (), "")
    assert needs_body(f, holds_refuse=False)
    bare = Mailman2Facts(LIST, "test", administrivia=False, max_message_size=0)
    assert not needs_body(bare, holds_refuse=True)
    assert needs_body(Mailman2Facts(LIST, "test"), holds_refuse=True)
    assert not needs_body(Mailman2Facts(LIST, "test"), holds_refuse=False)
    assert needs_body(Mailman2Facts(LIST, "test", header_filter_rules=(
        HeaderFilterRule("^Subject: x", DISCARD),)), holds_refuse=False)


def test_pipeline_order() -> None:
    """``Defaults.GLOBAL_PIPELINE``: SpamDetect, Approve, Replybot, Moderate, Hold,
    MimeDel, Scrubber, Emergency, ... -- the links in that order."""
    assert [link.rule for link in MAILMAN2_PIPELINE] == [
        "dmarc-moderation", "header-filter-rules", "loop", "approve", "member-moderation",
        "nonmember-moderation", "administrivia", "max-recipients", "implicit-dest",
        "suspicious-header", "max-size", "news-moderation", "emergency", "truth"]


# -- senders: Message.get_senders / get_sender --------------------------------------------


def test_encoded_from_is_not_decoded(lists_dir: Path) -> None:
    """``Message.get_senders``/``get_sender`` parse the raw value: an RFC 2047 word that
    decodes to a member's address is not that member (Mailman 3 would decode it)."""
    b = real_list(lists_dir)
    p = post(("From", "=?utf-8?q?dperson=40example=2Eorg?= <=?utf-8?q?x?=>"),
             envelope=STRANGER)
    assert MEMBER_ADDR not in p.mailman2_senders()
    check(decide(b, p), "hold", NONMEMBER, "nonmember-moderation")
    # the display name is encoded, the address is not: a member
    check(decide(b, post(("From", "=?utf-8?q?D=C3=B6rte?= <DPerson@Example.ORG>"))),
          "accept", None, "member-moderation")


def test_get_sender_skips_a_header_whose_first_address_is_empty(lists_dir: Path) -> None:
    """``Message.get_sender``: ``addrs[0]``'s address empty -> the next header
    (Sender), not the second address of From."""
    p = post(("From", "undisclosed-recipients:;, other@z.org"), ("Sender", "S@Y.ORG"),
             envelope="e@z.org")
    assert p.mailman2_sender() == "s@y.org"
    assert p.mailman2_senders() == ("other@z.org", "e@z.org", "s@y.org")


def test_senders_lowercase_ascii_only() -> None:
    """Python 2 ``str.lower()`` on bytes: A-Z only."""
    p = post(("From", "JÖRG@X.ORG"))
    assert p.mailman2_senders()[0] == "jÖrg@x.org"


# -- SpamDetect: DMARC ------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "action"), [(3, "reject"), (4, "discard")])
def test_dmarc_moderation_refuses_first(lists_dir: Path, code: int, action: str) -> None:
    """``SpamDetect.process``: dmarc_moderation_action 3/4 rejects/discards a From at a
    DMARC reject domain before anything else -- a member's, an approved one's."""
    b = real_list(lists_dir, dmarc_moderation_action=code)
    dmarc = Dmarc("mitigate")
    v = decide(b, post(("Approved", "foo")), Context(passwords=Passwords(), dmarc=dmarc))
    check(v, action, None, "dmarc-moderation")
    assert dmarc.calls == [MEMBER_ADDR]
    if code == 3:
        assert "contact the mailing list owner at test-owner@heresy.example.org" in v.notice
    check(decide(b, post(), Context(dmarc=Dmarc("no"))), "accept")
    # listgate does not know the policy: a miss (Mailman mostly goes on after DNS errors)
    v = decide(b, post(), Context(dmarc=Dmarc("unknown")))
    check(v, "accept")
    assert any("dmarc-moderation not evaluated" in r for r in v.reasons)


@pytest.mark.parametrize("code", [0, 1, 2])
def test_dmarc_accept_munge_and_wrap_never_refuse(lists_dir: Path, code: int) -> None:
    """``SpamDetect.process``: 0 accept, 1 munge From, 2 wrap message: the post goes on."""
    b = real_list(lists_dir, dmarc_moderation_action=code)
    check(decide(b, post(), Context(dmarc=Dmarc("mitigate"))), "accept")


def test_dmarc_moderation_addresses_and_notice(lists_dir: Path) -> None:
    """``SpamDetect.process``: ``GetPattern(addr, dmarc_moderation_addresses)`` (plain
    case-insensitive, ``^`` searched) without any DNS lookup; the list's own
    dmarc_moderation_notice."""
    b = real_list(lists_dir, dmarc_moderation_action=3, dmarc_moderation_notice=b"No DMARC.",
                  dmarc_moderation_addresses=[b"DPerson@Example.org", b"^.*@evil\\."])
    dmarc = Dmarc("no")
    v = decide(b, post(), Context(dmarc=dmarc))
    check(v, "reject", None, "dmarc-moderation")
    assert v.notice == "No DMARC." and dmarc.calls == []
    check(decide(b, post(sender="x@EVIL.test")), "reject", None, "dmarc-moderation")


def test_dmarc_quarantine_not_moderated(lists_dir: Path) -> None:
    """``Utils.IsDMARCProhibited``: p=quarantine counts only with
    dmarc_quarantine_moderation_action; listgate's checker must say the policy."""
    b = real_list(lists_dir, dmarc_moderation_action=3, dmarc_quarantine_moderation_action=0)
    check(decide(b, post(), Context(dmarc=Dmarc("mitigate", "reject"))), "reject")
    v = decide(b, post(), Context(dmarc=Dmarc("mitigate", "quarantine")))
    check(v, "accept")
    assert any("quarantine" in r for r in v.reasons)


# -- SpamDetect: header_filter_rules ---------------------------------------------------------


def rules(*pairs: tuple[str, int]) -> list[tuple[bytes, int, bool]]:
    return [(p.encode(), a, False) for p, a in pairs]


@pytest.mark.parametrize(("action", "verdict", "kind"), [
    (DISCARD, "discard", None), (REJECT, "reject", None), (HOLD, "hold", NONMEMBER)])
def test_header_filter_actions(lists_dir: Path, action: int, verdict: str,
                               kind: str | None) -> None:
    """``SpamDetect.process``: a matching pattern discards, rejects ("Message rejected
    by filter rule match") or holds (``hold_for_approval``, HeaderMatchHold) -- before
    Moderate, so a nonmember's hold is a nonmember's."""
    b = real_list(lists_dir, generic_nonmember_action=0,
                  header_filter_rules=rules(("^Subject:.*viagra", action)))
    v = decide(b, post(subject="Cheap VIAGRA", sender=STRANGER))
    check(v, verdict, kind, "header-filter-0.0")
    if verdict == "reject":
        assert v.notice == "Message rejected by filter rule match"
    check(decide(b, post(sender=STRANGER)), "accept", None, "nonmember-moderation")
    if action == HOLD:
        check(decide(b, post(subject="viagra")), "hold", MEMBER, "header-filter-0.0")


def test_header_filter_defer_rules_are_skipped(lists_dir: Path) -> None:
    """``SpamDetect.process``: ``if action == mm_cfg.DEFER: continue``."""
    b = real_list(lists_dir, header_filter_rules=rules(("^Subject:", DEFER)))
    check(decide(b, post()), "accept")


def test_header_filter_multi_line_patterns(lists_dir: Path) -> None:
    """``SpamDetect.process``: each line of a rule is a pattern (``splitlines``); lines
    starting with ``#`` and blank ones are skipped; the rule's action applies to any."""
    b = real_list(lists_dir, header_filter_rules=rules(
        ("# spam\n\n^X-Spam-Flag: YES$\n^X-Spam-Score: [5-9]", DISCARD)))
    check(decide(b, post(("X-Spam-Score", "7.1"))), "discard", None, "header-filter-0.3")
    check(decide(b, post(("X-Spam-Flag", "yes"))), "discard", None, "header-filter-0.2")
    check(decide(b, post(("X-Spam-Flag", "YES please"))), "accept")  # $: end of the line
    check(decide(b, post(("X-Comment", "# spam"))), "accept")


def test_header_filter_sees_python2_decoded_unfolded_headers(lists_dir: Path) -> None:
    """``SpamDetect.getDecodedHeaders``: folds become one space; Python 2.7's
    ``decode_header`` strips the text around an encoded word and joins without a
    space ("=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus" is "Grüßeaus"); NFKC normalises
    (fullwidth letters match ASCII patterns)."""
    b = real_list(lists_dir, header_filter_rules=rules(
        ("^Subject: Grüßeaus".encode("ascii", "xmlcharrefreplace").decode(), DISCARD),
        ("^X-Long: one two$", DISCARD), ("^X-Wide: casino", DISCARD)))
    check(decide(b, post(subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus")), "discard", None,
          "header-filter-0.0")
    check(decide(b, post(("X-Long", "one\n two"))), "discard", None, "header-filter-1.0")
    check(decide(b, post(("X-Wide", "=?utf-8?b?772D772B772T772J772O772P?="))), "discard",
          None, "header-filter-2.0")
    assert decode_header(b"=?utf-8?q?a?= b =?utf-8?q?c?=") == [
        (b"a", "utf-8"), (b"b", None), (b"c", "utf-8")]
    # Python 2's encoded word must end at white space: this one is not decoded
    assert decode_header(b"=?utf-8?q?a?=b") == [(b"=?utf-8?q?a?=b", None)]
    # bad base64: the whole value, as us-ascii (HeaderParseError)
    assert decoded_headers([("X", b"a =?utf-8?b?Q?=")]) == "X: a =?utf-8?b?Q?=\n"


def test_header_filter_reads_mime_part_headers(lists_dir: Path) -> None:
    """``SpamDetect.process``: ``for p in msg.walk(): headers += getDecodedHeaders(p)``
    -- an attachment's filename counts."""
    b = real_list(lists_dir, header_filter_rules=rules((r"filename=.*\.exe", DISCARD)))
    body = ("--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
            "Content-Type: application/octet-stream\r\n"
            'Content-Disposition: attachment; filename="x.exe"\r\n\r\nMZ\r\n--b--\r\n')
    p = post(("Content-Type", 'multipart/mixed; boundary="b"'), body=body)
    check(decide(b, p), "discard", None, "header-filter-0.0")


def test_header_filter_accept_ends_spamdetect_only(lists_dir: Path) -> None:
    """``SpamDetect.process``: an accept match returns from SpamDetect: the later rules
    are not tried, but Moderate and Hold still run."""
    b = real_list(lists_dir, header_filter_rules=rules(
        ("^X-Trusted: yes", ACCEPT), ("^Subject:", DISCARD)))
    v = decide(b, post(("X-Trusted", "yes")))
    check(v, "accept", None, "member-moderation")
    assert "header_filter_rules accept pattern '^X-Trusted: yes' matched" in v.reasons
    check(decide(b, post(("X-Trusted", "yes"), sender=STRANGER)), "hold", NONMEMBER)
    check(decide(b, post()), "discard", None, "header-filter-1.0")


def test_header_filter_accept_may_match_what_the_mta_adds(lists_dir: Path) -> None:
    """``SpamDetect.process`` searches every header Mailman 2 receives, including the
    Received, Return-Path and Delivered-To lines the MTA adds after listgate: an accept
    pattern that does not name a header listgate sees may match there, so a later
    refusal is left to Mailman."""
    b = real_list(lists_dir, header_filter_rules=rules(
        (r"by mail\.example\.org", ACCEPT), ("^Subject:", DISCARD)))
    v = decide(b, post())
    check(v, "accept", None, "header-filter-0.0", undecided=True)
    assert "may match a header the MTA adds" in v.reasons[0]
    # nothing after it would refuse: the uncertain accept does not matter
    b = real_list(lists_dir, header_filter_rules=rules(
        (r"by mail\.example\.org", ACCEPT), ("^Subject: spam", DISCARD)))
    check(decide(b, post()), "accept", None, "member-moderation")


def test_header_filter_patterns_python3_cannot_judge(lists_dir: Path) -> None:
    """``SpamDetect.process`` logs an invalid pattern and goes on (``except re.error``);
    Python 2 took some patterns Python 3 refuses, and a non-ASCII pattern is decoded
    with the list's charset: neither is judged (a note), the rest still is."""
    b = real_list(lists_dir, base="config-greek.pck", header_filter_rules=rules(
        (r"^Subject: \q", DISCARD), ("^Subject: αβγ", DISCARD), ("^Subject: spam", HOLD)))
    v = decide(b, post(subject="spam αβγ \\q"))
    check(v, "hold", MEMBER, "header-filter-2.0")
    notes = [r for r in v.reasons if "not evaluated" in r]
    assert len(notes) == 2 and "not a Python 3 regexp" in notes[0] and "ASCII" in notes[1]


def test_odd_patterns_and_charsets_never_crash(lists_dir: Path) -> None:
    """Regexps that Python 3 refuses with something other than re.error (a repeat too
    large), and a header in a charset whose codec takes no 'replace' (Mailman 2's
    ``unicode(frag, cs, 'replace')`` raises there too): not judged, never a crash."""
    b = real_list(lists_dir, header_filter_rules=rules(("^Subject: a{99999999999}", DISCARD),
                                                       ("^Subject: x", DISCARD)),
                  accept_these_nonmembers=[b"^a{99999999999}"])
    check(decide(b, post(sender=STRANGER)), "accept", rule="nonmember-moderation",
          undecided=True)
    check(decide(b, post(subject="x")), "discard", None, "header-filter-1.0")
    v = decide(b, post(subject="=?idna?q?x?="))
    check(v, "accept", None, "member-moderation")
    assert any("idna" in r for r in v.reasons)


def test_header_filter_runs_before_approve(lists_dir: Path) -> None:
    """``GLOBAL_PIPELINE``: SpamDetect comes before Approve, so the list password does
    not save a post from header_filter_rules (``msgdata['approved']`` is set only by
    Approve, later)."""
    b = real_list(lists_dir, header_filter_rules=rules(("^Subject: spam", HOLD)))
    check(decide(b, post(("Approved", "foo"), subject="spam")), "hold", MEMBER,
          "header-filter-0.0")


# -- Approve -----------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Approved", "Approve", "X-Approved", "X-Approve"])
def test_password_in_each_header(lists_dir: Path, header: str) -> None:
    """``Approve.process``: the value of the first of approved, approve, x-approved,
    x-approve present, checked by ``Authenticate`` (SHA-1 of the administrator
    password ``foo``) approves a post Moderate would hold."""
    b = real_list(lists_dir)
    pw = Passwords()
    v = decide(b, post((header, "foo"), sender=STRANGER), Context(passwords=pw))
    check(v, "accept", None, "approve")
    assert v.reasons == (f"list password in the {header.title()} header",)
    assert pw.calls == [("foo", (FOO,), "mailman2")]


def test_first_header_in_mailman_order_is_the_one_checked(lists_dir: Path) -> None:
    """``Approve.process``: ``for hdr in ('approved', 'approve', 'x-approved',
    'x-approve')``: the first present is taken, right or wrong."""
    b = real_list(lists_dir)
    check(decide(b, post(("X-Approved", "foo"), ("Approve", "nope"), sender=STRANGER)),
          "hold", NONMEMBER)
    check(decide(b, post(("X-Approve", "nope"), ("Approved", "foo"), sender=STRANGER)),
          "accept", None, "approve")


def test_wrong_and_empty_passwords(lists_dir: Path) -> None:
    """``SecurityManager.Authenticate``: ``sha_new(response).hexdigest() == secret``
    on the raw value (trailing blanks kept); "Don't authenticate null passwords"."""
    b = real_list(lists_dir)
    for value in ("wrong", "foo ", "FOO", ""):
        check(decide(b, post(("Approved", value), sender=STRANGER)), "hold", NONMEMBER,
              "nonmember-moderation")
    check(decide(b, post(("Approved", "  foo"), sender=STRANGER)), "accept", None,
          "approve")  # the parser strips the blanks after the colon


def test_password_on_the_first_body_line(lists_dir: Path) -> None:
    """``Approve.process``: with no header, the first non-blank line of the first
    text/plain part, if it is ``Approve[d]:`` or ``X-Approve[d]:`` and a password;
    the name is not stripped, the value only ``lstrip()``-ed."""
    b = real_list(lists_dir)
    for body in ("\r\n\r\nApproved: foo\r\nHello.\r\n", "x-approve:foo\r\n",
                 "APPROVED:   foo\r\nHello.\r\n"):
        check(decide(b, post(body=body, sender=STRANGER)), "accept", None, "approve")
    for body in (" Approved: foo\r\n", "Hello.\r\nApproved: foo\r\n", "Approved : foo\r\n",
                 "Approved: foo \r\n"):
        check(decide(b, post(body=body, sender=STRANGER)), "hold", NONMEMBER)
    # the first text/plain part, wherever it is in the message
    body = ("--b\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--b\r\n"
            "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            "QXBwcm92ZWQ6IGZvbwpIZWxsby4K\r\n--b--\r\n")
    p = post(("Content-Type", 'multipart/alternative; boundary="b"'), body=body,
             sender=STRANGER)
    check(decide(b, p), "accept", None, "approve")


def test_moderator_and_poster_passwords(lists_dir: Path) -> None:
    """``Approve.process``: ``Authenticate((AuthListPoster, AuthListModerator,
    AuthListAdmin), passwd)``: post_password, mod_password and password all approve."""
    sha = lambda s: hashlib.sha1(s).hexdigest().encode()  # noqa: E731
    b = real_list(lists_dir, mod_password=sha(b"mod"), post_password=sha(b"poster"))
    f = b.list_facts(LIST, (), "")
    assert f.approval_passwords == ("{sha1}" + sha(b"poster").decode(),
                                    "{sha1}" + sha(b"mod").decode(), FOO)
    for pw in ("mod", "poster", "foo"):
        check(decide(b, post(("Approved", pw), sender=STRANGER)), "accept", None, "approve")


def test_site_password_does_not_approve(lists_dir: Path) -> None:
    """``Approve.process``: "We are specifically /not/ allowing the site admins password
    to work here" -- AuthSiteAdmin is not among the contexts it passes, so the site
    password in ``data/adm.pw`` (``Utils.check_global_password``) never approves."""
    data = lists_dir.parent / "data"
    data.mkdir()
    (data / "adm.pw").write_text(hashlib.sha1(b"site").hexdigest() + "\n")
    b = real_list(lists_dir)
    assert all("site" not in p for p in b.list_facts(LIST, (), "").approval_passwords)
    check(decide(b, post(("Approved", "site"), sender=STRANGER)), "hold", NONMEMBER)


def test_password_is_checked_only_when_it_matters(lists_dir: Path) -> None:
    """The hash is spent only when the rest of the pipeline would refuse the post;
    a member's post with a password is accepted either way."""
    b = real_list(lists_dir)
    pw = Passwords()
    v = decide(b, post(("Approved", "wrong")), Context(passwords=pw))
    check(v, "accept", None, "member-moderation")
    assert pw.calls == []


def test_busy_and_unknown_password_checks(lists_dir: Path) -> None:
    """A check that cannot run now is a tempfail; one that cannot run at all leaves
    the post to Mailman."""
    b = real_list(lists_dir)
    check(decide(b, post(("Approved", "foo"), sender=STRANGER),
                 Context(passwords=Passwords("busy"))), "tempfail", rule="approve")
    check(decide(b, post(("Approved", "foo"), sender=STRANGER),
                 Context(passwords=Passwords("unknown"))), "accept", rule="approve",
          undecided=True)


def test_legacy_admin_password(lists_dir: Path) -> None:
    """``SecurityManager.Authenticate``: an administrator password still stored as an
    MD5 digest (or crypt) is accepted and upgraded; listgate cannot check it, so a
    refusal with a password in the post goes to Mailman."""
    b = real_list(lists_dir, password=hashlib.md5(b"foo").digest())
    f = b.list_facts(LIST, (), "")
    assert f.legacy_admin_password and f.approval_passwords == ()
    check(decide(b, post(("Approved", "foo"), sender=STRANGER)), "accept", rule="approve",
          undecided=True)
    check(decide(b, post(sender=STRANGER)), "hold", NONMEMBER)


def test_approved_posts_skip_moderate_hold_and_emergency(lists_dir: Path) -> None:
    """``Moderate``/``Hold.process``: ``if msgdata.get('approved'): return``;
    ``Emergency``: ``not msgdata.get('adminapproved')``."""
    b = real_list(lists_dir, emergency=1, generic_nonmember_action=2)
    check(decide(b, post(("Approved", "foo"), sender=STRANGER, to="else@z.org",
                         subject="unsubscribe")), "accept", None, "approve")
    check(decide(b, post()), "hold", MEMBER, "emergency")


def test_loop_is_discarded_even_when_approved(lists_dir: Path) -> None:
    """``Approve.process``, last: X-BeenThere naming the list raises ``LoopError`` (a
    ``DiscardMessage``), after the password is accepted."""
    b = real_list(lists_dir)
    pw = Passwords()
    v = decide(b, post(("Approved", "foo"), ("X-BeenThere", " TEST@heresy.example.org "),
                       sender=STRANGER), Context(passwords=pw))
    check(v, "discard", None, "loop")
    assert pw.calls == []
    check(decide(b, post(("X-BeenThere", "other@heresy.example.org"))), "accept")


def test_body_line_removal_changes_what_hold_reads(lists_dir: Path) -> None:
    """``Approve.process`` deletes the Approved: line from the body (``reset_payload``,
    re-encoding the part) even with a wrong password; Hold's administrivia and size
    then read another body: not judged."""
    b = real_list(lists_dir, max_message_size=1)
    v = decide(b, post(body="Approved: wrong\r\n" + "x" * 3000 + "\r\n"))
    check(v, "accept", None, "member-moderation")
    assert any("max-size not evaluated" in r for r in v.reasons)


# -- Moderate (members and nonmembers, on the real file) ---------------------------------------


def test_moderate_on_the_real_file(lists_dir: Path) -> None:
    """``Moderate.process``: a member goes on; a nonmember gets
    ``generic_nonmember_action`` (1, hold) unless an entry matches; a moderated member
    gets ``member_moderation_action`` with the list's ``member_moderation_notice``."""
    b = real_list(lists_dir, accept_these_nonmembers=[b"^.*@friends\\.org$"],
                  member_moderation_action=1, member_moderation_notice=b"Not now.",
                  user_options={b"dperson@example.org": 264 | 128})
    v = decide(b, post())
    check(v, "reject", None, "member-moderation")
    assert v.notice == "Not now."
    check(decide(b, post(sender="a@FRIENDS.org")), "accept", None, "nonmember-moderation")
    check(decide(b, post(sender=STRANGER)), "hold", NONMEMBER, "nonmember-moderation")
    # any of get_senders() makes the post a member's
    check(decide(b, post(("Reply-To", "bperson@example.com"), sender=STRANGER)), "accept",
          None, "member-moderation")


def test_nonmember_reject_notice(lists_dir: Path) -> None:
    """``Moderate.do_reject``: nonmember_rejection_notice, else Mailman's text naming
    the owner address."""
    b = real_list(lists_dir, generic_nonmember_action=2)
    assert "test-owner@heresy.example.org" in decide(b, post(sender=STRANGER)).notice
    b = real_list(lists_dir, generic_nonmember_action=2, nonmember_rejection_notice=b"Go.")
    assert decide(b, post(sender=STRANGER)).notice == "Go."


def test_accept_pattern_python3_cannot_compile(lists_dir: Path) -> None:
    """``MailList.GetPattern`` skips a pattern ``re`` refuses -- but Python 2 accepted
    some that Python 3 refuses (``\\q``): whether it accepted the sender is unknown,
    so a refusal is left to Mailman; where the post is accepted anyway, nothing
    changes."""
    b = real_list(lists_dir, accept_these_nonmembers=[b"^\\qstranger@"])
    check(decide(b, post(sender=STRANGER)), "accept", rule="nonmember-moderation",
          undecided=True)
    b = real_list(lists_dir, accept_these_nonmembers=[b"^\\qstranger@"],
                  generic_nonmember_action=0)
    check(decide(b, post(sender=STRANGER)), "accept", None, "nonmember-moderation")


# -- Hold --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "body", "held"), [
    ("unsubscribe", "Hello.\r\n", True),
    ("A question", "\r\n  help  \r\n", True),
    ("A question", "Hi,\r\n\r\nsubscribe me please\r\nthanks\r\n", True),
    ("A question", "set digest on secret\r\n", True),
    ("A question", "set digest mime secret\r\n", False),  # `set' needs on or off
    ("A question", "1\r\n2\r\n3\r\n4\r\n5\r\nhelp\r\n", False),  # only 5 lines are read
    ("subscribe", "line\r\n" * 26, False),  # more than 25 lines: never administrivia
    ("who is there", "Hello.\r\n", False),  # who takes at most 1 argument in 2.1
])
def test_administrivia(lists_dir: Path, subject: str, body: str, held: bool) -> None:
    """``Hold.process`` / ``Utils.is_administrivia``."""
    v = decide(real_list(lists_dir), post(subject=subject, body=body))
    if held:
        check(v, "hold", MEMBER, "administrivia")
    else:
        check(v, "accept")


def test_max_recipients(lists_dir: Path) -> None:
    """``Hold.process``: ``len(getaddresses(To + Cc)) >= max_num_recipients``."""
    b = real_list(lists_dir)
    nine = ", ".join(f"r{i}@z.org" for i in range(8))
    check(decide(b, post(("Cc", nine))), "accept")  # the list + 8
    check(decide(b, post(("Cc", nine + ", r9@z.org"))), "hold", MEMBER, "max-recipients")


def test_implicit_destination(lists_dir: Path) -> None:
    """``MailList.HasExplicitDest``: the list name as the local part at any domain, the
    full address, or an ``acceptable_aliases`` regexp (``re.match``, ignoring case;
    also against the local part when it has no ``@``), in To, Cc, Resent-To or
    Resent-Cc."""
    b = real_list(lists_dir, acceptable_aliases=b"\n^announce@\ndiscuss\n")
    check(decide(b, post(to="other@z.org")), "hold", MEMBER, "implicit-dest")
    check(decide(b, post(to=None)), "hold", MEMBER, "implicit-dest")
    for dest in ("TEST@elsewhere.org", "x@z.org, test@heresy.example.org",
                 "Announce@lists.z.org", "discuss@z.org", "Discussion@z.org"):
        check(decide(b, post(to=dest)), "accept", None, "member-moderation")
    check(decide(b, post(("Resent-Cc", "test@z.org"), to="x@z.org")), "accept")
    check(decide(b, post(to="test-announce@z.org")), "hold", MEMBER, "implicit-dest")
    b = real_list(lists_dir, require_explicit_destination=0)
    check(decide(b, post(to="other@z.org")), "accept")


def test_suspicious_headers_from_the_real_sample_lines(lists_dir: Path) -> None:
    """``MailList.hasMatchingHeader``: the real file keeps Mailman's sample
    ``bounce_matching_headers`` (``to: friend@public.com``, ``from: .*@uplinkpro.com``
    ...): a top-level header matching a line holds the post."""
    b = real_list(lists_dir)
    check(decide(b, post(("Cc", "friend@public.com"), to=LIST)), "accept")  # Cc: no line
    check(decide(b, post(to="test@heresy.example.org, Friend@Public.com")), "hold", MEMBER,
          "suspicious-header")
    b = real_list(lists_dir, generic_nonmember_action=0)
    check(decide(b, post(sender="x@UPLINKPRO.com")), "hold", MEMBER, "suspicious-header")


def test_max_size_counts_the_body_as_mailman2_receives_it(lists_dir: Path) -> None:
    """``Hold.process``: the payload lines of every part plus preambles and epilogues,
    in KB, LF line ends (the MTA pipes LF): headers never count."""
    b = real_list(lists_dir, max_message_size=1)
    line = "x" * 99 + "\r\n"  # 101 octets here, 100 for Mailman 2 (LF)
    check(decide(b, post(body=line * 10)), "accept")  # 1010 here, 1000 there: <= 1 KB
    check(decide(b, post(body=line * 10 + "x" * 25)), "hold", MEMBER, "max-size")
    check(decide(b, post(("X-Big", "y" * 5000), body="Hello.\r\n")), "accept")
    body = ("preamble\r\n--b\r\nContent-Type: text/plain\r\n\r\n" + "x" * 1000 +
            "\r\n--b--\r\n" + "e" * 30)
    check(decide(b, post(("Content-Type", 'multipart/mixed; boundary="b"'), body=body)),
          "hold", MEMBER, "max-size")


def test_news_moderation(lists_dir: Path) -> None:
    """``Hold.process``: ``gateway_to_news and news_moderation == 2``."""
    check(decide(real_list(lists_dir, news_moderation=2), post()), "accept")
    check(decide(real_list(lists_dir, news_moderation=2, gateway_to_news=1), post()),
          "hold", MEMBER, "news-moderation")


def test_hold_checks_run_in_order_and_the_first_holds(lists_dir: Path) -> None:
    """``Hold.process``: administrivia, recipients, destination, headers, size, news;
    ``hold_for_approval`` raises, so the first hit is the reason."""
    b = real_list(lists_dir, max_message_size=1)
    v = decide(b, post(to="x@z.org", subject="help", body="y" * 2000))
    check(v, "hold", MEMBER, "administrivia")
    assert len(v.reasons) == 1


def test_emergency_after_hold(lists_dir: Path) -> None:
    """``Emergency.process`` runs after Hold: a Hold reason is the one given."""
    b = real_list(lists_dir, emergency=1)
    check(decide(b, post(to="x@z.org")), "hold", MEMBER, "implicit-dest")
    check(decide(b, post()), "hold", MEMBER, "emergency")


# -- the list's own pipeline ---------------------------------------------------------------------


def test_a_list_pipeline_is_followed(lists_dir: Path) -> None:
    """``IncomingRunner._get_pipeline``: ``getattr(mlist, 'pipeline',
    GLOBAL_PIPELINE)``: without Hold, nothing is held for its destination; a handler
    listgate does not know leaves a post it reaches to Mailman."""
    b = real_list(lists_dir, pipeline=[b"SpamDetect", b"Approve", b"Moderate",
                                       b"Emergency", b"ToOutgoing"])
    check(decide(b, post(to="x@z.org")), "accept", None, "member-moderation")
    b = real_list(lists_dir, pipeline=[b"SpamDetect", b"Approve", b"Moderate",
                                       b"AttachmentMove", b"Hold", b"ToOutgoing"])
    check(decide(b, post(sender=STRANGER)), "hold", NONMEMBER, "nonmember-moderation")
    check(decide(b, post()), "accept", rule="handler-AttachmentMove", undecided=True)


def test_missing_attributes_do_not_invent_holds(lists_dir: Path) -> None:
    """A list file without the newer attributes gets ``Defaults.py``'s values, except
    no sample bounce_matching_headers."""
    b = real_list(lists_dir, bounce_matching_headers=_DROP, max_message_size=_DROP)
    f = b.list_facts(LIST, (), "")
    assert (f.bounce_matching_headers, f.max_message_size) == ("", 40)
    check(decide(b, post(to="friend@public.com, test@heresy.example.org")), "accept")


# -- the engine ---------------------------------------------------------------------------------


def test_engine_asks_mailman2_about_get_senders(lists_dir: Path) -> None:
    """The engine gives a Mailman 2 backend ``get_senders()`` (raw), not Mailman 3's
    decoded senders: an encoded From naming a member is a nonmember's post (held, so
    refused by default); the member's plain From is accepted."""
    from listgate import config
    from listgate.engine import CONTINUE, REJECT, Engine
    from listgate.spfcheck import SpfResult

    class Pass:
        def check(self, ip: str, sender: str, helo: str,
                  receiver: str | None = None) -> SpfResult:
            return SpfResult("pass", "mailfrom", "", "x")

    b = real_list(lists_dir)
    cfg = config.parse(f"[lists]\nbackend = mailman2\n[mailman2]\nlists_dir = {lists_dir}\n")
    engine = Engine(cfg, b, Pass(), lambda h, i: False)  # type: ignore[arg-type]
    assert engine.senders_as == "mailman2"
    for frm, action in [("=?utf-8?q?dperson=40example=2Eorg?=", REJECT),
                        ("Dörte <dperson@example.org>", CONTINUE)]:
        s = engine.session("1")
        s.connect("mail.z.org", "192.0.2.1")
        s.helo("mail.z.org")
        s.mail("bounce@z.org")
        assert s.rcpt(LIST).action == CONTINUE
        for name, value in [("From", frm), ("To", LIST), ("Subject", "hi")]:
            s.header(name, value)
        s.body(b"Hello.\r\n")
        assert s.eom().decision.action == action, frm
