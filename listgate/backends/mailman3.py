"""The Mailman 3 backend: ask Mailman's own REST API, so there is no second roster.

What Mailman 3 decides from (``rules/moderation.py``, ``model/bans.py``) is read
through the REST API and handed to the same :func:`listgate.verdict.mailman3_verdict`
the SQLite store uses:

* the list's config (``GET /lists/{id}/config``): default actions, emergency, the
  four ``*_these_nonmembers`` lists and every other setting a rule of the posting
  chain reads (the moderator password's hash, size and recipient limits, explicit
  destination and aliases, administrivia, DMARC mitigation...), and its header rules
  (``GET /lists/{id}/header-matches``);
* the site's ``[antispam]`` and ``[mailman]`` settings
  (``GET /system/configuration/antispam`` and ``.../mailman``): header_checks,
  jump_chain, sender_headers...;
* the list's and the site's bans (``GET /lists/{id}/bans``, ``GET /bans``), judged
  with Mailman's own rules (exact, then ``^`` patterns case-insensitively), so a new
  sender costs no ban request;
* per sender, only as far as the verdict needs it, in the order Mailman applies the
  rules: its member and nonmember records in one request
  (``GET /members/find?list_id=&subscriber=``), and when it is not a member, the
  other addresses of the sender's user (``GET /users/{email}/addresses``); then,
  when nobody is a member, ``@list@domain`` memberships.

Every GET answer is cached (``cache_ttl``, 404s for ``negative_cache_ttl``) in a
bounded, thread-safe cache, so a warm verdict costs no request at all.  One
``urllib3`` pool (an optional dependency, imported only when this backend is
configured) is shared by all threads and keeps connections alive.  Any failure --
refused, timed out, 5xx, bad credentials, unparsable JSON -- is a BackendError
naming the URL and the cause: the engine answers 451 (or ``on_backend_error``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from listgate import budget, listsettings
from listgate.cache import TTLCache
from listgate.config import Config, ConfigError, parse_bool
from listgate.model import (
    Backend,
    BackendError,
    HeaderMatch,
    ListFacts,
    ListPolicy,
    SenderFacts,
    SiteFacts,
)
from listgate.verdict import is_banned

log = logging.getLogger("listgate")

#: the fields of a list's config the verdict needs, as REST names them (the rest of
#: ListPolicy comes from moderator_password and the header-matches resource)
_POLICY_FIELDS = tuple(f for f in listsettings.LIST_FIELD_NAMES
                       if f not in ("approval_passwords", "header_matches",
                                    "bounce_matching_headers"))


def policy_from_rest(address: str, cfg: dict[str, Any], matches: dict[str, Any] | None
                     ) -> ListPolicy:
    """A list's REST config and header-matches -> ListPolicy.

    A value REST leaves out or that does not validate keeps Mailman's default; the
    moderator password arrives as its passlib hash.  ``bounce_matching_headers`` is
    not in the REST API (only lists imported from Mailman 2.1 can have one): it is
    taken to be Mailman 3's default, which matches nothing."""
    values: dict[str, Any] = {}
    for key in _POLICY_FIELDS:
        if key not in cfg:
            continue
        f = listsettings.list_field(key)
        try:
            values[key] = f.kind.check(cfg[key], key)
        except ValueError:
            log.warning("mailman3: list %s: unexpected %s %r, using Mailman's default",
                        address, key, cfg[key])
    password = cfg.get("moderator_password")
    if isinstance(password, str) and password:
        values["approval_passwords"] = (password,)
    rules = []
    for e in sorted((matches or {}).get("entries", []), key=lambda e: e.get("position", 0)):
        rules.append(HeaderMatch(str(e.get("header", "")).lower(), str(e.get("pattern", "")),
                                 e.get("action")))
    values["header_matches"] = tuple(rules)
    return ListPolicy(address=address.lower(), **values)


