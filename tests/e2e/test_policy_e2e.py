"""The remaining refusals, read as a real client gets them: HELO blacklist, internal
domains both ways, a hold configured to tempfail (through Postfix), and a bogus PTR
(through the milter protocol: the test Postfix does no PTR lookups)."""

from __future__ import annotations

import infra
import pytest
from test_postfix import DNS, LIST, OTHER, _daemon, check, said, send
from test_protocol import Mta, smtp


@pytest.fixture(scope="module")
def daemon(dns_factory):
    d = _daemon(dns_factory(**DNS), config=(
        "[network]\nhello_blacklist = lists.test\ninternal_domains = corp.test, pass.test\n"
        "reject_foreign_internal = yes\n"
        f"[list:{OTHER}]\nnonmember_hold_action = tempfail\n"))
    yield d
    d.close()


def test_helo_of_ours_is_refused(daemon, mta, smtp_sink):
    r, msg = send(mta, frm="x@y.test", mail_from="x@y.test", rcpts=[LIST],
                  helo="mx.lists.test", source_ip="127.0.0.3")
    assert said(r.mail) == "550 5.7.1 HELO name mx.lists.test is ours: you are not"
    check(daemon, r, msg, mail_from="x@y.test", rcpts=[LIST], helo="mx.lists.test",
          source_ip="127.0.0.3")


def test_external_client_forging_an_internal_domain(daemon, mta, smtp_sink):
    r, msg = send(mta, frm="ceo@corp.test", mail_from="ceo@corp.test", rcpts=[LIST],
                  helo="host.y.test", source_ip="127.0.0.3")
    assert said(r.mail) == "550 5.7.1 You are not in the network of corp.test"
    check(daemon, r, msg, mail_from="ceo@corp.test", rcpts=[LIST], helo="host.y.test",
          source_ip="127.0.0.3")


def test_internal_client_sending_as_a_foreign_domain(daemon, mta, smtp_sink):
    msg = infra.make_message(from_="x@elsewhere.test", to=LIST)
    r = infra.smtp_transaction("127.0.0.1", mta.port, helo="gw.corp.test",
                               mail_from="x@elsewhere.test", rcpts=[LIST], message=msg,
                               source_ip="127.0.0.1")
    assert said(r.mail) == "550 5.7.1 Internal hosts may not send as elsewhere.test"
    assert "possibly compromised" in daemon.log_text()


def test_nonmember_hold_configured_to_tempfail(daemon, mta, smtp_sink):
    r, msg = send(mta, frm="stranger@y.test", mail_from="stranger@y.test", rcpts=[OTHER],
                  helo="host.y.test", source_ip="127.0.0.3")
    assert str(r.data) == ("451 4.7.2 Your post to ops@lists.test awaits moderation; "
                           "try again later")
    check(daemon, r, msg, mail_from="stranger@y.test", rcpts=[OTHER], helo="host.y.test",
          source_ip="127.0.0.3")


def test_ptr_localhost_from_outside_is_refused_at_mail(daemon):
    with Mta(daemon) as m:
        m.connect("192.0.2.66", hostname="localhost").helo("mail.example.test")
        reply = m.mail("<a@pass.test>")
    assert smtp(reply) == "550 5.7.1 Your reverse DNS name localhost is bogus"
