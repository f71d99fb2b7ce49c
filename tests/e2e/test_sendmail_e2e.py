"""Every scenario of test_postfix.py, through a real sendmail instead of Postfix.

smtplib -> sendmail (Debian's, unpacked by scripts/install-sendmail.sh; its milter
lines read from README.md) -> listgate -> smtp-sink, SPF from dnsmasq. The scenarios
are imported, so they assert the same replies, headers and log lines; only the
``mta_factory`` fixture differs. Below them, what is sendmail's own: the README's
lines in the sendmail.cf built from them, F=T, and the macros listgate reads.
"""

from __future__ import annotations

import re

import pytest
from test_postfix import *  # noqa: F403 - the scenarios (test_*) and their fixtures
from test_postfix import LIST, MEMBER, _daemon, delivered, send


@pytest.fixture(scope="module")
def mta_factory(sendmail_factory):
    """The scenarios' MTA is sendmail here (conftest's is Postfix)."""
    return sendmail_factory


def test_sendmail_cf_has_the_readme_lines(daemon, mta):
    """What m4 made of README.md's block: the filter with F=T and its timeouts, and
    the macro lists carrying j (connect), i and {auth_authen} (MAIL FROM)."""
    cf = mta.cf_path.read_text()
    assert (f"Xlistgate, S={daemon.socket}, F=T, T=C:10s;S:30s;R:60s;E:5m\n") in cf
    assert "O InputMailFilters=listgate\n" in cf
    macros = dict(re.findall(r"^O Milter\.macros\.(\w+)=(.*)$", cf, re.M))
    assert "j" in macros["connect"].split(", ")
    assert {"i", "{auth_authen}"} <= set(macros["envfrom"].split(", "))


def test_mail_refusal_as_a_sendmail_client_reads_it(daemon, mta, smtp_sink):
    """sendmail puts the address before listgate's text when it refuses MAIL FROM."""
    r, _ = send(mta, frm="x@fail.test", mail_from="x@fail.test", rcpts=[LIST])
    assert str(r.mail) == ("550 5.7.23 <x@fail.test>... SPF fail for x@fail.test: "
                           "SPF fail - not authorized")


def test_macros_j_and_i_reach_listgate(dns, mta_factory, smtp_sink):
    """With no authserv_id configured, Authentication-Results and Received-SPF both
    name the MTA by macro j; listgate's log lines carry sendmail's queue ID (macro i),
    also at end of message."""
    d = _daemon(dns, config="[milter]\nauthserv_id =\n")
    try:
        r, msg = send(mta_factory(d), frm=MEMBER, mail_from="bounce@pass.test", rcpts=[LIST])
        assert r.data.code == 250, r.steps()
        qid = re.match(r"2\.0\.0 (\w+) Message accepted", r.data.text).group(1)
        got = delivered(smtp_sink, msg)
        assert got.first_header[0] == "Received-SPF"
        assert got.first_header[1].startswith("Pass (mx.sendmail.test: domain of ")
        assert "receiver=mx.sendmail.test;" in got.first_header[1]
        assert got.headers[1] == ("Authentication-Results",
                                  "mx.sendmail.test; spf=pass smtp.mailfrom=pass.test")
        d.wait_for_log(rf"\] {qid}: ACCEPT: list=dev@lists\.test")
    finally:
        d.close()


def test_listgate_down_tempfails_then_recovers(daemon, mta, smtp_sink):
    """F=T: while listgate is not running, sendmail accepts nothing and says 4xx;
    once it is back, the same post goes through without touching sendmail."""
    daemon.stop()
    try:
        r, msg = send(mta, frm=MEMBER, mail_from="bounce@pass.test", rcpts=[LIST])
        assert r.final_stage == "mail", r.steps()
        assert str(r.mail) == "451 4.3.2 Please try again later"
    finally:
        daemon.start()
    r, msg = send(mta, frm=MEMBER, mail_from="bounce@pass.test", rcpts=[LIST])
    assert r.data.code == 250, r.steps()
    delivered(smtp_sink, msg)
