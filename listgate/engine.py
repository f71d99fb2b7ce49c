"""The decision engine: SMTP facts in, verdicts out.  No pymilter here.

One :class:`Engine` is built at start-up from the config (networks parsed, backend
opened, caches made) and shared by all connections; each SMTP connection gets a
:class:`Session` whose methods mirror the SMTP stages.  The milter module calls
them from pymilter callbacks, and ``listgate check`` calls the very same methods
from the command line, which is how an admin gets the daemon's exact answer offline.

Rejections that depend on the connection or the HELO name are *delayed* to MAIL
FROM, as Postfix does with ``smtpd_delay_reject``: the SMTP AUTH identity is only
known there, and an authenticated user behind a numeric HELO must not be refused.
It also lets the milter skip a reply round trip at connect and HELO.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from listgate import addresses, budget
from listgate.authn import (
    AuthFacts,
    BodyCollector,
    DkimResult,
    assemble_message,
    authentication_results,
    claims_authserv_id,
    sender_roles,
    verify_dkim,
)
from listgate.cache import TTLCache
from listgate.chain import list_verdict, needs_body
from listgate.compat32 import Unevaluable
from listgate.config import Config
from listgate.model import (
    DEFAULT_SITE,
    Backend,
    BackendError,
    ListFacts,
    Mailman2Facts,
    owner_of,
)
from listgate.post import Post
from listgate.received import (
    TrustResult,
    in_nets,
    normalize_ip,
    parse_received,
    trusted_path,
)
from listgate.reply import Reply, clean, header_value
from listgate.rules import Context
from listgate.spfcheck import SpfChecker, SpfResult
from listgate.verdict import MEMBER, ListVerdict

CONTINUE, ACCEPT, REJECT, TEMPFAIL = "continue", "accept", "reject", "tempfail"

#: headers collected for the decision (and for later Received-chain checks)
COLLECTED = frozenset({"from", "sender", "reply-to", "received", "message-id", "subject"})
#: bounds against header floods: values kept per header name, characters per value.
#: libmilter never passes more than 64 KiB per header, so no value the MTA can hand
#: us is cut (a cut From could hide the member address Mailman would see).
MAX_VALUES_PER_HEADER = 100
MAX_VALUE_CHARS = 65536
#: headers kept in order (for DKIM and the list manager's header rules); a message
#: with more leaves those rules undecided rather than judged on part of its headers
MAX_RAW_HEADERS = 1000
VERDICT_HEADER = "X-Listgate-Verdict"
TRUSTED_HEADER = "X-Listgate-Trusted"
OWN_HEADER_PREFIX = "x-listgate-"

_SPF_REPLIES = {
    # result: (reject reply, tempfail reply)
    "fail": (("550", "5.7.23"), ("451", "4.7.23")),
    "permerror": (("550", "5.7.24"), ("451", "4.7.24")),
    "temperror": (("550", "5.7.24"), ("451", "4.7.24")),
}
#: softfail, neutral, none or pass refused by the admin's choice
_SPF_OTHER = (("550", "5.7.1"), ("451", "4.7.1"))
_NO_PTR = ("unknown", "")


@dataclass(frozen=True)
class Decision:
    """What to answer at one stage."""

    action: str = CONTINUE
    reply: Reply | None = None
    reasons: tuple[str, ...] = ()

    @property
    def refuses(self) -> bool:
        return self.action in (REJECT, TEMPFAIL)


OK = Decision()


@dataclass
class Rcpt:
    """One RCPT TO and what became of it (the ``rcpts`` of ``listgate check``)."""

    address: str
    list: str | None = None
    status: str = "accepted"  #: accepted, deferred (4xx) or rejected (5xx)
    reply: Reply | None = None
    #: an internal-only list posted to by a relay/submission server: the Received
    #: chain must show a trusted submission path at end of message
    needs_trusted_path: bool = False


@dataclass
class EomResult:
    """The end-of-message answer plus the header changes to apply before it."""

    decision: Decision
    #: (name, value, index): index 0 = insert as the first header, -1 = append
    add_headers: list[tuple[str, str, int]] = field(default_factory=list)
    #: (name, occurrence): delete that 1-based occurrence of the header
    remove_headers: list[tuple[str, int]] = field(default_factory=list)
    list_address: str | None = None
    list_verdict: ListVerdict | None = None


def _is_loopback(ip: str | None) -> bool:
    return ip is not None and ipaddress.ip_address(ip).is_loopback


#: every character an IPv4 address may have (an IPv6 one has a colon)
_IPV4_CHARS = frozenset("0123456789.")


@functools.lru_cache(maxsize=4096)
def source_network(ip: str) -> str:
    """The client's network, its /24 or /64: the password checker's share is per source.
    Remembered per address: the same MTAs connect again and again."""
    prefix = 24 if ipaddress.ip_address(ip).version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def is_ip_literal(name: str) -> bool:
    """A bare IPv4/IPv6 address (not the RFC 5321 ``[address-literal]`` form)."""
    name = name.strip()
    if ":" not in name and not _IPV4_CHARS.issuperset(name):
        return False  # a host name (letters, no colon): no ValueError raised per HELO
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _in_domains(domain: str, domains: Sequence[str]) -> bool:
    """``domain`` is one of ``domains`` or a subdomain of one."""
    return any(domain == d or domain.endswith("." + d) for d in domains)


class ListLookups:
    """The backend behind a TTL cache: what the daemon asks on the hot path."""

    def __init__(self, backend: Backend, ttl: float, negative_ttl: float, size: int) -> None:
        self.backend = backend
        own = backend.caches_itself
        self.ttl = 0.0 if own else ttl
        self.negative_ttl = 0.0 if own else negative_ttl
        self.lists = TTLCache(size)
        self.facts = TTLCache(size)

    def find_list(self, address: str) -> str | None:
        key = address.lower()
        if not addresses.is_valid(key):
            # no list has such a posting address (undecodable bytes, no domain...);
            # asking the backend would only turn garbage into a "backend error"
            return None
        hit = self.lists.get(key)
        if not TTLCache.missing(hit):
            return hit
        found = self.backend.find_list(key)
        self.lists.put(key, found, self.ttl if found else self.negative_ttl)
        return found

    def list_facts(self, list_address: str, senders: tuple[str, ...], primary: str,
                   max_age: float | None = None) -> Any:
        """The backend's facts, cached; with ``max_age``, none older than that (a
        refusal must not rest on an answer from before the sender subscribed)."""
        key = (list_address, senders, primary)
        hit = self.facts.get(key, max_age=max_age)
        if not TTLCache.missing(hit):
            return hit
        facts = self.backend.list_facts(list_address, senders, primary, max_age=max_age)
        self.facts.put(key, facts, self.ttl)
        return facts

    def stats(self) -> str:
        """Cache hit/miss counts for the log (SIGUSR1, shutdown)."""
        if self.backend.caches_itself:
            return self.backend.stats()
        return (f"list cache {self.lists.hits} hits/{self.lists.misses} misses, "
                f"facts cache {self.facts.hits} hits/{self.facts.misses} misses")


class BodyLists:
    """Which lists' rules need the message body, refreshed once per TTL.

    The milter decides at connect whether the MTA sends the body at all, so it must not
    wait for the backend there: the answer is remembered, and when it expires one
    background thread asks again while connections go on with the old answer.  Until
    there is an answer (start-up, or the backend failing) it is None: read every body,
    the safe side.
    """

    def __init__(self, compute: Callable[[], frozenset[str]], ttl: float,
                 log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._compute = compute
        self.ttl = max(ttl, 1.0)
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._value: frozenset[str] | None = None
        self._expires = 0.0
        self._refreshing = False

    def get(self, wait: bool = False) -> frozenset[str] | None:
        """The lists needing the body; None = unknown.  ``wait``: refresh in this
        thread if expired (``listgate check``), else in the background."""
        with self._lock:
            if self._clock() < self._expires or self._refreshing:
                return self._value
            self._refreshing = True
        if wait:
            self._refresh()
        else:
            threading.Thread(target=self._refresh, name="listgate-body-lists",
                             daemon=True).start()
        return self._value

    def _refresh(self) -> None:
        try:
            value: frozenset[str] | None = self._compute()
            ttl = self.ttl
        except Exception as e:  # noqa: BLE001 - any failure: read bodies, ask again soon
            self._log.warning("cannot tell which lists need the message body (every body is "
                              "read meanwhile): %s", e)
            value, ttl = None, min(self.ttl, 10.0)
        with self._lock:
            self._value, self._expires, self._refreshing = value, self._clock() + ttl, False

    def clear(self) -> None:
        with self._lock:
            self._expires = 0.0


class Engine:
    """Everything shared by all connections, computed once at start-up."""

    def __init__(self, cfg: Config, backend: Backend, spf: SpfChecker | None,
                 is_dynip: Callable[[str, str], bool],
                 log: logging.Logger | None = None, host_name: str = "localhost",
                 passwords: Any = None, dmarc: Any = None,
                 background_refresh: bool = False) -> None:
        self.cfg = cfg
        self.log = log or logging.getLogger("listgate")
        self.backend = backend
        #: whose idea of "the senders" the backend's lists follow: Mailman 3's
        #: (``msg.senders``: decoded, validated) or Mailman 2's (``get_senders()``: raw)
        self.senders_as = getattr(backend, "senders_as", "mailman3")
        self.lookups = ListLookups(backend, cfg.lists.cache_ttl, cfg.lists.negative_cache_ttl,
                                   cfg.lists.cache_size)
        self.spf = spf
        self.is_dynip = is_dynip
        self.observe = cfg.milter.mode == "observe"
        self.internal_nets = cfg.network.internal_connect
        self.trusted_nets = cfg.network.trusted_relay
        self.internal_domains = cfg.network.internal_domains
        self.hello_blacklist = cfg.network.hello_blacklist
        self.spf_actions = cfg.section("spf")
        self.one_list = cfg.lists.one_list_per_transaction
        self.fail_open = cfg.lists.on_backend_error == "accept"
        self.internal_only = frozenset(cfg.lists.internal_only)
        self.submission_nets = cfg.trust.submission_servers
        self.relay_nets = cfg.trust.relay_servers
        #: clients whose posts may come over a trusted submission path
        self.path_nets = self.submission_nets + self.relay_nets
        #: DKIM needs the body whenever some list requires authenticated senders
        self.auth_needs_body = any(
            ov.get("require_authenticated_sender", "no") != "no"
            for ov in (cfg.section("lists"), *cfg.list_overrides.values()))
        #: the lists whose chain rules read the body (approved line, header rules in MIME
        #: parts, size...): otherwise the MTA need not send it
        self.body_lists = BodyLists(self._lists_needing_body, cfg.lists.cache_ttl, self.log)
        #: the daemon refreshes what it remembers in the background (no connection waits
        #: for it); ``listgate check`` asks there and then, for the daemon's exact answer
        self.background_refresh = background_refresh
        #: the bounded moderator-password check and the DMARC lookup the rules use
        self.passwords = passwords
        self.dmarc = dmarc
        #: a refusal rests on backend answers at most this old
        self.refusal_max_age = cfg.lists.refusal_max_age
        #: the most one stage (RCPT, end of message) waits on the backend, all its
        #: requests together ([mailman3] timeout; the SQLite store waits busy_timeout)
        self.backend_budget = cfg.mailman3.timeout
        #: the authserv-id when neither [milter] authserv_id nor the MTA's j is known
        self.default_authserv_id = host_name

    def _lists_needing_body(self) -> frozenset[str]:
        """Ask the backend for every list's settings and keep those whose rules read the
        body (:func:`listgate.chain.needs_body`)."""
        out = set()
        for address in self.backend.lists():
            facts = self.backend.list_facts(address, ())
            holds_refuse = self.cfg.for_list(address, "member_hold_action") != ACCEPT
            if needs_body(facts, holds_refuse):
                out.add(address)
        return frozenset(out)

    def close(self) -> None:
        """Release what the engine holds: the backend's connections, the hash workers."""
        try:
            self.backend.close()
        finally:
            if self.passwords is not None:
                self.passwords.close()

    def stats(self) -> str:
        """Cache statistics, and the password checks, for the log (SIGUSR1, shutdown)."""
        out = self.lookups.stats()
        if self.passwords is not None:
            out += f"; {self.passwords.stats()}"
        return out

    def warm_up(self) -> None:
        """Learn which lists need the body before the first connection (at start-up and
        on reload), so that it is negotiated right from the start."""
        self.body_lists.get(wait=True)

    def wants_body(self) -> bool:
        """Should the MTA send message bodies (asked at every connection)?"""
        if self.auth_needs_body:
            return True
        lists = self.body_lists.get(wait=not self.background_refresh)
        return lists is None or bool(lists)

    def list_needs_body(self, list_address: str) -> bool:
        """Does this list's verdict read the body (None = not known yet: yes)?"""
        if self.auth_mode(list_address) != "no":
            return True
        lists = self.body_lists.get(wait=not self.background_refresh)
        return lists is None or list_address in lists

    def auth_mode(self, list_address: str) -> str:
        """require_authenticated_sender for this list: no, yes or observe."""
        return self.cfg.for_list(list_address, "require_authenticated_sender")

    def authserv_id(self, mta_name: str | None) -> str:
        """Our RFC 8601 authserv-id: [milter] authserv_id, else the MTA's name (j)."""
        return self.cfg.milter.authserv_id or mta_name or self.default_authserv_id

    def is_internal_only(self, list_address: str) -> bool:
        """``[lists] internal_only`` names the list or its domain."""
        return bool(self.internal_only) and (
            list_address in self.internal_only
            or addresses.domain_of(list_address) in self.internal_only)

    def internal_only_reply(self, list_address: str) -> Reply:
        org = self.cfg.network.organisation or addresses.domain_of(list_address)
        return Reply("550", "5.7.2",
                     f"{clean(list_address, 100)} accepts posts from inside {clean(org, 100)} "
                     "only")

    def session(self, conn_id: str, reads_body: bool = True) -> Session:
        """A new connection's session; ``reads_body``: the MTA was asked for bodies."""
        return Session(self, conn_id, reads_body)

    def in_nets(self, ip: str | None, nets: Sequence[Any]) -> bool:
        return ip is not None and in_nets(ip, nets)