def site_from_rest(antispam: dict[str, Any] | None, mailman: dict[str, Any] | None
                   ) -> SiteFacts:
    """The site's ``[antispam]`` and ``[mailman]`` config sections -> SiteFacts."""
    a, m = antispam or {}, mailman or {}
    defaults = SiteFacts()

    def number(raw: Any, default: int) -> int:
        try:
            return int(raw)
        except (TypeError, ValueError):
            return default

    def flag(raw: Any, default: bool) -> bool:
        try:
            return parse_bool(str(raw))
        except ValueError:
            return default

    return SiteFacts(
        header_checks=str(a.get("header_checks", "")),
        jump_chain=str(a.get("jump_chain", defaults.jump_chain)).strip(),
        sender_headers=str(m.get("sender_headers", defaults.sender_headers)),
        email_commands_max_lines=number(m.get("email_commands_max_lines"),
                                        defaults.email_commands_max_lines),
        check_max_size_on_filtered_message=flag(m.get("check_max_size_on_filtered_message"),
                                                defaults.check_max_size_on_filtered_message),
        hold_digest=flag(m.get("hold_digest"), defaults.hold_digest))


def read_password(cfg: Config) -> str:
    """``password``, or the first line of ``password_file``, which must not be
    readable by everyone (it is Mailman's REST admin password)."""
    m3 = cfg.mailman3
    if not m3.password_file:
        return m3.password
    path = m3.password_file
    try:
        st = os.stat(path)
        if st.st_mode & stat.S_IROTH:
            raise ConfigError(f"{cfg.path}: [mailman3] password_file: {path} is readable by "
                              f"everyone (mode {stat.S_IMODE(st.st_mode):o}); chmod o-r it")
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"{cfg.path}: [mailman3] password_file: {path}: "
                          f"{e.strerror}") from None


