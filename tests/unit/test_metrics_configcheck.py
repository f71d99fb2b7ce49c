"""[metrics] (config, counters fed from log records, backend timing) and
``listgate config check`` against a real SQLite store."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from listgate import cli, config
from listgate.backends import open_backend
from listgate.engine import Engine
from listgate.metrics import Metrics, TimedBackend, install
from listgate.model import BackendError


@pytest.mark.parametrize(("raw", "value"), [
    ("", None),
    ("127.0.0.1:9477", ("127.0.0.1", 9477)),
    ("[::1]:9477", ("::1", 9477)),
    ("localhost:80", ("localhost", 80)),
])
def test_metrics_listen_valid(raw: str, value: object) -> None:
    assert config.parse(f"[metrics]\nlisten = {raw}\n").metrics.listen == value


@pytest.mark.parametrize(("raw", "problem"), [
    ("9477", "expected HOST:PORT"),
    ("::1:9477", "expected HOST:PORT"),
    ("[nothex]:1", "expected HOST:PORT"),
    ("[1.2.3.4]:1", "not an IPv6 address"),
    ("127.0.0.1:70000", "out of range"),
    ("127.0.0.1:0", "out of range"),
])
def test_metrics_listen_invalid(raw: str, problem: str) -> None:
    with pytest.raises(config.ConfigError, match=rf"x.cfg: \[metrics\] listen: .*{problem}"):
        config.parse(f"[metrics]\nlisten = {raw}\n", "x.cfg")


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


CTX = "; client=mail.test[192.0.2.1] class=EXTERNAL helo=<mail.test> from=<a@b.test> spf="


def test_verdict_and_spf_counters_from_log_messages() -> None:
    m = Metrics()
    for msg in [
        "[1] SPF temperror identity=mailfrom: DNS timeout",  # debug detail: not counted
        "[1] TEMPFAIL: SPF temperror (451 4.7.24 SPF temperror for a@b.test: x; try again "
        "later)" + CTX + "temperror",
        "[2] SPF pass identity=mailfrom: ok",
        "[2] 9B5: ACCEPT: list=dev@lists.test verdict=accept rule=member-moderation "
        "senders=m@pass.test: member" + CTX + "pass",
        "[3] 9B6: REJECT: list=dev@lists.test verdict=hold(nonmember) rule=nonmember-moderation "
        "senders=s@y.test: nonmember (550 5.7.1 no)" + CTX + "pass",
        "[3] 9B7: REJECT: list=dev@lists.test verdict=hold(nonmember) rule=nonmember-moderation "
        "senders=t@y.test: nonmember (550 5.7.1 no)" + CTX + "softfail",
        "[4] ACCEPT: no list recipient; client=x[192.0.2.2] class=EXTERNAL helo=<x> from=<> "
        "spf=none",
        "[5] ACCEPT: no list recipient; client=localhost[local] class=INTERNAL helo=<x> "
        "from=<a@b.test> spf=-",
        "stats: list cache 1 hits/2 misses",  # daemon-wide: no event
        "[5] hello from mail.test",
    ]:
        m.observe_message(msg, 0.0, "INFO")
    assert sample(m, "listgate_spf_results_total", result="temperror",
                  identity="mailfrom") == 1
    assert sample(m, "listgate_spf_results_total", result="pass", identity="mailfrom") == 2
    assert sample(m, "listgate_spf_results_total", result="none", identity="helo") == 1
    assert sample(m, "listgate_verdicts_total", outcome="tempfailed", reason="SPF temperror") == 1
    assert sample(m, "listgate_verdicts_total", outcome="accepted",
                  reason="member-moderation") == 1
    assert sample(m, "listgate_verdicts_total", outcome="rejected",
                  reason="hold(nonmember)") == 2
    assert sample(m, "listgate_verdicts_total", outcome="accepted",
                  reason="no list recipient") == 2
    # no sender, IP or list in any label: bounded cardinality
    text = generate_latest(m.registry).decode()
    assert "s@y.test" not in text and "dev@lists.test" not in text


def test_list_label_is_optional() -> None:
    m = Metrics(list_label=True)
    m.known_lists.add("dev@lists.test")  # what TimedBackend notes from find_list
    m.observe_message("[3] REJECT: list=dev@lists.test verdict=reject rule=nonmember-moderation "
                      "senders=s@y.test: r (550 5.7.1 no)", 0.0, "INFO")
    m.observe_message("[4] REJECT: SPF fail (550 5.7.23 no)", 0.0, "INFO")
    assert sample(m, "listgate_verdicts_total", outcome="rejected", reason="reject",
                  list="dev@lists.test") == 1
    assert sample(m, "listgate_verdicts_total", outcome="rejected", reason="SPF fail",
                  list="") == 1
    # a client's recipient text shaped like a list name never becomes a label
    m.observe_message("[5] DEFER: rcpt to <a> list=evil@x.test> list=dev@lists.test: one list "
                      "post per transaction (452 4.5.3 x)", 0.0, "INFO")
    m.observe_message("[6] DEFER: rcpt to <x> list=evil@x.test>: one list post per "
                      "transaction (452 4.5.3 x)", 0.0, "INFO")
    assert sample(m, "listgate_verdicts_total", outcome="deferred",
                  reason="one list per transaction", list="dev@lists.test") == 1
    assert sample(m, "listgate_verdicts_total", outcome="deferred",
                  reason="one list per transaction", list="") == 1
    assert "evil" not in generate_latest(m.registry).decode()


class FlakyBackend:
    name = "flaky"
    caches_itself = False

    def find_list(self, address: str) -> str | None:
        if address.startswith("boom"):
            raise BackendError("down")
        return address if address.startswith("dev@") else None

    def list_facts(self, *args: object) -> None:
        return None


def test_timed_backend_observes_latency_and_errors() -> None:
    m = Metrics()
    b = TimedBackend(FlakyBackend(), m.backend_seconds)
    assert b.find_list("dev@x.test") == "dev@x.test"
    with pytest.raises(BackendError):
        b.find_list("boom@x.test")
    assert b.name == "flaky"
    assert sample(m, "listgate_backend_seconds_count", op="find_list", outcome="ok") == 1
    assert sample(m, "listgate_backend_seconds_count", op="find_list", outcome="error") == 1


def test_install_counts_through_the_logger_and_keeps_the_log_level(tmp_path: Path) -> None:
    db = tmp_path / "db"
    cfg = config.parse(f"[sqlite]\npath = {db}\n[metrics]\nlisten = 127.0.0.1:1\n"
                       "[milter]\nlog_level = warning\n")
    cfg_path = _write(tmp_path, f"[sqlite]\npath = {db}\n")
    assert cli.main(["-c", cfg_path, "db", "init"]) == 0
    assert cli.main(["-c", cfg_path, "lists", "create", "dev@lists.test"]) == 0
    log = logging.getLogger("listgate.test-metrics")
    log.propagate = False
    stream = tmp_path / "log"
    handler = logging.FileHandler(stream)
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING)
    engine = Engine(cfg, open_backend(cfg), None, lambda _h, _i: False, log)
    m = install(cfg, engine, log)
    s = engine.session("7")
    s.connect("[192.0.2.1]", "192.0.2.1")
    s.helo("1.2.3.4")
    s.mail("a@b.test")  # refused: a bare IP HELO (logged at INFO)
    s.rcpt("dev@lists.test")
    assert sample(m, "listgate_verdicts_total", outcome="rejected",
                  reason="HELO is a bare IP") == 1
    assert sample(m, "listgate_backend_seconds_count", op="find_list", outcome="ok") == 1
    assert sample(m, "listgate_cache_misses_total", cache="list") == 1
    s.rcpt("dev@lists.test")
    assert sample(m, "listgate_cache_hits_total", cache="list") == 1
    handler.flush()
    assert stream.read_text() == ""  # the log stays at warning
    engine.backend.close()


def test_metrics_off_costs_nothing_not_even_an_import() -> None:
    """The daemon imports neither listgate.metrics nor prometheus_client: the only
    hook is an `if cfg.metrics.listen:` in serve()."""
    import subprocess

    code = ("import sys, listgate.daemon, listgate.cli; "
            "print(sorted(m for m in sys.modules if 'prometheus' in m or m == 'listgate.metrics'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_missing_prometheus_client_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(config.ConfigError, match=r"listgate\[metrics\]"):
        Metrics()


# ---------------------------------------------------------------- config check


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "listgate.cfg"
    p.write_text(text)
    return str(p)


def test_config_check_invalid_config_exits_2(tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path, "[metrics]\nlisten = nope\n")
    assert cli.main(["config", "check", "-c", cfg]) == 2
    assert "[metrics] listen: expected HOST:PORT" in capsys.readouterr().err


def test_config_check_unreachable_backend_exits_1(tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path, f"[sqlite]\npath = {tmp_path}/missing/db\n"
                           "[dns]\nnameservers = 127.0.0.1:9\ntimeout = 0.2\n")
    assert cli.main(["config", "check", "-c", cfg, "--json", "--resolve", "x.test"]) == 1
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert r["backend"]["ok"] is False and "sqlite" in r["backend"]["error"]
    assert "backend and dns not usable" in captured.err


def test_config_check_lists_and_unknown_sections(tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path, f"[sqlite]\npath = {tmp_path}/db\n"
                           f"[milter]\nsocket = unix:{tmp_path}/s.sock\n"
                           "[dns]\nnameservers = 127.0.0.1:9\ntimeout = 0.2\n"
                           "[lists]\ninternal_only = board@lists.test\n"
                           "[list:dev@lists.test]\nnonmember_hold_action = tempfail\n"
                           "[list:gone@lists.test]\nmember_hold_action = reject\n")
    assert cli.main(["-c", cfg, "db", "init"]) == 0
    for name in ("dev@lists.test", "board@lists.test"):
        assert cli.main(["-c", cfg, "lists", "create", name]) == 0
    capsys.readouterr()
    rc = cli.main(["config", "check", "-c", cfg, "--json", "--resolve", "x.test",
                   "--no-postfix"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 1 and r["dns"]["ok"] is False  # nothing answers on port 9
    assert r["backend"]["ok"] is True
    lists = {li["list"]: li for li in r["lists"]}
    assert lists["dev@lists.test"]["overrides"] == ["nonmember_hold_action"]
    assert lists["dev@lists.test"]["nonmember_post"] == {
        "list_verdict": "hold(nonmember)",
        "reasons": ["nonmember nonmember@listgate.invalid: default_nonmember_action hold"],
        "answer": "451 4.7.2 Your post to dev@lists.test awaits moderation; try again later"}
    assert lists["board@lists.test"]["internal_only"] is True
    assert lists["board@lists.test"]["external_post"] == (
        "550 5.7.2 board@lists.test accepts posts from inside lists.test only")
    assert r["warnings"] == [
        "[list:gone@lists.test]: the backend has no such list; the section has no effect",
        f"[milter] socket: nothing listens on unix:{tmp_path}/s.sock (No such file "
        "or directory): listgate is not running, or another config is; the MTA applies its "
        "default action until it does"]
    assert "postfix" not in r["mta"]


def test_start_serves_and_a_busy_port_only_logs(tmp_path: Path, caplog) -> None:
    import socket
    import urllib.request

    from listgate.metrics import start

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = config.parse(f"[sqlite]\npath = {tmp_path}/db\n[metrics]\n"
                           f"listen = 127.0.0.1:{port}\n")
        log = logging.getLogger("listgate.test-start")
        engine = Engine(cfg, open_backend(cfg), None, lambda _h, _i: False, log)
        with caplog.at_level(logging.INFO, logger="listgate.test-start"):
            assert start(cfg, engine, log) is not None
        assert f"metrics: cannot listen on 127.0.0.1:{port}" in caplog.text
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config.parse(f"[sqlite]\npath = {tmp_path}/db\n[metrics]\nlisten = 127.0.0.1:{port}\n")
    engine = Engine(cfg, open_backend(cfg), None, lambda _h, _i: False, log)
    start(cfg, engine, log)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'listgate_cache_misses_total{cache="list"} 0.0' in text
    assert "listgate_info{version=" in text
