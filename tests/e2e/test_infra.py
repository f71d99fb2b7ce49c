"""Smoke tests of the e2e infrastructure itself (real dnsmasq, smtp-sink, Postfix; no
listgate milter). A missing tool makes them fail, never skip."""

from __future__ import annotations

import os

import dns.resolver
import infra
import pytest

SPF_PASS = "v=spf1 ip4:127.0.0.2 -all"
TRICKY = 'v=spf1 include:_spf.example.test ~all; a "quoted" \\ value, with: colons'


def test_dns_txt_records_exact_and_nxdomain(dns_factory):
    server = dns_factory(
        txt={
            "pass.test": [SPF_PASS],
            "tricky.test": TRICKY,
            "multi.test": ["first record", ("split", "into two strings")],
        },
        a={"mail.pass.test": "127.0.0.2"},
        ptr={"127.0.0.2": "mail.pass.test"},
        mx={"pass.test": [(10, "mail.pass.test")]},
        log_queries=True,
    )
    assert server.nameservers == f"127.0.0.1:{server.port}"

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    resolver.lifetime = 3

    def txt(name):
        return sorted(rr.strings for rr in resolver.resolve(name, "TXT"))

    assert txt("pass.test") == [(SPF_PASS.encode(),)]
    assert txt("tricky.test") == [(TRICKY.encode(),)]
    assert txt("multi.test") == [(b"first record",), (b"split", b"into two strings")]
    assert [r.address for r in resolver.resolve("mail.pass.test", "A")] == ["127.0.0.2"]
    ptr = resolver.resolve("2.0.0.127.in-addr.arpa", "PTR")
    assert [r.target.to_text() for r in ptr] == ["mail.pass.test."]
    assert [r.exchange.to_text() for r in resolver.resolve("pass.test", "MX")] == [
        "mail.pass.test."
    ]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("unknown.test", "TXT")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("3.0.0.127.in-addr.arpa", "PTR")

    assert ("TXT", "tricky.test") in server.queries()

    # new records on the same port
    port = server.port
    server.restart(txt={"pass.test": "v=spf1 -all"})
    assert server.port == port
    assert txt("pass.test") == [(b"v=spf1 -all",)]


def test_smtp_sink_capture_format(smtp_sink):
    msg = b"Subject: dots\r\nX-Order: 1\r\n\r\n.leading dot\r\nlast line\r\n"
    res = infra.smtp_transaction(
        smtp_sink.host,
        smtp_sink.port,
        mail_from="",
        rcpts=["a@lists.test", "b@lists.test"],
        message=msg,
        source_ip="127.0.0.4",
        mail_options=["BODY=8BITMIME"],
    )
    assert res.accepted, res
    [got] = smtp_sink.wait_for(1)
    assert got.mail_from == ""
    assert got.mail_params == ["BODY=8BITMIME"]
    assert got.rcpt_to == ["a@lists.test", "b@lists.test"]
    assert got.client_addr == "127.0.0.4"
    assert got.helo == "mail.example.test"
    assert got.raw == msg.replace(b"\r\n", b"\n")
    assert got.headers == [("Subject", "dots"), ("X-Order", "1")]
    smtp_sink.clear()
    assert smtp_sink.messages() == []


def test_postfix_relays_to_sink(postfix_factory, smtp_sink):
    pf = postfix_factory()
    body = infra.make_message(subject="relay me", headers=[("X-Test", "yes")])
    res = infra.smtp_transaction(
        pf.host,
        pf.port,
        mail_from="sender@example.test",
        rcpts=["list@lists.test", "other-list@lists.test"],
        message=body,
        source_ip="127.0.0.2",
        helo="client.example.test",
    )
    assert res.connect.code == 220
    assert [r.code for r in res.rcpts] == [250, 250]
    assert res.accepted and res.final_stage == "data", res
    assert res.final.text.startswith("2.0.0 Ok: queued as ")

    [msg] = smtp_sink.wait_for(1, timeout=15)
    assert msg.mail_from == "sender@example.test"
    assert sorted(msg.rcpt_to) == ["list@lists.test", "other-list@lists.test"]
    name, value = msg.first_header
    assert name == "Received"
    assert value.startswith("from client.example.test (unknown [127.0.0.2])")
    assert "by mx.listgate.test (Postfix)" in value
    assert msg.message["Subject"] == "relay me"
    assert msg.message["X-Test"] == "yes"
    assert [h for h, _ in msg.headers][1:4] == ["From", "To", "Subject"]
    pf.wait_for_log(r"status=sent")
    assert "Mail queue is empty" in pf.queue_listing()