class Mailman3Backend(Backend):
    """Mailman 3's REST API as a membership backend."""

    name = "mailman3"
    #: answers are cached here, per REST request: the engine need not cache them again
    caches_itself = True

    def __init__(self, url: str, user: str, password: str, timeout: float = 5.0,
                 cache_ttl: float = 60.0, negative_cache_ttl: float = 60.0,
                 cache_size: int = 10000, ca_file: str = "") -> None:
        import urllib3  # optional dependency: only needed with this backend

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.ttl = cache_ttl
        self.negative_ttl = negative_cache_ttl
        self._headers = urllib3.make_headers(basic_auth=f"{user}:{password}",
                                             keep_alive=True)
        self._headers["Accept"] = "application/json"
        # https: the certificate is always verified, name included (the REST password
        # crosses the network), against ca_file or else the system's CAs
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
        if ca_file:
            tls["ca_certs"] = ca_file
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=16, block=False,
                                         retries=False,
                                         timeout=urllib3.Timeout(connect=timeout, read=timeout),
                                         **tls)
        self._urllib3 = urllib3
        self._cache = TTLCache(cache_size)
        self._flight_lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        #: list_id -> (config answer, header-matches answer, the ListPolicy built from
        #: them): rebuilt only when the cached answers change, not for every verdict
        self._policies: dict[str, tuple[Any, Any, ListPolicy]] = {}
        self._site: tuple[Any, Any, SiteFacts] | None = None
        self._index_lock = threading.Lock()
        self._index: dict[str, str] = {}  # posting address (incl. alias domains) -> list_id
        self._index_expires = 0.0
        #: REST requests made (the benchmark reports requests per verdict)
        self.requests = 0

    # -- HTTP ----------------------------------------------------------------------------

    def _get(self, path: str, cache: bool = True, max_age: float | None = None
             ) -> tuple[int, Any]:
        """GET ``path`` (below the base URL): (status, JSON or None); 200 and 404 only.
        ``max_age``: a cached answer older than this is fetched again."""
        if not cache:
            return self._fetch(path, cache)
        hit = self._cache.get(path, max_age=max_age)
        if not TTLCache.missing(hit):
            return hit
        # one request per path when many connections miss it at once (a TTL expiring
        # under load): the others wait for its answer instead of asking too
        with self._flight_lock:
            flight = self._inflight.get(path)
            leader = flight is None
            if leader:
                flight = self._inflight[path] = threading.Event()
        if not leader:
            try:
                flight.wait(budget.remaining(self.timeout * 2))
            except budget.BudgetExceeded:
                raise BackendError(f"mailman3 {self.url}{path}: no answer within the "
                                   "stage's time budget ([mailman3] timeout)") from None
            hit = self._cache.get(path)
            if not TTLCache.missing(hit):
                return hit
            return self._fetch(path, cache)  # the leader failed: ask, and fail, ourselves
        try:
            return self._fetch(path, cache)
        finally:
            with self._flight_lock:
                self._inflight.pop(path, None)
            flight.set()

    def _fetch(self, path: str, cache: bool) -> tuple[int, Any]:
        url = self.url + path
        try:
            # each request gets what is left of the stage's budget: a slow Mailman
            # costs one [mailman3] timeout per stage, not one per request
            wait = budget.remaining(self.timeout)
        except budget.BudgetExceeded:
            raise BackendError(f"mailman3 {url}: no answer within the stage's time budget "
                               "([mailman3] timeout)") from None
        try:
            self.requests += 1
            r = self._pool.request("GET", url, headers=self._headers,
                                   timeout=self._urllib3.Timeout(total=wait))
        except self._urllib3.exceptions.NewConnectionError as e:
            # (a subclass of ConnectTimeoutError in urllib3 2: refused is not a timeout)
            raise BackendError(f"mailman3 {url}: {_reason(e)}") from None
        except self._urllib3.exceptions.TimeoutError:
            if wait < self.timeout:  # cut short by the stage's deadline, not its own
                raise BackendError(f"mailman3 {url}: no answer within the stage's time "
                                   "budget ([mailman3] timeout)") from None
            raise BackendError(f"mailman3 {url}: timed out after {wait:g} s") from None
        except self._urllib3.exceptions.HTTPError as e:
            raise BackendError(f"mailman3 {url}: {_reason(e)}") from None
        if r.status == 404:
            result: tuple[int, Any] = (404, None)
            if cache:
                self._cache.put(path, result, self.negative_ttl)
            return result
        if r.status != 200:
            what = {401: "bad credentials (401)", 403: "forbidden (403)"}.get(
                r.status, f"HTTP {r.status}")
            raise BackendError(f"mailman3 {url}: {what}")
        try:
            body = json.loads(r.data)
        except ValueError:
            raise BackendError(f"mailman3 {url}: answer is not JSON") from None
        result = (200, body)
        if cache:
            self._cache.put(path, result, self.ttl)
        return result

    # -- which recipients are lists ------------------------------------------------------

    def _list_index(self) -> dict[str, str]:
        """Posting addresses (and their alias-domain forms) -> list_id, refreshed on the TTL
        so a new list is gated without a restart."""
        now = time.monotonic()
        with self._index_lock:
            if now < self._index_expires:
                return self._index
        _, lists = self._get("/lists", cache=False)
        _, domains = self._get("/domains", cache=False)
        aliases: dict[str, list[str]] = {}
        for d in (domains or {}).get("entries", []):
            alias = d.get("alias_domain")
            if alias:
                aliases.setdefault(d["mail_host"].lower(), []).append(alias.lower())
        index: dict[str, str] = {}
        for entry in (lists or {}).get("entries", []):
            name, host = entry["list_name"].lower(), entry["mail_host"].lower()
            for domain in (host, *aliases.get(host, ())):
                index[f"{name}@{domain}"] = entry["list_id"]
        with self._index_lock:
            self._index, self._index_expires = index, now + self.ttl
        return index

    def lists(self) -> list[str]:
        index = self._list_index()
        return sorted({self.find_list(a) or a for a in index})

    def find_list(self, address: str) -> str | None:
        list_id = self._list_index().get(address.lower())
        if list_id is None:
            return None
        # the canonical posting address: name@mail_host (list_id is name.mail_host)
        name = address.lower().partition("@")[0]
        return f"{name}@{list_id[len(name) + 1:]}"

    # -- the facts -------------------------------------------------------------------------

    def _list_id(self, list_address: str) -> str:
        list_id = self._list_index().get(list_address.lower())
        if list_id is None:
            raise BackendError(f"mailman3 {self.url}: no list {list_address}")
        return list_id

    def _records(self, list_id: str, email: str, max_age: float | None = None
                 ) -> dict[str, dict[str, Any]]:
        """The sender's member and nonmember records on the list, by role, in ONE request
        (``members/find`` matches the address, or a user whose preferred address it is,
        as Mailman's roster lookup does)."""
        q = f"/members/find?list_id={quote(list_id)}&subscriber={quote(email, safe='@')}"
        status, body = self._get(q, max_age=max_age)
        if status != 200:
            return {}
        return {e.get("role", ""): e for e in body.get("entries", [])}

    def _user_member(self, list_id: str, email: str, max_age: float | None = None
                     ) -> dict[str, Any] | None:
        """Mailman's second step: a member through another address of the sender's user."""
        status, body = self._get(f"/users/{quote(email, safe='@')}/addresses", max_age=max_age)
        if status != 200:
            return None
        for a in body.get("entries", []):
            other = a.get("email", "").lower()
            if other and other != email:
                member = self._records(list_id, other, max_age).get("member")
                if member is not None:
                    return member
        return None

    def _bans(self, list_id: str) -> list[tuple[str | None, str]]:
        """The list's and the site's bans: two requests per TTL for all senders, instead of
        one ban check per sender; judged by Mailman's own rules (verdict.is_banned)."""
        _, mine = self._get(f"/lists/{list_id}/bans")
        _, site = self._get("/bans")
        return ([(list_id, b["email"]) for b in (mine or {}).get("entries", [])]
                + [(None, b["email"]) for b in (site or {}).get("entries", [])])

    def list_facts(self, list_address: str, senders: Sequence[str],
                   primary: str = "", max_age: float | None = None) -> ListFacts:
        list_id = self._list_id(list_address)
        policy = self._policy(list_id, list_address)
        site = self.site()
        facts = [SenderFacts(s) for s in senders]
        # the order of Mailman's rules: a ban decides alone, then the first member,
        # then the nonmembers' own actions and the pattern lists
        bans = self._bans(list_id)
        for i, s in enumerate(senders):
            if is_banned(s, bans):
                facts[i] = SenderFacts(s, banned=True)
                return ListFacts(policy, tuple(facts), site)
        records = {}
        for i, s in enumerate(senders):
            records[s] = self._records(list_id, s, max_age)
            member = records[s].get("member") or self._user_member(list_id, s, max_age)
            if member is not None:
                facts[i] = SenderFacts(s, is_member=True,
                                       member_action=member.get("moderation_action"))
                return ListFacts(policy, tuple(facts), site)
        referenced = policy.referenced_lists()
        for i, s in enumerate(senders):
            action = records[s].get("nonmember", {}).get("moderation_action")
            member_of = frozenset(r for r in referenced if self._is_member_of(r, s))
            facts[i] = SenderFacts(s, nonmember_action=action, member_of=member_of)
            if action is not None:
                break  # the first sender with its own action decides
        return ListFacts(policy, tuple(facts), site)

    def _policy(self, list_id: str, list_address: str) -> ListPolicy:
        """The list's settings: its config and its header rules (two cached requests)."""
        status, cfg = self._get(f"/lists/{list_id}/config")
        if status != 200:  # deleted since the list index was read
            raise BackendError(f"mailman3 {self.url}: no list {list_address} (deleted?)")
        _, matches = self._get(f"/lists/{list_id}/header-matches")
        known = self._policies.get(list_id)
        if known is not None and known[0] is cfg and known[1] is matches:
            return known[2]
        policy = policy_from_rest(list_address, cfg, matches)
        self._policies[list_id] = (cfg, matches, policy)
        return policy

    def site(self) -> SiteFacts:
        """The site-wide settings the rules read (two cached requests per TTL)."""
        _, antispam = self._get("/system/configuration/antispam")
        _, mailman = self._get("/system/configuration/mailman")
        known = self._site
        if known is not None and known[0] is antispam and known[1] is mailman:
            return known[2]
        site = site_from_rest(antispam, mailman)
        self._site = (antispam, mailman, site)
        return site

    def _is_member_of(self, list_address: str, email: str) -> bool:
        """``@list@domain``: Mailman 3.3.10 checks the other list's members' addresses."""
        list_id = self._list_index().get(list_address)
        return list_id is not None and "member" in self._records(list_id, email)

    def stats(self) -> str:
        return (f"mailman3 REST cache {self._cache.hits} hits/{self._cache.misses} misses, "
                f"{self.requests} requests")

    def close(self) -> None:
        self._pool.clear()


