"""Received-header parsing and the trusted submission path.

The parse samples follow what each MTA really writes (Postfix smtpd, sendmail's
``HReceived`` template, Exim's ``$sender_rcvhost``, Exchange/Office 365, Gmail,
Courier, qmail), folded as a milter receives them.  The trust tests replay the
three routes of the original TrustedServerModerate write-up (seed 000), the
authenticated-or-oldest rule for the submission server's own line in each MTA's
words, then forgeries.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from listgate.received import (
    MAX_PARSE_CHARS,
    ReceivedHop,
    has_from_clause,
    normalize_ip,
    parse_received,
    trusted_path,
)

DATE = "Sun, 22 Nov 2026 10:00:00 +0000"

# (value, ip, from_name, by_name, protocol); ip None = no usable hop
PARSE_CASES = [
    # -- Postfix -------------------------------------------------------------------------
    pytest.param(
        "from mail.example.org (mail.example.org [192.0.2.1])\n"
        "\tby mx.example.net (Postfix) with ESMTPS id 4Xk9Zq1bTnz9sWQ\n"
        f"\tfor <a@example.net>; {DATE} (UTC)",
        "192.0.2.1", "mail.example.org", "mx.example.net", "ESMTPS", id="postfix"),
    pytest.param(
        "from helo.example (unknown [198.51.100.7])\n"
        "\tby mx.example.net (Postfix) with ESMTP id 4Xk9Zq2bTnz9sWR\n"
        f"\tfor <a@example.net>; {DATE} (UTC)",
        "198.51.100.7", "helo.example", "mx.example.net", "ESMTP", id="postfix-unknown"),
    pytest.param(
        "from host (host.example [IPv6:2001:db8::1])\n"
        f"\tby mx.example.net (Postfix) with ESMTPS id 4Xk9Zq3; {DATE}",
        "2001:db8::1", "host", "mx.example.net", "ESMTPS", id="postfix-ipv6"),
    pytest.param(
        "from [192.168.1.20] (dsl-198-51-100-9.example.net [198.51.100.9])\n"
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\n"
        "\t key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)\n"
        "\t(No client certificate requested)\n"
        "\t(Authenticated sender: bob)\n"
        f"\tby submit.example.org (Postfix) with ESMTPSA id 4Xk9Zq4;\n\t{DATE}",
        "198.51.100.9", "[192.168.1.20]", "submit.example.org", "ESMTPSA",
        id="postfix-auth-tls-literal-helo"),
    pytest.param(
        "from mail.example.org (mail.example.org [192.0.2.1])\r\n"
        f" by mx.example.net (Postfix) with ESMTP id 4Xk9Zq5;\r\n {DATE}",
        "192.0.2.1", "mail.example.org", "mx.example.net", "ESMTP", id="postfix-crlf-fold"),
    pytest.param(
        "from localhost (localhost [127.0.0.1])\n"
        f"\tby relay.example.org (Postfix) with ESMTP id 4Xk9Zq6; {DATE}",
        "127.0.0.1", "localhost", "relay.example.org", "ESMTP", id="postfix-loopback"),
    pytest.param(
        "from 203.0.113.9 (real.example [192.0.2.1])\n"
        f"\tby mx.example.net (Postfix) with SMTP id 4Xk9Zq7; {DATE}",
        "192.0.2.1", "203.0.113.9", "mx.example.net", "SMTP", id="postfix-numeric-helo"),
    pytest.param(
        # Postfix joins a multi-word HELO and keeps its brackets (it only neuters <>()...)
        "from sub.example [10.0.0.5] x (unknown [203.0.113.66])\n"
        f"\tby relay.example.org (Postfix) with ESMTP id 4Xk9Zq8; {DATE}",
        "203.0.113.66", "sub.example", "relay.example.org", "ESMTP",
        id="postfix-helo-with-spaces-and-brackets"),
    pytest.param(
        f"by mx.example.net (Postfix, from userid 1000)\n\tid 4Xk9Zq9; {DATE}",
        None, None, None, None, id="postfix-pickup-local"),
    # -- sendmail -----------------------------------------------------------------------
    pytest.param(
        "from host.example.org (host.example.org [192.0.2.1])\n"
        "\tby mx.example.net (8.17.1/8.17.1) with ESMTP id 5AMA0abc012345\n"
        "\tfor <a@example.net>; Sun, 22 Nov 2026 10:00:00 GMT",
        "192.0.2.1", "host.example.org", "mx.example.net", "ESMTP", id="sendmail"),
    pytest.param(
        "from helo.example (host.example.org [192.0.2.1] (may be forged))\n"
        f"\tby mx.example.net (8.17.1/8.17.1) with ESMTP id 5AMA0abc012346; {DATE}",
        "192.0.2.1", "helo.example", "mx.example.net", "ESMTP", id="sendmail-may-be-forged"),
    pytest.param(
        "from [10.1.1.1] ([198.51.100.7])\n"
        f"\tby mx.example.net (8.17.1/8.17.1) with SMTP id 5AMA0abc012347; {DATE}",
        "198.51.100.7", "[10.1.1.1]", "mx.example.net", "SMTP",
        id="sendmail-literal-helo-no-rdns"),
    pytest.param(
        "from mail.example.org (mail.example.org [IPv6:2001:db8::25])\n"
        "\tby mx.example.net (8.17.1/8.17.1) with ESMTPS id 5AMA0abc012348\n"
        "\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NOT)\n"
        f"\tfor <a@example.net>; {DATE}",
        "2001:db8::25", "mail.example.org", "mx.example.net", "ESMTPS", id="sendmail-ipv6"),
    pytest.param(
        "from laptop.home ([198.51.100.9])\n\t(authenticated bits=0)\n"
        f"\tby submit.example.org (8.17.1/8.17.1) with ESMTPSA id 5AMA0abc012349; {DATE}",
        "198.51.100.9", "laptop.home", "submit.example.org", "ESMTPSA", id="sendmail-auth"),
    pytest.param(
        "(from mail.example.org [192.0.2.1])\n"
        f"\tby mx.example.net (8.17.1/8.17.1) id 5AMA0abc012350; {DATE}",
        "192.0.2.1", "mail.example.org", "mx.example.net", None, id="sendmail-no-helo"),
    pytest.param(
        "(from bob@localhost)\n"
        f"\tby host.example.org (8.17.1/8.17.1/Submit) id 5AMA0abc012351; {DATE}",
        None, None, None, None, id="sendmail-local-submit"),
    # -- Exim ---------------------------------------------------------------------------
    pytest.param(
        "from [192.0.2.1] (helo=foo)\n\tby mx.example.net with esmtp (Exim 4.96)\n"
        "\t(envelope-from <a@example.org>)\n\tid 1tEsXq-000ABC-2b\n"
        f"\tfor a@example.net; {DATE}",
        "192.0.2.1", "[192.0.2.1]", "mx.example.net", "esmtp", id="exim-no-rdns"),
    pytest.param(
        "from host.example ([192.0.2.1] helo=foo)\n"
        "\tby mx.example.net with esmtps (TLS1.3) tls TLS_AES_256_GCM_SHA384\n"
        "\t(Exim 4.96)\n\t(envelope-from <a@example.org>)\n\tid 1tEsXq-000ABC-2c; " + DATE,
        "192.0.2.1", "host.example", "mx.example.net", "esmtps", id="exim-helo-in-comment"),
    pytest.param(
        "from host.example ([192.0.2.1]:54321 helo=foo) by mx.example.net with esmtpsa"
        " (TLS1.3) tls TLS_AES_256_GCM_SHA384 (Exim 4.96) (envelope-from <bob@example.org>)"
        f" id 1tEsXq-000ABC-2d; {DATE}",
        "192.0.2.1", "host.example", "mx.example.net", "esmtpsa", id="exim-port-auth"),
    pytest.param(
        f"from [192.0.2.1] (helo=[10.0.0.1])\n\tby mx.example.net with esmtp (Exim 4.96); {DATE}",
        "192.0.2.1", "[192.0.2.1]", "mx.example.net", "esmtp", id="exim-literal-helo"),
    pytest.param(
        "from [192.0.2.1] (port=54321 helo=mail.example.org)\n"
        f"\tby mx.example.net with esmtp (Exim 4.96); {DATE}",
        "192.0.2.1", "[192.0.2.1]", "mx.example.net", "esmtp", id="exim-port-no-rdns"),
    pytest.param(
        "from [2001:db8::25] (helo=mail.example.org)\n"
        f"\tby mx.example.net with esmtps (TLS1.3) (Exim 4.96); {DATE}",
        "2001:db8::25", "[2001:db8::25]", "mx.example.net", "esmtps", id="exim-ipv6"),
    pytest.param(
        "from mail.example.org ([2001:db8::25]:41234 helo=mail.example.org)\n"
        f"\tby mx.example.net with esmtps (TLS1.3) (Exim 4.96); {DATE}",
        "2001:db8::25", "mail.example.org", "mx.example.net", "esmtps", id="exim-ipv6-port"),
    pytest.param(
        "from host.example ([192.0.2.1] ident=[10.0.0.5] helo=foo)\n"
        f"\tby mx.example.net with esmtp (Exim 4.96); {DATE}",
        "192.0.2.1", "host.example", "mx.example.net", "esmtp", id="exim-ident"),
    pytest.param(
        "from x (helo=[10.0.0.1]) ([192.0.2.1])\n"
        f"\tby mx.example.net with esmtp (Exim 4.96); {DATE}",
        "192.0.2.1", "x", "mx.example.net", "esmtp", id="helo-literal-comment-skipped"),
    pytest.param(
        "from mail by mx.example.net with local (Exim 4.96)\n"
        f"\t(envelope-from <mail@mx.example.net>)\n\tid 1tEsXq-000ABC-2e; {DATE}",
        None, None, None, None, id="exim-local"),
    # -- Exchange / Office 365 -----------------------------------------------------------
    pytest.param(
        "from EXCH01.corp.example (10.0.0.5) by EXCH02.corp.example (10.0.0.6) with"
        " Microsoft SMTP Server (version=TLS1_2,"
        " cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.2.1118.40; " + DATE,
        "10.0.0.5", "EXCH01.corp.example", "EXCH02.corp.example", "Microsoft",
        id="exchange"),
    pytest.param(
        "from NAM12-MW2-obe.outbound.protection.outlook.com (2603:10b6:303:ab::16) by\n"
        " BN8NAM12FT058.mail.protection.outlook.com (2603:10b6:408:e0:cafe::4e) with\n"
        " Microsoft SMTP Server (version=TLS1_2,\n"
        " cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7452.22 via Frontend\n"
        f" Transport; {DATE}",
        "2603:10b6:303:ab::16", "NAM12-MW2-obe.outbound.protection.outlook.com",
        "BN8NAM12FT058.mail.protection.outlook.com", "Microsoft", id="office365-ipv6"),
    pytest.param(
        "from CH2PR12MB4567.namprd12.prod.outlook.com ([fe80::9c1a:4bff:fe3d:1a2b]) by\n"
        " CH2PR12MB4567.namprd12.prod.outlook.com ([fe80::9c1a:4bff:fe3d:1a2b%7]) with\n"
        f" mapi id 15.20.7452.049; {DATE}",
        "fe80::9c1a:4bff:fe3d:1a2b", "CH2PR12MB4567.namprd12.prod.outlook.com",
        "CH2PR12MB4567.namprd12.prod.outlook.com", "mapi", id="exchange-mapi"),
    pytest.param(
        "from EXCH01.corp.example ([fe80::1%12]) by EXCH01.corp.example"
        f" ([fe80::1%12]) with mapi id 15.2.1118.40; {DATE}",
        "fe80::1", "EXCH01.corp.example", "EXCH01.corp.example", "mapi",
        id="exchange-zone-index-dropped"),
    pytest.param(
        "from EXCH01.corp.example by EXCH02.corp.example (10.0.0.6) with Microsoft SMTP"
        f" Server id 15.2.1118.40; {DATE}",
        None, None, None, None, id="exchange-ip-only-in-by"),
    # -- Gmail, Courier, qmail -----------------------------------------------------------
    pytest.param(
        "from mail-sor-f41.google.com (mail-sor-f41.google.com. [209.85.220.41])\n"
        "        by mx.google.com with SMTPS id a1sor123456wrx.23.2026.11.22.02.00.00\n"
        "        for <a@example.net>\n        (Google Transport Security);\n        " + DATE,
        "209.85.220.41", "mail-sor-f41.google.com", "mx.google.com", "SMTPS", id="gmail"),
    pytest.param(
        "from [192.168.1.5] ([203.0.113.50])\n"
        f"        by smtp.gmail.com with ESMTPSA id x1sm1234567wrb.1.2026.11.22; {DATE}",
        "203.0.113.50", "[192.168.1.5]", "smtp.gmail.com", "ESMTPSA", id="gmail-submission"),
    pytest.param(
        "from mail.example.org (mail.example.org [::ffff:192.0.2.1])\n"
        "  (AUTH: LOGIN bob, TLS: TLSv1/SSLv3,256bits,AES256-SHA)\n"
        f"  by mx.example.net with ESMTPA; {DATE}\n  id 0000000A.5F1B2C3D.00001234",
        "192.0.2.1", "mail.example.org", "mx.example.net", "ESMTPA", id="courier-mapped"),
    pytest.param(
        "from unknown (HELO mail.example.org) (192.0.2.1)\n"
        "  by mx.example.net with SMTP; 22 Nov 2026 10:00:00 -0000",
        "192.0.2.1", "unknown", "mx.example.net", "SMTP", id="qmail"),
    pytest.param(
        "from unknown (HELO ?10.0.0.1?) (x@10.0.0.5@198.51.100.9)\n"
        "  by mail.example.org with ESMTPA; 22 Nov 2026 10:00:00 -0000",
        "198.51.100.9", "unknown", "mail.example.org", "ESMTPA", id="qmail-remoteinfo"),
    pytest.param(
        "from unknown (HELO mail.example.org) (::ffff:192.0.2.1)\n"
        "  by mx.example.net with SMTP; 22 Nov 2026 10:00:00 -0000",
        "192.0.2.1", "unknown", "mx.example.net", "SMTP", id="qmail-ipv6-mapped"),
    pytest.param(
        "from x (HELO [10.0.0.5]) (192.0.2.1) by mx.example.net with SMTP; " + DATE,
        "192.0.2.1", "x", "mx.example.net", "SMTP", id="helo-word-literal-skipped"),
    pytest.param("(qmail 12345 invoked from network); 22 Nov 2026 10:00:00 -0000",
                 None, None, None, None, id="qmail-invoked"),
    # -- not fooled, garbage -------------------------------------------------------------
    pytest.param(
        "from x ([not an ip]) (real.example [192.0.2.1]) by mx.example.net with ESMTP",
        "192.0.2.1", "x", "mx.example.net", "ESMTP", id="comment-with-junk-brackets"),
    pytest.param(
        "from x (real.example [192.0.2.1]) (Authenticated sender: [10.0.0.5])"
        " by mx.example.net with ESMTPSA",
        "192.0.2.1", "x", "mx.example.net", "ESMTPSA", id="first-recorded-comment-wins"),
    pytest.param("FROM x (y [192.0.2.1]) BY mx.example.net WITH ESMTP",
                 "192.0.2.1", "x", "mx.example.net", "ESMTP", id="upper-case"),
    pytest.param("from x (y [ipv6:2001:DB8::A]) by mx", "2001:db8::a", "x", "mx", None,
                 id="lower-case-ipv6-tag"),
    pytest.param("from hôte.exemple (hôte.exemple [192.0.2.1]) by mx.example.net",
                 "192.0.2.1", "hôte.exemple", "mx.example.net", None, id="non-ascii-helo"),
    pytest.param("from \udcff\udcfe (x [192.0.2.1]) by mx.example.net with SMTP",
                 "192.0.2.1", "\udcff\udcfe", "mx.example.net", "SMTP", id="surrogate-escapes"),
    pytest.param("from x (y [１９２.0.2.1]) by mx", None, None, None, None,
                 id="non-ascii-digits"),
    pytest.param("from x (y [999.1.1.1]) by mx", None, None, None, None, id="bad-octet"),
    pytest.param("from 192.0.2.1 by mx.example.net with SMTP", None, None, None, None,
                 id="bare-helo-ip-only"),
    pytest.param("from x [192.0.2.1] by mx", None, None, None, None,
                 id="bracket-not-first-token"),
    pytest.param("from x (y [192.0.2.1] by mx with SMTP", None, None, None, None,
                 id="unbalanced-open"),
    pytest.param("from x) (y [192.0.2.1]) by mx", None, None, None, None,
                 id="unbalanced-close"),
    pytest.param("", None, None, None, None, id="empty"),
    pytest.param("   \r\n\t ", None, None, None, None, id="blank"),
    pytest.param("from", None, None, None, None, id="from-only"),
    pytest.param("from ()", None, None, None, None, id="empty-comment"),
    pytest.param("garbage [192.0.2.1]", None, None, None, None, id="no-from"),
    pytest.param("from x (helo=[10.0.0.1]) by mx", None, None, None, None,
                 id="only-helo-literal"),
]


@pytest.mark.parametrize(("value", "ip", "from_name", "by_name", "protocol"), PARSE_CASES)
def test_parse_received(value: str, ip: str | None, from_name: str | None,
                        by_name: str | None, protocol: str | None) -> None:
    hop = parse_received(value)
    if ip is None:
        assert hop is None
    else:
        assert hop == ReceivedHop(ip, from_name or "", by_name, protocol)


def test_parse_sample_count() -> None:
    """The brief asks for at least 25 real-looking samples."""
    assert sum(1 for p in PARSE_CASES if p.values[1] is not None) >= 25


@pytest.mark.parametrize(("protocol", "auth"), [
    ("ESMTPSA", True), ("esmtpa", True), ("LMTPA", True), ("LmtpSA", True),
    ("UTF8SMTPSA", True),
    ("ESMTPS", False), ("SMTP", False), ("Microsoft", False), (None, False),
])
def test_authenticated(protocol: str | None, auth: bool) -> None:
    assert ReceivedHop("192.0.2.1", protocol=protocol).authenticated is auth


def test_parse_bounded_on_huge_values() -> None:
    """Flooded values cost at most MAX_PARSE_CHARS of linear work."""
    tail = "x" * 200_000
    hop = parse_received(f"from a (b [192.0.2.1]) by mx.example.net with ESMTP {tail}")
    assert hop is not None and hop.ip == "192.0.2.1"
    # a from clause pushed past the cut cannot be read: fail closed
    assert parse_received("from " + "a " * MAX_PARSE_CHARS + "(b [192.0.2.1]) by mx") is None
    nasty = [
        "from " + "(" * 100_000 + "[1.2.3.4]",
        "from x (" + "[1" * 100_000,
        "from x (" + "[" + "1:" * 100_000 + "]) by mx",
        "from x " + "helo=" * 50_000,
        "from " + "( [192.0.2.1] ) " * 20_000,
    ]
    start = time.perf_counter()
    for value in nasty:
        parse_received(value)
    assert time.perf_counter() - start < 1.0


def test_normalize_ip() -> None:
    assert normalize_ip("[IPv6:::ffff:192.0.2.1]") == "192.0.2.1"
    assert normalize_ip("2001:DB8::1") == "2001:db8::1"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"
    for bad in ("", "x", "１９２.0.2.1", "192.0.2.256"):
        with pytest.raises(ValueError):
            normalize_ip(bad)


# -- the trusted path --------------------------------------------------------------------

def nets(*specs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(s) for s in specs)


# the write-up's example: outgoing (submission) servers .1/.2, relays .3/.4 plus
# loopback; Mailman's own server .5 is where listgate runs, so it is never a hop
SUBMISSION = nets("192.168.10.1/32", "192.168.10.2/32", "2001:db8:10::1/128")
RELAYS = nets("127.0.0.1/32", "::1/128", "192.168.10.3/32", "192.168.10.4/32",
              "2001:db8:10::3/128")
MUA = "198.51.100.7"
UNKNOWN = "203.0.113.8"


def postfix(ip: str, by: str, proto: str = "ESMTP", helo: str = "helo.example") -> str:
    """A Received line as Postfix on ``by`` writes it for a client at ``ip``."""
    lit = f"IPv6:{ip}" if ":" in ip else ip
    return (f"from {helo} (host.example [{lit}])\n\tby {by} (Postfix) with {proto}"
            f" id 4Xk9Zq1bTnz9sWQ\n\tfor <dev@lists.example>; {DATE}")


SUB_FROM_MUA = postfix(MUA, "sub1.example", "ESMTPSA", helo="[192.168.0.23]")
SUB_FROM_UNKNOWN = postfix(UNKNOWN, "sub1.example", helo="mx.unknown.example")
RELAY_FROM_SUB = postfix("192.168.10.1", "relay3.example")


def test_route1_trusted() -> None:
    """MUA -> outgoing .1 -> relay .3 -> Mailman: delivered."""
    r = trusted_path([RELAY_FROM_SUB, SUB_FROM_MUA], "192.168.10.3", SUBMISSION, RELAYS)
    assert r.trusted
    assert r.submission_ip == "192.168.10.1"
    assert r.hops == ("192.168.10.3", "192.168.10.1", MUA)
    assert r.reason == ("path trusted: client 192.168.10.3 relay -> submission 192.168.10.1, "
                        f"MUA {MUA} (authenticated: with ESMTPSA)")


def test_route1_two_relays_and_content_filter() -> None:
    """Relays .4 then .3, .3 running amavis on loopback, the MUA line stripped."""
    headers = [
        postfix("127.0.0.1", "relay3.example", helo="localhost"),
        "from relay3.example ([127.0.0.1]) by localhost (relay3.example [127.0.0.1])"
        f" (amavisd-new, port 10024) with ESMTP id AbCdEf12; {DATE}",
        postfix("192.168.10.4", "relay3.example"),
        postfix("192.168.10.2", "relay4.example"),
    ]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert r.trusted and r.submission_ip == "192.168.10.2"
    assert r.hops == ("192.168.10.3", "127.0.0.1", "127.0.0.1", "192.168.10.4", "192.168.10.2")


def test_route2_unknown_server_in_submission_position() -> None:
    """MUA -> unknown server -> relay .3: no submission server authenticated the user."""
    headers = [postfix(UNKNOWN, "relay3.example"),
               postfix(MUA, "unknown.example", "ESMTPSA")]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted and r.submission_ip is None
    assert r.hops == ("192.168.10.3", UNKNOWN)
    assert r.reason == (f"untrusted: hop {UNKNOWN} (client of relay 192.168.10.3) is neither "
                        "a known relay nor a submission server")


def test_route2_seed_unknown_server_before_submission_server() -> None:
    """MUA -> unknown -> outgoing .1 -> relay .3, the write-up's second route: the
    outgoing server took the post from another server without authentication, so
    nobody checked its author.  The MUA line below claims ESMTPSA: it was written by
    the unknown server and counts for nothing."""
    headers = [RELAY_FROM_SUB, SUB_FROM_UNKNOWN, postfix(MUA, "unknown.example", "ESMTPSA")]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted and r.submission_ip is None
    assert r.hops == ("192.168.10.3", "192.168.10.1", UNKNOWN)
    assert r.reason == (f"untrusted: submission server 192.168.10.1 received it from {UNKNOWN} "
                        "without authentication (with ESMTP), and older Received header 3 "
                        "shows it came from another server")


def test_route2_but_the_unknown_server_authenticated() -> None:
    """The same route, but the other server logged in at the outgoing server (a member's
    own server using it as an authenticated smarthost): the outgoing server vouches
    for the post, as it would for an MUA, whatever the older lines say."""
    headers = [RELAY_FROM_SUB, postfix(UNKNOWN, "sub1.example", "ESMTPSA"),
               postfix(MUA, "unknown.example")]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert r.trusted and r.submission_ip == "192.168.10.1"
    assert r.hops == ("192.168.10.3", "192.168.10.1", UNKNOWN)
    assert r.reason == ("path trusted: client 192.168.10.3 relay -> submission 192.168.10.1, "
                        f"MUA {UNKNOWN} (authenticated: with ESMTPSA)")


def test_unauthenticated_mua_connected_directly() -> None:
    """MUA -> outgoing .1 (which accepts its network without SMTP AUTH) -> relay .3: the
    submission server's line is the oldest with a from clause, so its client is the
    MUA itself."""
    r = trusted_path([RELAY_FROM_SUB, postfix(MUA, "sub1.example")], "192.168.10.3",
                     SUBMISSION, RELAYS)
    assert r.trusted and r.submission_ip == "192.168.10.1"
    assert r.hops == ("192.168.10.3", "192.168.10.1", MUA)
    assert r.reason == ("path trusted: client 192.168.10.3 relay -> submission 192.168.10.1, "
                        f"MUA {MUA} (with ESMTP, no older Received from another server)")


#: what a laptop's own MTA writes under its submission: no from clause, so fine
LAPTOP_LOCAL = [
    f"by laptop.home (Postfix, from userid 1000)\n\tid 4Xk9Zq9; {DATE}",
    f"(from bob@localhost)\n\tby laptop.home (8.17.1/8.17.1/Submit) id 5AMA0abc; {DATE}",
    f"(qmail 4321 invoked by uid 1000); {DATE}",
    f"from bob by laptop.home with local (Exim 4.96)\n\t(envelope-from <bob@laptop.home>)"
    f"\n\tid 1tEsXq-000ABC-2e; {DATE}",
    f"from bob by laptop.home with local-esmtp (Exim 4.96) id 1tEsXq-000ABC-2f; {DATE}",
]


@pytest.mark.parametrize("local", LAPTOP_LOCAL)
def test_laptop_local_lines_below_an_unauthenticated_submission(local: str) -> None:
    r = trusted_path([RELAY_FROM_SUB, postfix(MUA, "sub1.example"), local, local],
                     "192.168.10.3", SUBMISSION, RELAYS)
    assert r.trusted and r.hops == ("192.168.10.3", "192.168.10.1", MUA)


@pytest.mark.parametrize("older", [
    postfix(UNKNOWN, "unknown.example"),
    "from unknown.example by other.example with SMTP; " + DATE,   # no address at all
    "from x (y [oops]) by other.example with ESMTP; " + DATE,     # damaged address
    "from x (y [192.0.2.1] by other.example with ESMTP; " + DATE,  # unbalanced
    "FROM gw.example (gw.example [192.0.2.1]) BY other.example WITH ESMTP",
    "(from gw.example [192.0.2.1]) by other.example (8.17.1/8.17.1) id 5AMA; " + DATE,
])
def test_any_older_from_clause_counts(older: str) -> None:
    """An older line that claims another server, even one we cannot read, is taken at
    its word: failing closed costs a normal verdict, failing open a trusted post."""
    headers = [RELAY_FROM_SUB, postfix(MUA, "sub1.example"), *LAPTOP_LOCAL, older]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == ("192.168.10.3", "192.168.10.1", MUA)
    assert r.reason.endswith(f"and older Received header {len(headers)} shows it came from "
                             "another server")


@pytest.mark.parametrize(("value", "claims"), [
    (postfix(MUA, "sub1.example"), True),
    ("from unknown.example by other.example with SMTP", True),
    ("from x (y [192.0.2.1] by mx with SMTP", True),
    ("(from mail.example.org [192.0.2.1]) by mx.example.net (8.17.1/8.17.1) id 5A", True),
    ("from bob by host.example with LOCAL (Exim 4.96)", False),
    *((v, False) for v in LAPTOP_LOCAL),
    (f"(qmail 1 invoked from network); {DATE}", False),
    ("garbage [192.0.2.1]", False),
    ("", False),
])
def test_has_from_clause(value: str, claims: bool) -> None:
    assert has_from_clause(value) is claims


def test_client_is_submission_server_that_took_it_from_another_server() -> None:
    headers = [postfix(UNKNOWN, "sub2.example", "SMTP"), postfix(MUA, "unknown.example")]
    r = trusted_path(headers, "192.168.10.2", SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == ("192.168.10.2", UNKNOWN)
    assert r.reason == (f"untrusted: submission server 192.168.10.2 received it from {UNKNOWN} "
                        "without authentication (with SMTP), and older Received header 2 shows "
                        "it came from another server")


def test_submission_line_without_protocol() -> None:
    headers = [RELAY_FROM_SUB, f"from gw (gw.example [{UNKNOWN}]) by sub1.example; {DATE}",
               postfix(MUA, "gw.example")]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted
    assert f"received it from {UNKNOWN} without authentication (no 'with' protocol)" in r.reason


def test_local_submission_on_the_submission_server() -> None:
    """Injected locally on the outgoing server (its own line names no client): fine for
    a new message, but older from lines mean it came from another server first."""
    pickup = f"by sub1.example (Postfix, from userid 33)\n\tid 4Xk9; {DATE}"
    r = trusted_path([RELAY_FROM_SUB, pickup, *LAPTOP_LOCAL], "192.168.10.3",
                     SUBMISSION, RELAYS)
    assert r.trusted and r.hops == ("192.168.10.3", "192.168.10.1")
    r = trusted_path([RELAY_FROM_SUB, pickup, postfix(MUA, "unknown.example", "ESMTPSA")],
                     "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == ("192.168.10.3", "192.168.10.1")
    assert r.reason == ("untrusted: Received header 2, written by submission server "
                        "192.168.10.1, names no client, and older Received header 3 shows it "
                        "came from another server")


AMAVIS_ON_SUB = [
    postfix("127.0.0.1", "sub1.example", helo="localhost"),
    "from sub1.example ([127.0.0.1]) by localhost (sub1.example [127.0.0.1])"
    f" (amavisd-new, port 10024) with ESMTP id AbCdEf12; {DATE}",
]


def test_content_filter_on_the_submission_server() -> None:
    """amavis re-injecting on the outgoing server: its loopback lines are the server's
    own steps, and the line below them (its smtpd's) decides."""
    headers = [RELAY_FROM_SUB, *AMAVIS_ON_SUB, SUB_FROM_MUA, postfix(UNKNOWN, "x.example")]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert r.trusted and r.submission_ip == "192.168.10.1"
    assert r.hops == ("192.168.10.3", "192.168.10.1", "127.0.0.1", "127.0.0.1", MUA)
    assert r.reason == ("path trusted: client 192.168.10.3 relay -> submission 192.168.10.1 "
                        "-> loopback 127.0.0.1 -> loopback 127.0.0.1, "
                        f"MUA {MUA} (authenticated: with ESMTPSA)")
    headers = [RELAY_FROM_SUB, *AMAVIS_ON_SUB, SUB_FROM_UNKNOWN, postfix(MUA, "x.example")]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted
    assert r.reason.startswith("untrusted: submission server 192.168.10.1 received it from "
                               f"{UNKNOWN} without authentication (with ESMTP), and older "
                               "Received header 5")


def test_authenticated_webmail_on_loopback() -> None:
    """Webmail on the outgoing server logging in over loopback: authenticated there."""
    headers = [RELAY_FROM_SUB, postfix("::1", "sub1.example", "ESMTPSA", helo="localhost"),
               postfix(UNKNOWN, "x.example")]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert r.trusted and r.hops == ("192.168.10.3", "192.168.10.1", "::1")


def test_one_submission_server_relaying_for_another() -> None:
    """Outgoing .2 hands the post to outgoing .1 without AUTH: .2 is no unknown server,
    so its own line decides."""
    headers = [RELAY_FROM_SUB, postfix("192.168.10.2", "sub1.example"),
               postfix(MUA, "sub2.example", "ESMTPSA"), postfix(UNKNOWN, "x.example")]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert r.trusted and r.submission_ip == "192.168.10.1"
    assert r.hops == ("192.168.10.3", "192.168.10.1", "192.168.10.2", MUA)
    assert r.reason == ("path trusted: client 192.168.10.3 relay -> submission 192.168.10.1 "
                        f"-> submission 192.168.10.2, MUA {MUA} (authenticated: with ESMTPSA)")
    headers[2] = postfix(UNKNOWN, "sub2.example")
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted
    assert r.reason.startswith(f"untrusted: submission server 192.168.10.2 received it from "
                               f"{UNKNOWN} without authentication")


# the submission server's line in each MTA's words: (authenticated, unauthenticated)
SUB_LINES = {
    "sendmail": (
        f"from laptop.home ([{UNKNOWN}])\n\t(authenticated bits=0)\n\tby sub1.example"
        f" (8.17.1/8.17.1) with ESMTPSA id 5AMA0abc012349; {DATE}",
        f"from gw.example (gw.example [{UNKNOWN}])\n\tby sub1.example (8.17.1/8.17.1)"
        f" with ESMTP id 5AMA0abc012350; {DATE}"),
    "exim": (
        f"from gw.example ([{UNKNOWN}]:54321 helo=gw) by sub1.example with esmtpsa"
        f" (TLS1.3) tls TLS_AES_256_GCM_SHA384 (Exim 4.96) id 1tEsXq-000ABC-2d; {DATE}",
        f"from [{UNKNOWN}] (helo=gw.example)\n\tby sub1.example with esmtp (Exim 4.96)"
        f"\n\tid 1tEsXq-000ABC-2b; {DATE}"),
    "courier": (
        f"from gw.example (gw.example [::ffff:{UNKNOWN}])\n  (AUTH: LOGIN bob, TLS: TLSv1/"
        f"SSLv3,256bits,AES256-SHA)\n  by sub1.example with ESMTPA; {DATE}\n  id 0000000A",
        f"from gw.example (gw.example [::ffff:{UNKNOWN}])\n  by sub1.example with ESMTP;"
        f" {DATE}\n  id 0000000B"),
    "qmail": (
        f"from unknown (HELO gw.example) (bob@{UNKNOWN})\n  by sub1.example with ESMTPA;"
        " 22 Nov 2026 10:00:00 -0000",
        f"from unknown (HELO gw.example) ({UNKNOWN})\n  by sub1.example with SMTP;"
        " 22 Nov 2026 10:00:00 -0000"),
    "lmtp": (
        f"from gw.example (gw.example [{UNKNOWN}])\n\tby sub1.example with lmtpsa; {DATE}",
        f"from gw.example (gw.example [{UNKNOWN}])\n\tby sub1.example with LMTP; {DATE}"),
}
QMAIL_QUEUE = "(qmail 12345 invoked from network); 22 Nov 2026 10:00:00 -0000"


@pytest.mark.parametrize("mta", sorted(SUB_LINES))
@pytest.mark.parametrize("authenticated", [True, False])
def test_submission_server_formats(mta: str, authenticated: bool) -> None:
    """Each MTA's own submission line, with an older line from another server below."""
    line = SUB_LINES[mta][0 if authenticated else 1]
    own = [QMAIL_QUEUE, line] if mta == "qmail" else [line]
    headers = [RELAY_FROM_SUB, *own, postfix(MUA, "gw.example")]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert r.hops == ("192.168.10.3", "192.168.10.1", UNKNOWN)
    assert r.trusted is authenticated
    if not authenticated:
        assert r.reason.startswith(f"untrusted: submission server 192.168.10.1 received it "
                                   f"from {UNKNOWN} without authentication (with ")
    # the same line with nothing older: the client is the MUA
    assert trusted_path(headers[:-1], "192.168.10.3", SUBMISSION, RELAYS).trusted


def test_exchange_submission_from_another_server() -> None:
    """Exchange never writes ESMTPA, so only the oldest-line rule can trust its posts:
    an Exchange submission server fed by an unknown one is untrusted."""
    headers = [
        "from EXCH01.corp.example (10.0.0.5) by EXCH02.corp.example (10.0.0.6) with"
        f" Microsoft SMTP Server (version=TLS1_2) id 15.2.1118.40; {DATE}",
        f"from gw.partner.example ({UNKNOWN}) by EXCH01.corp.example (10.0.0.5) with"
        f" Microsoft SMTP Server (version=TLS1_2) id 15.2.1118.40; {DATE}",
        postfix(MUA, "gw.partner.example"),
    ]
    r = trusted_path(headers, "10.0.0.6", nets("10.0.0.5/32"), nets("10.0.0.6/32"))
    assert not r.trusted and r.hops == ("10.0.0.6", "10.0.0.5", UNKNOWN)
    assert r.reason == (f"untrusted: submission server 10.0.0.5 received it from {UNKNOWN} "
                        "without authentication (with Microsoft), and older Received header "
                        "3 shows it came from another server")


def test_ipv6_seed_route2() -> None:
    headers = [postfix("2001:db8:10::1", "relay3.example"),
               postfix("2001:db8:99::8", "sub1.example"),
               postfix("2001:db8:99::7", "unknown.example", "ESMTPSA")]
    r = trusted_path(headers, "2001:db8:10::3", SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == ("2001:db8:10::3", "2001:db8:10::1", "2001:db8:99::8")
    assert r.reason.startswith("untrusted: submission server 2001:db8:10::1 received it from "
                               "2001:db8:99::8 without authentication (with ESMTP)")
    # the MUA straight at the submission server over IPv6, without AUTH
    r = trusted_path(headers[:2], "2001:db8:10::3", SUBMISSION, RELAYS)
    assert r.trusted and r.hops == ("2001:db8:10::3", "2001:db8:10::1", "2001:db8:99::8")


def test_sendmail_own_header_on_top_of_seed_route2() -> None:
    own = ("from relay3.example (relay3.example [192.168.10.3])\n"
           f"\tby mailman.example (8.17.1/8.17.1) with ESMTP id 5AMA0abc012345; {DATE}")
    r = trusted_path([own, RELAY_FROM_SUB, SUB_FROM_UNKNOWN, postfix(MUA, "unknown.example")],
                     "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted and "older Received header 4 shows" in r.reason


def test_route3_unknown_server_in_the_middle() -> None:
    """MUA -> outgoing .1 -> unknown -> relay .3: the lines below the unknown server
    (claiming the outgoing server) could be forged."""
    headers = [postfix(UNKNOWN, "relay3.example"),
               postfix("192.168.10.1", "unknown.example"),
               SUB_FROM_MUA]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted
    assert r.hops == ("192.168.10.3", UNKNOWN)
    assert UNKNOWN in r.reason and "192.168.10.3" in r.reason


@pytest.mark.parametrize("headers", [
    [RELAY_FROM_SUB, SUB_FROM_MUA],
    [postfix("192.168.10.3", "mailman.example"), RELAY_FROM_SUB, SUB_FROM_MUA],
    [postfix("192.168.10.1", "mailman.example"), SUB_FROM_MUA],
    [],
])
def test_untrusted_client_with_perfect_forged_headers(headers: list[str]) -> None:
    """A client that is neither relay nor submission server wrote every header."""
    r = trusted_path(headers, UNKNOWN, SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == (UNKNOWN,)
    assert r.reason.startswith(f"untrusted: client {UNKNOWN} is neither")


def test_forged_lines_below_untrusted_hop_are_not_read() -> None:
    headers = [postfix(UNKNOWN, "relay3.example"), RELAY_FROM_SUB, SUB_FROM_MUA]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == ("192.168.10.3", UNKNOWN)


def test_helo_injection_through_relay() -> None:
    """An outsider's HELO naming the submission server does not make it one."""
    headers = [
        "from sub1.example [192.168.10.1] (unknown [203.0.113.8])\n"
        f"\tby relay3.example (Postfix) with ESMTP id 4Xk9; {DATE}",
        SUB_FROM_MUA,
    ]
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == ("192.168.10.3", UNKNOWN)


def test_client_is_submission_server() -> None:
    r = trusted_path([SUB_FROM_MUA], "192.168.10.2", SUBMISSION, RELAYS)
    assert r.trusted and r.submission_ip == "192.168.10.2"
    assert r.hops == ("192.168.10.2", MUA)
    assert r.reason == ("path trusted: client 192.168.10.2 is a submission server, "
                        f"MUA {MUA} (authenticated: with ESMTPSA)")


def test_client_is_submission_server_without_headers() -> None:
    r = trusted_path([], "192.168.10.1", SUBMISSION, RELAYS)
    assert r.trusted and r.hops == ("192.168.10.1",)
    assert r.reason == "path trusted: client 192.168.10.1 is a submission server"


def test_ipv6_everywhere() -> None:
    headers = [postfix("2001:db8:10::1", "relay3.example"),
               postfix("2001:db8:99::7", "sub1.example", "ESMTPSA")]
    r = trusted_path(headers, "2001:db8:10::3", SUBMISSION, RELAYS)
    assert r.trusted and r.submission_ip == "2001:db8:10::1"
    assert r.hops == ("2001:db8:10::3", "2001:db8:10::1", "2001:db8:99::7")


def test_ipv4_mapped_client_and_headers() -> None:
    headers = [
        "from sub1.example (sub1.example [IPv6:::ffff:192.168.10.1])\n"
        f"\tby relay3.example (Postfix) with ESMTP id 4Xk9; {DATE}",
        SUB_FROM_MUA,
    ]
    r = trusted_path(headers, "::ffff:192.168.10.3", SUBMISSION, RELAYS)
    assert r.trusted and r.submission_ip == "192.168.10.1"
    assert r.hops == ("192.168.10.3", "192.168.10.1", MUA)


@pytest.mark.parametrize(("headers", "at"), [
    (["garbage", SUB_FROM_MUA], 1),
    ([f"by relay3.example (Postfix, from userid 0) id 4Xk9; {DATE}", SUB_FROM_MUA], 1),
    ([f"from mail by relay3.example with local (Exim 4.96) id 1tEs; {DATE}"], 1),
    # the malformed line sits where the relay's line should be, a forged good one below
    ([postfix("192.168.10.4", "relay3.example"), "from x (y [oops]) by relay4", RELAY_FROM_SUB,
      SUB_FROM_MUA], 2),
])
def test_malformed_header_written_by_relay_is_untrusted(headers: list[str], at: int) -> None:
    r = trusted_path(headers, "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted
    assert f"Received header {at}, written by relay" in r.reason


def test_relay_without_any_header() -> None:
    r = trusted_path([], "192.168.10.3", SUBMISSION, RELAYS)
    assert not r.trusted
    assert r.reason == ("untrusted: relay 192.168.10.3 added no Received header naming its "
                        "client")


def test_relay_chain_running_out_of_headers() -> None:
    r = trusted_path([postfix("192.168.10.4", "relay3.example")], "192.168.10.3",
                     SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == ("192.168.10.3", "192.168.10.4")
    assert "relay 192.168.10.4 added no Received header" in r.reason


@pytest.mark.parametrize("below", ["garbage", "(qmail 1 invoked from network); " + DATE, ""])
def test_unparsable_submission_line_with_nothing_older(below: str) -> None:
    """The submission server's line names no client and nothing older claims another
    server: no MUA to name, and nothing to distrust."""
    r = trusted_path([RELAY_FROM_SUB, below, "more garbage"], "192.168.10.3",
                     SUBMISSION, RELAYS)
    assert r.trusted and r.hops == ("192.168.10.3", "192.168.10.1")
    assert r.reason == "path trusted: client 192.168.10.3 relay -> submission 192.168.10.1"


def test_malformed_above_untrusted_client() -> None:
    r = trusted_path(["garbage", RELAY_FROM_SUB], UNKNOWN, SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == (UNKNOWN,)


@pytest.mark.parametrize("client", [None, ""])
def test_no_client_ip(client: str | None) -> None:
    r = trusted_path([RELAY_FROM_SUB, SUB_FROM_MUA], client, SUBMISSION, RELAYS)
    assert r == trusted_path([], client, SUBMISSION, RELAYS)
    assert not r.trusted and r.submission_ip is None and r.reason == "no client IP"


def test_unparsable_client_ip() -> None:
    r = trusted_path([RELAY_FROM_SUB], "not-an-ip", SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == ()
    assert r.reason.startswith("untrusted: client address 'not-an-ip'")


def test_empty_header_list_for_unknown_client() -> None:
    r = trusted_path([], MUA, SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == (MUA,)


def test_sendmail_own_header_on_top_is_not_a_second_hop() -> None:
    """sendmail hands the milter the line it adds for this very connection."""
    own = ("from relay3.example (relay3.example [192.168.10.3])\n"
           "\tby mailman.example (8.17.1/8.17.1) with ESMTP id 5AMA0abc012345\n"
           f"\tfor <dev@lists.example>; {DATE}")
    r = trusted_path([own, RELAY_FROM_SUB, SUB_FROM_MUA], "192.168.10.3", SUBMISSION, RELAYS)
    assert r.trusted and r.hops == ("192.168.10.3", "192.168.10.1", MUA)


def test_sendmail_own_header_on_top_of_direct_submission() -> None:
    own = ("from sub1.example (sub1.example [192.168.10.1])\n"
           f"\tby mailman.example (8.17.1/8.17.1) with ESMTP id 5AMA0abc012346; {DATE}")
    r = trusted_path([own, SUB_FROM_MUA], "192.168.10.1", SUBMISSION, RELAYS)
    assert r.trusted and r.hops == ("192.168.10.1", MUA)


def test_sendmail_own_header_above_untrusted_client() -> None:
    own = ("from evil.example (evil.example [203.0.113.8])\n"
           f"\tby mailman.example (8.17.1/8.17.1) with ESMTP id 5AMA0abc012347; {DATE}")
    r = trusted_path([own, RELAY_FROM_SUB, SUB_FROM_MUA], UNKNOWN, SUBMISSION, RELAYS)
    assert not r.trusted and r.hops == (UNKNOWN,)


def test_exchange_unbracketed_addresses() -> None:
    """Exchange hub 10.0.0.6 relays for mailbox server 10.0.0.5 (the submission server,
    which took the post from Outlook over MAPI)."""
    headers = [
        "from EXCH01.corp.example (10.0.0.5) by EXCH02.corp.example (10.0.0.6) with"
        " Microsoft SMTP Server (version=TLS1_2,"
        f" cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.2.1118.40; {DATE}",
        "from EXCH01.corp.example ([fe80::9c1a:4bff:fe3d:1a2b]) by EXCH01.corp.example"
        f" ([fe80::9c1a:4bff:fe3d:1a2b%12]) with mapi id 15.2.1118.40; {DATE}",
    ]
    r = trusted_path(headers, "10.0.0.6", nets("10.0.0.5/32"), nets("10.0.0.6/32"))
    assert r.trusted and r.submission_ip == "10.0.0.5"
    assert r.hops == ("10.0.0.6", "10.0.0.5", "fe80::9c1a:4bff:fe3d:1a2b")
    # the hub's own address in the by part is never mistaken for its client
    r = trusted_path(headers[:1], "10.0.0.6", nets("10.0.0.6/32"), nets("10.0.0.7/32"))
    assert r.trusted and r.hops == ("10.0.0.6", "10.0.0.5")


def test_hop_in_both_lists_counts_as_relay() -> None:
    both = nets("192.168.10.1/32")
    r = trusted_path([SUB_FROM_MUA], "192.168.10.1", both, both + RELAYS)
    assert not r.trusted and r.hops == ("192.168.10.1", MUA)


def test_networks_not_single_addresses() -> None:
    r = trusted_path([RELAY_FROM_SUB, SUB_FROM_MUA], "192.168.10.3",
                     nets("192.168.10.0/30"), nets("192.168.10.3/32"))
    assert r.trusted and r.submission_ip == "192.168.10.1"


def test_no_networks_configured() -> None:
    r = trusted_path([RELAY_FROM_SUB, SUB_FROM_MUA], "192.168.10.3", (), ())
    assert not r.trusted
