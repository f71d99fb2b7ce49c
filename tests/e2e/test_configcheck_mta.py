"""``listgate config check`` from the MTA's side, against real broken set-ups.

Each test builds the mistake for real -- a socket directory the postfix user cannot
enter, a socket it may not open, a chrooted smtpd with the socket outside the
chroot, a wrong ``smtpd_milters``, a stale socket, ``milter_default_action =
accept``, milter timeouts below listgate's budgets, a sendmail.cf built by m4 from
README.md's lines naming another socket -- shows what a post through that MTA gets
(Postfix's ``milter_default_action``: 451 4.7.1), and reads config check's message
saying what to change.  Postfix is a private instance read with ``--postfix-config``
(``postconf -c``), exactly as ``postconf`` reads /etc/postfix.
"""

from __future__ import annotations

import json
import os
import socket
import time

import infra
import pytest
import sendmail_mta
from lgdaemon import ListgateDaemon

LIST, MEMBER = "dev@lists.test", "m@corp.test"
#: what a client gets when Postfix cannot reach the milter (milter_default_action tempfail)
UNAVAILABLE = "451 4.7.1 Service unavailable - try again later"


def make_daemon(config: str = "", transport: str = "unix", **kw) -> ListgateDaemon:
    d = ListgateDaemon(transport=transport, **kw, config=(
        "[network]\ninternal_connect = 127.0.0.0/8\n" + config))
    d.cli("lists", "create", LIST)
    d.cli("members", "add", LIST, MEMBER)
    return d


@pytest.fixture
def daemon():
    d = make_daemon().start()
    yield d
    d.close()


def config_check(d: ListgateDaemon, pf: infra.PostfixInstance | None, *extra: str
                 ) -> tuple[str, dict]:
    """config check's text and its JSON, for this daemon's config and Postfix ``pf``."""
    where = ["--postfix-config", str(pf.config_dir)] if pf is not None else ["--no-postfix"]
    args = ("config", "check", "--resolve", "localhost", *where, *extra)
    text = d.cli(*args).stdout.decode()
    doc = json.loads(d.cli(*args, "--json").stdout)
    return text, doc


def warnings(text: str) -> list[str]:
    return [line[len("warning: "):] for line in text.splitlines()
            if line.startswith("warning: ")]


def post(pf: infra.PostfixInstance) -> str:
    """A member's post through ``pf``: the first refusal the client reads, or "250"."""
    msg = infra.make_message(from_=MEMBER, to=LIST, subject="hello")
    r = infra.smtp_transaction("127.0.0.1", pf.port, mail_from=MEMBER, rcpts=[LIST],
                               message=msg, helo="mail.corp.test")
    for _stage, reply in r.steps():
        if reply.code >= 400 or reply.code < 0:
            return str(reply)
    return "250"


def test_a_working_set_up_has_no_mta_warning(daemon, postfix_factory):
    pf = postfix_factory(milter=daemon.postfix_milter)
    assert post(pf) == "250"
    text, doc = config_check(daemon, pf)
    assert warnings(text) == []
    assert f"socket {daemon.socket}: listening" in text
    service = f"postfix 127.0.0.1:{pf.port}/inet (not chrooted): smtpd_milters = "
    assert f"{service}{daemon.postfix_milter}: reaches listgate" in text
    assert doc["mta"]["postfix"]["services"][0]["user_may_connect"] is True


def test_socket_directory_the_postfix_user_cannot_enter(daemon, postfix_factory):
    pf = postfix_factory(milter=daemon.postfix_milter)
    os.chmod(daemon.dir, 0o700)  # root's, and only root's
    assert post(pf) == UNAVAILABLE
    text, _ = config_check(daemon, pf)
    assert warnings(text) == [
        f"Postfix smtpd runs as postfix: user postfix cannot enter {daemon.dir} "
        f"(drwx------ root:root): chmod g+x (and add postfix to group root) or chmod o+x "
        f"{daemon.dir}"]
    os.chmod(daemon.dir, 0o711)  # what the message says: o+x is enough
    assert warnings(config_check(daemon, pf)[0]) == []
    assert post(pf) == "250"


def test_socket_the_postfix_user_may_not_open(postfix_factory):
    d = make_daemon("[milter]\numask = 077\n").start()  # srwx------ root:root
    try:
        pf = postfix_factory(milter=d.postfix_milter)
        assert post(pf) == UNAVAILABLE
        text, doc = config_check(d, pf)
        path = d.socket.split(":", 1)[1]
        assert warnings(text) == [
            f"Postfix smtpd runs as postfix: user postfix may not connect to the socket "
            f"{path} (srwx------ root:root): add postfix to group root (adduser postfix "
            f"root; then restart the MTA) or make the socket group- or world-writable "
            f"([milter] umask)"]
        assert doc["mta"]["postfix"]["services"][0]["user_may_connect"] is False
    finally:
        d.close()


