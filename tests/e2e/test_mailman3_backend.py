"""The Mailman 3 backend against a real Mailman 3: through Postfix, failures, costs."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
import time

import infra
import pytest
from lgdaemon import LISTGATE, ListgateDaemon
from mailman3 import Mailman3
from test_postfix import delivered, not_delivered, send

from listgate.backends.mailman3 import Mailman3Backend
from listgate.chain import list_verdict
from listgate.model import BackendError

LIST = "dev@mm3.test"
REJECT_TEXT = ("550 5.7.2 You are not permitted to post to dev@mm3.test. "
               "Contact dev-owner@mm3.test for help.")


def backend(m: Mailman3, **kw) -> Mailman3Backend:
    return Mailman3Backend(m.rest_url, m.admin_user, m.admin_pass, **kw)


def mm3_daemon(dns, m: Mailman3, extra: str = "") -> ListgateDaemon:
    """A started listgate on this Mailman's REST API (INTERNAL: only 127.0.0.1)."""
    return ListgateDaemon(nameservers=dns.nameservers, config=(
        "[network]\ninternal_connect = 127.0.0.1/32\n"
        "[lists]\nbackend = mailman3\n" + extra +
        f"[mailman3]\nurl = {m.rest_url}\nuser = {m.admin_user}\n"
        f"password = {m.admin_pass}\n")).start()


def test_postfix_with_mailman3_backend_and_mailman_stopped(dns_factory, smtp_sink,
                                                           postfix_factory, mailman3_private):
    m = mailman3_private
    m.create_list(LIST)
    m.subscribe(LIST, "member@y.test")
    dns = dns_factory(txt={"y.test": "v=spf1 ip4:127.0.0.0/8 -all"})
    d = mm3_daemon(dns, m, "cache_ttl = 0\nnegative_cache_ttl = 0\n[mailman3]\ntimeout = 2\n")
    try:
        mta = postfix_factory(milter=d.postfix_milter, relay_domains=["mm3.test"])
        r, msg = send(mta, frm="member@y.test", mail_from="member@y.test", rcpts=[LIST],
                      helo="mail.y.test")
        assert r.data.code == 250, r.steps()
        assert delivered(smtp_sink, msg).first_header[0] == "Received-SPF"
        r, msg = send(mta, frm="stranger@y.test", mail_from="stranger@y.test", rcpts=[LIST],
                      helo="mail.y.test")
        assert str(r.data) == REJECT_TEXT
        assert not_delivered(smtp_sink, msg)
        mark = d.log_size()
        m.stop()
        r, msg = send(mta, frm="member@y.test", mail_from="member@y.test", rcpts=[LIST],
                      helo="mail.y.test")
        assert str(r.rcpts[0]) == ("451 4.3.0 Temporary failure looking up the recipient "
                                   "list; try again later")
        line = d.wait_for_log(r"TEMPFAIL: rcpt to <dev@mm3\.test>: backend error: "
                              r"mailman3 http://127\.0\.0\.1:\d+/3\.1/lists: "
                              r"connection refused", since=mark)
        assert line
        assert "Traceback" not in d.log_text()
    finally:
        d.close()


@pytest.fixture
def mailman3_private():
    """A Mailman of its own, for tests that stop it."""
    from mm3_fixtures import install_mailman3

    install_mailman3()
    m = Mailman3().start()
    yield m
    m.stop()


def test_bad_credentials(mailman3):
    b = Mailman3Backend(mailman3.rest_url, mailman3.admin_user, "wrong")
    with pytest.raises(BackendError, match=r"mailman3 http://127\.0\.0\.1:\d+/3\.1/lists: "
                                           r"bad credentials \(401\)"):
        b.find_list("dev@mm3.test")


