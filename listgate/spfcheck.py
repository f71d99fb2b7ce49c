"""SPF through pyspf, with the resolver and time bounds listgate is configured for.

pyspf does the RFC 7208 work and writes the Received-SPF header; this module only
points its DNS at the configured name servers, bounds the whole evaluation in time
(it runs inside MAIL FROM, which Postfix times out after 30 s), and turns any
surprise inside pyspf into a temperror instead of an exception.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.message
import dns.rdatatype
import dns.resolver
import spf

from listgate import budget
from listgate.cache import TTLCache

try:
    import dns.nameserver  # dnspython >= 2.4
    _HAVE_NAMESERVER_OBJECTS = True
except ImportError:
    _HAVE_NAMESERVER_OBJECTS = False

log = logging.getLogger("listgate")

#: DNS answers kept (each for its own TTL)
DNS_CACHE_SIZE = 10000
#: the longest any answer is kept, whatever its TTL says
MAX_TTL = 3600.0
#: how long "no such name / no such record" is kept when the answer has no SOA
NEGATIVE_TTL = 60.0

#: pyspf's view of DNS answers, converted once: ``(name, qtype) -> [((name, qtype), data)]``
_answers = TTLCache(DNS_CACHE_SIZE)


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308: a negative answer lives for min(SOA TTL, SOA minimum)."""
    for rrset in getattr(response, "authority", None) or ():
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return NEGATIVE_TTL


def answer_ttl(answer: dns.resolver.Answer) -> float:
    """Seconds a positive answer may be kept: its TTL, at most :data:`MAX_TTL`.

    Shared by every module that caches dnspython answers (SPF, DMARC), so that they all
    keep answers the same way.  dnspython's ``expiration`` is the smallest TTL along
    the CNAME chain, counted from when the answer arrived, so an answer that came out
    of dnspython's own cache is not kept for its full TTL a second time.
    """
    expiration = getattr(answer, "expiration", None)
    if expiration is None:
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else NEGATIVE_TTL
    else:
        ttl = expiration - time.time()
    return max(0.0, min(ttl, MAX_TTL))


def negative_answer_ttl(error: dns.resolver.NXDOMAIN | dns.resolver.NoAnswer) -> float:
    """Seconds "no such name" / "no such record" may be kept (RFC 2308), at most
    :data:`MAX_TTL`: the SOA of the response inside dnspython's exception decides."""
    if isinstance(error, dns.resolver.NoAnswer):
        response = error.kwargs.get("response")
    else:
        qnames = error.qnames()
        response = error.response(qnames[0]) if qnames else None
    return max(0.0, min(_negative_ttl(response), MAX_TTL))


