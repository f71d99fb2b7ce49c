"""``listgate report`` and the log reader behind it: counts, reasons, rotation, and
never a crash on garbage (truncated lines, undecodable bytes, broken gzip)."""

from __future__ import annotations

import gzip
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import pytest

from listgate import cli, report
from listgate.logparse import normalize_reason, parse_line, verdict

REJECT_TEXT = ("550 5.7.2 You are not permitted to post to dev@lists.test. "
               "Contact dev-owner@lists.test for help.")

#: one daemon run, in the exact shapes engine.py writes (README "The log")
RUN1 = f"""\
2026-11-22 05:00:00,001 INFO listgate 0.1.0 starting: socket=unix:/x mode=enforce backend=sqlite
2026-11-22 05:12:22,628 INFO [1] connect from [192.0.2.7] at 192.0.2.7 EXTERNAL DYN
2026-11-22 05:12:22,628 INFO [1] hello from mail.pass.test
2026-11-22 05:12:22,629 INFO [1] mail from <bounce@pass.test>
2026-11-22 05:12:22,631 INFO [1] SPF pass identity=mailfrom: sender SPF authorized
2026-11-22 05:12:22,632 INFO [1] rcpt to <dev@lists.test> list=dev@lists.test
2026-11-22 05:12:22,637 INFO [1] 9B54316009B: ACCEPT: list=dev@lists.test verdict=accept rule=member-moderation senders=m@pass.test,bounce@pass.test: member m@pass.test: default_member_action defer -> accept
2026-11-22 05:12:22,640 INFO [2] connect from [192.0.2.8] at 192.0.2.8 EXTERNAL DYN
2026-11-22 05:12:22,641 INFO [2] mail from <stranger@y.test>
2026-11-22 05:12:22,645 INFO [2] 9D4AD160003: REJECT: list=dev@lists.test verdict=hold(nonmember) rule=nonmember-moderation senders=stranger@y.test: nonmember stranger@y.test: default_nonmember_action hold ({REJECT_TEXT})
2026-11-22 05:40:00,000 INFO [3] connect from [2001:db8:1:2::9] at 2001:db8:1:2::9 EXTERNAL DYN
2026-11-22 05:40:00,001 INFO [3] mail from <x@fail.test>
2026-11-22 05:40:00,002 INFO [3] SPF fail identity=mailfrom: SPF fail - not authorized
2026-11-22 05:40:00,003 INFO [3] REJECT: SPF fail (550 5.7.23 SPF fail for x@fail.test: SPF fail - not authorized)
2026-11-22 06:01:00,000 INFO [4] connect from mx.pass.test at 192.0.2.9 EXTERNAL
2026-11-22 06:01:00,001 INFO [4] mail from <>
2026-11-22 06:01:00,002 INFO [4] REJECT: numeric hello name: 192.0.2.9 (550 5.7.1 HELO name cannot be a bare IP address; use a host name)
2026-11-22 06:01:00,003 INFO [4] DEFER: rcpt to <ops@lists.test> list=ops@lists.test: one list post per transaction (452 4.5.3 Please send each list post in a separate transaction)
2026-11-22 06:02:23,101 WARNING [5] TEMPFAIL: rcpt to <dev@lists.test>: backend error: sqlite /var/lib/listgate/listgate.db: file is not a database (451 4.3.0 Temporary failure looking up the recipient list; try again later)
"""  # noqa: E501 - log lines are long
#: the daemon restarted: connection [1] is a new client
RUN2 = f"""\
2026-11-22 07:00:00,000 INFO listgate 0.1.0 starting: socket=unix:/x mode=enforce backend=sqlite
2026-11-22 07:00:01,000 INFO [1] connect from [198.51.100.20] at 198.51.100.20 EXTERNAL DYN
2026-11-22 07:00:01,001 INFO [1] mail from <other@y.test>
2026-11-22 07:00:01,002 INFO [1] 1A2B3C: REJECT: list=dev@lists.test verdict=hold(nonmember) rule=nonmember-moderation senders=other@y.test: nonmember other@y.test: default_nonmember_action hold ({REJECT_TEXT})
"""  # noqa: E501 - log lines are long