def test_rest_slower_than_timeout():
    """A server that accepts and never answers: a BackendError after ``timeout``."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    conns = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        b = Mailman3Backend(f"http://127.0.0.1:{port}/3.1", "u", "p", timeout=0.5)
        start = time.monotonic()
        with pytest.raises(BackendError, match=rf"mailman3 http://127\.0\.0\.1:{port}/3\.1/"
                                               r"lists: .*timed out"):
            b.find_list("dev@mm3.test")
        assert time.monotonic() - start < 3
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()


def test_world_readable_password_file_refused(tmp_path):
    pw = tmp_path / "rest.pass"
    pw.write_text("restpass\n")
    os.chmod(pw, 0o644)
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[milter]\nsocket = unix:{tmp_path}/s\n[lists]\nbackend = mailman3\n"
                   f"[mailman3]\npassword_file = {pw}\n")
    r = subprocess.run([*LISTGATE, "serve", "-c", str(cfg)], capture_output=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.decode().strip() == (
        f"listgate: config error: {cfg}: [mailman3] password_file: {pw} is readable by "
        "everyone (mode 644); chmod o-r it")
    assert not (tmp_path / "s").exists()


def test_password_file_and_new_list_without_restart(mailman3, tmp_path):
    m = mailman3
    pw = tmp_path / "rest.pass"
    pw.write_text(m.admin_pass + "\n")
    os.chmod(pw, 0o640)
    from listgate import config
    from listgate.backends import mailman3 as mm3

    cfg = config.parse(f"[lists]\nbackend = mailman3\ncache_ttl = 1\n[mailman3]\n"
                       f"url = {m.rest_url}\nuser = {m.admin_user}\npassword_file = {pw}\n")
    b = mm3.create(cfg)
    assert b.find_list("fresh@mm3new.test") is None
    m.create_list("fresh@mm3new.test")
    time.sleep(1.1)
    assert b.find_list("Fresh@MM3NEW.test") == "fresh@mm3new.test"


def test_alias_domain_is_a_posting_address(mailman3):
    m = mailman3
    m.create_list("ali@mm3main.test")
    status, _ = m.rest("PATCH", "/domains/mm3main.test", {"alias_domain": "mm3alias.test"})
    assert status in (200, 204), status
    assert backend(m).find_list("ali@mm3alias.test") == "ali@mm3main.test"


def test_requests_per_verdict_cold_and_warm(mailman3):
    """The numbers the README quotes: REST requests per verdict with a cold cache, for
    a new sender on a list already in the cache (the usual case: spam comes from new
    addresses), and with a warm cache.  A cold cache also reads the list's header rules
    and the site's [antispam] and [mailman] settings (3 requests, once per TTL)."""
    m = mailman3
    m.create_list("cost@mm3.test")
    m.subscribe("cost@mm3.test", "member@y.test")
    cases = {
        "member (From = envelope)": (("member@y.test",), 7, 1),
        "member in From, other envelope": (("member@y.test", "bounce@y.test"), 7, 1),
        "nonmember": (("stranger@y.test",), 8, 2),
        "nonmember, From + envelope + Reply-To": (("s1@y.test", "s2@y.test", "s3@y.test"),
                                                  12, 6),
    }
    rows = []
    for name, (senders, want_cold, want_new) in cases.items():
        b = backend(m)
        b.find_list("cost@mm3.test")
        before = b.requests
        v1 = list_verdict(b.list_facts("cost@mm3.test", senders))
        cold = b.requests - before
        v2 = list_verdict(b.list_facts("cost@mm3.test", senders))
        assert v1 == v2
        assert b.requests - before - cold == 0, "a warm verdict makes no request"
        # senders never seen, on a list whose config and bans are cached
        b = backend(m)
        b.find_list("cost@mm3.test")
        b._get("/lists/cost.mm3.test/config")
        b._get("/lists/cost.mm3.test/header-matches")
        b.site()
        b._bans("cost.mm3.test")
        before = b.requests
        list_verdict(b.list_facts("cost@mm3.test", senders))
        new = b.requests - before
        rows.append((name, cold, new, v1.action))
        assert (cold, new) == (want_cold, want_new), (name, cold, new)
    print("\n" + "\n".join(f"{n:40} cold={c}, new sender on a warm list={w}, warm=0 ({a})"
                            for n, c, w, a in rows))


def test_one_pool_shared_by_threads(mailman3):
    m = mailman3
    m.create_list("threads@mm3.test")
    m.subscribe("threads@mm3.test", "member@y.test")
    b = backend(m, cache_ttl=0, negative_cache_ttl=0)
    errors: list[Exception] = []

    def work() -> None:
        try:
            for _ in range(10):
                facts = b.list_facts("threads@mm3.test", ("member@y.test",))
                assert list_verdict(facts).action == "accept"
        except Exception as e:  # noqa: BLE001 - collected and asserted
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert infra  # the e2e conftest checks the tools these tests need