def test_postfix_rejects_non_relay_domain_at_rcpt(postfix_factory, smtp_sink):
    pf = postfix_factory()
    res = infra.smtp_transaction(
        pf.host,
        pf.port,
        mail_from="sender@example.test",
        rcpts=["someone@elsewhere.example"],
        message=infra.make_message(to="someone@elsewhere.example"),
        source_ip="127.0.0.2",
    )
    assert res.mail.code == 250
    assert res.final_stage == "rcpt[0]"
    assert res.final.code == 554
    assert res.final.text == "5.7.1 <someone@elsewhere.example>: Relay access denied"
    assert res.data is None  # no recipient accepted: DATA never sent
    assert res.quit.code == 221
    assert smtp_sink.messages() == []


def test_dead_milter_tempfails_and_reload(postfix_factory, smtp_sink):
    dead = infra.E2E_ROOT / f"no-milter-{os.getpid()}.sock"
    pf = postfix_factory(milter=f"unix:{dead}")
    assert pf.postconf("-h", "smtpd_milters").strip() == f"unix:{dead}"

    def send(src: str) -> infra.SmtpResult:
        return infra.smtp_transaction(
            pf.host,
            pf.port,
            mail_from="sender@example.test",
            rcpts=["list@lists.test"],
            message=infra.make_message(),
            source_ip=src,
        )

    res = send("127.0.0.3")
    # Postfix greets and answers EHLO normally; the milter failure shows at MAIL FROM.
    assert res.connect.code == 220
    assert res.helo.code == 250
    assert res.final_stage == "mail"
    assert (res.final.code, res.final.text) == (451, "4.7.1 Service unavailable - try again later")
    assert res.final.enhanced == "4.7.1"
    assert res.rcpts == [] and res.data is None
    pf.wait_for_log(r"connect to Milter service unix:\S+: No such file or directory")

    pf.set_milters(None)  # postconf -e + reload
    res = send("127.0.0.3")
    assert res.accepted, res
    smtp_sink.wait_for(1)


def test_instances_coexist(postfix_factory, smtp_sink):
    plain = postfix_factory()
    other = postfix_factory(relay_domains=["other.test"], extra={"myhostname": "mx2.test"})
    assert plain.port != other.port
    assert plain.config_dir != other.config_dir and plain.queue_dir != other.queue_dir
    assert plain.syslog_name != other.syslog_name
    for pf, rcpt in ((plain, "a@lists.test"), (other, "b@other.test")):
        res = infra.smtp_transaction(
            pf.host,
            pf.port,
            mail_from="s@example.test",
            rcpts=[rcpt],
            message=infra.make_message(to=rcpt),
            source_ip="127.0.0.5",
        )
        assert res.accepted, res
    # each relays only its own domains
    res = infra.smtp_transaction(
        other.host,
        other.port,
        mail_from="s@example.test",
        rcpts=["a@lists.test"],
        message=None,
    )
    assert res.final.code == 554 and res.final_stage == "rcpt[0]"
    msgs = smtp_sink.wait_for(2)
    assert sorted(m.rcpt_to[0] for m in msgs) == ["a@lists.test", "b@other.test"]
    received = {m.rcpt_to[0]: m.message["Received"] for m in msgs}
    assert "by mx2.test (Postfix)" in received["b@other.test"]
    assert "by mx.listgate.test (Postfix)" in received["a@lists.test"]


def test_stop_leaves_nothing_running(smtp_sink):
    dns_srv = infra.DnsServer(txt={"x.test": "y"}).start()
    pf = infra.PostfixInstance(["lists.test"], smtp_sink.port).start()
    pids = infra.processes_with_env("MAIL_CONFIG", str(pf.config_dir))
    assert pf.master_pid() in pids
    workdir, log_path = pf.workdir, pf.log_path
    dns_pid = dns_srv._proc.pid
    pf.stop()
    dns_srv.stop()
    assert infra.processes_with_env("MAIL_CONFIG", str(pf.config_dir)) == []
    # (they may linger as zombies until PID 1 reaps them: pid_alive says no to those)
    assert not any(infra.pid_alive(pid) for pid in [*pids, dns_pid])
    assert not pf.running and not dns_srv.running
    if not os.environ.get("LISTGATE_E2E_KEEP"):
        assert not workdir.exists() and not log_path.exists()
    pf.stop()  # idempotent
