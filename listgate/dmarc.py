"""Mailman 3's ``dmarc-mitigation`` question, answered before Mailman is asked.

A list whose ``dmarc_mitigate_action`` is ``reject`` or ``discard`` refuses every post
whose From: domain publishes DMARC ``p=reject`` or ``p=quarantine`` (Mailman 3.3's
``mailman/rules/dmarc.py``, the chain in ``mailman/chains/dmarc.py``).  listgate asks
the same DNS question at SMTP time so it can refuse such posts while the sender is
still connected.  The other actions (munge From, wrap) let the post through, so they
do not concern listgate; which action the list has is the caller's business.

This module is pure logic plus dnspython; it knows nothing of pymilter.  It
reproduces Mailman's rule, quirks included, because its purpose is to predict
Mailman, not to be a better DMARC evaluator:

* the From address is ``parseaddr(str(msg.get('from', '')))`` (:func:`from_address`),
  lowercased; ``dmarc_addresses`` entries starting with ``^`` are ``re.search``-ed
  case-insensitively, others compared case-insensitively (:func:`address_mitigated`);
  no ``@`` in the address: not mitigated;
* ``_dmarc.<from domain>`` TXT: NXDOMAIN, no TXT, or no record starting exactly with
  ``v=DMARC1;`` -> ask ``_dmarc.<organisational domain>`` (if different), where
  ``sp=`` wins over ``p=``; more than one ``v=DMARC1;`` record -> not mitigated
  (RFC 7489 section 6.6.3); ``p=reject`` / ``p=quarantine`` -> mitigated, anything
  else -> not, and no further lookup;
* CNAMEs are followed in the answer section the way Mailman does it: owner names
  lowercased, CNAME targets compared as the server spelled them, and a chain whose
  end has no TXT record in the answer is "not mitigated".

Where listgate deliberately differs:

* **DNS failure is "unknown", never "mitigate".**  Mailman mitigates when DNS fails
  (timeout -- its ``[dmarc] resolver_timeout`` / ``resolver_lifetime``, 3 s / 5 s --
  SERVFAIL, a name dnspython cannot encode): it errs towards mitigation.
  listgate must not refuse mail because of its own resolver's trouble, so the
  caller gets ``unknown`` and lets the list manager decide.  The same goes for
  anything else where Mailman's answer cannot be predicted (below).
* **Mailman reads one TXT record per RRset.**  Its loop takes
  ``next(iter(rrset.items))`` for each RRset of ``response.answer``, and dnspython
  puts all TXT records of one name into one RRset; so with several TXT records at
  ``_dmarc.<domain>`` Mailman looks at whichever the resolver happened to put first
  (its "more than one v=DMARC1" branch fires only for separate RRsets, as in Mailman's
  mocked tests).  Record order is up to Mailman's own resolver, not ours: listgate
  evaluates every record as the possible first one, and when the outcomes differ
  the answer is ``unknown``.
* Names are asked absolute (``search=False``).  Mailman's ``Resolver.query`` applies
  the resolv.conf search list after NXDOMAIN; an answer for a search-list name never
  matches the name Mailman wants, so that only matters when DNS fails.
* A From domain that is no domain name at all (empty labels, a trailing dot, an
  address literal) is ``unknown``: Mailman's suffix code gives such names odd
  organisational domains (``example.com.`` -> ``com.``) not worth imitating.

Organisational domains come from ``publicsuffixlist`` (the list
:mod:`listgate.authn` loads once), not from Mailman's own list and matcher.  Compared
with Mailman 3.3.10's ``get_organizational_domain``:

* on the *same* list data the two agree on ``co.uk``, ``*.ck`` / ``!www.ck``,
  ``*.kobe.jp`` / ``!city.kobe.jp``, unknown TLDs (``a.b.x.test`` -> ``x.test``),
  public suffixes themselves (``co.uk`` -> ``co.uk``) and Unicode names, with one
  difference: Mailman's list holds IDN rules in Unicode only and it matches strings,
  so an A-label domain misses them (``a.b.xn--55qx5d.cn`` -> Mailman
  ``xn--55qx5d.cn``, publicsuffixlist ``b.xn--55qx5d.cn``); publicsuffixlist knows both
  spellings.  Mailman then asks ``_dmarc.xn--55qx5d.cn``, a public suffix's record;
* the *data* differ: Mailman downloads the list from publicsuffix.org every
  ``[dmarc] cache_lifetime`` (7 days) and falls back to the copy it ships (years
  old in 3.3.10), listgate uses the copy bundled with publicsuffixlist.  Rules
  added or changed since (``s3.amazonaws.com``, ``*.platformsh.site``, ``.bd`` no
  longer a wildcard) give different organisational domains until both are current.
  A difference there changes only which second name is asked, and only when the From
  domain itself has no DMARC record.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

import dns.exception
import dns.rdatatype
import dns.resolver

from listgate.authn import normalise_domain, private_suffix
from listgate.cache import TTLCache
from listgate.spfcheck import DNS_CACHE_SIZE, answer_ttl, negative_answer_ttl

log = logging.getLogger("listgate")

MITIGATE = "mitigate"  #: Mailman would mitigate (reject/discard on such lists)
NO = "no"  #: Mailman would not
UNKNOWN = "unknown"  #: cannot tell (DNS failed, out of time, order-dependent...)

#: Several TXT records make Mailman's answer depend on their order; past this many
#: orderings to try, the answer is simply unknown.
MAX_ORDERINGS = 64

#: What a lookup resolves to: ``resolve(name, lifetime) -> dns.resolver.Answer``,
#: raising dnspython's exceptions.
Resolve = Callable[[str, float], Any]

# The outcomes of Mailman's is_reject_or_quarantine for one name
_KEEP_LOOKING = "keep looking"
_ERROR = "error"


@dataclass(frozen=True)
class DmarcAnswer:
    """What Mailman's ``dmarc-mitigation`` rule would find, and why."""

    status: str  #: :data:`MITIGATE`, :data:`NO` or :data:`UNKNOWN`
    reason: str  #: for the log: which name, which record, p= or sp=
    #: for MITIGATE from DNS: "reject" when every record Mailman could read says
    #: reject, else "quarantine" (Mailman 2 may treat quarantine differently);
    #: "" for a dmarc_addresses match
    policy: str = ""

    @property
    def mitigate(self) -> bool:
        return self.status == MITIGATE


