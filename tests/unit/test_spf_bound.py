"""SPF runs inside MAIL FROM, which Postfix times out after 30 s: the whole evaluation
must end within [spf] timeout, as a temperror, even when DNS never answers."""

import socket
import time

from listgate.spfcheck import SpfChecker, configure_dns


def test_silent_dns_ends_in_temperror_within_the_bound() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # receives, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        configure_dns([("127.0.0.1", silent.getsockname()[1])], timeout=0.5)
        checker = SpfChecker("mx.test", timeout=1.0, dns_timeout=0.5)
        start = time.monotonic()
        res = checker.check("192.0.2.1", "a@slow.test", "mail.slow.test")
        elapsed = time.monotonic() - start
    finally:
        silent.close()
        configure_dns([], timeout=5)
    assert res.result == "temperror"
    assert res.identity == "mailfrom"
    assert "client-ip=192.0.2.1" in res.header
    # bounded by the configured 1 s (plus pyspf's per-query slack), far below 30 s
    assert elapsed < 5, elapsed


def test_pyspf_exception_becomes_temperror() -> None:
    checker = SpfChecker("mx.test", timeout=1.0, dns_timeout=0.5)
    res = checker.check("not an ip", "a@b.test", "h.test")
    assert res.result == "temperror" and "SPF evaluation error" in res.explanation


def test_dns_answers_are_cached_with_their_ttl() -> None:
    import dns.resolver

    configure_dns([("127.0.0.1", 53)], timeout=1)
    try:
        assert isinstance(dns.resolver.default_resolver.cache, dns.resolver.LRUCache)
    finally:
        configure_dns([], timeout=5)
