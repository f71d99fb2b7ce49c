"""End to end: real traffic through a private Postfix and the real daemon, then what
an operator reads: ``listgate report`` on the daemon's log (also after logrotate
moved and gzip'ed it), the Prometheus endpoint scraped over HTTP, and ``listgate
config check`` against the daemon's config, its SQLite store and dnsmasq."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request

import infra
import pytest
from lgdaemon import LISTGATE, ListgateDaemon
from test_postfix import BAD_IP, GOOD_IP, LIST, MEMBER, OTHER

from listgate.logfile import REOPEN_CHECK_SECONDS

DNS = {
    "txt": {
        "pass.test": "v=spf1 ip4:127.0.0.2 -all",
        "fail.test": "v=spf1 ip4:127.0.0.99 -all",
        "y.test": "v=spf1 ip4:127.0.0.0/8 -all",
    },
}


@pytest.fixture(scope="module")
def dns(dns_factory):
    return dns_factory(**DNS)


@pytest.fixture(scope="module")
def daemon(dns):
    port = infra.free_port()
    d = ListgateDaemon(nameservers=dns.nameservers, config=(
        "[network]\ninternal_connect = 127.0.0.1/32\n"
        f"[metrics]\nlisten = 127.0.0.1:{port}\n"))
    d.metrics_url = f"http://127.0.0.1:{port}/metrics"
    d.cli("lists", "create", LIST)
    d.cli("lists", "create", OTHER)
    d.cli("members", "add", LIST, MEMBER)
    d.cli("members", "add", OTHER, MEMBER)
    d.start()
    d.wait_for_log(r"metrics: serving http://127\.0\.0\.1:\d+/metrics")
    yield d
    d.close()


@pytest.fixture(scope="module")
def mta(daemon, session_postfix_factory):
    return session_postfix_factory(milter=daemon.postfix_milter)


def send(mta, *, frm: str, mail_from: str, rcpts: list[str], helo: str = "mail.pass.test",
         source_ip: str = GOOD_IP):
    msg = infra.make_message(from_=frm, to=", ".join(rcpts), subject="hi")
    return infra.smtp_transaction("127.0.0.1", mta.port, helo=helo, mail_from=mail_from,
                                  rcpts=rcpts, message=msg, source_ip=source_ip)


def report(daemon: ListgateDaemon, *args: str) -> dict:
    r = subprocess.run([*LISTGATE, "-c", str(daemon.cfg_path), "report", "--json", *args],
                       capture_output=True, timeout=60, check=True)
    return json.loads(r.stdout)


def scrape(daemon: ListgateDaemon) -> dict[str, float]:
    """The endpoint's samples as {'name{labels}': value}."""
    with urllib.request.urlopen(daemon.metrics_url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+(?:\{[^}]*\})?) (\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def traffic(daemon, mta) -> None:
    """One of each: accepted, rejected by the list, SPF fail, bare-IP HELO, deferred."""
    mark = daemon.log_size()
    r = send(mta, frm=MEMBER, mail_from=MEMBER, rcpts=[LIST])
    assert r.data.code == 250, r.steps()
    r = send(mta, frm="stranger@y.test", mail_from="stranger@y.test", rcpts=[LIST])
    assert r.data.code == 550, r.steps()
    r = send(mta, frm="x@fail.test", mail_from="x@fail.test", rcpts=[LIST], source_ip=BAD_IP)
    assert r.mail.code == 550 and "5.7.23" in r.mail.text, r.steps()
    r = send(mta, frm=MEMBER, mail_from=MEMBER, rcpts=[LIST], helo="127.0.0.3",
             source_ip=BAD_IP)
    assert r.mail.code == 550 and "bare IP" in r.mail.text, r.steps()
    r = send(mta, frm=MEMBER, mail_from=MEMBER, rcpts=[LIST, OTHER])
    assert [x.code for x in r.rcpts] == [250, 452] and r.data.code == 250, r.steps()
    daemon.wait_for_log(r"DEFER: rcpt to <ops@lists\.test>", since=mark)
    daemon.wait_for_log(r"(?s)DEFER.*ACCEPT: list=dev@lists\.test", since=mark)


def test_report_metrics_and_rotation(daemon, mta):
    traffic(daemon, mta)
    r = report(daemon)
    assert r["files"] == [str(daemon.log_path)]
    assert r["total"] == {"accepted": 2, "rejected": 3, "deferred": 1, "tempfailed": 0,
                          "observed": 0}
    assert r["lists"][LIST]["accepted"] == 2 and r["lists"][LIST]["rejected"] == 1
    assert r["lists"][OTHER]["deferred"] == 1
    reasons = {(x["outcome"], x["reason"]): x["count"] for x in r["reasons"]}
    assert reasons[("rejected", "hold(nonmember)")] == 1
    assert reasons[("rejected", "SPF fail")] == 1
    assert reasons[("rejected", "HELO is a bare IP")] == 1
    assert {x["sender"]: x["count"] for x in r["top_rejected_senders"]} == {
        "stranger@y.test": 1, "x@fail.test": 1, MEMBER: 1}
    assert r["top_rejected_networks"] == [{"network": "127.0.0.0/24", "count": 3}]

    m = scrape(daemon)
    assert m['listgate_verdicts_total{outcome="accepted",reason="member-moderation"}'] == 2
    assert m['listgate_verdicts_total{outcome="rejected",reason="hold(nonmember)"}'] == 1
    assert m['listgate_verdicts_total{outcome="rejected",reason="SPF fail"}'] == 1
    assert m['listgate_verdicts_total{outcome="rejected",reason="HELO is a bare IP"}'] == 1
    assert m['listgate_verdicts_total{outcome="deferred",reason="one list per transaction"}'] == 1
    assert m['listgate_spf_results_total{identity="mailfrom",result="fail"}'] == 1
    assert m['listgate_spf_results_total{identity="mailfrom",result="pass"}'] == 3
    # every RCPT to a list and every verdict asked the backend (or its cache)
    looked_up = (m['listgate_cache_hits_total{cache="list"}']
                 + m['listgate_cache_misses_total{cache="list"}'])
    assert looked_up == 4  # LIST x3 (member, nonmember, two-list), OTHER x1
    assert m['listgate_backend_seconds_count{op="find_list",outcome="ok"}'] == \
        m['listgate_cache_misses_total{cache="list"}'] > 0
    assert m['listgate_backend_seconds_count{op="list_facts",outcome="ok"}'] >= 1

    # logrotate (no copytruncate): move the file away; the daemon's WatchedFileHandler
    # reopens listgate.log for the next line; then the rotated file is compressed
    rotated = f"{daemon.log_path}.1"
    os.rename(daemon.log_path, rotated)
    time.sleep(REOPEN_CHECK_SECONDS)  # the daemon looks for a moved log once per second
    mark = 0
    r2 = send(mta, frm="late@y.test", mail_from="late@y.test", rcpts=[LIST])
    assert r2.data.code == 550
    daemon.wait_for_log(r"REJECT: list=dev@lists\.test .*senders=late@y\.test", since=mark)
    with open(rotated, "rb") as src, gzip.open(f"{rotated}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(rotated)
    r = report(daemon)
    assert r["files"] == [f"{rotated}.gz", str(daemon.log_path)]
    assert r["total"]["rejected"] == 4 and r["total"]["accepted"] == 2
    assert r["lists"][LIST]["rejected"] == 2
    # only the new file
    r = report(daemon, str(daemon.log_path))
    assert r["total"]["rejected"] == 1 and r["total"]["accepted"] == 0
    # the text report and the chart, as an admin runs them
    png = daemon.dir / "rejections.png"
    out = subprocess.run([*LISTGATE, "-c", str(daemon.cfg_path), "report", "--since", "1h",
                          "--chart", str(png)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^{re.escape(LIST)}\s+2\s+2\s+0\s+0\s+0$", out.stdout, re.M), out.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert scrape(daemon)['listgate_verdicts_total{outcome="rejected",'
                          'reason="hold(nonmember)"}'] == 2


def test_config_check_against_the_daemon_config(daemon, dns):
    out = daemon.cli("config", "check", "--json", "--resolve", "pass.test")
    r = json.loads(out.stdout)
    assert r["ok"] is True and r["backend"] == {"name": "sqlite", "ok": True,
                                                "ms": r["backend"]["ms"]}
    assert r["dns"]["answer"] == ["v=spf1 ip4:127.0.0.2 -all"]
    assert r["dns"]["nameservers"] == [dns.nameservers.replace(" ", "")]
    assert [li["list"] for li in r["lists"]] == [LIST, OTHER]
    assert r["lists"][0]["nonmember_post"]["answer"] == (
        "550 5.7.2 You are not permitted to post to dev@lists.test. "
        "Contact dev-owner@lists.test for help.")
    # the default test name is the first list's domain; dnsmasq knows no TXT there
    text = daemon.cli("config", "check").stdout.decode()
    assert "lists.test TXT -> " in text and "ERROR" not in text
    # DNS down: exit 1 and the error
    cfg = daemon.dir / "nodns.cfg"
    cfg.write_text(daemon.cfg_path.read_text().replace(
        f"nameservers = {dns.nameservers}", f"nameservers = 127.0.0.1:{infra.free_port(True)}"))
    bad = subprocess.run([*LISTGATE, "-c", str(cfg), "config", "check"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "TXT: ERROR" in bad.stdout and "dns not usable" in bad.stderr
