"""The posting chain's answers through a real Postfix, on the SQLite store.

Lists configured with the store's own CLI (a moderator password stored as a hash,
header rules, limits, DMARC addresses), posts sent by a real SMTP client to a private
Postfix with listgate as its milter: each test reads the reply the client gets, what
was delivered, and the verdict line.  What each rule does is compared with the real
Mailman 3 in test_mailman3_rules_lab.py; this is about the answers on the wire.
"""

from __future__ import annotations

import infra
import pytest
from test_postfix import DNS, GOOD_IP, MEMBER, delivered, not_delivered

CHAIN = "chain@lists.test"  # a moderator password and header rules: reads the body
STRICT = "strict@lists.test"  # member holds refused (member_hold_action = reject)
DMARC = "dmarc@lists.test"  # dmarc_mitigate_action reject, one address listed
PW = "moderator-pw"


def make_daemon(dns_factory, config: str = ""):
    from lgdaemon import ListgateDaemon

    d = ListgateDaemon(nameservers=dns_factory(**DNS).nameservers, config=(
        "[network]\ninternal_connect = 127.0.0.1/32\n"
        "[lists]\ncache_ttl = 0\nnegative_cache_ttl = 0\n"
        f"[list:{STRICT}]\nmember_hold_action = reject\n" + config))
    for lst in (CHAIN, STRICT, DMARC):
        d.cli("lists", "create", lst)
        d.cli("members", "add", lst, MEMBER)
    d.cli("lists", "password", CHAIN, "--stdin", input=f"{PW}\n".encode())
    d.cli("lists", "set", CHAIN, "header_matches",
          '[{"header": "x-git-module", "pattern": "^core$", "action": "accept"}, '
          '{"header": "x-spam-flag", "pattern": "^yes", "action": "discard"}]')
    d.cli("lists", "set", DMARC, "dmarc_mitigate_action", "reject")
    d.cli("lists", "set", DMARC, "dmarc_addresses", "m@pass.test")
    return d.start()


@pytest.fixture(scope="module")
def daemon(dns_factory):
    d = make_daemon(dns_factory)
    yield d
    d.close()


def post(mta, lst: str, *, frm: str, mail_from: str = MEMBER, subject: str | None = "hi",
         headers: tuple = (), body: str = "Hello list.\n", raw: bytes | None = None):
    msg = raw or infra.make_message(from_=frm, to=lst, subject=subject or "", headers=headers,
                                    body=body)
    if subject is None:
        msg = msg.replace(b"Subject: \r\n", b"")
    r = infra.smtp_transaction("127.0.0.1", mta.port, helo="mail.pass.test",
                               mail_from=mail_from, rcpts=[lst], message=msg,
                               source_ip=GOOD_IP)
    return r, msg


def test_a_nonmember_moderator_with_the_password_in_a_header_or_the_body(daemon, mta,
                                                                         smtp_sink):
    r, msg = post(mta, CHAIN, frm="mod@y.test", mail_from="mod@y.test",
                  headers=(("Approved", PW),))
    assert r.data.code == 250, r.steps()
    assert "Approved" in dict(delivered(smtp_sink, msg).headers), "Mailman strips it, not us"
    r, msg = post(mta, CHAIN, frm="mod@y.test", mail_from="mod@y.test",
                  body=f"Approved: {PW}\n\nNews.\n")
    assert r.data.code == 250, r.steps()
    delivered(smtp_sink, msg)
    daemon.wait_for_log(r"ACCEPT: list=chain@lists\.test verdict=accept rule=approved ")


def test_a_header_rule_accepts_a_nonmember_and_another_discards_a_member(daemon, mta,
                                                                        smtp_sink):
    r, msg = post(mta, CHAIN, frm="ci@y.test", mail_from="ci@y.test",
                  headers=(("X-Git-Module", "core"),))
    assert r.data.code == 250, r.steps()
    delivered(smtp_sink, msg)
    r, msg = post(mta, CHAIN, frm=MEMBER, headers=(("X-Spam-Flag", "YES"),))
    assert str(r.data) == ('550 5.7.2 chain@lists.test: Header "x-spam-flag" matched a '
                           "header rule")
    assert not_delivered(smtp_sink, msg)
    daemon.wait_for_log(r"REJECT: list=chain@lists\.test verdict=discard "
                        r"rule=header-match-chain\.lists\.test-1 ")


def test_guesses_past_the_bound_are_deferred_never_refused(dns_factory, postfix_factory,
                                                          smtp_sink):
    # one hash, then none for a long while: the first wrong guess costs the one hash
    # the bound allows and is refused as a nonmember's post; the next is 451: the
    # sender retries later
    daemon = make_daemon(dns_factory, "[approved]\nmax_per_second = 0.001\nburst = 1\n")
    try:
        _guesses(daemon, postfix_factory(milter=daemon.postfix_milter,
                                         relay_domains=["lists.test"]), smtp_sink)
    finally:
        daemon.close()


def _guesses(daemon, mta, smtp_sink):
    first, _ = post(mta, CHAIN, frm="s1@y.test", mail_from="s1@y.test",
                    headers=(("Approved", "guess-1"),))
    assert first.data.code == 550, first.steps()
    r, msg = post(mta, CHAIN, frm="s2@y.test", mail_from="s2@y.test",
                  headers=(("Approved", "guess-2"),))
    assert str(r.data) == ("451 4.3.0 Temporary failure checking the post to "
                           "chain@lists.test; try again later")
    assert not_delivered(smtp_sink, msg)
    line = daemon.wait_for_log(r"TEMPFAIL: list=chain@lists\.test verdict=tempfail "
                               r"rule=approved .*not checked")
    assert line


def test_a_malformed_message_mailmans_lmtp_server_would_refuse(daemon, mta, smtp_sink):
    body = "--B\nContent-Type: text/plain\n\nthe closing boundary never comes\n"
    r, msg = post(mta, CHAIN, frm=MEMBER, body=body,
                  headers=(("MIME-Version", "1.0"),
                           ("Content-Type", 'multipart/mixed; boundary="B"')))
    assert str(r.data) == "550 5.7.2 chain@lists.test: Message has defects"
    assert not_delivered(smtp_sink, msg)
    daemon.wait_for_log(r"REJECT: list=chain@lists\.test verdict=reject rule=lmtp-defects ")


def test_content_holds_refused_where_member_holds_are(daemon, mta, smtp_sink):
    r, msg = post(mta, STRICT, frm=MEMBER, subject=None)
    assert str(r.data) == "550 5.7.2 strict@lists.test: Message has no subject"
    assert not_delivered(smtp_sink, msg)
    r, _ = post(mta, STRICT, frm=MEMBER, subject="subscribe")
    assert str(r.data) == "550 5.7.2 strict@lists.test: Message contains administrivia"
    # the default elsewhere: the moderators asked to see those, so accept
    r, msg = post(mta, CHAIN, frm=MEMBER, subject=None)
    assert r.data.code == 250, r.steps()
    delivered(smtp_sink, msg)
    daemon.wait_for_log(r"ACCEPT: list=chain@lists\.test verdict=hold\(member\) rule=any ")


def test_dmarc_mitigation_of_a_listed_address(daemon, mta, smtp_sink):
    r, msg = post(mta, DMARC, frm=MEMBER)
    assert str(r.data).startswith(
        "550 5.7.2 dmarc@lists.test: You are not allowed to post to this mailing list "
        "From: a domain which publishes a DMARC policy of reject or quarantine")
    assert not_delivered(smtp_sink, msg)
