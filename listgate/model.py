"""The data every backend hands to the decision engine, and the backend interface.

The decision engine never talks to a database or a REST API itself: it asks a
backend two questions -- "is this recipient a list's posting address?" and "what
does this list know about these sender addresses?" -- and decides from the plain
values returned here.  That keeps the Mailman-compatible verdict a pure function
that unit tests can drive with literal data, and lets every backend (the embedded
SQLite store, Mailman 3's REST API, Mailman 2's pickles) answer in one round trip.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Mailman 3's moderation actions (``mailman.interfaces.action.Action``).
ACTIONS = ("hold", "reject", "discard", "accept", "defer")

#: The four nonmember pattern lists, in the order Mailman checks them.
NONMEMBER_LISTS = (
    "accept_these_nonmembers",
    "hold_these_nonmembers",
    "reject_these_nonmembers",
    "discard_these_nonmembers",
)


class BackendError(Exception):
    """The backend could not answer (unreachable, unreadable, locked, bad data).

    The engine turns it into a tempfail (or the admin's ``on_backend_error``
    choice); the message is logged, so it should name what failed and why.
    """


def owner_of(list_address: str) -> str:
    """The list owner address (``name-owner@domain``) quoted in reject texts."""
    local, _, domain = list_address.partition("@")
    return f"{local}-owner@{domain}"


#: the header-match actions a list's rule may name (REST ``header-matches``); None =
#: the site's ``[antispam] jump_chain``
HEADER_MATCH_ACTIONS = ACTIONS

#: ``dmarc_mitigate_action`` values (``interfaces/mailinglist.py``); only reject and
#: discard refuse, the others rewrite the post and accept it
DMARC_ACTIONS = ("no_mitigation", "munge_from", "wrap_message", "reject", "discard")
#: ``newsgroup_moderation`` values; only ``moderated`` holds every post
NEWSGROUP_MODERATIONS = ("none", "open_moderated", "moderated")
#: ``autorespond_postings`` values; ``respond_and_discard`` discards every post
AUTORESPONSES = ("none", "respond_and_discard", "respond_and_continue")


@dataclass(frozen=True)
class HeaderMatch:
    """One of a list's ``header_matches``: a header, a regexp, an action or None."""

    header: str
    pattern: str
    action: str | None = None


@dataclass(frozen=True)
class ListPolicy:
    """A list's posting policy, as Mailman 3 models it (``styles/base.py`` defaults).

    Beyond the sender rules, it carries every setting a rule of the posting chain
    reads, so that a backend's answer is all the chain needs.
    """

    address: str  #: the posting address, lowercased ``name@domain``
    default_member_action: str = "defer"
    default_nonmember_action: str = "hold"
    emergency: bool = False
    accept_these_nonmembers: tuple[str, ...] = ()
    hold_these_nonmembers: tuple[str, ...] = ()
    reject_these_nonmembers: tuple[str, ...] = ()
    discard_these_nonmembers: tuple[str, ...] = ()
    #: what an Approved: password is checked against: passlib hashes (``$6$...``, as
    #: Mailman 3 stores ``moderator_password``) or ``{sha1}HEX`` (Mailman 2's digests
    #: of the poster, moderator and list admin passwords); empty = no approval possible
    approval_passwords: tuple[str, ...] = ()
    header_matches: tuple[HeaderMatch, ...] = ()
    max_message_size: int = 40  #: KB; 0 = no limit
    max_num_recipients: int = 10  #: To + Cc addresses; 0 = no limit
    require_explicit_destination: bool = True
    acceptable_aliases: tuple[str, ...] = ()
    administrivia: bool = True
    #: Mailman 2.1's ``bounce_matching_headers`` (Mailman 3 keeps it, but only for
    #: lists imported from 2.1: its REST API neither shows nor sets it)
    bounce_matching_headers: str = ""
    newsgroup_moderation: str = "none"
    dmarc_mitigate_action: str = "no_mitigation"
    dmarc_addresses: tuple[str, ...] = ()
    dmarc_moderation_notice: str = ""
    autorespond_postings: str = "none"
    filter_content: bool = False

    def referenced_lists(self) -> tuple[str, ...]:
        """Lists named by ``@list@domain`` entries of accept_these_nonmembers (Mailman 3.3.10)."""
        return tuple(
            entry[1:].lower()
            for entry in self.accept_these_nonmembers
            if entry.startswith("@") and "@" in entry[1:]
        )


