"""DKIM verification end to end: keys published in a real dnsmasq, looked up through
dnspython's default resolver as ``listgate.spfcheck.configure_dns`` sets it up.

Keys are RSA, made by ``openssl`` for each run; messages are signed with dkimpy.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time

import dkim
import dns.resolver
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import infra

from listgate.authn import (
    BodyCollector,
    DkimResult,
    assemble_message,
    authenticated_senders,
    authentication_results,
    claims_authserv_id,
    dnsfunc,
    verify_dkim,
)
from listgate.check import parse_header_block
from listgate.spfcheck import configure_dns


def _openssl(*args: str, data: bytes | None = None) -> bytes:
    openssl = infra.find_tool("openssl")  # missing -> InfraError: the test fails
    return subprocess.run([openssl, *args], input=data, capture_output=True, check=True,
                          timeout=120).stdout


def _rsa_key(bits: int = 2048) -> tuple[bytes, str]:
    pem = _openssl("genrsa", "-traditional", str(bits))
    der = _openssl("rsa", "-pubout", "-outform", "DER", data=pem)
    return pem, base64.b64encode(der).decode("ascii")


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, str]]:
    return {"sel": _rsa_key(2048), "split": _rsa_key(1024)}


@pytest.fixture(scope="module")
def dkim_dns(dns_factory, keys):
    """dnsmasq with the keys, and dnspython's default resolver pointed at it."""
    ed_pub = base64.b64encode(os.urandom(32)).decode()
    split_pub = keys["split"][1]
    server = dns_factory(txt={
        # 2048-bit key: ~400 characters, dnsmasq splits it into several strings
        "sel._domainkey.signed.test": f"v=DKIM1; k=rsa; p={keys['sel'][1]}",
        # one RR made of several character-strings, split inside p=
        "split._domainkey.signed.test": [("v=DKIM1; k=rsa; ", "p=" + split_pub[:100],
                                          split_pub[100:])],
        "revoked._domainkey.signed.test": "v=DKIM1; k=rsa; p=",
        "ed._domainkey.signed.test": f"v=DKIM1; k=ed25519; p={ed_pub}",
        "junk._domainkey.signed.test": "v=spf1 -all",
    })
    saved = dns.resolver.default_resolver
    configure_dns([("127.0.0.1", server.port)], 2)
    yield server
    dns.resolver.default_resolver = saved


MESSAGE = (
    b"From: Member <member@signed.test>\r\n"
    b"To: list@lists.test\r\n"
    b"Subject: signed post\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <dkim-e2e@signed.test>\r\n"
    b"\r\n"
    b"Hello list,\r\n"
    b"this post is signed.\r\n"
)


def _signed(keys, selector: str = "sel", message: bytes = MESSAGE, **kw) -> bytes:
    pem = keys["sel" if selector not in keys else selector][0]
    return dkim.sign(message, selector.encode(), b"signed.test", pem, **kw) + message


def test_dnsfunc_reads_key_through_default_resolver(dkim_dns, keys):
    assert dnsfunc(b"sel._domainkey.signed.test.") == (
        f"v=DKIM1; k=rsa; p={keys['sel'][1]}".encode())
    assert dnsfunc("split._domainkey.signed.test.") == (
        f"v=DKIM1; k=rsa; p={keys['split'][1]}".encode())
    assert dnsfunc(b"nosuch._domainkey.signed.test.") == b""  # NXDOMAIN


@pytest.mark.parametrize("canon", [(b"relaxed", b"simple"), (b"simple", b"simple"),
                                   (b"relaxed", b"relaxed")])
def test_pass(dkim_dns, keys, canon):
    assert verify_dkim(_signed(keys, canonicalize=canon)) == [
        DkimResult("signed.test", "sel", "pass", "signature verified")]


def test_key_in_several_strings(dkim_dns, keys):
    [r] = verify_dkim(_signed(keys, "split"))
    assert (r.selector, r.result) == ("split", "pass")


def test_tampered_body_and_header_fail(dkim_dns, keys):
    signed = _signed(keys)
    [r] = verify_dkim(signed.replace(b"is signed", b"is forged"))
    assert (r.domain, r.result, r.reason) == ("signed.test", "fail", "body hash mismatch")
    [r] = verify_dkim(signed.replace(b"member@signed.test", b"boss@signed.test"))
    assert (r.result, r.reason) == ("fail", "signature did not verify")


