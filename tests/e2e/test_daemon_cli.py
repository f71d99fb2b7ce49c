"""The daemon and CLI as an admin runs them: start-up errors, signals, log rotation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from lgdaemon import LISTGATE, ListgateDaemon
from miltertest import MilterConnection
from miltertest import constants as C

from listgate.logfile import REOPEN_CHECK_SECONDS


def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LISTGATE, *args], capture_output=True, timeout=60, input=input)


@pytest.mark.parametrize(("text", "message"), [
    ("[spf]\nfail = bounce\n", "[spf] fail: expected one of accept, reject, tempfail"),
    ("[milter]\nsocket = /tmp/x.sock\n", "[milter] socket: expected unix:/path"),
    ("[lists]\nbogus = 1\n", "[lists] bogus: unknown option"),
])
def test_serve_refuses_a_bad_config_before_binding(tmp_path, text, message):
    cfg = tmp_path / "bad.cfg"
    sock = "" if "socket" in text else f"[milter]\nsocket = unix:{tmp_path}/s.sock\n"
    cfg.write_text(sock + text)
    r = run("serve", "-c", str(cfg))
    assert r.returncode == 2
    assert r.stderr.decode().startswith(f"listgate: config error: {cfg}: {message}"), r.stderr
    assert not (tmp_path / "s.sock").exists(), "nothing bound"


def test_missing_config_file(tmp_path):
    r = run("-c", str(tmp_path / "none.cfg"), "serve")
    assert r.returncode == 2
    assert f"{tmp_path}/none.cfg: cannot read: No such file or directory" in r.stderr.decode()


def test_version_and_python_m():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("listgate ")


def test_check_usage_errors(tmp_path):
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[sqlite]\npath = {tmp_path}/db\n")
    r = run("check", "-c", str(cfg), "--client-ip", "not-an-ip", "--mail-from", "a@b.c",
            "--rcpt", "x@y.z")
    assert r.returncode == 2 and "is not an IP address" in r.stderr.decode()
    r = run("check", "-c", str(cfg), "--client-ip", "192.0.2.1", "--mail-from", "a@b.c")
    assert r.returncode == 2 and "--rcpt" in r.stderr.decode()


def test_check_backend_missing_is_a_tempfail_verdict(tmp_path):
    """No database: exit 0 and the daemon's answer (451), not a crash."""
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[sqlite]\npath = {tmp_path}/missing.db\n")
    r = run("check", "-c", str(cfg), "--client-ip", "127.0.0.1", "--mail-from", "a@b.org",
            "--rcpt", "dev@lists.test")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["action"] == "tempfail" and out["stage"] == "rcpt"
    assert out["smtp_reply"].startswith("451 4.3.0")


def _post(d: ListgateDaemon) -> None:
    """One INTERNAL transaction over the daemon's socket (no DNS needed)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(d.socket[5:])
    c = MilterConnection(s)
    c.optneg_mta()
    c._send(C.SMFIC_CONNECT, hostname="localhost", family=C.SMFIA_UNIX, port=0,
            address="/dev/null")
    c._send(C.SMFIC_HELO, helo="localhost")
    assert c.send_ar(C.SMFIC_MAIL, args=["<a@b.org>"])[0] == C.SMFIR_CONTINUE
    assert c.send_ar(C.SMFIC_RCPT, args=["<x@y.org>"])[0] == C.SMFIR_CONTINUE
    c._send(C.SMFIC_HEADER, name="From", value="a@b.org")
    assert c.send_eom()[-1][0] == C.SMFIR_CONTINUE
    s.close()


def test_log_reopened_after_logrotate_and_sigterm_exits_0():
    d = ListgateDaemon()
    d.cli("db", "init")
    d.start()
    try:
        _post(d)
        d.wait_for_log(r"ACCEPT: no list recipient")
        os.rename(d.log_path, str(d.log_path) + ".1")  # what logrotate does
        time.sleep(REOPEN_CHECK_SECONDS)  # the daemon looks once per second
        _post(d)
        d.wait_for_log(r"\[2\] ACCEPT: no list recipient")
        assert "[1]" not in d.log_text(), "new events go to the new file"
        d.proc.send_signal(signal.SIGUSR1)
        d.wait_for_log(r"INFO stats: list cache \d+ hits/\d+ misses, facts cache")
    finally:
        assert d.stop() == 0
    assert "listgate stopped" in d.log_text()
    shutil.rmtree(d.dir, ignore_errors=True)


def test_log_level_info_writes_one_line_per_transaction():
    """At the default level an admin reads one line per message: the verdict, with
    who sent it; the per-stage lines (connect, HELO, MAIL, RCPT) are debug detail."""
    d = ListgateDaemon(config="[milter]\nlog_level = info\n")
    d.cli("db", "init")
    d.start()
    try:
        _post(d)
        line = d.wait_for_log(r"^.* INFO \[1\] ACCEPT: .*$").group(0)
        assert line.endswith("ACCEPT: no list recipient; client=localhost[local] "
                             "class=INTERNAL helo=<localhost> from=<a@b.org> spf=-"), line
        assert [ln for ln in d.log_text().splitlines() if "[1]" in ln] == [line]
    finally:
        assert d.stop() == 0
    shutil.rmtree(d.dir, ignore_errors=True)
