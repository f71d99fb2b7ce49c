"""Trusted submission paths and internal-only lists through the real Postfix.

127.0.0.2 plays a relay of ours, 198.51.100.5 the submission server members
authenticate at (it appears only in the Received chain), 127.0.0.3 a stranger.
The routes are seed 000's: through the submission server to us (trusted when the
submission server authenticated the author or the author connected to it directly),
and through another server first (untrusted: nobody authenticated the author).
"""

from __future__ import annotations

import re

import infra
import pytest
from test_postfix import DNS, GOOD_IP, LIST, _daemon, delivered, not_delivered

INSIDE = "inside@lists.test"
RELAY_HDR = ("from smtp.corp.test (smtp.corp.test [198.51.100.5])\n\tby relay.corp.test "
             "(Postfix) with ESMTPS id 4Xk9Lq1zZ\n\tfor <{rcpt}>; Sun, 22 Nov 2026 10:00:00 +0000")
MUA_HDR = ("from [192.168.1.20] (dsl.isp.test [203.0.113.77])\n\tby smtp.corp.test (Postfix) "
           "with ESMTPSA id 4Xk9Lp0aa; Sun, 22 Nov 2026 09:59:59 +0000")
MIDDLE_HDR = ("from unknown.test (unknown.test [203.0.113.8])\n\tby relay.corp.test (Postfix) "
              "with ESMTP id 4Xk9Lq2bb; Sun, 22 Nov 2026 10:00:00 +0000")
FORGED_SUBMISSION = ("from smtp.corp.test (smtp.corp.test [198.51.100.5])\n\tby unknown.test "
                     "(Postfix) with ESMTPS id 1; Sun, 22 Nov 2026 09:59:59 +0000")
REFUSAL = "550 5.7.2 inside@lists.test accepts posts from inside Corp only"
# seed 000's second route: MUA -> mx.other.test -> smtp.corp.test (no AUTH) -> relay -> us
SUB_FROM_OTHER_HDR = ("from mx.other.test (mx.other.test [203.0.113.9])\n\tby smtp.corp.test "
                      "(Postfix) with ESMTP id 4Xk9Lp1cc; Sun, 22 Nov 2026 09:59:59 +0000")
OTHER_FROM_MUA_HDR = ("from [192.168.1.20] (dsl.isp.test [203.0.113.77])\n\tby mx.other.test "
                      "(Postfix) with ESMTPSA id 9Zz1; Sun, 22 Nov 2026 09:59:58 +0000")
ROUTE2 = [RELAY_HDR, SUB_FROM_OTHER_HDR, OTHER_FROM_MUA_HDR]
ROUTE2_REASON = ("trust: untrusted: submission server 198.51.100.5 received it from 203.0.113.9 "
                 "without authentication (with ESMTP), and older Received header 3 shows it "
                 "came from another server")
# the MUA straight at the submission server, which took it without AUTH (its own network)
MUA_PLAIN_HDR = ("from [192.168.1.20] (dsl.isp.test [203.0.113.77])\n\tby smtp.corp.test "
                 "(Postfix) with ESMTP id 4Xk9Lp0ab; Sun, 22 Nov 2026 09:59:59 +0000")


@pytest.fixture(scope="module")
def daemon(dns_factory):
    d = _daemon(dns_factory(**DNS), config=(
        "[network]\norganisation = Corp\n"
        "[trust]\nsubmission_servers = 198.51.100.5\nrelay_servers = 127.0.0.2\n"
        f"[lists]\ninternal_only = {INSIDE}\n"))
    d.cli("lists", "create", INSIDE)
    yield d
    d.close()


@pytest.fixture(scope="module")
def mta(daemon, session_postfix_factory):
    return session_postfix_factory(milter=daemon.postfix_milter)


def post(mta, rcpt: str, received: list[str], source_ip: str = GOOD_IP,
         frm: str = "stranger@y.test"):
    msg = infra.make_message(from_=frm, to=rcpt, headers=[
        ("X-Listgate-Trusted", "submission=6.6.6.6"),
        *(("Received", h.format(rcpt=rcpt)) for h in received)])
    # the Received headers must come first, as a relay wrote them; each is moved whole,
    # with its folded lines (their "by ... with ESMTPSA" part is what the trust rule reads)
    head, _, body = msg.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", head)
    rec = [f for f in fields if f.startswith(b"Received:")]
    msg = b"\r\n".join([*rec, *(f for f in fields if not f.startswith(b"Received:"))])
    msg += b"\r\n\r\n" + body
    r = infra.smtp_transaction("127.0.0.1", mta.port, helo="relay.corp.test",
                               mail_from="bounce@pass.test" if source_ip == GOOD_IP
                               else "stranger@y.test", rcpts=[rcpt], message=msg,
                               source_ip=source_ip)
    return r, msg


