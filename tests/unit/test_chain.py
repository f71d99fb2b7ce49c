"""The posting chain as data: each link, its order, and what an unknown means.

Pure logic with literal facts and real :class:`Post` objects (the rules' own code runs
on them); the password checker and DMARC lookup are small fakes here.  Whether each
behaviour is Mailman's is established against the real Mailman 3.3.10 in
tests/e2e/test_mailman3_agreement.py.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

from listgate.chain import MAILMAN3_CHAIN, list_verdict, needs_body
from listgate.model import HeaderMatch, ListFacts, ListPolicy, SenderFacts, SiteFacts
from listgate.post import Post
from listgate.rules import Context

L = "dev@lists.test"
PW_HASH = "$6$rounds=5000$salt$" + "x" * 86  # shape only: the fake checker decides
M = SenderFacts("m@x.org", is_member=True)
N = SenderFacts("n@y.org")


@dataclass
class Answer:
    status: str
    reason: str = "fake"


class FakePasswords:
    """ok for "secret", wrong otherwise; ``status`` forces an answer; counts checks."""

    def __init__(self, status: str | None = None) -> None:
        self.status = status
        self.calls: list[str] = []

    def check(self, password, stored, scheme="mailman3", source=None):
        self.calls.append(password)
        return Answer(self.status or ("ok" if password == "secret" else "wrong"))


class FakeDmarc:
    def __init__(self, status: str) -> None:
        self.status = status

    def mitigate(self, from_value, dmarc_addresses):
        return Answer(self.status, "_dmarc.y.org p=reject")


def facts(*senders: SenderFacts, site: SiteFacts | None = None, **policy) -> ListFacts:
    return ListFacts(ListPolicy(L, **policy), tuple(senders), site or SiteFacts())


def post(*headers: tuple[str, str], body: bytes | None = b"Hello.\r\n",
         frm: str = "n@y.org", envelope: str = "") -> Post:
    base = [("From", frm), ("To", L), ("Subject", "a post"), ("Message-ID", "<1@y.org>")]
    names = {n.lower() for n, _ in headers}
    return Post([*(h for h in base if h[0].lower() not in names), *headers], envelope, body)


def verdict(f: ListFacts, p: Post, **ctx):
    return list_verdict(f, p, Context(**ctx))


def test_the_table_is_mailman_3_3_10s_order():
    assert [link.rule for link in MAILMAN3_CHAIN] == [
        "lmtp-defects", "autorespond",  # the LMTP and incoming runners, before the chain
        "dmarc-mitigation", "no-senders", "approved", "loop", "banned-address",
        "header-match", "emergency", "member-moderation", "nonmember-moderation",
        "administrivia", "implicit-dest", "max-recipients", "max-size", "news-moderation",
        "no-subject", "digests", "suspicious-header", "any", "truth"]


# -- approved ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Approve", "Approved", "X-Approve", "X-Approved"])
def test_moderator_password_in_any_approve_header_accepts_a_nonmember(header):
    pw = FakePasswords()
    v = verdict(facts(N, approval_passwords=(PW_HASH,)), post((header, "secret")),
                passwords=pw)
    assert (v.action, v.rule) == ("accept", "approved")
    assert pw.calls == ["secret"]


def test_the_first_approve_header_in_mailmans_order_counts():
    pw = FakePasswords()
    p = post(("X-Approved", "secret"), ("Approved", "wrong"))
    v = verdict(facts(N, approval_passwords=(PW_HASH,)), p, passwords=pw)
    assert v.action == "hold" and pw.calls == ["wrong"]


def test_the_password_is_the_raw_header_value_trailing_space_included():
    pw = FakePasswords()
    verdict(facts(N, approval_passwords=(PW_HASH,)), post(("Approved", "secret ")),
            passwords=pw)
    assert pw.calls == ["secret "]


def test_password_on_the_first_nonblank_body_line():
    pw = FakePasswords()
    v = verdict(facts(N, approval_passwords=(PW_HASH,)),
                post(body=b"\r\n  \r\nApproved: secret\r\nHello\r\n"), passwords=pw)
    assert (v.action, v.rule) == ("accept", "approved")
    assert "first line of the body" in v.reasons[0]


def test_an_indented_approved_line_is_not_a_password():
    pw = FakePasswords()
    v = verdict(facts(N, approval_passwords=(PW_HASH,)),
                post(body=b"  Approved: secret\r\n"), passwords=pw)
    assert v.action == "hold" and pw.calls == []


def test_password_in_a_base64_text_part_of_a_multipart_message():
    text = base64.b64encode(b"Approved: secret\r\nhi\r\n")
    body = (b"--b\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n"
            b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + text + b"\r\n--b--\r\n")
    p = post(("Content-Type", 'multipart/alternative; boundary="b"'), ("MIME-Version", "1.0"),
             body=body)
    v = verdict(facts(N, approval_passwords=(PW_HASH,)), p, passwords=FakePasswords())
    assert (v.action, v.rule) == ("accept", "approved")


def test_no_hash_is_spent_when_the_rest_of_the_chain_accepts():
    pw = FakePasswords()
    v = verdict(facts(M, approval_passwords=(PW_HASH,)),
                post(("Approved", "secret"), frm="m@x.org"), passwords=pw)
    assert v.action == "accept" and pw.calls == [], "a member needs no approval"


def test_approved_comes_before_the_ban_and_emergency():
    pw = FakePasswords()
    banned = SenderFacts("n@y.org", banned=True)
    v = verdict(facts(banned, emergency=True, approval_passwords=(PW_HASH,)),
                post(("Approved", "secret")), passwords=pw)
    assert (v.action, v.rule) == ("accept", "approved")


def test_a_wrong_password_falls_through_and_the_headers_are_gone_for_later_rules():
    rule = HeaderMatch("approved", ".", "accept")  # would accept if it saw the header
    v = verdict(facts(N, approval_passwords=(PW_HASH,), header_matches=(rule,)),
                post(("Approved", "nope")), passwords=FakePasswords())
    assert (v.action, v.rule) == ("hold", "nonmember-moderation")


def test_password_checks_past_the_bound_tempfail_never_refuse():
    v = verdict(facts(N, approval_passwords=(PW_HASH,)), post(("Approved", "secret")),
                passwords=FakePasswords("busy"))
    assert (v.action, v.rule) == ("tempfail", "approved")


def test_an_uncheckable_password_sends_the_post_on_undecided():
    v = verdict(facts(N, approval_passwords=(PW_HASH,)), post(("Approved", "secret")),
                passwords=FakePasswords("unknown"))
    assert (v.action, v.undecided) == ("accept", True)


def test_without_the_body_a_password_list_cannot_refuse_a_nonmember():
    # the body-line password may be there: a refusal would be a guess
    v = verdict(facts(N, approval_passwords=(PW_HASH,)), post(body=None),
                passwords=FakePasswords())
    assert (v.action, v.undecided, v.rule) == ("accept", True, "approved")


# -- loop, bans, emergency, header matches -------------------------------------------------


def test_loop_is_a_list_post_header_equal_to_the_posting_address():
    assert verdict(facts(M), post(("List-Post", " DEV@lists.test "), frm="m@x.org")).rule \
        == "loop"
    assert verdict(facts(M), post(("List-Post", f"<mailto:{L}>"), frm="m@x.org")).rule \
        != "loop", "Mailman compares the whole value: its own <mailto:...> form is no loop"


def test_a_list_header_rule_accepts_a_nonmember_and_every_occurrence_counts():
    rule = HeaderMatch("x-git-module", "^core$", "accept")
    v = verdict(facts(N, header_matches=(rule,)),
                post(("X-Git-Module", "docs"), ("X-Git-Module", "core")))
    assert (v.action, v.rule) == ("accept", "header-match-dev.lists.test-0")


def test_header_rules_are_case_insensitive_and_decode_rfc2047():
    rule = HeaderMatch("x-tag", "^café$", "discard")
    v = verdict(facts(M), post(("X-TAG", "=?utf-8?q?CAF=C3=89?="), frm="m@x.org"))
    assert v.action == "accept"
    v = verdict(facts(M, header_matches=(rule,)),
                post(("X-TAG", "=?utf-8?q?CAF=C3=89?="), frm="m@x.org"))
    assert (v.action, v.rule) == ("discard", "header-match-dev.lists.test-0")


def test_the_first_matching_list_rule_decides():
    rules = (HeaderMatch("x-a", "1", "reject"), HeaderMatch("x-a", "1", "accept"))
    assert verdict(facts(N, header_matches=rules), post(("X-A", "1"))).action == "reject"


def test_a_rule_without_action_uses_the_sites_jump_chain():
    rule = HeaderMatch("x-a", "1", None)
    site = SiteFacts(jump_chain="discard")
    assert verdict(facts(M, site=site, header_matches=(rule,)),
                   post(("X-A", "1"), frm="m@x.org")).action == "discard"


def test_site_header_checks_come_before_the_lists_rules():
    site = SiteFacts(header_checks="X-Spam: yes\nbogus line without colon\n")
    rule = HeaderMatch("x-spam", "yes", "accept")
    v = verdict(facts(N, site=site, header_matches=(rule,)), post(("X-Spam", "YES")))
    assert (v.action, v.hold_kind, v.rule) == ("hold", "nonmember", "any")


def test_a_header_rule_looks_into_mime_parts_only_with_the_body():
    body = (b"--b\r\nContent-Type: text/plain\r\nX-Part: inside\r\n\r\nhi\r\n--b--\r\n")
    headers = (("Content-Type", 'multipart/mixed; boundary="b"'), ("MIME-Version", "1.0"))
    rule = HeaderMatch("x-part", "inside", "accept")
    assert verdict(facts(N, header_matches=(rule,)), post(*headers, body=body)).action \
        == "accept"
    v = verdict(facts(N, header_matches=(rule,)), post(*headers, body=None))
    assert (v.action, v.undecided) == ("accept", True), "the part may hold it: undecided"


def test_a_rule_on_received_that_sees_no_match_is_unknown():
    # the MTA adds its own Received line after listgate: an accept rule that finds
    # nothing here might match there, so it leaves the verdict undecided
    rule = HeaderMatch("received", r"from relay\.example", "accept")
    v = verdict(facts(N, header_matches=(rule,)), post(("Received", "from elsewhere")))
    assert (v.action, v.undecided) == ("accept", True)
    rule = HeaderMatch("received", r"from relay\.example", "discard")
    v = verdict(facts(N, header_matches=(rule,)), post(("Received", "from elsewhere")))
    assert (v.action, v.rule) == ("hold", "nonmember-moderation"), "a refusing rule: a miss"


def test_header_rules_see_what_mailmans_lmtp_runner_adds():
    rule = HeaderMatch("x-mailfrom", "^bounce@y\\.org$", "accept")
    v = verdict(facts(N, header_matches=(rule,)), post(envelope="bounce@y.org"))
    assert v.action == "accept"


def test_a_rule_naming_no_chain_mailman_has_is_undecided():
    v = verdict(facts(M, header_matches=(HeaderMatch("x-a", "1", "defer"),)),
                post(frm="m@x.org"))
    assert (v.action, v.undecided) == ("accept", True)


def test_emergency_comes_after_the_header_match_detour():
    rule = HeaderMatch("x-a", "1", "accept")
    assert verdict(facts(N, emergency=True, header_matches=(rule,)), post(("X-A", "1"))
                   ).action == "accept"
    assert verdict(facts(N, emergency=True), post()).rule == "emergency"


# -- moderation and the deferred holds -----------------------------------------------------


def test_an_accepted_nonmember_still_meets_the_deferred_holds():
    # accept_these_nonmembers makes nonmember-moderation miss: the holds still apply
    v = verdict(facts(N, accept_these_nonmembers=("n@y.org",)), post(("Subject", "")))
    assert (v.action, v.rule, v.hold_kind) == ("hold", "any", "member")
    assert v.notice == "Message has no subject"


def test_a_nonmember_record_accept_skips_the_deferred_holds():
    nm = SenderFacts("n@y.org", nonmember_action="accept")
    v = verdict(facts(nm), post(("Subject", "")))
    assert (v.action, v.rule) == ("accept", "nonmember-moderation")


def test_deferred_holds_collect_every_reason():
    p = Post([("From", "m@x.org"), ("Cc", ", ".join(f"a{i}@x.org" for i in range(10)))],
             "", b"subscribe\r\n")
    v = verdict(facts(M), p)
    assert (v.action, v.rule) == ("hold", "any")
    assert v.notice == ("Message contains administrivia; Message has implicit destination; "
                        "Message has more than 10 recipients; Message has no subject")


@pytest.mark.parametrize(("subject", "body", "held"), [
    ("subscribe", b"", True),
    ("help me", b"", False),  # help takes no argument
    ("hi", b"\r\n\r\nwho\r\n", True),
    ("hi", b"".join(b"line %d\r\n" % i for i in range(10)) + b"help\r\n", False),  # 11th
    ("hi", b"\r\n" * 20 + b"lists\r\n", True),  # blank lines are not counted
])
def test_administrivia(subject, body, held):
    v = verdict(facts(M), post(("Subject", subject), frm="m@x.org", body=body))
    assert (v.rule == "any") is held, v


def test_implicit_destination_and_acceptable_aliases():
    p = post(("To", "Other <team@lists.test>"), frm="m@x.org")
    assert verdict(facts(M), p).rule == "any"
    assert verdict(facts(M, acceptable_aliases=("team@lists.test",)), p).action == "accept"
    assert verdict(facts(M, acceptable_aliases=("^TEAM@",)), p).action == "accept"
    assert verdict(facts(M, require_explicit_destination=False), p).action == "accept"


def test_max_size_counts_what_the_list_manager_receives():
    big = b"x" * 41 * 1024
    v = verdict(facts(M), post(frm="m@x.org", body=big))
    assert "larger than the 40 KB maximum size" in v.notice
    assert verdict(facts(M, max_message_size=0), post(frm="m@x.org", body=big)).action \
        == "accept"
    # without the body the size is unknown: never a reason to refuse
    assert verdict(facts(M), post(frm="m@x.org", body=None)).action == "accept"


def test_a_message_mailmans_lmtp_server_would_refuse():
    p = post(("Content-Type", 'multipart/mixed; boundary="b"'), frm="m@x.org",
             body=b"--b\r\nContent-Type: text/plain\r\n\r\nno closing boundary\r\n")
    v = verdict(facts(M), p)
    assert (v.action, v.rule) == ("reject", "lmtp-defects")


def test_autorespond_discard_is_before_everything_else():
    v = verdict(facts(M, autorespond_postings="respond_and_discard"), post(frm="m@x.org"))
    assert (v.action, v.rule) == ("discard", "autorespond")


# -- DMARC and senders ---------------------------------------------------------------------


def test_dmarc_reject_and_its_failure():
    f = facts(M, dmarc_mitigate_action="reject")
    v = verdict(f, post(frm="m@x.org"), dmarc=FakeDmarc("mitigate"))
    assert (v.action, v.rule) == ("reject", "dmarc-mitigation")
    assert "DMARC policy of reject or quarantine" in v.notice
    # a DNS failure is never a refusal: the rest of the chain decides
    assert verdict(f, post(frm="m@x.org"), dmarc=FakeDmarc("unknown")).action == "accept"
    # munge_from and wrap_message accept (Mailman rewrites the post)
    assert verdict(facts(M, dmarc_mitigate_action="munge_from"), post(frm="m@x.org"),
                   dmarc=FakeDmarc("mitigate")).action == "accept"


def test_no_senders_is_a_discard():
    assert verdict(facts(), Post([("To", L)], "", b"")).rule == "no-senders"


def test_body_is_needed_only_where_it_can_change_the_answer():
    assert not needs_body(facts(), holds_refuse=False)
    assert needs_body(facts(approval_passwords=(PW_HASH,)), holds_refuse=False)
    assert needs_body(facts(header_matches=(HeaderMatch("x", "y", "accept"),)), False)
    assert needs_body(facts(site=SiteFacts(header_checks="X-Spam: yes")), False)
    # content holds read the body only if a member's hold is refused
    assert needs_body(facts(), holds_refuse=True)
    assert not needs_body(facts(administrivia=False, max_message_size=0), holds_refuse=True)


def test_a_rule_that_raises_anything_is_unevaluable_never_an_internal_error():
    # a pattern Python cannot even compile without an OverflowError, on an accepting
    # rule: the post goes to the list manager
    rule = HeaderMatch("x-a", "a{99999999999}", "accept")
    v = verdict(facts(N, header_matches=(rule,)), post(("X-A", "a")))
    assert (v.action, v.undecided) == ("accept", True)
    assert "OverflowError" in v.reasons[0]