def run_report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    rc = cli.main(["report", "--json", *args])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip() else {}


def test_counts_reasons_senders_networks(tmp_path: Path, capsys) -> None:
    log = tmp_path / "listgate.log"
    log.write_text(RUN1 + RUN2)
    rc, r = run_report(capsys, str(log))
    assert rc == 0
    assert r["total"] == {"accepted": 1, "rejected": 4, "deferred": 1, "tempfailed": 1,
                          "observed": 0}
    dev = r["lists"]["dev@lists.test"]
    assert (dev["accepted"], dev["rejected"]) == (1, 2)
    assert r["lists"]["ops@lists.test"]["deferred"] == 1
    assert r["lists"][report.NO_LIST]["rejected"] == 2  # refused at MAIL: no list known yet
    reasons = {(x["outcome"], x["reason"]): x["count"] for x in r["reasons"]}
    assert reasons == {("rejected", "hold(nonmember)"): 2, ("rejected", "SPF fail"): 1,
                       ("rejected", "HELO is a bare IP"): 1,
                       ("deferred", "one list per transaction"): 1,
                       ("tempfailed", "backend error"): 1,
                       ("accepted", "member-moderation"): 1}
    senders = {x["sender"]: x["count"] for x in r["top_rejected_senders"]}
    assert senders == {"stranger@y.test": 1, "other@y.test": 1, "x@fail.test": 1, "<>": 1}
    # the restart reset the connection ids: [1] after it is 198.51.100.20, not 192.0.2.7
    nets = {x["network"]: x["count"] for x in r["top_rejected_networks"]}
    assert nets == {"192.0.2.0/24": 2, "2001:db8:1:2::/64": 1, "198.51.100.0/24": 1}
    assert (r["first"], r["last"]) == ("2026-11-22 05:12:22", "2026-11-22 07:00:01")


def test_since_until_and_v6_prefix(tmp_path: Path, capsys) -> None:
    log = tmp_path / "listgate.log"
    log.write_text(RUN1)
    rc, r = run_report(capsys, "--since", "2026-11-22 05:30", "--until", "2026-11-22T06:01",
                       "--v6-prefix", "48", str(log))
    assert rc == 0
    assert r["total"]["rejected"] == 1
    assert r["top_rejected_networks"] == [{"network": "2001:db8:1::/48", "count": 1}]


def test_parse_when_relative_and_bad() -> None:
    now = datetime(2026, 11, 22, 12, 0, 0)
    assert report.parse_when("24h", now) == datetime(2026, 11, 21, 12, 0, 0)
    assert report.parse_when("7d", now) == datetime(2026, 11, 15, 12, 0, 0)
    assert report.parse_when("90m", now) == datetime(2026, 11, 22, 10, 30, 0)
    assert report.parse_when("2026-11-01") == datetime(2026, 11, 1)
    with pytest.raises(ValueError, match="neither a date"):
        report.parse_when("yesterday")


def test_bad_since_is_a_usage_error(tmp_path: Path, capsys) -> None:
    log = tmp_path / "l"
    log.write_text(RUN1)
    assert cli.main(["report", "--since", "soon", str(log)]) == 2
    assert "neither a date" in capsys.readouterr().err


