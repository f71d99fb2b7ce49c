"""Every branch of the Mailman 3 list verdict, table-driven."""

import pytest

from listgate.chain import list_verdict as mailman3_verdict
from listgate.model import ListFacts, ListPolicy, SenderFacts
from listgate.verdict import MEMBER, NONMEMBER

L = "dev@lists.test"


def facts(*senders: SenderFacts, **policy: object) -> ListFacts:
    return ListFacts(ListPolicy(L, **policy), tuple(senders))  # type: ignore[arg-type]


def S(addr: str, **kw: object) -> SenderFacts:
    return SenderFacts(addr, **kw)  # type: ignore[arg-type]


M = S("m@x.org", is_member=True)
N = S("n@y.org")

CASES = [
    # (description, facts, action, hold_kind, rule)
    ("no senders -> discard", facts(), "discard", None, "no-senders"),
    ("banned sender -> discard even if member",
     facts(S("m@x.org", is_member=True, banned=True)), "discard", None, "banned-address"),
    ("second sender banned -> discard", facts(M, S("b@z.org", banned=True)),
     "discard", None, "banned-address"),
    ("emergency holds members too", facts(M, emergency=True), "hold", MEMBER, "emergency"),
    ("member, list default defer -> accept", facts(M), "accept", None, "member-moderation"),
    ("member, list default hold (moderated list)", facts(M, default_member_action="hold"),
     "hold", MEMBER, "member-moderation"),
    ("member own action beats list default",
     facts(S("m@x.org", is_member=True, member_action="accept"), default_member_action="hold"),
     "accept", None, "member-moderation"),
    ("member own action reject", facts(S("m@x.org", is_member=True, member_action="reject")),
     "reject", None, "member-moderation"),
    ("member own action discard", facts(S("m@x.org", is_member=True, member_action="discard")),
     "discard", None, "member-moderation"),
    ("member own action hold", facts(S("m@x.org", is_member=True, member_action="hold")),
     "hold", MEMBER, "member-moderation"),
    ("member in Reply-To position still counts", facts(N, M), "accept", None,
     "member-moderation"),
    ("member with defer overrides a nonmember hold default",
     facts(N, S("m@x.org", is_member=True, member_action="defer")), "accept", None,
     "member-moderation"),
    ("nonmember, default hold", facts(N), "hold", NONMEMBER, "nonmember-moderation"),
    ("nonmember, default reject", facts(N, default_nonmember_action="reject"), "reject", None,
     "nonmember-moderation"),
    ("nonmember, default discard", facts(N, default_nonmember_action="discard"), "discard",
     None, "nonmember-moderation"),
    ("nonmember, default accept", facts(N, default_nonmember_action="accept"), "accept", None,
     "nonmember-moderation"),
    ("nonmember record action accept", facts(S("n@y.org", nonmember_action="accept")),
     "accept", None, "nonmember-moderation"),
    ("nonmember record action discard beats accept list",
     facts(S("n@y.org", nonmember_action="discard"), accept_these_nonmembers=("n@y.org",)),
     "discard", None, "nonmember-moderation"),
    ("first sender with a record decides; defer makes the rule miss -> accept",
     facts(S("a@y.org", nonmember_action="defer"), S("b@y.org", nonmember_action="reject")),
     "accept", None, "nonmember-moderation"),
    ("accept_these exact", facts(N, accept_these_nonmembers=("n@y.org",)), "accept", None,
     "nonmember-moderation"),
    ("accept_these exact is case-sensitive: mixed case entry never matches",
     facts(N, accept_these_nonmembers=("N@y.org",)), "hold", NONMEMBER, "nonmember-moderation"),
    ("accept_these regexp", facts(N, accept_these_nonmembers=(r"^.*@y\.org$",)), "accept", None,
     "nonmember-moderation"),
    ("regexp is case-sensitive against the lowercased sender",
     facts(N, accept_these_nonmembers=(r"^.*@Y\.ORG$",)), "hold", NONMEMBER,
     "nonmember-moderation"),
    ("re.match anchors at the start only", facts(N, reject_these_nonmembers=(r"^n@y",)),
     "reject", None, "nonmember-moderation"),
    ("bad regexp skipped, next entry used",
     facts(N, accept_these_nonmembers=("^(", "n@y.org")), "accept", None,
     "nonmember-moderation"),
    ("accept list is checked before hold", facts(
        N, accept_these_nonmembers=("n@y.org",), hold_these_nonmembers=("n@y.org",)),
     "accept", None, "nonmember-moderation"),
    ("hold_these", facts(N, hold_these_nonmembers=("n@y.org",), default_nonmember_action="accept"),
     "hold", NONMEMBER, "nonmember-moderation"),
    ("reject_these", facts(N, reject_these_nonmembers=("n@y.org",)), "reject", None,
     "nonmember-moderation"),
    ("discard_these", facts(N, discard_these_nonmembers=("n@y.org",)), "discard", None,
     "nonmember-moderation"),
    ("@list reference in accept list", facts(
        S("n@y.org", member_of=frozenset({"other@lists.test"})),
        accept_these_nonmembers=("@other@lists.test",)), "accept", None, "nonmember-moderation"),
    ("@list reference, sender not a member there", facts(
        N, accept_these_nonmembers=("@other@lists.test",)), "hold", NONMEMBER,
     "nonmember-moderation"),
    ("@list reference only counts in the accept list", facts(
        S("n@y.org", member_of=frozenset({"other@lists.test"})),
        reject_these_nonmembers=("@other@lists.test",), default_nonmember_action="accept"),
     "accept", None, "nonmember-moderation"),
    ("second sender matches the accept list", facts(
        S("a@y.org"), S("b@y.org"), accept_these_nonmembers=("b@y.org",)), "accept", None,
     "nonmember-moderation"),
    ("first sender's pattern hit decides before the second's",
     facts(S("a@y.org"), S("b@y.org"), reject_these_nonmembers=("a@y.org",),
           accept_these_nonmembers=("b@y.org",)), "reject", None, "nonmember-moderation"),
]


@pytest.mark.parametrize(("desc", "f", "action", "kind", "rule"), CASES,
                         ids=[c[0] for c in CASES])
def test_verdict(desc: str, f: ListFacts, action: str, kind: str | None, rule: str) -> None:
    v = mailman3_verdict(f)
    assert (v.action, v.hold_kind, v.rule) == (action, kind, rule), v.reasons
    assert v.reasons, "every verdict carries its reasons"


@pytest.mark.parametrize(("desc", "f", "action"), [
    ("unauthenticated member is a nonmember",
     facts(S("m@x.org", is_member=True, authenticated=False)), "hold"),
    ("unauthenticated address earns no accept_these entry",
     facts(S("n@y.org", authenticated=False), accept_these_nonmembers=("n@y.org",)), "hold"),
    ("nor a nonmember record's accept",
     facts(S("n@y.org", nonmember_action="accept", authenticated=False)), "hold"),
    ("but a reject entry still applies",
     facts(S("n@y.org", authenticated=False), reject_these_nonmembers=("n@y.org",)), "reject"),
    ("an authenticated second sender still counts",
     facts(S("m@x.org", is_member=True, authenticated=False),
           S("m2@x.org", is_member=True)), "accept"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_require_authenticated_sender(desc: str, f: ListFacts, action: str) -> None:
    assert mailman3_verdict(f).action == action