def test_trusted_path_nonmember_accepted_with_header(daemon, mta, smtp_sink):
    mark = daemon.log_size()
    r, msg = post(mta, LIST, [RELAY_HDR, MUA_HDR])
    assert r.data.code == 250, r.steps()
    got = delivered(smtp_sink, msg)
    assert got.message.get_all("X-Listgate-Trusted") == ["submission=198.51.100.5"], \
        "ours added, the forged incoming one removed"
    log = daemon.log_text(mark)
    assert ("trust: path trusted: client 127.0.0.2 relay -> submission 198.51.100.5, "
            "MUA 203.0.113.77 (authenticated: with ESMTPSA)") in log
    assert "trusted path via 198.51.100.5: trusted_path_action accept" in log


def test_mua_straight_at_the_submission_server_without_auth_is_trusted(daemon, mta, smtp_sink):
    mark = daemon.log_size()
    r, msg = post(mta, LIST, [RELAY_HDR, MUA_PLAIN_HDR])
    assert r.data.code == 250, r.steps()
    got = delivered(smtp_sink, msg)
    assert got.message.get_all("X-Listgate-Trusted") == ["submission=198.51.100.5"]
    assert ("trust: path trusted: client 127.0.0.2 relay -> submission 198.51.100.5, "
            "MUA 203.0.113.77 (with ESMTP, no older Received from another server)"
            ) in daemon.log_text(mark)


def test_seed_route2_other_server_before_the_submission_server(daemon, mta, smtp_sink):
    """MUA -> unknown server -> submission server -> relay -> us: refused as any
    nonmember post, and the log says which hop broke the path."""
    mark = daemon.log_size()
    r, msg = post(mta, LIST, ROUTE2)
    assert str(r.data).startswith("550 5.7.2 You are not permitted to post to dev@lists.test")
    assert not_delivered(smtp_sink, msg)
    log = daemon.log_text(mark)
    assert ROUTE2_REASON in log
    assert "REJECT: list=dev@lists.test verdict=hold(nonmember)" in log
    assert "trusted path via" not in log


def test_unknown_server_in_the_middle_is_not_trusted(daemon, mta, smtp_sink):
    r, msg = post(mta, LIST, [MIDDLE_HDR, FORGED_SUBMISSION, MUA_HDR])
    assert str(r.data).startswith("550 5.7.2 You are not permitted to post to dev@lists.test")
    assert not_delivered(smtp_sink, msg)


def test_internal_only_list(daemon, mta, smtp_sink):
    # a stranger's client cannot be inside: refused at RCPT, before DATA
    r, _ = post(mta, INSIDE, [RELAY_HDR, MUA_HDR], source_ip="127.0.0.3")
    assert r.final_stage == "rcpt[0]" and str(r.rcpts[0]) == REFUSAL
    # through our relay from the submission server: inside
    daemon.cli("members", "add", INSIDE, "stranger@y.test")
    r, msg = post(mta, INSIDE, [RELAY_HDR, MUA_HDR])
    assert r.data.code == 250, r.steps()
    delivered(smtp_sink, msg)
    # through our relay, but from an unknown server: refused at end of message
    r, msg = post(mta, INSIDE, [MIDDLE_HDR])
    assert str(r.data) == REFUSAL
    # through the submission server, but an unknown server handed it over: refused too
    mark = daemon.log_size()
    r, route2 = post(mta, INSIDE, ROUTE2)
    assert str(r.data) == REFUSAL
    assert not_delivered(smtp_sink, route2)
    assert (f"REJECT: list={INSIDE} internal-only, path not trusted: untrusted: submission "
            "server 198.51.100.5 received it from 203.0.113.9") in daemon.log_text(mark)
    out = daemon.check("--client-ip", GOOD_IP, "--helo", "relay.corp.test", "--mail-from",
                       "bounce@pass.test", "--rcpt", INSIDE, message=msg)
    assert out["smtp_reply"] == REFUSAL and out["stage"] == "eom"