def _reason(e: Exception) -> str:
    """A one-line cause from a urllib3 error (its reprs nest the whole pool)."""
    reason = getattr(e, "reason", None) or e
    text = str(reason)
    for marker in ("Connection refused", "timed out", "Name or service not known"):
        if marker in text:
            return marker.lower() if marker != "Connection refused" else "connection refused"
    if "certificate verify failed" in text:  # "[SSL: CERTIFICATE_VERIFY_FAILED] ... (_ssl.c:N)"
        text = text[text.index("certificate verify failed"):].split(" (_ssl.c:")[0]
        return f"TLS: {text}"
    return text.split(": ", 1)[-1][:200]


def create(cfg: Config) -> Mailman3Backend:
    m3 = cfg.mailman3
    ttl = cfg.lists.cache_ttl if m3.cache_ttl is None else m3.cache_ttl
    negative = cfg.lists.negative_cache_ttl if m3.negative_cache_ttl is None \
        else m3.negative_cache_ttl
    return Mailman3Backend(m3.url, m3.user, read_password(cfg), m3.timeout, ttl, negative,
                           cfg.lists.cache_size, ca_file(cfg))


def ca_file(cfg: Config) -> str:
    """``[mailman3] ca_file``, checked now: a missing file is a config error naming the
    key, not a BackendError on every post."""
    path = cfg.mailman3.ca_file
    if path and not os.access(path, os.R_OK):
        raise ConfigError(f"{cfg.path}: [mailman3] ca_file: {path}: cannot read it")
    return path