def from_address(first_from_value: str | None) -> str:
    """The address Mailman's rule checks: ``parseaddr(str(msg.get('from', '')))[1]``.

    ``first_from_value`` is the first From header's value (None: no From header).
    Mailman's ``msg.get`` may hand ``str()`` a ``Header`` for raw 8-bit headers; the
    caller passes the text the MTA gave.  ``parseaddr`` is the running Python's:
    its handling of malformed headers changed in 3.11.10 / 3.12.6 (CVE-2023-27043), so
    the prediction is exact only with the same Python as Mailman's.
    """
    return parseaddr(str(first_from_value if first_from_value is not None else ""))[1]


def _matching_entry(email: str, dmarc_addresses: Sequence[str]) -> str | None:
    """The first ``dmarc_addresses`` entry matching ``email`` (lowercased), as in
    Mailman's ``maybe_mitigate``; raises :class:`re.error` for a bad regexp reached."""
    for entry in dmarc_addresses:
        if entry.startswith("^"):
            if re.search(entry, email, re.I):
                return entry
        elif entry.lower() == email:
            return entry
    return None


def address_mitigated(address: str, dmarc_addresses: Sequence[str]) -> bool:
    """True if the list's own ``dmarc_addresses`` make Mailman mitigate ``address``
    without any DNS: entries starting with ``^`` are regular expressions searched
    case-insensitively, the others whole addresses compared case-insensitively.

    Raises :class:`re.error` when an entry that is reached is not a valid regular
    expression (Mailman's rule fails on it too; earlier matches still count).
    """
    return _matching_entry(address.lower(), dmarc_addresses) is not None


# --------------------------------------------------------------------------- DNS data

#: One RRset of an answer section, as Mailman looks at it:
#: ``(owner name lowercased, rdtype, items)``; items are CNAME targets (text, as the
#: server spelled them) or TXT records (their character-strings).
_RRset = tuple[str, int, tuple[Any, ...]]


@dataclass(frozen=True)
class _Lookup:
    """One TXT lookup, kept for its TTL: a negative answer or the answer section."""

    negative: str = ""  #: "NXDOMAIN" or "no TXT record"; "" for an answer
    rrsets: tuple[_RRset, ...] = ()


def _rrsets(answer: Any) -> tuple[_RRset, ...]:
    out = []
    for rrset in answer.response.answer:
        if rrset.rdtype == dns.rdatatype.CNAME:
            out.append((rrset.name.to_text().lower(), int(rrset.rdtype),
                        tuple(rd.target.to_text() for rd in rrset)))
        elif rrset.rdtype == dns.rdatatype.TXT:
            out.append((rrset.name.to_text().lower(), int(rrset.rdtype),
                        tuple(tuple(rd.strings) for rd in rrset)))
    return tuple(out)


def _show(record: str) -> str:
    """A TXT record for the log: quoted, escaped, cut short."""
    return ascii(record if len(record) <= 200 else record[:200] + "...")