@dataclass(frozen=True)
class SenderFacts:
    """What the list knows about one sender address."""

    address: str
    #: the sender (or, in Mailman 3, a user it belongs to) is a member (role member)
    is_member: bool = False
    #: the member's own moderation_action; None = use the list's default_member_action
    member_action: str | None = None
    #: a nonmember record's moderation_action; None = no record or no action set
    nonmember_action: str | None = None
    #: banned from this list (exact or pattern, list or global ban)
    banned: bool = False
    #: other lists (from ``@list@domain`` accept entries) this address is a member of
    member_of: frozenset[str] = field(default_factory=frozenset)
    #: with require_authenticated_sender: False if the MTA did not verify this address
    #: (SPF/DKIM/internal/trusted path); it then counts for neither membership nor an
    #: accepting entry
    authenticated: bool = True


@dataclass(frozen=True)
class SiteFacts:
    """The list manager's site-wide settings a posting rule reads (Mailman 3's
    ``[mailman]`` and ``[antispam]`` config sections, at their defaults here)."""

    #: ``[antispam] header_checks``: lines of ``Header: regexp``, checked for every list
    header_checks: str = ""
    #: ``[antispam] jump_chain``: where a site header check, or a list rule without an
    #: action, sends the post
    jump_chain: str = "hold"
    sender_headers: str = "from from_ reply-to sender"
    email_commands_max_lines: int = 10
    check_max_size_on_filtered_message: bool = False
    hold_digest: bool = False


DEFAULT_SITE = SiteFacts()


@dataclass(frozen=True)
class ListFacts:
    """A list's policy plus the facts about each sender, in the order asked."""

    policy: ListPolicy
    senders: tuple[SenderFacts, ...]
    site: SiteFacts = DEFAULT_SITE


class Backend(abc.ABC):
    """A list-membership source.  Implementations must be safe to call from many threads.

    Both methods raise :class:`BackendError` when they cannot answer; they never
    return a guess.
    """

    #: short name used in config (``[lists] backend``) and in log lines
    name: str = "?"
    #: True if the backend caches its own answers (the engine then does not, so a
    #: change is seen within one TTL, not two)
    caches_itself: bool = False
    #: the senders ``list_facts`` is asked about: Mailman 3's ``msg.senders``
    #: ("mailman3") or Mailman 2's ``msg.get_senders()`` ("mailman2")
    senders_as: str = "mailman3"

    @abc.abstractmethod
    def find_list(self, address: str) -> str | None:
        """Return the list's posting address if ``address`` (lowercased) is one, else None."""

    @abc.abstractmethod
    def list_facts(self, list_address: str, senders: Sequence[str], primary: str = "",
                   max_age: float | None = None) -> Any:
        """Return what the list knows about this post's senders.

        ``max_age``: a backend that caches its own answers uses none older than this
        many seconds (the engine asks so before it refuses a post).

        ``senders`` are Mailman 3's (From, envelope, Reply-To, Sender; decoded, valid,
        lowercased, unique), or Mailman 2's raw ``get_senders()`` for a backend whose
        :attr:`senders_as` says so; ``primary`` is Mailman 2's single ``get_sender()``
        address (passed to such a backend only; the others get "").  Mailman 3
        style backends return :class:`ListFacts`; another list manager's backend may
        return its own facts type, which ``verdict.list_verdict`` dispatches on.
        """

    def stats(self) -> str:
        """Cache statistics of a backend that caches itself."""
        return ""

    @abc.abstractmethod
    def lists(self) -> list[str]:
        """Every posting address the backend knows (``listgate lists ls``), sorted."""

    def close(self) -> None:  # noqa: B027 - an optional hook: most backends hold nothing
        """Release connections; the backend may be used again afterwards."""


@dataclass(frozen=True)
class Mailman2Sender:
    """What a Mailman 2 list knows about one of the post's senders (``msg.get_senders()``)."""

    address: str
    #: the member address Mailman 2 found: the sender itself or, through the list's
    #: ``equivalent_domains``, the same local part at an equivalent domain; None = no member
    member: str | None = None
    #: that member receives digests (``digest_members``) rather than single posts
    digest: bool = False
    #: the member's moderate flag (``user_options[member] & 128``) is set
    moderated: bool = False


#: Mailman 2.1's ``GLOBAL_PIPELINE`` (``Defaults.py``), the handlers a list post goes
#: through unless the list has a ``pipeline`` attribute of its own
MAILMAN2_GLOBAL_PIPELINE = (
    "SpamDetect", "Approve", "Replybot", "Moderate", "Hold", "MimeDel", "Scrubber",
    "Emergency", "Tagger", "CalcRecips", "AvoidDuplicates", "Cleanse", "CleanseDKIM",
    "CookHeaders", "ToDigest", "ToArchive", "ToUsenet", "AfterDelivery", "Acknowledge",
    "WrapMessage", "ToOutgoing")


