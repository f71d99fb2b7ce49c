"""pyspf's DNS answers are cached for their TTL (``spfcheck.cached_lookup``), against a
real dnsmasq: what the cache saves is queries on the wire, so that is what is counted."""

from __future__ import annotations

import time

import infra
import pytest
import spf

from listgate import spfcheck

RECORD = "v=spf1 ip4:192.0.2.0/24 -all"


@pytest.fixture
def dns_server():
    with infra.DnsServer(txt={"cached.test": RECORD}, ttl=2, log_queries=True) as server:
        host, port = server.nameservers.split(":")
        spfcheck.configure_dns([(host, int(port))], 2.0)
        yield server
    spfcheck.clear_dns_cache()


def _asked(server: infra.DnsServer, name: str) -> int:
    return sum(1 for q in server.queries() if name in q)


def test_answer_reused_within_its_ttl_and_asked_again_after(dns_server):
    first = spfcheck.cached_lookup("cached.test", "TXT")
    assert first == [(("cached.test", "TXT"), (RECORD.encode(),))]
    assert spfcheck.cached_lookup("cached.test", "TXT") == first
    assert _asked(dns_server, "cached.test") == 1
    time.sleep(2.2)  # the record's TTL
    assert spfcheck.cached_lookup("cached.test", "TXT") == first
    assert _asked(dns_server, "cached.test") == 2


def test_no_such_name_is_cached_too(dns_server):
    assert spfcheck.cached_lookup("missing.test", "TXT") == []
    assert spfcheck.cached_lookup("missing.test", "TXT") == []
    assert _asked(dns_server, "missing.test") == 1


def test_a_dead_server_is_a_temperror_and_is_not_cached(dns_server):
    dns_server.stop()
    for _ in range(2):
        with pytest.raises(spf.TempError):
            spfcheck.cached_lookup("cached.test", "TXT", timeout=0.5)
    # a whole SPF check says temperror, as pyspf's own lookup would
    result = spfcheck.SpfChecker("mx.test", 5, 0.5).check("192.0.2.1", "a@cached.test", "h")
    assert result.result == "temperror"


def test_spf_results_reused_for_cache_ttl_but_never_a_temperror(dns_server):
    cached = spfcheck.SpfChecker("mx.test", 5, 0.5, cache_ttl=60)
    fresh = spfcheck.SpfChecker("mx.test", 5, 0.5, cache_ttl=0)
    first = cached.check("192.0.2.1", "a@cached.test", "mail.cached.test")
    assert first.result == "pass" and "client-ip=192.0.2.1" in first.header
    dns_server.stop()
    spfcheck.clear_dns_cache()  # nothing left to answer from but the result cache
    assert cached.check("192.0.2.1", "a@cached.test", "mail.cached.test") == first
    assert fresh.check("192.0.2.1", "a@cached.test", "mail.cached.test").result == "temperror"
    # another sender, IP or HELO is another question
    assert cached.check("192.0.2.2", "a@cached.test", "mail.cached.test").result == "temperror"
    assert cached.check("192.0.2.1", "b@cached.test", "mail.cached.test").result == "temperror"
    # ... and its temperror was not kept
    assert len(cached.results) == 1