def _outcome(dmarc_domain: str, rrsets: Sequence[_RRset], firsts: Sequence[int],
             org: bool) -> tuple[str | bool, str]:
    """Mailman's ``is_reject_or_quarantine`` on an answer section, given which item of
    each RRset Mailman's ``next(iter(rrset.items))`` would see (``firsts``).

    Returns (True | False | _KEEP_LOOKING | _ERROR, reason).
    """
    results_by_name: dict[str, list[str]] = {}
    cnames: dict[str, str] = {}
    for (name, rdtype, items), first in zip(rrsets, firsts, strict=True):
        if rdtype == dns.rdatatype.CNAME:
            cnames[name] = items[first]
            continue
        try:
            result = "".join(str(s, encoding="utf-8") for s in items[first])
        except UnicodeDecodeError:
            return _ERROR, (f"a TXT record at {name} is not UTF-8 "
                            "(Mailman's rule fails on it)")
        results_by_name.setdefault(name, []).append(result)
    want = dmarc_domain + "."
    expands, seen, via = [want], {want}, []
    while expands:
        item = expands.pop(0)
        if item in cnames:
            if cnames[item] in seen:
                continue  # CNAME loop
            expands.append(cnames[item])
            seen.add(cnames[item])
            want = cnames[item]
            via.append(want)
    where = dmarc_domain + (f" (CNAME to {' -> '.join(via)})" if via else "")
    if want not in results_by_name:
        return False, f"{where}: no TXT record for that name in the answer"
    dmarcs = [r for r in results_by_name[want] if r.startswith("v=DMARC1;")]
    if not dmarcs:
        return _KEEP_LOOKING, f"{where}: no v=DMARC1 record"
    if len(dmarcs) > 1:
        return False, f"{where}: {len(dmarcs)} v=DMARC1 records, ignored (RFC 7489)"
    entry = dmarcs[0]
    mo = re.search(r"\bsp=(\w*)\b", entry, re.IGNORECASE)
    tag = "sp"
    if not (org and mo):
        mo, tag = re.search(r"\bp=(\w*)\b", entry, re.IGNORECASE), "p"
        if not mo:
            return False, f"{where}: no p= in {_show(entry)}"
    policy = mo.group(1).lower()
    verdict = policy in ("reject", "quarantine")
    return verdict, f"{where}: {tag}={policy} in {_show(entry)}"


def _outcomes(dmarc_domain: str, lookup: _Lookup, org: bool) -> set[tuple[str | bool, str]]:
    """Every outcome Mailman could reach for one name, one per order of its records."""
    if lookup.negative:
        return {(_KEEP_LOOKING, f"{dmarc_domain}: {lookup.negative}")}
    sizes = [len(items) for _name, _type, items in lookup.rrsets]
    count = 1
    for n in sizes:
        count *= max(n, 1)
    if count > MAX_ORDERINGS:
        return {(_ERROR, f"{dmarc_domain}: too many records to tell which Mailman reads")}
    return {_outcome(dmarc_domain, lookup.rrsets, firsts, org)
            for firsts in itertools.product(*(range(n) for n in sizes))}


def _resolve(name: str, lifetime: float) -> Any:
    # looked up at call time: configure_dns() replaces the default resolver on SIGHUP
    return dns.resolver.resolve(name, "TXT", lifetime=lifetime, search=False)


class _DnsFailure(Exception):
    """A lookup that got no answer; the message says why."""


def organizational_domain(domain: str) -> str:
    """Mailman's ``get_organizational_domain``, answered by publicsuffixlist.

    A public suffix is its own organisational domain; a domain under an unknown TLD
    has the last two labels, as in Mailman.  See the module docstring for where the
    two can differ.
    """
    return private_suffix(domain) or domain


def _plain_domain(domain: str) -> bool:
    """True if ``domain`` is a host name Mailman's code handles like any other."""
    nd = normalise_domain(domain)
    if not nd:
        return False
    if domain.isascii():
        return nd == domain
    return domain == domain.strip().rstrip(".")  # Unicode: asked as Mailman asks it


