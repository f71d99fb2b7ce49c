"""End to end: smtplib -> a real private Postfix -> listgate (real daemon) -> smtp-sink,
with SPF answered by a real dnsmasq.  Every scenario asserts what the SMTP client
sees, what was delivered, and that ``listgate check`` gives the daemon's answer.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import time

import infra
import pytest
from lgdaemon import ListgateDaemon

LIST, OTHER = "dev@lists.test", "ops@lists.test"
GOOD_IP, BAD_IP = "127.0.0.2", "127.0.0.3"
MEMBER = "m@pass.test"

DNS = {
    "txt": {
        "pass.test": "v=spf1 ip4:127.0.0.2 -all",
        "mail.pass.test": "v=spf1 a -all",
        "fail.test": "v=spf1 ip4:127.0.0.99 -all",
        "softfail.test": "v=spf1 ~all",
        "permerror.test": "v=spf1 ip4:127.0.0.2 moo -all",
        "none.test": "just some text",
        "y.test": "v=spf1 ip4:127.0.0.0/8 ip6:::1 -all",
        "forged-helo.test": "v=spf1 ip4:192.0.2.99 -all",
    },
    "a": {"mail.pass.test": GOOD_IP},
}

REJECT_TEXT = ("550 5.7.2 You are not permitted to post to dev@lists.test. "
               "Contact dev-owner@lists.test for help.")


@pytest.fixture(scope="module")
def dns(dns_factory):
    return dns_factory(**DNS)


def _daemon(dns, transport: str = "unix", config: str = "") -> ListgateDaemon:
    d = ListgateDaemon(transport=transport, nameservers=dns.nameservers, config=(
        "[network]\ninternal_connect = 127.0.0.1/32\n"
        "[lists]\ncache_ttl = 0\nnegative_cache_ttl = 0\n" + config))
    d.cli("lists", "create", LIST)
    d.cli("lists", "create", OTHER)
    d.cli("members", "add", LIST, MEMBER, "Mixed@Pass.Test")
    d.cli("members", "add", OTHER, MEMBER)
    return d.start()


@pytest.fixture(scope="module")
def daemon(dns):
    d = _daemon(dns)
    yield d
    d.close()


def send(mta, *, frm: str, mail_from: str, rcpts: list[str], helo: str = "mail.pass.test",
         source_ip: str = GOOD_IP, headers: tuple = (), subject: str = "hello"):
    msg = infra.make_message(from_=frm, to=", ".join(rcpts), subject=subject, headers=headers)
    r = infra.smtp_transaction("127.0.0.1", mta.port, helo=helo, mail_from=mail_from,
                               rcpts=rcpts, message=msg, source_ip=source_ip)
    return r, msg


def delivered(sink, msg: bytes, timeout: float = 10.0):
    """The copy of ``msg`` (matched by Message-ID) that reached the sink."""
    mid = email.message_from_bytes(msg)["Message-ID"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in sink.messages():
            if m.message["Message-ID"] == mid:
                return m
        time.sleep(0.05)
    raise AssertionError(f"{mid} was not delivered")


def not_delivered(sink, msg: bytes) -> bool:
    mid = email.message_from_bytes(msg)["Message-ID"]
    return all(m.message["Message-ID"] != mid for m in sink.messages())


# sendmail (not Postfix) puts the address before the text of a refusal of MAIL FROM:
# "550 5.7.1 <a@b.test>... text"; test_sendmail_e2e.py asserts that form itself.
_SENDMAIL_ECHO = re.compile(r"^(\d{3}(?: \d\.\d{1,3}\.\d{1,3})?) <[^>]*>\.\.\. ")


def said(reply: infra.Reply) -> str:
    """The reply as listgate worded it: what the client reads, less sendmail's echo of
    the address (so one assertion holds for both MTAs)."""
    return _SENDMAIL_ECHO.sub(r"\1 ", str(reply))


def check(daemon, r, msg, *, mail_from: str, rcpts: list[str], helo: str | None,
          source_ip: str) -> dict:
    """Run listgate check on the same transaction and assert it agrees with what
    the SMTP client got from Postfix."""
    args = ["--client-ip", source_ip, "--mail-from", mail_from]
    if helo is not None:
        args += ["--helo", helo]
    for rc in rcpts:
        args += ["--rcpt", rc]
    out = daemon.check(*args, message=msg)
    # the transaction's outcome: the DATA reply if data was sent, else the refusal
    final = r.data or r.final
    if final.code < 400:
        assert out["action"] == "accept", out
        assert out["smtp_reply"] is None
    else:
        assert out["smtp_reply"] == said(final).replace("\n", " "), (out, str(final))
        assert out["action"] == ("reject" if final.code >= 500 else "tempfail")
    return out


def test_member_post_delivered_with_received_spf_first(daemon, mta, smtp_sink):
    mark = daemon.log_size()
    r, msg = send(mta, frm=f"Member <{MEMBER}>", mail_from="bounce@pass.test", rcpts=[LIST],
                  headers=[("X-Listgate-Verdict", "accept; forged by the sender")])
    assert r.data.code == 250, r.steps()
    got = delivered(smtp_sink, msg)
    name, value = got.first_header
    assert name == "Received-SPF"
    assert value.startswith("Pass (mx.listgate.test: domain of pass.test designates "
                            "127.0.0.2 as permitted sender)")
    assert "identity=mailfrom" in value
    assert [h[0] for h in got.headers[1:3]] == ["Authentication-Results", "Received"], \
        "Received-SPF, then Authentication-Results, above Postfix's own Received"
    assert got.headers[1][1] == "mx.listgate.test; spf=pass smtp.mailfrom=pass.test"
    assert got.message.get_all("X-Listgate-Verdict") is None, "forged header removed"
    assert got.rcpt_to == [LIST]
    log = daemon.wait_for_log(r"ACCEPT: list=dev@lists\.test verdict=accept", since=mark)
    assert log
    text = daemon.log_text(mark)
    assert "connect from [127.0.0.2] at 127.0.0.2 EXTERNAL DYN" in text
    assert "SPF pass identity=mailfrom" in text
    out = check(daemon, r, msg, mail_from="bounce@pass.test", rcpts=[LIST],
                helo="mail.pass.test", source_ip=GOOD_IP)
    assert out["list"] == LIST and out["list_verdict"] == "accept"
    assert out["client_class"] == ["EXTERNAL", "DYN"]
    assert out["spf"] == {"result": "pass", "identity": "mailfrom"}
    assert out["added_headers"][0][0] == "Received-SPF"


def test_member_in_reply_to_and_mixed_case(daemon, mta, smtp_sink):
    r, msg = send(mta, frm="someone@pass.test", mail_from="bounce@pass.test", rcpts=[LIST],
                  headers=[("Reply-To", "MIXED@pass.TEST")])
    assert r.data.code == 250, r.steps()
    delivered(smtp_sink, msg)


def test_nonmember_rejected_with_550_text(daemon, mta, smtp_sink):
    mark = daemon.log_size()
    r, msg = send(mta, frm="stranger@y.test", mail_from="stranger@y.test", rcpts=[LIST],
                  source_ip=BAD_IP, helo="host.y.test")
    assert str(r.data) == REJECT_TEXT
    assert r.final_stage == "data"
    m = daemon.wait_for_log(r"REJECT: list=dev@lists\.test verdict=hold\(nonmember\) "
                            r"rule=nonmember-moderation senders=stranger@y\.test", since=mark)
    assert m
    assert not_delivered(smtp_sink, msg)
    out = check(daemon, r, msg, mail_from="stranger@y.test", rcpts=[LIST], helo="host.y.test",
                source_ip=BAD_IP)
    assert out["stage"] == "eom" and out["list_verdict"] == "hold"


def test_percent_and_crlf_in_echoed_sender(daemon, mta, smtp_sink):
    daemon.write_config(daemon.extra_config + "[lists]\nreject_message = "
                        "No posts from %(sender)s to %(list)s, 100%% sure\n")
    daemon.stop()
    daemon.start()
    try:
        r, msg = send(mta, frm="100%off@y.test", mail_from="100%off@y.test", rcpts=[LIST],
                      source_ip=BAD_IP, helo="host.y.test")
        assert str(r.data) == ("550 5.7.2 No posts from 100%off@y.test to dev@lists.test, "
                               "100% sure")
        check(daemon, r, msg, mail_from="100%off@y.test", rcpts=[LIST], helo="host.y.test",
              source_ip=BAD_IP)
    finally:
        daemon.write_config(daemon.extra_config.split("[lists]\nreject_message")[0])
        daemon.stop()
        daemon.start()


@pytest.mark.parametrize(("domain", "reply"), [
    ("fail.test", "550 5.7.23 SPF fail for x@fail.test: SPF fail - not authorized"),
    ("permerror.test", "550 5.7.24 SPF permerror for x@permerror.test: "
                       "SPF Permanent Error: Unknown mechanism found: moo"),
])
def test_spf_refused_at_mail_from(daemon, mta, smtp_sink, domain, reply):
    r, msg = send(mta, frm=f"x@{domain}", mail_from=f"x@{domain}", rcpts=[LIST])
    assert r.final_stage == "mail"
    assert said(r.mail) == reply
    out = check(daemon, r, msg, mail_from=f"x@{domain}", rcpts=[LIST], helo="mail.pass.test",
                source_ip=GOOD_IP)
    assert out["stage"] == "mail"


@pytest.mark.parametrize(("domain", "result"), [("softfail.test", "SoftFail"),
                                                ("none.test", "None")])
def test_spf_softfail_and_none_accepted_with_header(daemon, mta, smtp_sink, domain, result):
    daemon.cli("members", "add", LIST, f"m@{domain}")
    r, msg = send(mta, frm=f"m@{domain}", mail_from=f"m@{domain}", rcpts=[LIST])
    assert r.data.code == 250, r.steps()
    got = delivered(smtp_sink, msg)
    assert got.first_header[0] == "Received-SPF"
    assert got.first_header[1].startswith(result)


def test_numeric_helo_rejected(daemon, mta, smtp_sink):
    r, msg = send(mta, frm=MEMBER, mail_from="bounce@pass.test", rcpts=[LIST],
                  helo="127.0.0.2")
    assert said(r.mail) == "550 5.7.1 HELO name cannot be a bare IP address; use a host name"
    out = check(daemon, r, msg, mail_from="bounce@pass.test", rcpts=[LIST], helo="127.0.0.2",
                source_ip=GOOD_IP)
    assert out["stage"] == "helo"


def test_no_helo_rejected_at_mail(daemon, mta, smtp_sink):
    msg = infra.make_message(from_=MEMBER, to=LIST)
    r = infra.smtp_transaction("127.0.0.1", mta.port, mail_from="bounce@pass.test", rcpts=[LIST],
                               message=msg, source_ip=GOOD_IP, skip_helo=True)
    assert said(r.mail) == "550 5.7.1 Say HELO or EHLO first"
    check(daemon, r, msg, mail_from="bounce@pass.test", rcpts=[LIST], helo=None,
          source_ip=GOOD_IP)


def test_second_list_deferred_then_accepted_alone(daemon, mta, smtp_sink):
    r, msg = send(mta, frm=MEMBER, mail_from="bounce@pass.test",
                  rcpts=[LIST, OTHER, "person@elsewhere.test"])
    assert r.rcpts[0].code == 250
    for rc in r.rcpts[1:]:
        assert str(rc) == "452 4.5.3 Please send each list post in a separate transaction"
    assert r.data.code == 250
    out = check(daemon, r, msg, mail_from="bounce@pass.test",
                rcpts=[LIST, OTHER, "person@elsewhere.test"], helo="mail.pass.test",
                source_ip=GOOD_IP)
    assert [x["status"] for x in out["rcpts"]] == ["accepted", "deferred", "deferred"]
    # what the sending MTA does next: the deferred recipients in a transaction of their own
    r2, msg2 = send(mta, frm=MEMBER, mail_from="bounce@pass.test", rcpts=[OTHER])
    assert r2.data.code == 250
    assert delivered(smtp_sink, msg).rcpt_to == [LIST]
    assert delivered(smtp_sink, msg2).rcpt_to == [OTHER]


def test_list_admin_addresses_are_not_gated(daemon, mta, smtp_sink):
    daemon.cli("lists", "create", "announce@elsewhere.test")
    r, msg = send(mta, frm="stranger@y.test", mail_from="stranger@y.test", source_ip=BAD_IP,
                  helo="host.y.test",
                  rcpts=["announce-request@elsewhere.test", "announce-owner@elsewhere.test"])
    assert r.data.code == 250, r.steps()
    got = delivered(smtp_sink, msg)
    assert got.message.get_all("Received-SPF"), "non-list mail gets Received-SPF too"


def test_backend_unreadable_tempfails(daemon, mta, smtp_sink):
    mark = daemon.log_size()
    saved = daemon.dir / "saved.db"
    shutil.copy(daemon.db, saved)
    garbage = daemon.dir / "garbage"
    garbage.write_bytes(b"this is not an sqlite database" * 100)
    os.replace(garbage, daemon.db)
    try:
        r, msg = send(mta, frm=MEMBER, mail_from="bounce@pass.test", rcpts=[LIST])
        assert str(r.rcpts[0]) == ("451 4.3.0 Temporary failure looking up the recipient list;"
                                   " try again later")
        assert not_delivered(smtp_sink, msg)
        daemon.wait_for_log(r"TEMPFAIL: rcpt to <dev@lists\.test>: backend error: sqlite "
                            r".*: file is not a database", since=mark)
        out = check(daemon, r, msg, mail_from="bounce@pass.test", rcpts=[LIST],
                    helo="mail.pass.test", source_ip=GOOD_IP)
        assert out["stage"] == "rcpt"
    finally:
        os.replace(saved, daemon.db)
    r, _ = send(mta, frm=MEMBER, mail_from="bounce@pass.test", rcpts=[LIST])
    assert r.data.code == 250, "a restored database is picked up without a restart"


def test_membership_change_seen_without_restart(daemon, mta, smtp_sink):
    r, _ = send(mta, frm="newbie@y.test", mail_from="newbie@y.test", rcpts=[LIST],
                source_ip=BAD_IP, helo="host.y.test")
    assert str(r.data) == REJECT_TEXT
    daemon.cli("members", "add", LIST, "newbie@y.test")
    r, _ = send(mta, frm="newbie@y.test", mail_from="newbie@y.test", rcpts=[LIST],
                source_ip=BAD_IP, helo="host.y.test")
    assert r.data.code == 250


def test_ipv6_client_and_ipv6_helo(daemon, mta_factory, smtp_sink):
    """A real IPv6 conversation over ::1: classified INTERNAL by default (loopback)."""
    mta6 = mta_factory(daemon, ipv6=True)
    mark = daemon.log_size()
    msg = infra.make_message(from_="stranger@y.test", to=LIST)
    r = infra.smtp_transaction("::1", mta6.port, mail_from="stranger@y.test", rcpts=[LIST],
                               message=msg, helo="[IPv6:::1]")
    # the test config narrows internal_connect to 127.0.0.1/32: ::1 is EXTERNAL here
    assert str(r.data) == REJECT_TEXT, r.steps()
    assert "at ::1 EXTERNAL DYN" in daemon.log_text(mark)


def test_inet_socket_and_observe_mode(dns, mta_factory, smtp_sink):
    d = _daemon(dns, transport="inet", config="[milter]\nmode = observe\n")
    try:
        mta = mta_factory(d)
        mark = d.log_size()
        r, msg = send(mta, frm="stranger@y.test", mail_from="x@fail.test", rcpts=[LIST, OTHER],
                      source_ip=BAD_IP, helo="host.y.test")
        assert r.data.code == 250, r.steps()
        got = delivered(smtp_sink, msg)
        verdict = got.message["X-Listgate-Verdict"]
        assert verdict.startswith("reject; stage=mail; SPF fail"), verdict
        assert got.first_header[0] == "Received-SPF"
        log = d.log_text(mark)
        assert "OBSERVE: would REJECT at mail: SPF fail" in log
        assert "OBSERVE: would REJECT: list=dev@lists.test verdict=hold(nonmember)" in log
        out = check(d, r, msg, mail_from="x@fail.test", rcpts=[LIST, OTHER],
                    helo="host.y.test", source_ip=BAD_IP)
        assert ["X-Listgate-Verdict", verdict] in out["added_headers"]
        assert "TCP_NODELAY set on the milter socket" in d.log_text()
    finally:
        d.close()


def test_helo_whose_spf_fails_is_refused(daemon, mta, smtp_sink):
    r, msg = send(mta, frm=MEMBER, mail_from="bounce@pass.test", rcpts=[LIST],
                  helo="forged-helo.test")
    assert said(r.mail) == ("550 5.7.23 SPF fail for HELO forged-helo.test: "
                            "SPF fail - not authorized")
    out = check(daemon, r, msg, mail_from="bounce@pass.test", rcpts=[LIST],
                helo="forged-helo.test", source_ip=GOOD_IP)
    assert out["stage"] == "mail"


def test_header_name_not_utf8_ends_the_header_section(daemon, mta, smtp_sink):
    """A header line whose name is not UTF-8 (here Latin-1) never reaches listgate
    through a real MTA: Postfix and sendmail both end the header section at it (a name
    must be printable ASCII) and pass the line and the rest as body.  So listgate
    judges the headers before it -- no Subject here, which the list holds a member's
    post for -- and answers at once; pymilter's failure on such a name is
    test_protocol's (only a hand-made milter client sends one)."""
    mark = daemon.log_size()
    top = infra.make_message(from_=MEMBER, to=LIST, subject="x").split(b"\r\n\r\n")[0]
    top = b"\r\n".join(line for line in top.split(b"\r\n") if not line.startswith(b"Subject:"))
    msg = top + b"\r\nX-T\xe9st: value\r\nSubject: hello\r\n\r\nHello list.\r\n"
    start = time.monotonic()
    r = infra.smtp_transaction("127.0.0.1", mta.port, helo="mail.pass.test",
                               mail_from="bounce@pass.test", rcpts=[LIST], message=msg,
                               source_ip=GOOD_IP)
    elapsed = time.monotonic() - start
    assert r.data.code == 250, r.steps()
    assert elapsed < 5.0, f"{elapsed:.1f} s: an MTA timeout, not listgate's answer"
    got = delivered(smtp_sink, msg)
    assert got.message.get("Subject") is None
    assert b"X-T\xe9st: value\nSubject: hello\n" in got.raw
    daemon.wait_for_log(r"ACCEPT: list=dev@lists\.test verdict=hold\(member\) rule=any "
                        r"senders=m@pass\.test,bounce@pass\.test: Message has no subject;",
                        since=mark)
    assert "not UTF-8" not in daemon.log_text(mark)
