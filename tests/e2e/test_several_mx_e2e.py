"""The edge deployment on loopback: two MX hosts, one answer.

Two private Postfix instances are the MX hosts, each with its own listgate daemon,
both on one PostgreSQL store (the private cluster of tests/conftest.py); a third
Postfix, without listgate, is the list host behind them and relays to the smtp-sink.
What a site with several MX hosts must be able to count on:

* a member added with one MX host's CLI is accepted through the other (within
  ``cache_ttl``), and a nonmember is refused by both with the same reply;
* PostgreSQL restarted while both MX hosts are under load: every post of a member is
  delivered exactly once and none is refused (a 4xx is retried, as an MTA retries it).
"""

from __future__ import annotations

import collections
import email
import threading
import time

import infra
import pytest
from lgdaemon import ListgateDaemon

LIST = "dev@lists.test"
GOOD_IP = "127.0.0.2"
REJECT_TEXT = ("550 5.7.2 You are not permitted to post to dev@lists.test. "
               "Contact dev-owner@lists.test for help.")
DNS = {"txt": {"pass.test": "v=spf1 ip4:127.0.0.0/8 -all"}}
#: members that only the load test sends from: each post a backend question
LOAD_MEMBERS = [f"load{i}@pass.test" for i in range(240)]


class Topology:
    def __init__(self, conninfo: str, dns: infra.DnsServer, sink: infra.SmtpSink,
                 pg_cluster) -> None:
        self.pg = pg_cluster
        config = ("[network]\ninternal_connect = 127.0.0.1/32\n"
                  "[lists]\nbackend = postgresql\ncache_ttl = 2\nnegative_cache_ttl = 2\n"
                  f"[postgresql]\nconninfo = {conninfo}\nconnect_timeout = 2\n")
        self.daemons = [ListgateDaemon(nameservers=dns.nameservers, config=config)
                        for _ in range(2)]
        mx1, mx2 = self.daemons
        mx1.cli("db", "init")  # once, from either host: the store is shared
        mx1.cli("lists", "create", LIST)
        mx2.cli("members", "add", LIST, "old@pass.test", *LOAD_MEMBERS)
        for d in self.daemons:
            d.start()
        self.postfixes: list[infra.PostfixInstance] = []
        # the list host: no milter (the gate is at the edge), relays to the sink
        self.list_host = self._postfix(sink.port, None, "lists.listgate.test")
        self.mx = [self._postfix(self.list_host.port, d.postfix_milter, f"mx{n}.listgate.test")
                   for n, d in enumerate(self.daemons, 1)]

    def _postfix(self, next_hop: int, milter: str | None, name: str) -> infra.PostfixInstance:
        pf = infra.PostfixInstance(["lists.test"], next_hop, milters=milter, myhostname=name)
        self.postfixes.append(pf)  # stopped with the module (the slots are shared)
        return pf.start()

    def close(self) -> None:
        infra.stop_instances(self.postfixes)
        for d in self.daemons:
            d.close()


@pytest.fixture(scope="module")
def topology(pg_cluster, dns_factory, smtp_sink_session):
    name = pg_cluster.create_database()
    t = Topology(pg_cluster.conninfo(name), dns_factory(**DNS), smtp_sink_session, pg_cluster)
    yield t
    t.close()
    pg_cluster.drop_database(name)


def post(mx, sender: str, subject: str = "hello") -> tuple[infra.SmtpResult, bytes]:
    msg = infra.make_message(from_=sender, to=LIST, subject=subject)
    r = infra.smtp_transaction("127.0.0.1", mx.port, helo="mail.pass.test", mail_from=sender,
                               rcpts=[LIST], message=msg, source_ip=GOOD_IP)
    return r, msg


def message_ids(sink) -> collections.Counter:
    return collections.Counter(m.message["Message-ID"] for m in sink.messages())