@dataclass(frozen=True)
class HeaderFilterRule:
    """One of a Mailman 2.1 list's ``header_filter_rules``: regexps, one a line (``#``
    lines are comments), and the action code (``mm_cfg``: 0 defer, 2 reject, 3 discard,
    6 accept, 7 hold)."""

    patterns: str
    action: int


@dataclass(frozen=True, kw_only=True)
class Mailman2Settings:
    """The Mailman 2.1 list settings the pipeline (:data:`listgate.chain.MAILMAN2_PIPELINE`)
    reads beyond the sender rules: what the backend keeps of a list and hands on, as
    they are, with each post's facts.  Defaults are Mailman 2.1's (``Defaults.py``)."""

    #: what an Approved: password is checked against, as ``{sha1}HEX``: the list
    #: poster, moderator and administrator passwords (``post_password``,
    #: ``mod_password``, ``password``), which ``Approve.py`` accepts; never the site
    #: password, which it deliberately does not
    approval_passwords: tuple[str, ...] = ()
    #: the administrator password is stored in a pre-2.1 form (an MD5 digest or a
    #: crypt() hash) that ``SecurityManager.Authenticate`` still accepts
    legacy_admin_password: bool = False
    header_filter_rules: tuple[HeaderFilterRule, ...] = ()
    #: ``Header: regexp`` lines (Hold's suspicious headers); '' when the file has none
    #: (Mailman's default for new lists is a few sample lines)
    bounce_matching_headers: str = ""
    max_message_size: int = 40  #: KB of body; 0 = no limit
    max_num_recipients: int = 10  #: To + Cc addresses; 0 = no limit
    require_explicit_destination: bool = True
    #: regexps, one a line, that count as the list's address (``HasExplicitDest``)
    acceptable_aliases: str = ""
    administrivia: bool = True
    #: 0 accept, 1 munge From, 2 wrap, 3 reject, 4 discard
    dmarc_moderation_action: int = 0
    #: apply dmarc_moderation_action to p=quarantine domains as well as p=reject
    dmarc_quarantine_moderation_action: bool = True
    #: addresses and ``^regexps`` treated as from a DMARC reject domain (in
    #: 2.1.39; not yet in 2.1.26)
    dmarc_moderation_addresses: tuple[str, ...] = ()
    dmarc_moderation_notice: str = ""
    member_moderation_notice: str = ""
    nonmember_rejection_notice: str = ""
    gateway_to_news: bool = False
    #: 0 none, 1 open list, moderated newsgroup, 2 moderated
    news_moderation: int = 0
    #: the list's own ``pipeline`` attribute; None = the global pipeline
    pipeline: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Mailman2Facts(Mailman2Settings):
    """What a Mailman 2.1 list's ``config.pck`` says about a post's senders, plus every
    list setting the pipeline (:data:`listgate.chain.MAILMAN2_PIPELINE`) reads.

    Mailman 2 decides members by every sender (``get_senders()``, in ``senders``)
    but nonmembers by ONE address, ``primary`` (``get_sender()``), so both are kept.
    The integer settings are Mailman 2's own codes; the defaults are Mailman 2.1's
    (``Defaults.py``), except where noted.
    """

    list_address: str  #: the posting address the post was sent to, lowercased
    internal_name: str  #: Mailman 2's list name (the directory under ``lists/``)
    #: the list's ``host_name`` (``GetListEmail()`` is ``internal_name@host_name``)
    host_name: str = ""
    emergency: bool = False
    #: for moderated members: 0 hold, 1 reject, 2 discard
    member_moderation_action: int = 0
    #: for nonmembers no ``*_these_nonmembers`` entry matches: 0 accept, 1 hold,
    #: 2 reject, 3 discard
    generic_nonmember_action: int = 1
    accept_these_nonmembers: tuple[str, ...] = ()
    hold_these_nonmembers: tuple[str, ...] = ()
    reject_these_nonmembers: tuple[str, ...] = ()
    discard_these_nonmembers: tuple[str, ...] = ()
    senders: tuple[Mailman2Sender, ...] = ()
    #: Mailman 2's ``get_sender()``, lowercased ('' if the post has no sender at all)
    primary: str = ""
    #: internal names of the lists named by ``@name`` entries that ``primary`` is a
    #: member (or digest member) of; unknown lists and this list itself never are
    primary_member_of: frozenset[str] = field(default_factory=frozenset)
    #: with require_authenticated_sender: False if the MTA did not verify ``primary``
    #: (then no accept_these_nonmembers entry accepts it)
    primary_authenticated: bool = True