def cached_lookup(name: str, qtype: str, tcpfallback: bool = True,
                  timeout: float = 30) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's ``DNSLookup``, with the converted answer cached for its TTL.

    pyspf's own lookup asks dnspython every time and converts the answer again; even
    from dnspython's cache that cost ~40 us per query, several per message.  Errors
    (timeouts, SERVFAIL) are not cached: the next message asks again.
    """
    key = (name, qtype)
    hit = _answers.get(key)
    if not TTLCache.missing(hit):
        return hit
    out: list[tuple[tuple[str, str], Any]] = []
    # pyspf passes what is left of its whole evaluation (querytime) as ``timeout``: one
    # query must still not wait longer than [dns] timeout (the resolver's lifetime)
    lifetime = min(timeout, dns.resolver.get_default_resolver().lifetime)
    try:
        answers = dns.resolver.resolve(name, qtype, lifetime=lifetime)
        for rdata in answers:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        ttl = answer_ttl(answers)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as e:
        ttl = negative_answer_ttl(e)
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
        raise spf.TempError(f"DNS {e}") from None
    _answers.put(key, out, ttl)
    return out


def clear_dns_cache() -> None:
    """Forget every cached answer (SIGHUP, tests)."""
    _answers.clear()
    cache = getattr(dns.resolver.get_default_resolver(), "cache", None)
    if cache is not None:
        cache.flush()


@dataclass(frozen=True)
class SpfResult:
    result: str  #: pass, fail, softfail, neutral, none, permerror, temperror
    identity: str  #: mailfrom or helo
    explanation: str
    header: str  #: the Received-SPF header value (RFC 7208 section 9.1)


def configure_dns(nameservers: Sequence[tuple[str, int]], timeout: float) -> None:
    """Point dnspython's default resolver (which pyspf uses) at the configured servers.

    With no servers configured the system's /etc/resolv.conf is used.
    """
    if nameservers:
        res = dns.resolver.Resolver(configure=False)
        if _HAVE_NAMESERVER_OBJECTS:
            res.nameservers = [dns.nameserver.Do53Nameserver(h, port=p) for h, p in nameservers]
        else:  # dnspython < 2.4 (Debian 12 has 2.3): one port per server address
            res.nameserver_ports = {h: p for h, p in nameservers}
            res.nameservers = [h for h, _ in nameservers]
    else:
        res = dns.resolver.Resolver()
    res.timeout = timeout
    res.lifetime = timeout
    # a bounded, thread-safe cache that honours each record's TTL: the same sender
    # domain's SPF records are not fetched again for every message
    res.cache = dns.resolver.LRUCache(DNS_CACHE_SIZE)
    dns.resolver.default_resolver = res
    _answers.clear()
    spf.DNSLookup = cached_lookup


_DNS_TIMEOUT = re.compile(r"lifetime expired|timed out|timeout", re.I)
_SERVER_DETAIL = re.compile(r":? ?Server (?:Do53|Do[HTQ]):\S+ answered [^;:]*", re.I)


def public_dns_problem(explanation: str) -> str:
    """pyspf's temperror text (dnspython's exception) made fit for the SMTP reply: it
    names our name servers and ports ("Server Do53:10.0.0.53@53 answered ..."), which a
    client has no business reading, and is long.  A timeout becomes "DNS timeout"."""
    text = str(explanation)
    if _DNS_TIMEOUT.search(text):
        return "SPF Temporary Error: DNS timeout"
    return _SERVER_DETAIL.sub("", text).strip()


class SpfChecker:
    """Evaluates SPF for one identity of a connection.

    Results are kept for ``cache_ttl`` seconds (``[spf] cache_ttl``), keyed by
    everything that can change them -- client IP, the exact sender, the HELO name --
    so the same MTA sending for the same sender is evaluated once, not per message:
    a full evaluation (twice per message with ``helo_fail = reject``) was a third of
    listgate's CPU per message even with every DNS answer cached.  A temperror is
    never kept: the next message asks again.
    """

    def __init__(self, receiver: str, timeout: float, dns_timeout: float,
                 cache_ttl: float = 0.0) -> None:
        self.receiver = receiver
        self.timeout = timeout
        self.dns_timeout = dns_timeout
        self.cache_ttl = cache_ttl
        self.results = TTLCache(DNS_CACHE_SIZE)

    def check(self, ip: str, sender: str, helo: str, receiver: str | None = None) -> SpfResult:
        """SPF for MAIL FROM ``sender``, or for the HELO identity when sender is empty.

        ``receiver`` names us in Received-SPF (default: the name given at start-up); the
        engine passes the connection's authserv-id, so that Received-SPF and
        Authentication-Results name the same host.
        """
        receiver = receiver or self.receiver
        key = (ip, sender, helo, receiver)
        if self.cache_ttl:
            hit = self.results.get(key)
            if not TTLCache.missing(hit):
                return hit
        identity = "mailfrom" if sender else "helo"
        try:
            # the whole evaluation within what is left of the stage's budget (the HELO
            # and MAIL FROM identities share [spf] timeout), each query within [dns]
            # timeout
            left = budget.remaining(self.timeout)
            q = spf.query(i=ip, s=sender, h=helo or "", receiver=receiver,
                          timeout=min(self.dns_timeout, left), querytime=left)
            result, _code, expl = q.check()
            header = q.get_header(result, receiver)
            if result == "temperror":
                log.debug("SPF temperror for ip=%s sender=%r helo=%r: %s", ip, sender, helo,
                          expl)
                expl = public_dns_problem(expl)
        except budget.BudgetExceeded:
            result, expl = "temperror", "SPF not evaluated: the time budget is used up"
            header = (f"temperror ({receiver}: {expl}) client-ip={ip}; "
                      f"identity={identity}")
        except Exception as e:  # noqa: BLE001 - pyspf must never take the daemon down
            log.warning("SPF evaluation failed for ip=%s sender=%r helo=%r: %s: %s",
                        ip, sender, helo, type(e).__name__, e)
            result, expl = "temperror", f"SPF evaluation error: {type(e).__name__}"
            header = (f"temperror ({receiver}: {expl}) client-ip={ip}; "
                      f"identity={identity}")
        out = SpfResult(result=result, identity=identity, explanation=str(expl), header=header)
        if self.cache_ttl and result != "temperror":
            self.results.put(key, out, self.cache_ttl)
        return out