def test_garbage_truncated_and_undecodable_lines_never_crash(tmp_path: Path, capsys) -> None:
    lines = RUN1.encode().splitlines(keepends=True)
    junk = [
        b"\x00\xff\xfe garbage \x80\x81\n",
        b"2026-11-22 05:12:22,645 INFO [9] 9D4AD160003: REJECT: list=dev@lists.test verd\n",
        b"2026-11-22 05:12:22,645 INFO [9] REJECT: \n",
        b"2026-13-45 99:99:99,000 INFO [1] REJECT: SPF fail (550 5.7.23 x)\n",
        b"Traceback (most recent call last):\n",
        b'  File "x.py", line 1, in <module>\n',
        b"2026-11-22 05:12:22,645 INFO [9] mail from <caf\xc3\xa9\xff@x.test>\n",
        b"2026-11-22 05:12:22,646 INFO [9] REJECT: SPF fail (550 5.7.23 SPF fail for\n",
        b"2026-11-22 05:12:22,647 INFO [\n",
        b"2026-11-22 05:12:22,648 INFO [10] connect from \n",
        b"2026-11-22 05:12:22,649 ERROR [10] internal error in eom\n",
    ]
    log = tmp_path / "listgate.log"
    log.write_bytes(b"".join(lines[:5] + junk + lines[5:]) + b"2026-11-22 06:03:00,000 INFO [")
    rc, r = run_report(capsys, str(log))
    assert rc == 0
    assert r["unparsed"] == 4  # junk, Traceback, File, bad date (cut lines of ours: no event)
    # the truncated verdict lines still count; the cut reply is simply not a reply
    assert r["total"]["rejected"] == 4 + 2
    assert r["total"]["tempfailed"] == 1 + 1  # the internal error answered 451
    senders = {x["sender"] for x in r["top_rejected_senders"]}
    assert "caf\u00e9\ufffd@x.test" in senders


def test_rotations_in_time_order_with_gzip(tmp_path: Path, capsys) -> None:
    log = tmp_path / "listgate.log"
    with gzip.open(f"{log}.2.gz", "wt") as f:
        f.write(RUN1.split("2026-11-22 05:40")[0])
    Path(f"{log}.1").write_text("2026-11-22 05:40" + RUN1.split("2026-11-22 05:40", 1)[1])
    log.write_text(RUN2)
    (tmp_path / "listgate.log.bak").write_text(RUN2)  # not a rotation
    assert report.rotated_files(str(log)) == [f"{log}.2.gz", f"{log}.1", str(log)]
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[milter]\nlog_file = {log}\n")
    rc, r = run_report(capsys, "-c", str(cfg))
    assert rc == 0
    assert r["files"] == [f"{log}.2.gz", f"{log}.1", str(log)]
    assert r["total"]["rejected"] == 4
    # the connection opened in .2.gz is continued in .1: one stream
    nets = {x["network"] for x in r["top_rejected_networks"]}
    assert "198.51.100.0/24" in nets


