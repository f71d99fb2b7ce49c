"""The list manager's posting decision, declared as data: ordered tables of links.

Mailman 3 declares its decision in ``mailman/chains/builtin.py`` as an ordered tuple of
(rule, action, target) links and walks it in ``core/chains.py``: a rule that hits
either jumps to a terminal chain (accept, hold, reject, discard), defers (records a
reason; the ``any`` link holds later if some deferred rule hit) or detours into a
sub-chain (the header matches).  :data:`MAILMAN3_CHAIN` is that table, in Mailman
3.3.10's order, preceded by what Mailman's LMTP and incoming runners decide before the
chain starts; :func:`walk` is that walker.  The rules are the functions of
:mod:`listgate.rules.mailman3`.

Mailman 2.1 has no chains but a pipeline of handlers (``GLOBAL_PIPELINE``), each of
which may end the post's run by raising: :data:`MAILMAN2_PIPELINE` lists what each
handler decides, in pipeline order, as links the same walker runs (the rules of
:mod:`listgate.rules.mailman2`).  Every Mailman 2 link jumps (Hold's
``hold_for_approval`` raises at the first hit; nothing is deferred), and one thing
is added for it: a RETURN link, whose hit ends a detour and lets the chain it came
from go on (a header_filter_rules accept ends SpamDetect, not the pipeline).

Two things the walker adds, both so that listgate never refuses a post the list would
accept:

* a rule that cannot be evaluated (:class:`~listgate.post.Unevaluable`: Mailman would
  crash on the post, or the body was not read) is a miss with a note when its link
  can only refuse -- whatever the rest says, the list would not have accepted more --
  and ends the walk undecided (accepted, the log says why) when its link could accept;
* :class:`~listgate.rules.Busy` (a bounded check could not run now) ends it with a
  tempfail.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from listgate.compat32 import MailmanFails, NotRead, Unevaluable, Unseen
from listgate.model import MAILMAN2_GLOBAL_PIPELINE, ListFacts, Mailman2Facts
from listgate.post import Post
from listgate.rules import Busy, Context, Hit, Input, Pass
from listgate.rules import mailman2 as m2
from listgate.rules import mailman3 as m3
from listgate.verdict import MEMBER, ListVerdict

JUMP, DEFER, DETOUR = "jump", "defer", "detour"
#: in a detour: a hit ends the sub-chain, and the chain it detoured from goes on
#: (Mailman 2's header_filter_rules accept action returns from SpamDetect)
RETURN = "return"
#: a jump whose terminal chain the hit names (Mailman's ``moderation`` and ``dmarc``
#: chains jump where ``member_moderation_action`` / ``dmarc_action`` say)
FROM_HIT = "from-hit"
TERMINALS = ("accept", "hold", "reject", "discard")


@dataclass(frozen=True)
class Link:
    """One (rule, action, target) link.  ``accepts``: a hit can accept the post, so
    a rule that cannot be evaluated here leaves the verdict undecided."""

    rule: str
    check: Callable[[Input], Any]
    action: str = JUMP
    target: str | None = None
    accepts: bool = False
    #: DETOUR: the links of the chain detoured to, made per post (Mailman's
    #: ``HeaderMatchChain.get_links`` builds them from the site and list settings)
    links: Callable[[Input], Iterable[Link]] | None = None
    #: the rule looks at the verdict of the links after it (``Input.rest``): only
    #: such a link gets it, the walk of every other link makes no closure for it
    reads_rest: bool = False


def _crash(what: str) -> Callable[[Input], Any]:
    def check(inp: Input) -> Any:
        raise MailmanFails(what)

    return check


def header_match_links(inp: Input) -> list[Link]:
    """``chains/headers.py`` HeaderMatchChain: the site's ``header_checks`` (deferred;
    any hit jumps to ``jump_chain`` before the list's own rules are looked at), then
    the list's ``header_matches`` in order, each jumping to its action (no action: the
    site's ``jump_chain``).  A target Mailman has no terminal chain for makes Mailman
    fail when it builds that link: undecided here."""
    site, policy = inp.facts.site, inp.facts.policy
    settings = (site.header_checks, site.jump_chain, policy.address,
                tuple(policy.header_matches))
    try:
        return list(_header_match_links(*settings))
    except TypeError:  # a setting that cannot be a cache key: made for this post alone
        return list(_header_match_links.__wrapped__(*settings))


@functools.lru_cache(maxsize=256)
def _header_match_links(header_checks: str, jump: str, address: str,
                        header_matches: tuple[Any, ...]) -> tuple[Link, ...]:
    """:func:`header_match_links` from the settings it reads: made once per list and
    settings, not per post (the links hold no state of a post)."""
    out = [Link(f"header-match-config-{i}", m3.header_match_rule(h, p), DEFER)
           for i, (h, p) in enumerate(m3.site_header_checks(header_checks))]
    out.append(Link("any", m3.any_site_check if jump in TERMINALS else _crash(
        f"[antispam] jump_chain {jump!r} is not a chain"), JUMP, jump,
        accepts=jump not in ("hold", "reject", "discard")))
    list_id = address.replace("@", ".")
    for i, match in enumerate(header_matches):
        target = match.action or jump
        name = f"header-match-{list_id}-{i}"
        if target in TERMINALS:
            out.append(Link(name, m3.header_match_rule(match.header, match.pattern), JUMP,
                            target, accepts=target == "accept"))
        else:
            out.append(Link(name, _crash(f"header_matches rule {i} names {target!r}, which "
                                         "is not a chain Mailman can jump to"),
                            JUMP, target, accepts=True))
    return tuple(out)


#: Mailman 3.3.10: LMTP runner, incoming runner, then ``chains/builtin.py``
MAILMAN3_CHAIN: tuple[Link, ...] = (
    Link("lmtp-defects", m3.lmtp_defects, JUMP, "reject"),
    Link("autorespond", m3.autorespond, JUMP, "discard"),
    Link("dmarc-mitigation", m3.dmarc_mitigation, JUMP, FROM_HIT),
    Link("no-senders", m3.no_senders, JUMP, "discard"),
    Link("approved", m3.approved, JUMP, "accept", accepts=True, reads_rest=True),
    Link("loop", m3.loop, JUMP, "discard"),
    Link("banned-address", m3.banned_address, JUMP, "discard"),
    Link("header-match", m3.truth, DETOUR, links=header_match_links),
    Link("emergency", m3.emergency, JUMP, "hold"),
    Link("member-moderation", m3.member_moderation, JUMP, FROM_HIT, accepts=True),
    Link("nonmember-moderation", m3.nonmember_moderation, JUMP, FROM_HIT, accepts=True),
    Link("administrivia", m3.administrivia, DEFER),
    Link("implicit-dest", m3.implicit_dest, DEFER),
    Link("max-recipients", m3.max_recipients, DEFER),
    Link("max-size", m3.max_size, DEFER),
    Link("news-moderation", m3.news_moderation, DEFER),
    Link("no-subject", m3.no_subject, DEFER),
    Link("digests", m3.digests, DEFER),
    Link("suspicious-header", m3.suspicious_header, DEFER),
    Link("any", m3.any_hit, JUMP, "hold"),
    Link("truth", m3.truth, JUMP, "accept"),
)


def header_filter_links(inp: Input) -> list[Link]:
    """``SpamDetect.process``'s ``header_filter_rules`` loop, one link per pattern in
    order: a refusing pattern's hit discards, rejects or holds; an accept pattern's
    hit returns from SpamDetect (RETURN), so a pattern after it is not tried."""
    entries = m2.filter_entries(inp.facts)
    out = []
    for k, (i, j, _line, action) in enumerate(entries):
        check = m2.header_filter_check(entries, k)
        name = f"header-filter-{i}.{j}"
        if action == m2.ACCEPT:
            out.append(Link(name, check, RETURN, accepts=True))
        else:
            out.append(Link(name, check, JUMP, FROM_HIT))
    return out


#: Mailman 2.1.39's handlers, as links: what each one decides, in its own order
MAILMAN2_HANDLERS: dict[str, tuple[Link, ...]] = {
    "SpamDetect": (
        Link("dmarc-moderation", m2.dmarc_moderation, JUMP, FROM_HIT),
        # KNOWN_SPAMMERS (mm_cfg.py, Python code listgate does not run) only discards
        Link("header-filter-rules", m3.truth, DETOUR, links=header_filter_links),
    ),
    "Approve": (
        Link("loop", m2.loop, JUMP, "discard"),
        Link("approve", m2.approve, JUMP, "accept", accepts=True, reads_rest=True),
    ),
    "Replybot": (),  # sends the autoresponse; never refuses
    "Moderate": (
        Link("member-moderation", m2.member_moderation, JUMP, FROM_HIT, accepts=True),
        Link("nonmember-moderation", m2.nonmember_moderation, JUMP, FROM_HIT, accepts=True),
    ),
    "Hold": (
        Link("administrivia", m2.administrivia, JUMP, "hold"),
        Link("max-recipients", m2.max_recipients, JUMP, "hold"),
        Link("implicit-dest", m2.implicit_dest, JUMP, "hold"),
        Link("suspicious-header", m2.suspicious_header, JUMP, "hold"),
        Link("max-size", m2.max_size, JUMP, "hold"),
        Link("news-moderation", m2.news_moderation, JUMP, "hold"),
    ),
    # MimeDel (content filtering) can discard or reject a post, never let one through
    "Emergency": (Link("emergency", m2.emergency, JUMP, "hold"),),
}
#: the handlers of Mailman 2.1 that decide nothing about a post's fate
MAILMAN2_QUIET = frozenset({
    "MimeDel", "Scrubber", "Tagger", "CalcRecips", "AvoidDuplicates", "Cleanse",
    "CleanseDKIM", "CookHeaders", "Decorate", "ToDigest", "ToArchive", "ToUsenet",
    "AfterDelivery", "Acknowledge", "WrapMessage", "ToOutgoing", "FileRecips",
    "OwnerRecips", "SMTPDirect", "Sendmail"})


@functools.lru_cache(maxsize=64)
def mailman2_links(pipeline: tuple[str, ...] = MAILMAN2_GLOBAL_PIPELINE) -> tuple[Link, ...]:
    """The links of a Mailman 2 pipeline (``IncomingRunner._get_pipeline``: the list's
    own ``pipeline`` attribute, else ``GLOBAL_PIPELINE``), then the accept that ends
    a pipeline run to its end.  A handler listgate does not know may do anything:
    reaching it leaves the post to Mailman."""
    out: list[Link] = []
    for handler in pipeline:
        if handler in MAILMAN2_HANDLERS:
            out.extend(MAILMAN2_HANDLERS[handler])
        elif handler not in MAILMAN2_QUIET:
            out.append(Link(f"handler-{handler}", _crash(
                f"the list's pipeline runs {handler!r}, a handler listgate does not know"),
                JUMP, "accept", accepts=True))
    out.append(Link("truth", m3.truth, JUMP, "accept"))
    return tuple(out)


#: Mailman 2.1.39's ``GLOBAL_PIPELINE`` as links (SpamDetect, Approve, Replybot,
#: Moderate, Hold, MimeDel, Scrubber, Emergency, then delivery)
MAILMAN2_PIPELINE: tuple[Link, ...] = mailman2_links()


_NO_REST = ()


def _rest_not_declared() -> ListVerdict | None:
    raise RuntimeError("a rule read Input.rest, but its Link does not say reads_rest")


class _Walk:
    """The state of one walk: passes and notes collected on the way."""

    def __init__(self, inp: Input) -> None:
        self.inp = inp
        self.passes: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def run(self, links: Sequence[Link], top: bool = True) -> ListVerdict | None:
        """Walk ``links``; the verdict, or None when a sub-chain runs out."""
        inp = self.inp
        for i, link in enumerate(links):
            rest: list[ListVerdict | None] | tuple[()] = _NO_REST
            if top:
                if link.reads_rest:
                    rest = []
                    inp.rest = functools.partial(self._rest, links[i + 1:], rest)
                else:
                    inp.rest = _rest_not_declared
            try:
                result = link.check(inp)
            except MailmanFails as e:
                return self._undecided(link, f"Mailman would fail on it: {e}")
            except Unevaluable as e:
                if link.accepts:
                    return self._undecided(link, str(e))
                if not isinstance(e, NotRead | Unseen):
                    self.notes.append(f"{link.rule} not evaluated: {e}")
                result = None
            except Busy as e:
                return ListVerdict("tempfail", rule=link.rule, reasons=(str(e),))
            except Exception as e:  # noqa: BLE001 - the rule runs Mailman's own code: what
                # raises here (a regexp Python cannot run, a header a rule cannot read)
                # raises in Mailman too, which shunts the post
                return self._undecided(link, f"Mailman would fail on it: "
                                             f"{type(e).__name__}: {e}")
            if result is not None:  # most links miss: no type tests for them
                if isinstance(result, ListVerdict):
                    return result
                if isinstance(result, Pass):
                    self.passes.append((link.rule, result.reason))
                    result = None
            if result is None:
                if rest:
                    return rest[0]  # the rest was walked already, from this very state
                continue
            if link.action == DEFER:
                inp.hits.append((link.rule, result))
                continue
            if link.action == RETURN:
                self.passes.append((link.rule, result.reason))
                return None
            if link.action == DETOUR:
                assert link.links is not None
                verdict = self.run(list(link.links(inp)), top=False)
                if verdict is not None:
                    return verdict
                continue
            target = result.action if link.target == FROM_HIT else link.target
            return self._terminal(link, str(target), result)
        return None

    def _rest(self, links: Sequence[Link], memo: list[ListVerdict | None]) -> ListVerdict | None:
        """The verdict of the links after the current one, walked once."""
        if not memo:
            memo.append(self.run(links))
        return memo[0]

    def _terminal(self, link: Link, target: str, hit: Hit) -> ListVerdict:
        reasons = tuple(r for r in (hit.reason,) if r)
        if target == "accept":
            if link.rule == "truth":
                rule = self.passes[-1][0] if self.passes else "accept"
                reasons = tuple(r for _n, r in self.passes) or ("no rule held the post",)
            else:
                rule = link.rule
            return ListVerdict("accept", rule=rule, reasons=reasons + tuple(self.notes))
        notice = hit.notice
        if link.rule == "any" and self.inp.hits:
            notice = "; ".join(h.notice or h.reason for _n, h in self.inp.hits)
        kind = (hit.hold_kind or MEMBER) if target == "hold" else None
        return ListVerdict(target, kind, rule=link.rule,
                           reasons=reasons + tuple(self.notes), notice=notice)

    def _undecided(self, link: Link, why: str) -> ListVerdict:
        return ListVerdict("accept", rule=link.rule, undecided=True, reasons=(
            f"{link.rule} not evaluable: {why}; the post goes to the list manager",
            *self.notes))


def walk(links: Sequence[Link], post: Post, facts: Any, ctx: Context) -> ListVerdict:
    """The verdict of ``links`` for this post and these facts."""
    inp = Input(post, facts, ctx)
    verdict = _Walk(inp).run(links)
    assert verdict is not None, "a top-level chain ends in an unconditional link"
    return verdict


def needs_body(facts: Any, holds_refuse: bool) -> bool:
    """Do this list's rules read the body?  ``facts`` as the backend returns them (with
    no senders); ``holds_refuse``: a member's hold is refused (member_hold_action is not
    accept), so the content holds that read the body (administrivia, max-size) can
    change the answer.

    The body is read for what can turn a refusal into an accept -- the moderator
    password on the first body line, header rules that look into MIME parts -- and
    for the content holds only when they can refuse.  (lmtp-defects uses the body
    when it is there, but never makes us ask for it.)"""
    if isinstance(facts, ListFacts):
        p = facts.policy
        if p.approval_passwords or p.header_matches or \
                m3.site_header_checks(facts.site.header_checks):
            return True
        return holds_refuse and bool(p.administrivia or p.max_message_size)
    if isinstance(facts, Mailman2Facts):
        # the password line (every list has an administrator password), the headers of
        # MIME parts (header_filter_rules), the content holds
        if facts.approval_passwords or facts.legacy_admin_password or m2.filter_entries(facts):
            return True
        return holds_refuse and bool(facts.administrivia or facts.max_message_size)
    return False


def list_verdict(facts: Any, post: Post | None = None, ctx: Context | None = None
                 ) -> ListVerdict:
    """The verdict for whatever facts a backend returned: Mailman 3's chain for
    :class:`ListFacts`, Mailman 2's pipeline for :class:`Mailman2Facts`.

    Without a post, one with no headers but the senders' is assumed (unit tests and
    callers that have only the facts)."""
    ctx = ctx or Context()
    if isinstance(facts, ListFacts):
        if post is None:
            post = _bare_post(facts)
        return walk(MAILMAN3_CHAIN, post, facts, ctx)
    if isinstance(facts, Mailman2Facts):
        if post is None:
            post = _bare_mailman2_post(facts)
        links = MAILMAN2_PIPELINE if facts.pipeline is None else mailman2_links(facts.pipeline)
        return walk(links, post, facts, ctx)
    raise TypeError(f"no verdict rules for {type(facts).__name__}")


def _bare_post(facts: ListFacts) -> Post:
    """A post that only names its senders (From) and the list (To), with a Subject:
    what the sender rules alone decide."""
    headers = [("From", s.address) for s in facts.senders[:1]]
    headers += [("Reply-To", s.address) for s in facts.senders[1:]]
    headers += [("To", facts.policy.address), ("Subject", "post")]
    return Post(headers, "", b"", 0)



def _bare_mailman2_post(facts: Mailman2Facts) -> Post:
    """The same for Mailman 2: From the primary sender, to the list."""
    sender = facts.primary or next((s.address for s in facts.senders), "")
    headers = [("From", sender)] if sender else []
    headers += [("Reply-To", s.address) for s in facts.senders if s.address != sender]
    headers += [("To", facts.list_address), ("Subject", "post")]
    return Post(headers, "", b"", 0)