def wait_delivered(sink, ids: set[str], timeout: float = 60.0) -> collections.Counter:
    deadline = time.monotonic() + timeout
    while True:
        seen = message_ids(sink)
        if ids <= set(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def test_a_member_added_on_one_host_is_accepted_through_the_other(topology, smtp_sink) -> None:
    mx1, mx2 = topology.mx
    cli1 = topology.daemons[0]
    r, _ = post(mx2, "new@pass.test")
    assert str(r.final) == REJECT_TEXT  # not yet a member (and now in mx2's cache)
    cli1.cli("members", "add", LIST, "new@pass.test")
    deadline = time.monotonic() + 2 + 3  # cache_ttl, and some slack for a loaded machine
    while True:
        r, msg = post(mx2, "new@pass.test")
        if r.final.code == 250 or time.monotonic() > deadline:
            break
        assert str(r.final) == REJECT_TEXT
        time.sleep(0.2)
    assert r.final.code == 250, r.steps()
    mid = email.message_from_bytes(msg)["Message-ID"]
    assert wait_delivered(smtp_sink, {mid})[mid] == 1
    # and the other way round: removed on mx2's CLI, refused by mx1 and mx2 alike
    topology.daemons[1].cli("members", "remove", LIST, "new@pass.test")
    time.sleep(2.5)
    assert str(post(mx1, "new@pass.test")[0].final) == REJECT_TEXT
    assert str(post(mx2, "new@pass.test")[0].final) == REJECT_TEXT


def test_a_nonmember_is_refused_by_both_with_the_same_reply(topology) -> None:
    replies = [post(mx, "stranger@pass.test")[0] for mx in topology.mx]
    assert [r.final_stage for r in replies] == ["data", "data"]  # From: is a sender too
    assert [str(r.final) for r in replies] == [REJECT_TEXT, REJECT_TEXT]
    ok = [post(mx, "old@pass.test")[0] for mx in topology.mx]
    assert [r.final.code for r in ok] == [250, 250]


def test_postgresql_restarted_under_load(topology, smtp_sink) -> None:
    """Four senders per MX host, each post from a member nobody asked about yet (so
    every one is a backend question); meanwhile PostgreSQL is restarted, then stopped
    for 3 s: 0 lost, 0 duplicated, 0 refused; 4xx answers are retried as a sending
    MTA would."""
    senders = collections.deque(LOAD_MEMBERS)
    lock = threading.Lock()
    sent: list[str] = []
    refused: list[str] = []
    tempfails: collections.Counter = collections.Counter()
    stop_at = time.monotonic() + 60

    def sender(mx) -> None:
        while True:
            with lock:
                if not senders:
                    return
                member = senders.popleft()
            while True:
                try:
                    r, msg = post(mx, member, subject=f"load {member}")
                except OSError:
                    r, msg = None, b""
                if r is not None and r.final.code == 250:
                    with lock:
                        sent.append(email.message_from_bytes(msg)["Message-ID"])
                    break
                if r is not None and 500 <= r.final.code < 600:
                    with lock:
                        refused.append(f"{member} via {mx.myhostname}: {r.final}")
                    break
                with lock:
                    tempfails[str(r.final) if r is not None else "no connection"] += 1
                if time.monotonic() > stop_at:
                    with lock:
                        refused.append(f"{member}: still no 250 after 60 s")
                    return
                time.sleep(0.5)  # an MTA's retry, shortened

    threads = [threading.Thread(target=sender, args=(mx,)) for mx in topology.mx
               for _ in range(4)]
    for t in threads:
        t.start()
    marks = [topology.daemons[0].log_size(), topology.daemons[1].log_size()]
    start = time.monotonic()
    while len(senders) > len(LOAD_MEMBERS) * 0.65:
        time.sleep(0.05)
    topology.pg.restart()  # a quick restart: the pool's wait covers it
    restarted = time.monotonic() - start
    while len(senders) > len(LOAD_MEMBERS) * 0.3:
        time.sleep(0.05)
    topology.pg.stop()  # and an outage longer than connect_timeout: 451s
    time.sleep(3)
    topology.pg.start()
    outage = time.monotonic() - start
    for t in threads:
        t.join(90)
    assert not refused, refused
    assert len(sent) == len(LOAD_MEMBERS)
    seen = wait_delivered(smtp_sink, set(sent))
    lost = [m for m in sent if m not in seen]
    duplicated = [m for m, n in seen.items() if n > 1]
    print(f"{len(sent)} posts through 2 MX hosts in {time.monotonic() - start:.1f} s, "
          f"PostgreSQL restarted at {restarted:.1f} s and down until {outage:.1f} s: "
          f"{sum(tempfails.values())} tempfails retried {dict(tempfails)}")
    assert (lost, duplicated) == ([], [])
    # the outage was answered by listgate's 451 (the backend error path), and said so
    # in the log; never the MTA's own 451 4.7.1 for a milter that failed (a worker
    # crashing in libpq, say)
    assert tempfails and all(k.startswith("451 4.3.0") for k in tempfails), tempfails
    for d, mark in zip(topology.daemons, marks, strict=True):
        d.wait_for_log(r"TEMPFAIL: .*backend error: postgresql host=", since=mark)
        assert "killed by signal" not in d.log_text(mark)
    # both daemons are still answering from the database
    assert [post(mx, "old@pass.test")[0].final.code for mx in topology.mx] == [250, 250]