class DmarcChecker:
    """Answers Mailman's DMARC question for all connections (thread-safe).

    Each TXT answer, positive or negative, is kept for its TTL (negative ones per RFC
    2308), at most an hour (``spfcheck.MAX_TTL``); a DNS failure is never kept, the
    next post asks again.  One question (at most two names) gets ``timeout`` seconds
    in all, the engine's ``[dns] timeout``; past that the answer is ``unknown``.
    """

    def __init__(self, timeout: float, cache_size: int = DNS_CACHE_SIZE,
                 resolve: Resolve | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._resolve = resolve or _resolve
        self._clock = clock
        self.cache = TTLCache(cache_size, clock=clock)

    def mitigate(self, from_value: str | None, dmarc_addresses: Sequence[str]) -> DmarcAnswer:
        """Would Mailman's ``dmarc-mitigation`` rule hit this post?

        ``from_value`` is the raw first From header value (None: no From header);
        ``dmarc_addresses`` the list's own patterns.  Call it only for lists whose
        ``dmarc_mitigate_action`` is not ``no_mitigation`` (Mailman does not look
        otherwise).
        """
        address = from_address(from_value)
        email = address.lower()
        try:
            entry = _matching_entry(email, dmarc_addresses)
        except re.error as e:
            return DmarcAnswer(UNKNOWN, f"dmarc_addresses has an invalid regexp ({e}); "
                                        "Mailman's rule fails on it")
        if entry is not None:
            return DmarcAnswer(MITIGATE, f"From {address} matches dmarc_addresses "
                                         f"entry {entry!r}")
        _local, at, domain = email.rpartition("@")
        if at != "@":
            return DmarcAnswer(NO, f"From address {address!r} has no domain")
        return self.policy(domain)

    def policy(self, from_domain: str) -> DmarcAnswer:
        """The DMARC policy question alone: does ``from_domain`` (or its organisational
        domain) publish p=reject or p=quarantine, as Mailman reads DNS?"""
        domain = from_domain.lower()
        if not _plain_domain(domain):
            return DmarcAnswer(UNKNOWN, f"From domain {domain!r} is not a plain domain "
                                        "name; Mailman's answer not predicted")
        deadline = self._clock() + self.timeout
        name = f"_dmarc.{domain}"
        try:
            first = _outcomes(name, self._lookup(name, deadline), org=False)
            finals = {o for o in first if o[0] is not _KEEP_LOOKING}
            keep = sorted({why for v, why in first if v is _KEEP_LOOKING})
            if keep:
                org = organizational_domain(domain)
                if org == domain:
                    finals.add((False, f"{'; '.join(keep)}; {domain} is its own "
                                       "organisational domain"))
                else:
                    org_name = f"_dmarc.{org}"
                    for v, why in _outcomes(org_name, self._lookup(org_name, deadline),
                                            org=True):
                        why = f"{'; '.join(keep)}; organisational domain {why}"
                        finals.add((False if v is _KEEP_LOOKING else v, why))
        except _DnsFailure as e:
            return DmarcAnswer(UNKNOWN, f"{e} (Mailman mitigates on DNS errors)")
        return _verdict(finals)

    def _lookup(self, name: str, deadline: float) -> _Lookup:
        """``name``'s TXT answer, from the cache or DNS within the deadline."""
        hit = self.cache.get(name)
        if not TTLCache.missing(hit):
            return hit
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise _DnsFailure(f"{name}: time budget of {self.timeout:g} s used up")
        try:
            answer = self._resolve(name + ".", remaining)
            out, ttl = _Lookup(rrsets=_rrsets(answer)), answer_ttl(answer)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as e:
            what = "NXDOMAIN" if isinstance(e, dns.resolver.NXDOMAIN) else "no TXT record"
            out, ttl = _Lookup(negative=what), negative_answer_ttl(e)
        except dns.exception.Timeout:
            raise _DnsFailure(f"{name}: DNS timeout") from None
        except dns.exception.DNSException as e:
            raise _DnsFailure(f"{name}: DNS {type(e).__name__}: {e}") from None
        except Exception as e:  # noqa: BLE001 - never let a lookup take a post down
            log.warning("DMARC lookup of %s failed: %s: %s", name, type(e).__name__, e)
            raise _DnsFailure(f"{name}: lookup failed: {type(e).__name__}") from None
        self.cache.put(name, out, ttl)
        return out

    def clear(self) -> None:
        """Forget every cached answer (SIGHUP, tests)."""
        self.cache.clear()


#: the policy each mitigating outcome's reason names (``_outcome``: "p=reject in ...")
_POLICY_IN_REASON = re.compile(r"\bs?p=(reject|quarantine) in ")


def _verdict(finals: set[tuple[str | bool, str]]) -> DmarcAnswer:
    values = {v for v, _why in finals}
    reasons = "; or ".join(sorted(why for _v, why in finals))
    if _ERROR in values:
        return DmarcAnswer(UNKNOWN, reasons)
    if values == {True}:
        found = set(_POLICY_IN_REASON.findall(reasons))
        return DmarcAnswer(MITIGATE, reasons, "reject" if found == {"reject"} else "quarantine")
    if values == {False}:
        return DmarcAnswer(NO, reasons)
    return DmarcAnswer(UNKNOWN, "Mailman reads whichever TXT record its resolver lists "
                                f"first, and they disagree: {reasons}")


__all__ = [
    "MITIGATE",
    "NO",
    "UNKNOWN",
    "DmarcAnswer",
    "DmarcChecker",
    "address_mitigated",
    "from_address",
    "organizational_domain",
]