def test_unknown_selector_and_bad_keys(dkim_dns, keys):
    pem = keys["sel"][0]
    for selector, reason in [
        (b"nosuch", "no key record at nosuch._domainkey.signed.test."),
        (b"revoked", "bad key record at revoked._domainkey.signed.test.: "),
        (b"junk", "bad key record at junk._domainkey.signed.test.: "),
    ]:
        message = dkim.sign(MESSAGE, selector, b"signed.test", pem) + MESSAGE
        [r] = verify_dkim(message)
        assert (r.selector, r.result) == (selector.decode(), "permerror")
        assert r.reason.startswith(reason)
    # a domain outside every zone dnsmasq serves: REFUSED -> DNS trouble, temperror
    message = dkim.sign(MESSAGE, b"sel", b"elsewhere.example", pem) + MESSAGE
    [r] = verify_dkim(message)
    assert (r.domain, r.result) == ("elsewhere.example", "temperror")


def test_ed25519_key_never_passes(dkim_dns, keys):
    # without pynacl dkimpy cannot check ed25519: permerror; with it, this forged
    # signature fails.  Either way no exception and no pass.
    sig = (b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=signed.test; "
           b"s=ed; h=from:to:subject; bh=" + base64.b64encode(os.urandom(32))
           + b"; b=" + base64.b64encode(os.urandom(64)) + b"\r\n")
    [ed, rsa] = verify_dkim(sig + _signed(keys))
    assert (ed.selector, ed.result in ("permerror", "fail")) == ("ed", True)
    assert rsa.result == "pass"


def test_dns_timeout_is_temperror(keys):
    # a port where nothing answers: the lookup times out
    silent = infra.free_port(udp_too=True)
    saved = dns.resolver.default_resolver
    configure_dns([("127.0.0.1", silent)], 1)
    try:
        start = time.monotonic()
        [r] = verify_dkim(_signed(keys), timeout=1)
        elapsed = time.monotonic() - start
    finally:
        dns.resolver.default_resolver = saved
    assert r.result == "temperror", r
    assert elapsed < 5


def test_milter_shaped_reassembly(dkim_dns, keys):
    """Headers as the MTA hands them to the milter, body in chunks: still a pass."""
    folded = MESSAGE.replace(b"Subject: signed post",
                             b"Subject: signed\r\n\tpost over two lines")
    signed = _signed(keys, message=folded, canonicalize=(b"relaxed", b"simple"))
    head, _, body = signed.partition(b"\r\n\r\n")
    fields = parse_header_block(head + b"\r\n\r\n")
    collector = BodyCollector(limit=1 << 20)
    for i in range(0, len(body), 7):
        collector.add(body[i:i + 7])
    rebuilt = assemble_message(fields, collector.data)
    [r] = verify_dkim(rebuilt, truncated_at=collector.truncated_at)
    assert r.result == "pass"

    small = BodyCollector(limit=10)
    small.add(body)
    [r] = verify_dkim(assemble_message(fields, small.data), truncated_at=small.truncated_at)
    assert (r.result, r.reason) == ("neutral", "body larger than 10 bytes, not verified")


def test_authentication_and_header_from_real_results(dkim_dns, keys):
    results = verify_dkim(_signed(keys))
    env = "bounce@elsewhere.example"
    out = authenticated_senders(["member@signed.test", "bounce@elsewhere.example"], env,
                                "softfail", dkim=results,
                                roles={"member@signed.test": "From",
                                       "bounce@elsewhere.example": "Envelope sender"})
    assert out["member@signed.test"] == (
        True, "From member@signed.test authenticated: aligned with DKIM d=signed.test")
    assert out["bounce@elsewhere.example"] == (
        False, "Envelope sender bounce@elsewhere.example not authenticated: SPF softfail, "
               "no aligned DKIM")
    forged = verify_dkim(_signed(keys).replace(b"is signed", b"is forged"))
    out = authenticated_senders(["member@signed.test"], env, "softfail", dkim=forged,
                                roles={"member@signed.test": "From"})
    assert out["member@signed.test"] == (
        False, "From member@signed.test not authenticated: SPF softfail, no aligned DKIM")

    value = authentication_results("mx.lists.test", ("softfail", env), results + forged)
    assert value == ("mx.lists.test; spf=softfail smtp.mailfrom=elsewhere.example; "
                     "dkim=pass header.d=signed.test header.s=sel; "
                     'dkim=fail reason="body hash mismatch" header.d=signed.test '
                     "header.s=sel")
    assert claims_authserv_id(value, "MX.lists.test")
