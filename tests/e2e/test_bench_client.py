"""The benchmark's load client (bench/milterclient.py) speaks the milter protocol right.

bench/protocol.py measures listgate with its own lean MTA-side client instead of
miltertest or Postfix; a benchmark that measured wrong answers would be worthless,
so this checks, against the real daemon (SQLite store, SPF answered by dnsmasq), that
the client negotiates like an MTA, gets listgate's real verdicts for the three kinds
of the benchmark's mix, can send several messages per connection, and that the
benchmark's own verdict checks (wire + log by queue id) accept a correct run.
Nothing here is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import protocol
from milterclient import P_NOBODY, P_NR_CONN, P_NR_HDR, P_NR_HELO, Conversation


@pytest.fixture(scope="module")
def bench_daemon(tmp_path_factory):
    dns = protocol.infra.DnsServer(txt=protocol.DNS_TXT, ttl=300).start()
    lg = None
    try:
        lg, _ = protocol.listgate_sqlite(dns, 100)
        yield lg
    finally:
        if lg is not None:
            lg.close()  # also fails on ERROR/Traceback in the daemon's log
        dns.stop()


def test_client_negotiates_and_gets_each_verdict(bench_daemon):
    traffic = protocol.Traffic(100)
    t = {s: [] for s in ("connect", "mail", "rcpt", "eom")}
    conv = Conversation(bench_daemon.address, t)
    # listgate waits for answers only at MAIL, RCPT and end of message
    assert conv.protocol & (P_NR_CONN | P_NR_HELO | P_NR_HDR | P_NOBODY) == (
        P_NR_CONN | P_NR_HELO | P_NR_HDR | P_NOBODY)
    jobs = [(k, traffic.message(k)) for k in ("member", "nonmember", "nolist", "member")]
    replies = [conv.send(m) for _, m in jobs]  # several messages on one connection
    conv.close()
    member, nonmember, nolist, member2 = replies
    assert member.smtp == "accept" and member.stage == "eom"
    assert [h for h, _ in member.headers] == ["Authentication-Results", "Received-SPF"]
    assert dict(member.headers)["Received-SPF"].startswith("Pass ")
    assert nonmember.stage == "eom"
    assert nonmember.smtp.startswith(
        "550 5.7.2 You are not permitted to post to list@lists.test.")
    assert nolist.smtp == "accept" and member2.smtp == "accept"
    assert all(protocol.check_listgate(k, r) is None for (k, _), r in zip(jobs, replies,
                                                                             strict=True))
    assert [len(t[s]) for s in ("connect", "mail", "rcpt", "eom")] == [1, 4, 4, 4]
    bench_daemon.verify(jobs, 0)  # ACCEPT / REJECT / no line, by queue id


def test_load_run_checks_every_verdict(bench_daemon):
    traffic = protocol.Traffic(100)
    r = protocol.run_load(bench_daemon, traffic.mix(60, (60, 20, 20)), 4, per_connection=2)
    assert r["messages"] == 60 and r["verdicts_per_s"] > 0
    assert r["stages"]["eom"]["n"] == 60 and r["stages"]["connect"]["n"] == 30
    # a member whose post the daemon would accept, claimed to be a nonmember: caught
    wrong = [("nonmember", traffic.message("member"))]
    with pytest.raises(protocol.BenchError, match="wrong answers"):
        protocol.run_load(bench_daemon, wrong, 1)
