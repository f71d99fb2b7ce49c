"""The rules of the list managers' posting chains: small pure functions, one per rule.

A rule reads one :class:`Input` (the post, what the backend said about the list and
the senders, and the services the engine lends it) and answers:

* ``None``: a miss;
* :class:`Pass`: a miss that says why the sender passes (a member whose action is
  defer); the final accept names the last such rule;
* :class:`Hit`: the rule matched; the link it belongs to says where the post goes
  (for the moderation rules, ``Hit.action`` says it);
* a :class:`~listgate.verdict.ListVerdict`: the rule decided the whole chain itself
  (``approved``, which looks at the rest of the chain before it spends a password hash).

It raises :class:`~listgate.post.Unevaluable` when the list manager would crash on the
post or listgate lacks the data, and :class:`Busy` when a bounded resource (the
password hashing) is exhausted; :mod:`listgate.chain` decides what either means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from listgate.compat32 import Unevaluable
from listgate.post import Post


class Busy(Exception):
    """A bounded check could not run now (too many password checks): answer 4xx."""


@dataclass(frozen=True)
class Hit:
    """A rule matched: ``reason`` in the list manager's words, ``action`` where a
    moderation-style rule sends the post (accept, hold, reject, discard)."""

    reason: str
    action: str | None = None
    #: for holds: "member" or "nonmember" (which of listgate's hold actions applies)
    hold_kind: str | None = None
    #: the text a refusal gives the sender, where the list manager has one of its own
    notice: str = ""


@dataclass(frozen=True)
class Pass:
    """A miss that lets the sender through this rule, with the reason (logged)."""

    reason: str


class PasswordChecker(Protocol):
    """The bounded moderator-password check (:mod:`listgate.passwords`)."""

    def check(self, password: str, stored: Any, scheme: str = "mailman3",
              source: str | None = None) -> Any: ...


class DmarcChecker(Protocol):
    """The DMARC policy lookup (:mod:`listgate.dmarc`)."""

    def mitigate(self, from_value: str | None, dmarc_addresses: Any) -> Any: ...


@dataclass
class Context:
    """What the engine lends the rules: bounded services and its own judgement."""

    passwords: PasswordChecker | None = None
    dmarc: DmarcChecker | None = None
    #: would the engine refuse (4xx/5xx) this verdict?  ``approved`` spends a password
    #: hash only when the rest of the chain would refuse the post
    refuses: Callable[[Any], bool] = field(default=lambda verdict: verdict.action != "accept")
    #: the client's network (its /24 or /64): the password checker's share is per source
    source: str | None = None


@dataclass
class Input:
    """One rule's view: the post, the backend's facts, the engine's services, and the
    chain's state (deferred hits so far; the rest of the chain, for ``approved``)."""

    post: Post
    facts: Any
    ctx: Context
    hits: list[tuple[str, Hit]] = field(default_factory=list)
    #: the verdict of the links after the current one (set by the walker)
    rest: Callable[[], Any] = field(default=lambda: None)
    #: what one rule leaves for the rules after it, as the list manager's handlers
    #: change the message or its metadata (Mailman 2's Approve strips the body's
    #: ``Approved:`` line) or compute something once per post
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def policy(self) -> Any:
        return self.facts.policy


def password_hit(inp: Input, password: str, stored: Any, what: str) -> Hit | None:
    """Ask the engine's bounded checker whether ``password`` is one of the list's
    ``stored`` approval passwords (passlib hashes or ``{sha1}`` digests): a Hit if so,
    None if not; past the checker's bound :class:`Busy` (answer 4xx), a password it
    cannot check :class:`~listgate.compat32.Unevaluable` (never a refusal)."""
    checker = inp.ctx.passwords
    if checker is None:
        raise Unevaluable("no password checker configured")
    scheme = "mailman2" if all(str(h).startswith("{sha1}") for h in stored) else "mailman3"
    result = checker.check(password, stored, scheme, source=inp.ctx.source)
    if result.status == "ok":
        return Hit(what)
    if result.status == "busy":
        raise Busy(f"{what} not checked: {result.reason}")
    if result.status == "unknown":
        raise Unevaluable(f"{what} not checkable: {result.reason}")
    return None