def test_chrooted_smtpd_with_the_socket_outside_the_chroot(daemon, postfix_factory):
    pf = postfix_factory(milter=daemon.postfix_milter)
    service = f"127.0.0.1:{pf.port}"
    pf.postconf("-F", f"{service}/inet/chroot=y")  # as Debian's master.cf has it
    infra._run([infra.find_tool("postfix"), "-c", str(pf.config_dir), "reload"])
    deadline = time.monotonic() + 10
    while post(pf) == "250" and time.monotonic() < deadline:  # until the reload is done
        time.sleep(0.2)
    assert post(pf) == UNAVAILABLE
    text, _ = config_check(daemon, pf)
    path = daemon.socket.split(":", 1)[1]
    queue = pf.queue_dir
    assert warnings(text) == [
        f"Postfix smtpd (master.cf {service}/inet) runs chrooted in {queue}: smtpd_milters "
        f"= {daemon.postfix_milter} means {queue}{path} to it, not listgate's socket {path}; "
        f"put listgate's socket inside the chroot ([milter] socket = "
        f"unix:{queue}/listgate/listgate.sock, smtpd_milters = unix:/listgate/listgate.sock)"
        f" or run smtpd unchrooted (chroot column n in master.cf)"]
    assert f"postfix {service}/inet (chrooted in {queue}): smtpd_milters" in text


def test_socket_inside_the_chroot_named_with_its_full_path(postfix_factory):
    """The socket is in the chroot, but smtpd_milters names it from outside: the
    advice is the chroot-relative name, and that name works."""
    pf = postfix_factory(milter=None)
    inside = pf.queue_dir / "listgate"
    inside.mkdir(mode=0o755)
    d = make_daemon(workdir=inside).start()  # its socket: {inside}/listgate.sock
    try:
        service = f"127.0.0.1:{pf.port}"
        pf.postconf("-e", f"smtpd_milters = unix:{inside}/listgate.sock")
        pf.postconf("-F", f"{service}/inet/chroot=y")
        infra._run([infra.find_tool("postfix"), "-c", str(pf.config_dir), "reload"])
        time.sleep(1)
        text, _ = config_check(d, pf)
        assert warnings(text) == [
            f"Postfix smtpd (master.cf {service}/inet) runs chrooted in {pf.queue_dir}: "
            f"smtpd_milters = unix:{inside}/listgate.sock means "
            f"{pf.queue_dir}{inside}/listgate.sock to it, not listgate's socket "
            f"{inside}/listgate.sock; set smtpd_milters = unix:/listgate/listgate.sock"]
        pf.postconf("-e", "smtpd_milters = unix:/listgate/listgate.sock")
        infra._run([infra.find_tool("postfix"), "-c", str(pf.config_dir), "reload"])
        assert warnings(config_check(d, pf)[0]) == []
        deadline = time.monotonic() + 10
        while post(pf) != "250" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert post(pf) == "250"
    finally:
        d.close()


def test_wrong_smtpd_milters(daemon, postfix_factory):
    pf = postfix_factory(milter=f"unix:{daemon.dir}/other.sock")
    assert post(pf) == UNAVAILABLE
    text, doc = config_check(daemon, pf)
    assert warnings(text) == [
        f"Postfix smtpd_milters = unix:{daemon.dir}/other.sock (master.cf "
        f"127.0.0.1:{pf.port}/inet) does not name listgate's socket {daemon.socket}: set "
        f"smtpd_milters = {daemon.socket}"]
    assert doc["mta"]["postfix"]["services"][0]["reaches_listgate"] is False


def test_non_smtpd_milters_naming_listgate(daemon, postfix_factory):
    """README.md, "Postfix": listgate does not belong in non_smtpd_milters."""
    pf = postfix_factory(milter=daemon.postfix_milter,
                         extra={"non_smtpd_milters": daemon.postfix_milter})
    text, _ = config_check(daemon, pf)
    assert warnings(text) == [
        f"Postfix non_smtpd_milters = {daemon.postfix_milter} (master.cf cleanup/unix) "
        f"names listgate: a refusal of a local submission's simulated RCPT leaves the mail "
        f"in the queue, and local submissions are INTERNAL anyway; remove listgate from "
        f"non_smtpd_milters"]
    assert (f"postfix cleanup/unix (not chrooted): non_smtpd_milters = "
            f"{daemon.postfix_milter}: reaches listgate") in text