def test_lists_ls_and_check_use_mailman3(mailman3, tmp_path):
    m = mailman3
    m.create_list("shown@mm3ls.test")
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[lists]\nbackend = mailman3\n[mailman3]\nurl = {m.rest_url}\n"
                   f"user = {m.admin_user}\npassword = {m.admin_pass}\n"
                   f"[sqlite]\npath = {tmp_path}/unused.db\n")
    r = subprocess.run([*LISTGATE, "-c", str(cfg), "lists", "ls"], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "shown@mm3ls.test" in r.stdout.decode().split()


def test_rest_server_error_is_a_backend_error(tmp_path):
    """A 5xx (here from a real HTTP server standing in for a broken Mailman)."""
    import http.server

    class Broken(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        port = srv.server_address[1]
        b = Mailman3Backend(f"http://127.0.0.1:{port}/3.1", "u", "p")
        with pytest.raises(BackendError, match=rf"^mailman3 http://127\.0\.0\.1:{port}/3\.1/"
                                               r"lists: HTTP 500$"):
            b.find_list("dev@mm3.test")
    finally:
        srv.shutdown()


# -- the lost posts, through the real Postfix, checked with the real Mailman ------

CHAIN_LIST = "chain@mm3.test"
PW = "mod-s3cret"


def _mailman_outcome(m: Mailman3, raw: bytes, mail_from: str) -> str:
    """What Mailman does with these very bytes (as the MTA delivered them, CRLF)."""
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    mid = m.post(data, mail_from, CHAIN_LIST)
    return m.outcome(mid)


def test_posts_mailman_accepts_pass_and_what_it_refuses_is_refused_through_postfix(
        dns_factory, smtp_sink, postfix_factory, mailman3):
    """Through a real Postfix with listgate (mailman3 backend) as its milter: the posts
    the issue lost (a moderator's Approved: password, a header rule that accepts, an RFC
    2047 encoded member) are accepted, and Mailman accepts the copy Postfix delivered;
    posts Mailman discards (a header rule, a loop, an encoded banned address) get 550
    with Mailman's reason, and Mailman would discard them indeed."""
    m = mailman3
    m.create_list(CHAIN_LIST)
    m.subscribe(CHAIN_LIST, "member@y.test")
    m.configure(CHAIN_LIST, moderator_password=PW)
    m.add_header_match(CHAIN_LIST, "X-Git-Module", "^core$", "accept")
    m.add_header_match(CHAIN_LIST, "X-Spam-Flag", "^yes", "discard")
    m.ban("troll@y.test", CHAIN_LIST)
    dns = dns_factory(txt={"y.test": "v=spf1 ip4:127.0.0.0/8 -all"})
    d = mm3_daemon(dns, m)
    enc_member = "=?utf-8?b?" + base64.b64encode(b"member@y.test").decode() + "?="
    enc_troll = "=?utf-8?q?troll=40y=2Etest?="
    accepted = [
        ("moderator's Approved: header", "mod@elsewhere.test", (("Approved", PW),), "hi"),
        ("moderator's password on the first body line", "mod@elsewhere.test", (),
         f"Approved: {PW}\n\nThe announcement.\n"),
        ("header rule that accepts", "bot@ci.test", (("X-Git-Module", "core"),), "hi"),
        ("RFC 2047 encoded member address", enc_member, (), "hi"),
    ]
    refused = [
        ("header rule that discards", "member@y.test", (("X-Spam-Flag", "yes"),),
         'chain@mm3.test: Header "x-spam-flag" matched a header rule', "discard"),
        ("a loop", "member@y.test", (("List-Post", CHAIN_LIST),),
         "chain@mm3.test: Message has already been posted to this list", "discard"),
        ("encoded banned address", enc_troll, (), None, "discard"),
        ("wrong password", "mod@elsewhere.test", (("Approved", "guess"),), None, "hold"),
    ]
    try:
        mta = postfix_factory(milter=d.postfix_milter, relay_domains=["mm3.test"])
        for name, frm, headers, body in accepted:
            envelope = "bounce@y.test"
            msg = infra.make_message(from_=frm, to=CHAIN_LIST, subject=name,
                                     headers=headers, body=body)
            r = infra.smtp_transaction("127.0.0.1", mta.port, helo="mail.y.test",
                                       mail_from=envelope, rcpts=[CHAIN_LIST], message=msg,
                                       source_ip="127.0.0.2")
            assert r.data.code == 250, (name, r.steps())
            copy = delivered(smtp_sink, msg)
            assert _mailman_outcome(m, copy.raw, envelope) == "accept", name
        for name, frm, headers, text, mailman_does in refused:
            msg = infra.make_message(from_=frm, to=CHAIN_LIST, subject=name, headers=headers)
            r = infra.smtp_transaction("127.0.0.1", mta.port, helo="mail.y.test",
                                       mail_from="bounce@y.test", rcpts=[CHAIN_LIST],
                                       message=msg, source_ip="127.0.0.2")
            assert r.data.code == 550 and str(r.data).startswith("550 5.7.2 "), (name, r.steps())
            if text is not None:
                assert str(r.data) == f"550 5.7.2 {text}", name
            assert not_delivered(smtp_sink, msg)
            assert _mailman_outcome(m, msg, "bounce@y.test") == mailman_does, name
        log = d.log_text()
        assert "rule=approved" in log and "rule=header-match-chain.mm3.test-0" in log
        assert "rule=loop" in log and "rule=banned-address" in log
        assert "Traceback" not in log
    finally:
        d.close()


def test_concurrent_misses_of_one_answer_make_one_request(mailman3):
    """When a TTL expires under load, many connections miss the same answers at once:
    each REST path is fetched once, the others wait for that answer."""
    m = mailman3
    m.create_list("flight@mm3.test")
    m.subscribe("flight@mm3.test", "member@y.test")
    b = backend(m)
    b.find_list("flight@mm3.test")
    before = b.requests
    barrier = threading.Barrier(20)
    results = []

    def one() -> None:
        barrier.wait()
        results.append(list_verdict(b.list_facts("flight@mm3.test", ("member@y.test",))))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and len(set(results)) == 1
    assert results[0].action == "accept"
    assert b.requests - before == 7, "the cold cost of one verdict, not 20 times it"
