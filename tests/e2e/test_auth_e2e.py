"""Authenticated membership and Authentication-Results through the real Postfix.

A member's address in From is easy to forge; with require_authenticated_sender it
counts only if the MTA verified it: SPF pass (aligned), a valid DKIM signature
(signed here with dkimpy, the key published by dnsmasq), or an inside connection.
"""

from __future__ import annotations

import dkim
import infra
import pytest
from lgdaemon import ListgateDaemon
from test_dkim_dns import _rsa_key
from test_postfix import DNS, delivered

LIST = "auth@lists.test"
MEMBER = "member@signed.test"


@pytest.fixture(scope="module")
def key():
    return _rsa_key(1024)


@pytest.fixture(scope="module")
def daemon(dns_factory, key):
    txt = dict(DNS["txt"])
    txt["sel._domainkey.signed.test"] = f"v=DKIM1; k=rsa; p={key[1]}"
    txt["signed.test"] = "v=spf1 ip4:127.0.0.9 -all"       # a member's domain
    dns = dns_factory(txt=txt, a=DNS["a"])
    d = ListgateDaemon(nameservers=dns.nameservers, config=(
        "[milter]\nauthserv_id = mx.listgate.test\n"
        "[network]\ninternal_connect = 127.0.0.1/32\n"
        "[spf]\nsoftfail = accept\n"
        "[lists]\ncache_ttl = 0\nrequire_authenticated_sender = yes\n"))
    d.cli("lists", "create", LIST)
    d.cli("members", "add", LIST, MEMBER, "m@pass.test")
    d.start()
    yield d
    d.close()


@pytest.fixture(scope="module")
def mta(daemon, session_postfix_factory):
    return session_postfix_factory(milter=daemon.postfix_milter)


def send(mta, msg: bytes, mail_from: str, source_ip: str = "127.0.0.2",
         helo: str = "mail.pass.test"):
    return infra.smtp_transaction("127.0.0.1", mta.port, helo=helo, mail_from=mail_from,
                                  rcpts=[LIST], message=msg, source_ip=source_ip)


def message(frm: str, extra: tuple = ()) -> bytes:
    return infra.make_message(from_=frm, to=LIST, subject="auth test", headers=extra)


def test_forged_member_from_is_refused_with_the_reason(daemon, mta, smtp_sink):
    mark = daemon.log_size()
    msg = message(MEMBER)
    r = send(mta, msg, "stranger@softfail.test")
    assert str(r.data).startswith("550 5.7.2 You are not permitted to post to auth@lists.test")
    log = daemon.log_text(mark)
    assert ("From member@signed.test not authenticated: SPF softfail, no aligned DKIM"
            in log), log
    out = daemon.check("--client-ip", "127.0.0.2", "--helo", "mail.pass.test",
                       "--mail-from", "stranger@softfail.test", "--rcpt", LIST, message=msg)
    assert out["action"] == "reject"
    assert out["auth"] == {"spf": {"result": "softfail", "domain": "softfail.test"},
                           "dkim": [], "internal": False, "trusted_path": False}
    assert any("not authenticated: SPF softfail, no aligned DKIM" in x
               for x in out["reasons"])


def test_member_with_aligned_dkim_signature_is_accepted(daemon, mta, smtp_sink, key):
    raw = message(MEMBER)
    signed = dkim.sign(raw, b"sel", b"signed.test", key[0]) + raw
    r = send(mta, signed, "stranger@softfail.test")
    assert r.data.code == 250, r.steps()
    got = delivered(smtp_sink, signed)
    ar = got.message["Authentication-Results"]
    assert ar.startswith("mx.listgate.test;"), ar
    assert "spf=softfail smtp.mailfrom=softfail.test" in ar and "dkim=pass" in ar, ar
    assert got.first_header[0] == "Received-SPF"
    assert got.headers[1][0] == "Authentication-Results"


def test_spf_pass_envelope_member_with_unaligned_from(daemon, mta, smtp_sink):
    msg = message("someone@elsewhere.test")
    r = send(mta, msg, "m@pass.test")
    assert r.data.code == 250, r.steps()


def test_inside_connection_needs_no_proof(daemon, mta, smtp_sink):
    msg = message(MEMBER)
    r = send(mta, msg, "whoever@nowhere.test", source_ip="127.0.0.1")
    assert r.data.code == 250, r.steps()


def test_forged_authentication_results_claiming_us_are_removed(daemon, mta, smtp_sink):
    msg = message("someone@elsewhere.test", extra=(
        ("Authentication-Results", "mx.listgate.test; spf=pass smtp.mailfrom=evil.test"),
        ("Authentication-Results", "other.example; dkim=pass header.d=elsewhere.test")))
    r = send(mta, msg, "m@pass.test")
    assert r.data.code == 250, r.steps()
    got = delivered(smtp_sink, msg)
    ars = got.message.get_all("Authentication-Results")
    assert "mx.listgate.test; spf=pass smtp.mailfrom=evil.test" not in ars
    assert "other.example; dkim=pass header.d=elsewhere.test" in ars, "not ours: kept"
    assert ars[0].startswith("mx.listgate.test; spf=pass smtp.mailfrom=pass.test")