def test_stale_socket_is_reported_as_nothing_listening(postfix_factory):
    d = make_daemon()
    try:
        path = d.socket.split(":", 1)[1]
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)  # what a daemon killed with -9 leaves behind
        s.close()
        pf = postfix_factory(milter=d.postfix_milter)
        assert post(pf) == UNAVAILABLE
        text, doc = config_check(d, pf)
        assert warnings(text)[0] == (
            f"[milter] socket: nothing listens on {d.socket} (Connection refused): listgate "
            f"is not running, or another config is; the MTA applies its default action "
            f"until it does")
        assert doc["mta"]["listening"] is False
        d.start()  # replaces the stale file (test_daemon_ops.py reads that log line)
        assert warnings(config_check(d, pf)[0]) == []
    finally:
        d.close()


def test_inet_listening_and_milter_default_action_accept(postfix_factory):
    d = make_daemon(transport="inet").start()
    try:
        pf = postfix_factory(milter=d.postfix_milter,
                             extra={"milter_default_action": "accept"})
        text, doc = config_check(d, pf)
        assert f"socket inet:127.0.0.1:{d.port}: listening" in text
        assert (f"postfix {pf.config_dir}: milter_default_action accept, "
                f"milter_connect_timeout 30s, milter_command_timeout 30s, "
                f"milter_content_timeout 300s") in text
        assert warnings(text) == [
            "Postfix milter_default_action = accept: while listgate is down or unreachable "
            "every post is delivered unchecked; set milter_default_action = tempfail "
            "(Postfix's default) to defer them instead"]
        d.stop()  # and that is what happens
        assert post(pf) == "250"
        text, doc = config_check(d, pf)
        assert doc["mta"]["listening"] is False
        assert warnings(text)[0].startswith(
            f"[milter] socket: nothing listens on inet:127.0.0.1:{d.port} (Connection refused)")
    finally:
        d.close()


def test_milter_timeouts_below_listgate_budgets(postfix_factory):
    d = make_daemon("[spf]\ntimeout = 20\n[dns]\ntimeout = 5\n[mailman3]\ntimeout = 5\n"
                    "[approved]\nwait = 2\n").start()
    try:
        pf = postfix_factory(milter=d.postfix_milter,
                             extra={"milter_command_timeout": "10s",
                                    "milter_content_timeout": "30s"})
        text, doc = config_check(d, pf)
        assert "listgate budget, MAIL FROM: 20 s ([spf] timeout 20)" in text
        assert ("listgate budget, end of message: 37 s ([spf] timeout 20 + [dns] timeout "
                "(DKIM keys) 5 + [mailman3] timeout 5 + [dns] timeout (DMARC policy) 5 + "
                "[approved] wait 2)") in text
        assert doc["mta"]["budgets"] == {"mail": 20, "rcpt": 5, "eom": 37}
        assert warnings(text) == [
            "MAIL FROM: listgate may wait up to 20 s ([spf] timeout), not below Postfix "
            "milter_command_timeout = 10s (10 s): the MTA gives up first; lower [spf] "
            "timeout or raise Postfix milter_command_timeout",
            "end of message: listgate may wait up to 37 s ([spf] timeout, [dns] timeout, "
            "[mailman3] timeout, [approved] wait), not below Postfix milter_content_timeout "
            "= 30s (30 s): the MTA gives up first; lower [spf] timeout, [dns] timeout, "
            "[mailman3] timeout, [approved] wait or raise Postfix milter_content_timeout"]
    finally:
        d.close()


def _sendmail_cf(tmp_path, socket_spec: str) -> str:
    """A real sendmail.cf: m4 over sendmail's cf files and README.md's milter lines."""
    problems = sendmail_mta.missing_requirements()
    if problems:
        pytest.fail("sendmail requirements missing: " + "; ".join(problems), pytrace=False)
    sm = sendmail_mta.SendmailInstance(socket_spec, 25, ["lists.test"])
    sm.port = 2525
    sm._write_config()
    return str(sm.cf_path)


def test_sendmail_cf_naming_another_socket(daemon, tmp_path):
    path = daemon.socket.split(":", 1)[1]
    cf = _sendmail_cf(tmp_path, f"unix:{daemon.dir}/other.sock")
    text, _ = config_check(daemon, None, "--sendmail-cf", cf)
    assert warnings(text) == [
        f"sendmail {cf}: no mail filter names listgate's socket {daemon.socket} (listgate "
        f"(S=unix:{daemon.dir}/other.sock)): add INPUT_MAIL_FILTER(`listgate', "
        f"`S=local:{path}, F=T, T=C:10s;S:30s;R:60s;E:5m') to the .mc and rebuild the .cf"]
    cf = _sendmail_cf(tmp_path, daemon.socket)
    text, doc = config_check(daemon, None, "--sendmail-cf", cf)
    assert warnings(text) == []
    assert (f"sendmail {cf}: filter listgate, on failure tempfail, "
            f"T=C:10s;S:30s;R:60s;E:5m") in text
    assert doc["mta"]["sendmail"]["active"] == ["listgate"]
