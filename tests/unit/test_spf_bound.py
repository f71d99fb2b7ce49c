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


class _Silent:
    """A name server that receives queries and never answers."""

    def __enter__(self) -> int:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        configure_dns([], timeout=5)


def test_one_query_waits_at_most_the_dns_timeout() -> None:
    """pyspf hands each query what is left of its whole evaluation: a silent server
    must still cost [dns] timeout, not [spf] timeout (issue 11: 20.8 s per query)."""
    with _Silent() as port:
        configure_dns([("127.0.0.1", port)], timeout=0.3)
        checker = SpfChecker("mx.test", timeout=10.0, dns_timeout=0.3)
        start = time.monotonic()
        res = checker.check("192.0.2.1", "a@slow.test", "mail.slow.test")
        elapsed = time.monotonic() - start
    assert res.result == "temperror"
    assert elapsed < 2, elapsed


def test_helo_and_mail_from_share_one_stage_budget() -> None:
    """Under one stage (MAIL FROM: the HELO identity, then MAIL FROM's), the second
    check gets only what the first left; past it, temperror without a query."""
    from listgate import budget

    with _Silent() as port:
        configure_dns([("127.0.0.1", port)], timeout=0.5)
        checker = SpfChecker("mx.test", timeout=0.6, dns_timeout=0.5)
        start = time.monotonic()
        with budget.stage(0.6):
            helo = checker.check("192.0.2.1", "", "mail.slow.test")
            time.sleep(max(0.0, 0.65 - (time.monotonic() - start)))
            mail = checker.check("192.0.2.1", "a@slow.test", "mail.slow.test")
        elapsed = time.monotonic() - start
    assert helo.result == "temperror"
    assert mail.result == "temperror" and "time budget" in mail.explanation
    assert "identity=mailfrom" in mail.header
    assert elapsed < 1.5, elapsed