class Session:
    """One SMTP connection.  Methods are called in SMTP order; each returns a Decision."""

    def __init__(self, engine: Engine, conn_id: str, reads_body: bool = True) -> None:
        self.engine = engine
        self.conn_id = conn_id
        #: the MTA sends the body (negotiated at connect): no chunk means an empty body
        self.reads_body = reads_body
        #: log_level = debug: the per-stage lines are written (see :meth:`debug`)
        self.debugging = engine.log.isEnabledFor(logging.DEBUG)
        self.hostname = ""
        self.ip: str | None = None
        self.internal = False
        self.trusted = False
        self.dynamic = False
        self.authenticated = False
        self.helo_name: str | None = None
        self.auth_user: str | None = None
        self.authserv_id = engine.authserv_id(None)
        #: a refusal decided at connect/HELO, given at MAIL FROM (delayed reject)
        self.pending: tuple[str, Decision] | None = None
        self.stage = "connect"
        self._reset_transaction()

    # -- helpers ---------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.queue_id: str | None = None
        self.mail_from: str | None = None
        self.spf: SpfResult | None = None
        self.rcpts: list[Rcpt] = []
        self.headers: dict[str, list[str]] = {}
        self.own_headers: list[tuple[str, int]] = []
        self._own_counts: dict[str, int] = {}
        #: in observe mode: the first refusal enforce mode would have given
        self.observed: tuple[str, Decision] | None = None
        self._trust: TrustResult | None = None
        self._auth: AuthFacts | None = None
        #: every header, in order (the list manager's header rules, DKIM), and the body
        #: when the MTA sends it (DKIM, and the chain rules of lists that read it)
        self.raw_headers: list[tuple[str, str]] = []
        #: indexes into raw_headers of the headers we delete (forged X-Listgate-*...)
        self._dropped: set[int] = set()
        #: more than MAX_RAW_HEADERS headers came: header rules cannot be judged
        self.headers_cut = False
        #: names (cleaned, for the log) of headers pymilter could not pass: not UTF-8
        self.unreadable_headers: list[str] = []
        self.body_data = (BodyCollector(self.engine.cfg.milter.max_body_bytes)
                          if self.reads_body else None)

    def log(self, msg: str, *args: Any, level: int = logging.INFO) -> None:
        """One log line: ``[conn] QID: msg`` (the queue id once the MTA has one)."""
        qid = f" {self.queue_id}:" if self.queue_id else ""
        self.engine.log.log(level, "[%s]%s " + msg, self.conn_id, qid, *args)

    def debug(self, msg: str, *args: Any) -> None:
        """A per-stage detail (connect, HELO, MAIL, SPF, RCPT...), at ``log_level = debug``.

        At the default ``info`` each transaction logs ONE line, its verdict, which
        carries these facts (:meth:`context`): measured under load, six lines per
        message cost a third of listgate's CPU (threads queueing on the log file).
        Callers test :attr:`debugging` first, so that the arguments (cleaned for the
        log) are not even computed at ``info``.
        """
        self.log(msg, *args, level=logging.DEBUG)

    def verdict(self, msg: str, *args: Any, level: int = logging.INFO) -> None:
        """The transaction's verdict line: ``msg`` followed by :meth:`context`."""
        self.log(msg + "; %s", *args, self.context(), level=level)

    def context(self) -> str:
        """Who is talking, for the verdict line: ``client=NAME[IP] class=EXTERNAL,DYN
        helo=<NAME> from=<SENDER> spf=RESULT`` (``auth=USER`` after SMTP AUTH)."""
        auth = f" auth={clean(self.auth_user, 255)}" if self.auth_user else ""
        return (f"client={clean(self.hostname, 255) or '-'}[{self.ip or 'local'}] "
                f"class={','.join(self.client_class)} "
                f"helo=<{clean(self.helo_name or '', 255)}> "
                f"from=<{clean(self.mail_from or '', 255)}>{auth} "
                f"spf={self.spf.result if self.spf else '-'}")

    @property
    def client_class(self) -> list[str]:
        """bms.py style: INTERNAL, or EXTERNAL plus DYN and/or TRUSTED."""
        if self.internal:
            return ["INTERNAL"]
        cls = ["EXTERNAL"]
        if self.dynamic:
            cls.append("DYN")
        if self.trusted:
            cls.append("TRUSTED")
        return cls

    def _refuse(self, stage: str, decision: Decision) -> Decision:
        """Log a refusal and give it, or in observe mode log what would have happened."""
        tag = "REJECT" if decision.action == REJECT else "TEMPFAIL"
        reasons = "; ".join(decision.reasons)
        if self.engine.observe:
            self.verdict("OBSERVE: would %s at %s: %s (%s)", tag, stage, reasons, decision.reply)
            if self.observed is None:
                self.observed = (stage, decision)
            return OK
        self.stage = stage
        self.verdict("%s: %s (%s)", tag, reasons, decision.reply)
        return decision

    # -- SMTP stages -------------------------------------------------------------------

    def connect(self, hostname: str, ip: str | None, mta_name: str | None = None) -> Decision:
        """Classify the client.  ``ip`` is None for a unix-socket (local) connection;
        ``mta_name`` is the MTA's own name (macro ``j``), the default authserv-id."""
        eng = self.engine
        self.authserv_id = eng.authserv_id(mta_name)
        self.hostname = hostname or ""
        try:
            self.ip = normalize_ip(ip) if ip else None
        except ValueError:
            self.ip = None
            self.log("connect from %s: unparsable address %r, treated as local",
                     clean(hostname), clean(ip), level=logging.WARNING)
        if self.ip is None:
            self.internal = True
        else:
            self.internal = eng.in_nets(self.ip, eng.internal_nets)
            self.trusted = eng.in_nets(self.ip, eng.trusted_nets)
            no_ptr = (self.hostname.lower() in _NO_PTR
                      or self.hostname.startswith("["))
            try:
                dyn = eng.is_dynip(self.hostname, self.ip)
            except Exception:  # noqa: BLE001 - a heuristic must not break a connection
                dyn = False
            self.dynamic = no_ptr or bool(dyn)
        if self.debugging:
            self.debug("connect from %s at %s %s", clean(self.hostname, 255),
                       self.ip or "local", " ".join(self.client_class))
        if (not self.internal and self.hostname.lower().rstrip(".") in ("localhost", "")
                and self.hostname and not _is_loopback(self.ip)) or self.hostname == ".":
            self.pending = ("connect", Decision(REJECT, Reply("550", "5.7.1",
                            f"Your reverse DNS name {clean(self.hostname)} is bogus"),
                            (f"PTR is {clean(self.hostname)} from non-loopback IP {self.ip}",)))
        return OK

    def helo(self, name: str) -> Decision:
        """Remember the HELO name; a bad one is refused at MAIL FROM (see module doc)."""
        self.helo_name = name
        self.stage = "helo"
        if self.debugging:
            self.debug("hello from %s", clean(name, 255))
        if self.internal or self.pending:
            return OK
        bare = name.strip()
        if is_ip_literal(bare):
            self.pending = ("helo", Decision(REJECT, Reply(
                "550", "5.7.1", "HELO name cannot be a bare IP address; use a host name"),
                (f"numeric hello name: {clean(bare)}",)))
        elif _in_domains(bare.lower().rstrip("."), self.engine.hello_blacklist):
            self.pending = ("helo", Decision(REJECT, Reply(
                "550", "5.7.1", f"HELO name {clean(bare)} is ours: you are not"),
                (f"spam from self: {clean(bare)}",)))
        return OK

    def mail(self, sender: str, auth_user: str | None = None,
             queue_id: str | None = None) -> Decision:
        """MAIL FROM: SMTP AUTH, delayed connect/HELO refusals, domain rules, SPF."""
        self._reset_transaction()
        self.stage = "mail"
        self.queue_id = queue_id or None
        self.mail_from = addresses.strip_brackets(sender)
        if auth_user:
            self.auth_user = auth_user
            self.authenticated = True
            self.internal = True
        if self.debugging:
            self.debug("mail from <%s>%s", clean(self.mail_from, 255),
                       f" auth={clean(auth_user)}" if auth_user else "")
        # in observe mode a refusal is only logged, and the next checks still run; SPF's
        # DNS waits (HELO and MAIL FROM identities together) share [spf] timeout
        with budget.stage(self.engine.cfg.spf.timeout):
            for check in (self._delayed_refusal, self._domain_rules, self._spf):
                decision = check()
                if decision.refuses:
                    return decision
        return OK

    def _delayed_refusal(self) -> Decision:
        """The connect/HELO refusal decided earlier, or a missing HELO (not for INTERNAL)."""
        if self.internal:
            return OK
        if self.pending:
            return self._refuse(*self.pending)
        if self.helo_name is None:
            return self._refuse("helo", Decision(REJECT, Reply(
                "550", "5.7.1", "Say HELO or EHLO first"), ("no HELO before MAIL FROM",)))
        return OK

    def _domain_rules(self) -> Decision:
        """internal_domains: forged from outside, or a possibly compromised inside host."""
        eng = self.engine
        domain = addresses.domain_of(self.mail_from or "")
        if not eng.internal_domains or not domain:
            return OK
        ours = _in_domains(domain, eng.internal_domains)
        if ours and not self.internal and not self.trusted:
            return self._refuse("mail", Decision(REJECT, Reply(
                "550", "5.7.1", f"You are not in the network of {clean(domain)}"),
                (f"external client using internal domain {clean(domain)}",)))
        if not ours and self.internal and not self.authenticated:
            self.log("internal host %s sends as foreign domain %s: possibly compromised",
                     self.ip or "local", clean(domain), level=logging.WARNING)
            if eng.cfg.network.reject_foreign_internal:
                return self._refuse("mail", Decision(REJECT, Reply(
                    "550", "5.7.1", f"Internal hosts may not send as {clean(domain)}"),
                    (f"internal client using foreign domain {clean(domain)}",)))
        return OK

    def _spf(self) -> Decision:
        """SPF for EXTERNAL, non-TRUSTED clients, mapped through the [spf] actions.

        With ``[spf] helo_fail = reject`` a non-null sender's HELO name is checked first
        (as bms.py does): a HELO whose own SPF record fails the client is a forgery
        whatever MAIL FROM says.  TRUSTED relays are checked at end of message instead,
        against the client their own Received header records (see :meth:`_relay_spf`).
        """
        eng = self.engine
        if self.internal or self.trusted or eng.spf is None or self.ip is None:
            return OK
        if self.mail_from and self.helo_name and eng.cfg.spf.helo_fail == REJECT:
            helo = eng.spf.check(self.ip, "", self.helo_name, self.authserv_id)
            if helo.result == "fail":
                if self.debugging:
                    self.debug("SPF fail identity=helo: %s", clean(helo.explanation, 200))
                return self._refuse("mail", Decision(REJECT, Reply(
                    "550", "5.7.23", f"SPF fail for HELO {clean(self.helo_name)}: "
                                     f"{clean(helo.explanation)}"), ("hello SPF fail",)))
        self.spf = eng.spf.check(self.ip, self.mail_from or "", self.helo_name or "",
                                 self.authserv_id)
        return self._spf_policy("mail", self.spf)

    def _spf_policy(self, stage: str, res: SpfResult) -> Decision:
        """Map an SPF result through the [spf] actions to the answer (logged)."""
        action = self.engine.spf_actions.get(res.result, "accept")
        if self.debugging:
            self.debug("SPF %s identity=%s: %s", res.result, res.identity,
                       clean(res.explanation, 200))
        if action == ACCEPT:
            return OK
        (rcode, rx), (tcode, tx) = _SPF_REPLIES.get(res.result, _SPF_OTHER)
        who = clean(self.mail_from or f"postmaster@{self.helo_name}")
        if action == REJECT:
            reply = Reply(rcode, rx, f"SPF {res.result} for {who}: {clean(res.explanation)}")
            return self._refuse(stage, Decision(REJECT, reply, (f"SPF {res.result}",)))
        reply = Reply(tcode, tx,
                      f"SPF {res.result} for {who}: {clean(res.explanation)}; try again later")
        return self._refuse(stage, Decision(TEMPFAIL, reply, (f"SPF {res.result}",)))

    def _relay_spf(self) -> Decision:
        """SPF for a TRUSTED relay's post (a secondary MX): the relay itself is not the
        sender's server, but its own Received header on top records who connected to it,
        and that client is what SPF must judge."""
        eng = self.engine
        if not self.trusted or self.internal or eng.spf is None:
            return OK
        received = self.headers.get("received")
        hop = parse_received(received[0]) if received else None
        if hop is None:
            self.log("SPF not checked: TRUSTED relay %s wrote no parsable Received header",
                     self.ip)
            return OK
        self.spf = eng.spf.check(hop.ip, self.mail_from or "", hop.from_name, self.authserv_id)
        return self._spf_policy("eom", self.spf)

    def rcpt(self, recipient: str) -> Decision:
        """RCPT TO: is it a list post, and may it share this transaction?"""
        self.stage = "rcpt"
        addr = addresses.strip_brackets(recipient)
        rc = Rcpt(addr)
        self.rcpts.append(rc)
        try:
            with budget.stage(self.engine.backend_budget):
                rc.list = self.engine.lookups.find_list(addr)
        except BackendError as e:
            return self._rcpt_backend_error(rc, e)
        if rc.list and not self.internal and self.engine.is_internal_only(rc.list):
            if not self.engine.in_nets(self.ip, self.engine.path_nets):
                # no Received chain can make this client's post an inside one: refuse
                # now, before DATA, for the price of one lookup
                rc.reply = self.engine.internal_only_reply(rc.list)
                decision = Decision(REJECT, rc.reply, (
                    f"list={rc.list} accepts posts from INTERNAL clients or trusted "
                    f"submission paths only; client {self.ip} is EXTERNAL",))
                if self.engine.observe:
                    return self._refuse("rcpt", decision)
                rc.status = "rejected"
                self.verdict("REJECT: rcpt to <%s> %s (%s)", clean(addr, 255),
                         decision.reasons[0], rc.reply)
                return decision
            rc.needs_trusted_path = True
        accepted = [r for r in self.rcpts[:-1] if r.status == "accepted"]
        if self.engine.one_list and not self.engine.observe and accepted and (
                rc.list or any(r.list for r in accepted)):
            rc.status = "deferred"
            rc.reply = Reply("452", "4.5.3", "Please send each list post in a separate transaction")
            self.verdict("DEFER: rcpt to <%s>%s: one list post per transaction (%s)",
                         clean(addr, 255), f" list={rc.list}" if rc.list else "", rc.reply)
            return Decision(TEMPFAIL, rc.reply, ("one list post per transaction",))
        if self.debugging:
            self.debug("rcpt to <%s>%s", clean(addr, 255),
                       f" list={rc.list}" if rc.list else "")
        return OK

    def _rcpt_backend_error(self, rc: Rcpt, err: BackendError) -> Decision:
        if self.engine.fail_open:
            self.verdict("rcpt to <%s>: backend error, accepted UNCHECKED "
                     "(on_backend_error=accept): %s", clean(rc.address, 255), err,
                     level=logging.WARNING)
            return OK
        rc.reply = Reply("451", "4.3.0", "Temporary failure looking up the recipient list; "
                                         "try again later")
        decision = Decision(TEMPFAIL, rc.reply, (f"backend error: {err}",))
        if self.engine.observe:
            return self._refuse("rcpt", decision)
        rc.status = "deferred"
        self.verdict("TEMPFAIL: rcpt to <%s>: backend error: %s (%s)", clean(rc.address, 255), err,
                 rc.reply, level=logging.WARNING)
        return decision

    def header(self, name: str, value: str) -> None:
        """Collect the headers the decision needs, and note our own for removal."""
        lname = name.lower()
        if len(self.raw_headers) < MAX_RAW_HEADERS:
            self.raw_headers.append((name, value[:MAX_VALUE_CHARS]))
        else:
            self.headers_cut = True
        if lname in COLLECTED:
            values = self.headers.setdefault(lname, [])
            if len(values) < MAX_VALUES_PER_HEADER:
                values.append(value[:MAX_VALUE_CHARS])
        elif lname.startswith(OWN_HEADER_PREFIX):
            n = self._own_counts.get(lname, 0) + 1
            self._own_counts[lname] = n
            self.own_headers.append((name, n))
            self._dropped.add(len(self.raw_headers) - 1)
        elif lname == "authentication-results":
            n = self._own_counts.get(lname, 0) + 1
            self._own_counts[lname] = n
            if claims_authserv_id(value, self.authserv_id):
                # RFC 8601 section 5: only we may speak for our authserv-id
                self.own_headers.append((name, n))
                self._dropped.add(len(self.raw_headers) - 1)
                self.log("removing an incoming Authentication-Results header that claims "
                         "our authserv-id %s", self.authserv_id)

    def header_unreadable(self, name: bytes) -> None:
        """A header pymilter could not pass: its name is not UTF-8, and its value is
        lost with it.  The post is still judged on every other header, but a refusal of
        the list's is then not certain -- the lost header may be one a rule reads, and
        Python's email parser (Mailman's) ends the header section at a name that is not
        ASCII, so the list may see the headers after it as body -- and is not given
        (see :meth:`_list_answer_within`).  Neither Postfix nor sendmail passes such a
        name: both end the header section there themselves."""
        shown = clean(name.decode("ascii", "backslashreplace"), 100)
        self.unreadable_headers.append(shown)
        self.log("header name %s is not UTF-8: pymilter passes neither it nor its value",
                 shown)

    def body(self, chunk: bytes) -> None:
        """Body bytes, kept (up to max_body_bytes) only for DKIM verification."""
        if self.body_data is not None:
            self.body_data.add(chunk)

    def eom(self) -> EomResult:
        """End of message: the list verdict for each list recipient, and header changes.

        The headers we add are settled first: the list manager will see them, and its
        header rules may look for them (X-Listgate-Trusted, Authentication-Results).
        """
        self.stage = "eom"
        result = EomResult(OK)
        # remove forged copies of our own headers, last occurrence first so indexes hold
        result.remove_headers = sorted(self.own_headers, key=lambda h: -h[1])
        lists = [r.list for r in self.rcpts if r.list and r.status == "accepted"]
        with budget.stage(self.engine.cfg.spf.timeout):
            decision = self._relay_spf()
        if not decision.refuses:
            decision = self._internal_only_check()
        if lists and any(self.engine.auth_mode(lst) != "no" for lst in lists):
            self.auth_facts()  # DKIM, before Authentication-Results is written
        result.add_headers = self._added_headers()
        if lists and not decision.refuses:
            decision, result.list_address, result.list_verdict = self._list_decision(
                lists, result.add_headers)
        if decision.refuses and not self.engine.observe:
            result.decision = decision
            return result
        if decision.refuses:
            self.verdict("OBSERVE: would %s: %s (%s)", decision.action.upper(),
                     "; ".join(decision.reasons), decision.reply)
            if self.observed is None:
                self.observed = ("eom", decision)
        else:
            self.verdict("ACCEPT: %s", "; ".join(decision.reasons) or "no list recipient")
        if self.engine.observe:
            if self.observed:
                stage, d = self.observed
                would = f"{d.action}; stage={stage}; " + "; ".join(d.reasons)
            else:
                would = "accept; " + ("; ".join(decision.reasons) or "no list recipient")
            result.add_headers.append((VERDICT_HEADER, header_value(would), -1))
        result.decision = Decision(CONTINUE, None, decision.reasons)
        return result

    def _added_headers(self) -> list[tuple[str, str, int]]:
        """The headers an accepted message gets: (name, value, index), index 0 = insert
        as the first header, -1 = append."""
        out: list[tuple[str, str, int]] = []
        cfg = self.engine.cfg.milter
        if cfg.authentication_results and (self.spf is not None or self._auth is not None):
            spf = ((self.spf.result, self.mail_from or self.helo_name or "")
                   if self.spf is not None else None)
            dkim = self._auth.dkim if self._auth is not None else ()
            out.append(("Authentication-Results", authentication_results(
                self.authserv_id, spf, dkim,
                spf_identity=self.spf.identity if self.spf else "mailfrom"), 0))
        if self.spf is not None and cfg.received_spf:
            out.append(("Received-SPF", header_value(self.spf.header), 0))
        trust = self.trust()
        if trust is not None and trust.trusted:
            out.append((TRUSTED_HEADER, f"submission={trust.submission_ip}", -1))
        return out

    def post(self, added: Sequence[tuple[str, str, int]] = (),
             with_body: bool = True) -> Post:
        """The message as the list manager will receive it from us: our insertions on
        top (each index-0 insertion lands above the ones before it), the MTA's headers
        without the ones we delete, our appended headers; the body if it was read."""
        tops = [(n, v) for n, v, i in added if i == 0][::-1]
        ends = [(n, v) for n, v, i in added if i != 0]
        kept = [h for i, h in enumerate(self.raw_headers) if i not in self._dropped]
        body, size = None, None
        if with_body and self.body_data is not None:
            body, size = self.body_data.data, self.body_data.size
        return Post(tops + kept + ends, self.mail_from or "", body, size,
                    headers_complete=not self.headers_cut)

    def trust(self) -> TrustResult | None:
        """The trusted-submission-path verdict for this message (computed once, at end of
        message, and only when [trust] servers are configured)."""
        eng = self.engine
        if self._trust is None and eng.submission_nets and not self.internal:
            self._trust = trusted_path(self.headers.get("received", ()), self.ip,
                                       eng.submission_nets, eng.relay_nets)
            if self.debugging:
                self.debug("trust: %s", self._trust.reason)
        return self._trust

    def primary_sender(self) -> str:
        """Mailman 2's single sender (From, else Sender, else envelope)."""
        return addresses.mailman2_sender(self.headers, self.mail_from or "")

    def _internal_only_check(self) -> Decision:
        """An internal-only list post from a relay or submission server must have come
        over a trusted submission path (the client itself could not be inside)."""
        for r in self.rcpts:
            if r.needs_trusted_path and r.status == "accepted":
                trust = self.trust()
                if trust is None or not trust.trusted:
                    why = trust.reason if trust else "no [trust] submission_servers"
                    d = Decision(REJECT, self.engine.internal_only_reply(r.list or ""),
                                 (f"list={r.list} internal-only, path not trusted: {why}",))
                    if not self.engine.observe:
                        self.verdict("REJECT: %s (%s)", d.reasons[0], d.reply)
                    return d
        return OK

    def _list_decision(self, lists: list[str], added: Sequence[tuple[str, str, int]]
                       ) -> tuple[Decision, str | None, ListVerdict | None]:
        """The combined answer for all list recipients: any refusal refuses the message,
        a rejection before a tempfail."""
        full = self.post(added)
        bare = None if full.body is None else self.post(added, with_body=False)
        results = []
        for list_address in dict.fromkeys(lists):
            # the body counts only for a list whose rules read it, so the answer is the
            # same whether or not another list of the same connection made us read it
            post = full if bare is None or self.engine.list_needs_body(list_address) else bare
            results.append(self._one_list(list_address, post))
        refusals = [r for r in results if r[0].refuses]
        if refusals:
            return next((r for r in refusals if r[0].action == REJECT), refusals[0])
        reasons = tuple(reason for d, _l, _v in results for reason in d.reasons)
        return Decision(CONTINUE, None, reasons), results[0][1], results[0][2]

    def _one_list(self, list_address: str, post: Post
                  ) -> tuple[Decision, str, ListVerdict | None]:
        try:
            senders = (post.mailman2_senders() if self.engine.senders_as == "mailman2"
                       else post.unique_senders())
            return self._list_answer(list_address, post, senders)
        except Unevaluable as e:
            # Mailman's incoming runner fails on this post before any rule: the post goes
            # to the list manager, whose admin will find it in the shunt queue
            verdict = ListVerdict("accept", rule="senders", undecided=True, reasons=(
                f"the senders cannot be read as Mailman reads them ({e}); the post goes "
                "to the list manager",))
            summary = clean(f"list={list_address} verdict=accept(undecided) rule=senders: "
                            + verdict.reasons[0], 600)
            return Decision(CONTINUE, None, (summary,)), list_address, verdict

    def _list_answer(self, list_address: str, post: Post, senders: tuple[str, ...]
                     ) -> tuple[Decision, str, ListVerdict | None]:
        eng = self.engine
        try:
            with budget.stage(eng.backend_budget):
                return self._list_answer_within(list_address, post, senders)
        except BackendError as e:
            if eng.fail_open:
                self.verdict("list=%s backend error, accepted UNCHECKED "
                             "(on_backend_error=accept): %s", list_address, e,
                             level=logging.WARNING)
                return (Decision(CONTINUE, None, (f"list={list_address} unchecked: {e}",)),
                        list_address, None)
            d = Decision(TEMPFAIL, Reply("451", "4.3.0", "Temporary failure checking list "
                                                         "membership; try again later"),
                         (f"list={list_address} backend error: {e}",))
            if not eng.observe:
                self.verdict("TEMPFAIL: %s (%s)", d.reasons[0], d.reply, level=logging.WARNING)
            return d, list_address, None

    def _list_answer_within(self, list_address: str, post: Post, senders: tuple[str, ...]
                            ) -> tuple[Decision, str, ListVerdict | None]:
        """The list's answer, within the backend's budget (BackendError past it)."""
        eng = self.engine
        # Mailman 2's single sender: only a Mailman 2 backend reads it (parsing From
        # again for every post of a Mailman 3 style list was ~10% of its verdict)
        primary = self.primary_sender() if eng.senders_as == "mailman2" else ""
        facts = eng.lookups.list_facts(list_address, senders, primary)
        site = getattr(facts, "site", DEFAULT_SITE)
        if site.sender_headers != DEFAULT_SITE.sender_headers:
            # the site names other sender headers ([mailman] sender_headers)
            post = post.with_sender_headers(site.sender_headers.split())
            senders = post.unique_senders()
            facts = eng.lookups.list_facts(list_address, senders, primary)
        verdict = self._authenticated_verdict(list_address, facts, post)
        d = self._map_verdict(list_address, verdict, senders)
        if d.refuses:
            # a refusal rests on a fresh answer: the sender may have subscribed since
            fresh = eng.lookups.list_facts(list_address, senders, primary,
                                           max_age=eng.refusal_max_age)
            if fresh != facts:
                verdict = self._authenticated_verdict(list_address, fresh, post)
                d = self._map_verdict(list_address, verdict, senders)
        kind = (f"({verdict.hold_kind})" if verdict.hold_kind
                else "(undecided)" if verdict.undecided else "")
        summary = clean(f"list={list_address} verdict={verdict.action}{kind} rule={verdict.rule} "
                        f"senders={','.join(senders) or '-'}: " + "; ".join(verdict.reasons), 600)
        trust = self.trust() if d.refuses and d.action != TEMPFAIL else None
        if trust is not None and trust.trusted:
            action = eng.cfg.trust.trusted_path_action
            summary += f"; trusted path via {trust.submission_ip}: trusted_path_action {action}"
            d = (OK if action == ACCEPT
                 else _awaits_moderation(list_address) if action == TEMPFAIL else d)
        if d.refuses and self.unreadable_headers and verdict.action != TEMPFAIL:
            summary += (f"; not refused ({d.reply}): header {self.unreadable_headers[0]} was "
                        "not readable (name not UTF-8), and the list may read the post "
                        "otherwise")
            d = OK
        if d.refuses and not eng.observe:
            self.verdict("%s: %s (%s)", "REJECT" if d.action == REJECT else "TEMPFAIL", summary,
                     d.reply)
        return Decision(d.action, d.reply, (summary,)), list_address, verdict

    def auth_facts(self) -> AuthFacts:
        """What the MTA verified about the senders (DKIM checked once, on demand)."""
        if self._auth is None:
            dkim: list[DkimResult] = []
            if self.body_data is not None and any(
                    n.lower() == "dkim-signature" for n, _v in self.raw_headers):
                message = assemble_message(self.raw_headers, self.body_data.data)
                dkim = verify_dkim(message, truncated_at=self.body_data.truncated_at,
                                   timeout=self.engine.cfg.dns.timeout)
                for r in dkim:
                    if self.debugging:
                        self.debug("DKIM %s d=%s s=%s: %s", r.result, clean(r.domain),
                                   clean(r.selector), clean(r.reason, 200))
            trust = self.trust()
            self._auth = AuthFacts.build(self.mail_from or "", self.spf, dkim,
                                         internal=self.internal,
                                         trusted_path=bool(trust and trust.trusted))
        return self._auth

    def _context(self, list_address: str, senders: tuple[str, ...]) -> Context:
        eng = self.engine
        source = None if self.ip is None else source_network(self.ip)
        return Context(passwords=eng.passwords, dmarc=eng.dmarc, source=source,
                       refuses=lambda v: self._map_verdict(list_address, v, senders).refuses)

    def _authenticated_verdict(self, list_address: str, facts: Any, post: Post) -> ListVerdict:
        """The list verdict, with require_authenticated_sender applied: a sender address
        the MTA did not verify counts neither as a member nor for an accepting entry."""
        senders = tuple(getattr(sf, "address", "") for sf in getattr(facts, "senders", ()))
        ctx = self._context(list_address, senders)
        verdict = list_verdict(facts, post, ctx)
        mode = self.engine.auth_mode(list_address)
        if mode == "no" or not isinstance(facts, ListFacts | Mailman2Facts):
            return verdict
        auth = self.auth_facts()
        roles = sender_roles(self.headers, self.mail_from or "")
        checked = [(sf, *auth.authenticated(sf.address, roles.get(sf.address)))
                   for sf in facts.senders]
        if isinstance(facts, ListFacts):
            strict_facts: Any = replace(facts, senders=tuple(
                replace(sf, authenticated=ok) for sf, ok, _why in checked))
        else:  # Mailman 2: members by every sender, nonmembers by the primary one
            strict_facts = replace(
                facts, senders=tuple(sf if ok else replace(sf, member=None)
                                     for sf, ok, _why in checked),
                primary_authenticated=auth.authenticated(facts.primary)[0])
        strict = list_verdict(strict_facts, post, ctx)
        unverified = tuple(why for _sf, ok, why in checked if not ok)
        if (strict.action, strict.hold_kind) == (verdict.action, verdict.hold_kind):
            return verdict
        if mode == "observe":
            self.log("OBSERVE: require_authenticated_sender would make list=%s %s instead of "
                     "%s: %s", list_address, strict.action, verdict.action,
                     "; ".join(unverified))
            return verdict
        return replace(strict, reasons=strict.reasons + unverified)

    def _map_verdict(self, list_address: str, verdict: ListVerdict,
                     senders: tuple[str, ...]) -> Decision:
        """Turn what the list would do into the SMTP answer the admin configured.

        RFC 3463's X.7.2 is exactly this refusal: "the sender is not authorized to send
        a message to the intended mailing list"."""
        cfg = self.engine.cfg
        action = verdict.action
        if action == TEMPFAIL:
            return Decision(TEMPFAIL, Reply("451", "4.3.0", f"Temporary failure checking "
                                            f"the post to {clean(list_address)}; try again "
                                            "later"))
        if action == "hold":
            key = "member_hold_action" if verdict.hold_kind == MEMBER else "nonmember_hold_action"
            action = cfg.for_list(list_address, key)
            if action == TEMPFAIL:
                return _awaits_moderation(list_address)
        if action == ACCEPT:
            return OK
        if verdict.notice:
            text = f"{clean(list_address, 100)}: {clean(verdict.notice, 300)}"
        else:
            values = {"list": clean(list_address, 100),
                      "owner": clean(owner_of(list_address), 100),
                      "sender": clean(senders[0] if senders else (self.mail_from or "<>"), 100)}
            text = cfg.for_list(list_address, "reject_message") % values
        return Decision(REJECT, Reply("550", "5.7.2", text))


def _awaits_moderation(list_address: str) -> Decision:
    """The answer when a hold is configured to tempfail."""
    return Decision(TEMPFAIL, Reply("451", "4.7.2", f"Your post to {clean(list_address)} "
                                                    "awaits moderation; try again later"))