def export(backend: Mailman3Backend) -> dict[str, Any]:
    """Mailman 3's lists and policies in listgate's export format (``lists import``).

    Members subscribed through a user are exported with all that user's addresses:
    Mailman treats a post from any of them as the member's (its "sender's user" rule),
    and the SQLite store has no users, so each address becomes a member row with the
    member's moderation_action.
    """
    _, lists = backend._get("/lists", cache=False)
    _, addresses = backend._get("/addresses", cache=False)
    by_user: dict[str, list[str]] = {}
    for a in (addresses or {}).get("entries", []):
        if a.get("user"):
            by_user.setdefault(a["user"], []).append(a["email"].lower())
    out_lists = []
    bans = []
    for entry in (lists or {}).get("entries", []):
        list_id = entry["list_id"]
        address = f"{entry['list_name']}@{entry['mail_host']}".lower()
        _, cfg = backend._get(f"/lists/{list_id}/config", cache=False)
        _, matches = backend._get(f"/lists/{list_id}/header-matches", cache=False)
        item: dict[str, Any] = listsettings.policy_to_json(
            policy_from_rest(address, cfg, matches))
        for role, key in (("member", "members"), ("nonmember", "nonmembers")):
            _, roster = backend._get(f"/lists/{list_id}/roster/{role}", cache=False)
            rows: dict[str, str | None] = {}
            for m in (roster or {}).get("entries", []):
                action = m.get("moderation_action")
                emails = [m["email"].lower()]
                if role == "member" and m.get("user"):
                    emails += by_user.get(m["user"], [])
                for email in emails:
                    rows.setdefault(email, action)
            item[key] = [{"address": a, "moderation_action": act} for a, act in rows.items()]
        out_lists.append(item)
        _, list_bans = backend._get(f"/lists/{list_id}/bans", cache=False)
        bans += [{"list": address, "entry": b["email"]}
                 for b in (list_bans or {}).get("entries", [])]
    _, global_bans = backend._get("/bans", cache=False)
    bans += [{"list": None, "entry": b["email"]} for b in (global_bans or {}).get("entries", [])]
    _, antispam = backend._get("/system/configuration/antispam", cache=False)
    _, mailman = backend._get("/system/configuration/mailman", cache=False)
    site = listsettings.site_to_json(site_from_rest(antispam, mailman))
    return {"version": 2, "site": site, "lists": out_lists, "bans": bans}