def test_truncated_gzip_reads_what_is_there(tmp_path: Path, capsys) -> None:
    data = gzip.compress(RUN1.encode() * 50)
    log = tmp_path / "listgate.log.1.gz"
    log.write_bytes(data[: len(data) // 2])
    rc, r = run_report(capsys, str(log))
    assert rc == 0
    assert "truncated or corrupt" in capsys.readouterr().err or r["lines"] > 0
    assert r["total"]["rejected"] > 0


def test_no_log_file_configured(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.cfg"
    cfg.write_text("[milter]\nlog_file = -\n")
    assert cli.main(["report", "-c", str(cfg)]) == 2
    assert "log_file is -" in capsys.readouterr().err
    cfg.write_text(f"[milter]\nlog_file = {tmp_path}/none.log\n")
    assert cli.main(["report", "-c", str(cfg)]) == 1


def test_text_output(tmp_path: Path, capsys) -> None:
    log = tmp_path / "listgate.log"
    log.write_text(RUN1)
    assert cli.main(["report", str(log)]) == 0
    out = capsys.readouterr().out
    assert "dev@lists.test" in out and "Top reasons:" in out
    total = next(line for line in out.splitlines() if line.startswith("TOTAL"))
    assert total.split()[1:] == ["1", "3", "1", "1", "0"]


def test_chart_png(tmp_path: Path, capsys) -> None:
    log = tmp_path / "listgate.log"
    log.write_text(RUN1 + RUN2)
    png = tmp_path / "rejections.png"
    rc, _r = run_report(capsys, "--chart", str(png), str(log))
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_without_matplotlib_names_the_extra(tmp_path: Path, capsys,
                                                  monkeypatch) -> None:
    log = tmp_path / "listgate.log"
    log.write_text(RUN1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert cli.main(["report", "--chart", str(tmp_path / "x.png"), str(log)]) == 2
    assert "listgate[chart]" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.png")


@pytest.mark.parametrize(("text", "name"), [
    ("numeric hello name: 1.2.3.4", "HELO is a bare IP"),
    ("spam from self: mx.example.org", "HELO is ours"),
    ("no HELO before MAIL FROM", "no HELO"),
    ("PTR is localhost from non-loopback IP 192.0.2.1", "bogus PTR"),
    ("hello SPF fail", "HELO SPF fail"),
    ("SPF permerror", "SPF permerror"),
    ("external client using internal domain corp.example", "forged internal domain"),
    ("list=a@b.test accepts posts from INTERNAL clients or trusted submission paths only; "
     "client 192.0.2.1 is EXTERNAL", "internal-only list"),
    ("list=a@b.test internal-only, path not trusted: client is not a relay",
     "internal-only list, untrusted path"),
    ("list=a@b.test verdict=hold(member) rule=emergency senders=a@x.test: emergency",
     "hold(member)"),
    ("list=a@b.test verdict=discard rule=banned-address senders=a@x.test: banned", "discard"),
    ("list=a@b.test verdict=tempfail rule=approved senders=a@x.test: password not checked",
     "tempfail"),
    ("something new in a later version", "other"),
])
def test_normalize_reason(text: str, name: str) -> None:
    assert normalize_reason(text) == name


def test_queue_id_is_not_confused_with_a_tag() -> None:
    line = parse_line("2026-11-22 05:12:22,647 INFO [3] REJECT: SPF fail (550 5.7.23 x y)")
    assert line is not None and line.qid is None
    e = verdict(line)
    assert e is not None and (e.outcome, e.reason, e.reply) == ("rejected", "SPF fail",
                                                                "550 5.7.23 x y")
    line = parse_line("2026-11-22 05:12:22,647 INFO [3] 4Xy9Zq1bcDz: trust: path trusted")
    assert line is not None and line.qid == "4Xy9Zq1bcDz" and verdict(line) is None


def test_observe_lines_count_as_observed() -> None:
    line = parse_line("2026-11-22 05:12:22,647 INFO [3] OBSERVE: would REJECT at helo: "
                      "numeric hello name: 1.2.3.4 (550 5.7.1 HELO name cannot be a bare IP "
                      "address; use a host name)")
    e = verdict(line)  # type: ignore[arg-type]
    assert e is not None and (e.outcome, e.reason) == ("observed", "HELO is a bare IP")
    line = parse_line("2026-11-22 05:12:22,647 INFO [3] OBSERVE: require_authenticated_sender "
                      "would make list=a@b.test hold instead of accept: x")
    assert verdict(line) is None  # type: ignore[arg-type]


def test_reply_text_with_parentheses() -> None:
    line = parse_line("2026-11-22 05:12:22,647 INFO [3] REJECT: list=a@b.test verdict=reject "
                      "rule=nonmember-moderation senders=s@x.test: r (550 5.7.1 Go away (see "
                      "https://x.test/(policy)))")
    e = verdict(line)  # type: ignore[arg-type]
    assert e is not None and e.reply == "550 5.7.1 Go away (see https://x.test/(policy))"
    assert e.reason == "reject" and e.lists == ("a@b.test",)


def test_an_accept_by_a_header_rule_is_named_without_its_list() -> None:
    # the link's name carries the list id; a metrics label must stay a bounded set
    line = parse_line("2026-12-01 05:12:22,637 INFO [1] Q1: ACCEPT: list=dev@lists.test "
                      "verdict=accept rule=header-match-dev.lists.test-0 senders=a@x.test: "
                      "Header \"x-a\" matched; client=a[192.0.2.1] class=EXTERNAL helo=<a> "
                      "from=<a@x.test> spf=pass")
    assert line is not None
    e = verdict(line)
    assert e is not None and (e.outcome, e.reason) == ("accepted", "header-match")
