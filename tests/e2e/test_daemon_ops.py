"""Production operation of the real daemon: SIGHUP reload and SIGTERM drain under load,
privilege drop, and the start-up errors an admin meets.

Load is made of real milter transactions (the protocol tests' ``Mta`` client) from a
few threads, so every reply can be checked while the signals arrive; the privilege
drop is checked through a real Postfix.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import infra
import pytest
from lgdaemon import LISTGATE, ListgateDaemon
from miltertest import MilterError
from test_postfix import delivered
from test_protocol import CONTINUE, Mta, smtp

from listgate.logfile import REOPEN_CHECK_SECONDS

LIST = "dev@lists.test"
MEMBER, STRANGER = "m@corp.test", "stranger@corp.test"
INT_IP = "10.1.2.3"
BASE = "[network]\ninternal_connect = 10.0.0.0/8\n"
DEFAULT_REFUSAL = ("550 5.7.2 You are not permitted to post to dev@lists.test. "
                   "Contact dev-owner@lists.test for help.")


def post(d: ListgateDaemon, sender: str, m: Mta | None = None) -> str:
    """One list post from an INTERNAL client; the final answer as the client reads it."""
    m = (m or Mta(d)).connect(INT_IP).helo()
    try:
        mail, rcpts, eom = m.post(sender, [LIST], [("From", sender), ("To", LIST),
                                                   ("Subject", "hi")])
        if mail != CONTINUE:
            return smtp(mail)
        if rcpts[0] != CONTINUE:
            return smtp(rcpts[0])
        return smtp(eom[-1])
    finally:
        m.sock.close()


def make_daemon(config: str = "", **kwargs) -> ListgateDaemon:
    d = ListgateDaemon(config=BASE + config, **kwargs)
    d.cli("lists", "create", LIST)
    d.cli("members", "add", LIST, MEMBER)
    return d


class Load(infra.LoopThreads):
    """Threads posting as a member and as a stranger in a loop, checking every reply.

    ``refusal`` is a regex for what the stranger must get (it may change with a
    reload); a member must always be accepted.  Any other answer, or an error on a
    connection the daemon had accepted, is recorded in ``wrong``.
    """

    def __init__(self, d: ListgateDaemon, threads: int = 4, refusal: str = r"550 5\.7\.2 ") -> None:
        super().__init__(threads)
        self.d = d
        self.refusal = refusal
        self.done = 0
        self.wrong: list[str] = []
        self.refused_connections = 0

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            sender = MEMBER if (n + i) % 2 else STRANGER
            n += 1
            try:
                m = Mta(self.d)
            except (OSError, MilterError):
                with self._lock:  # not accepted (any more): the MTA's default action
                    self.refused_connections += 1
                time.sleep(0.01)
                continue
            try:
                got = post(self.d, sender, m)
            except Exception as e:  # noqa: BLE001 - recorded and asserted by the test
                got = f"{type(e).__name__}: {e}"
            ok = (got in ("continue", "accept") if sender == MEMBER
                  else re.match(self.refusal, got) is not None)
            with self._lock:
                self.done += 1
                if not ok:
                    self.wrong.append(f"{sender}: {got}")

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        start = self.done
        while self.done < start + count:
            assert time.monotonic() < end, f"load stalled at {self.done}: {self.wrong[:3]}"
            time.sleep(0.02)


def worker_pid(d: ListgateDaemon) -> int:
    children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def wait_exit(d: ListgateDaemon, timeout: float = 10.0) -> tuple[int, float]:
    """(exit status, seconds it took)."""
    t0 = time.monotonic()
    code = d.proc.wait(timeout)
    return code, time.monotonic() - t0


@pytest.fixture
def daemon():
    d = make_daemon().start()
    yield d
    d.close()


# --------------------------------------------------------------------------- SIGHUP


def test_hup_under_load_loses_nothing_and_changes_take_effect(daemon):
    d = daemon
    with Load(d) as load:
        load.wait_for(20)
        worker = worker_pid(d)
        for i in range(3):  # plain reloads while transactions go on
            d.proc.send_signal(signal.SIGHUP)
            d.wait_for_log(r"SIGHUP: reloaded", since=0, count=i + 1)
            load.wait_for(5)
        for _ in range(3):  # a burst: signals not yet handled merge (POSIX), never stop
            d.proc.send_signal(signal.SIGHUP)
        load.wait_for(20)
        # a per-list option changes: strangers now get the new text
        load.refusal = r"550 5\.7\.2 (You are not permitted|Closed list)"
        mark = d.log_size()
        d.write_config(BASE + f"[list:{LIST}]\nreject_message = Closed list %(list)s\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log(r"SIGHUP: reloaded: mode=enforce", mark)
        load.wait_for(20)
        load.stop()
        assert post(d, STRANGER) == "550 5.7.2 Closed list dev@lists.test"
        assert load.wrong == [], load.wrong[:5]
        assert load.refused_connections == 0
    assert len(re.findall(r"SIGHUP: reloaded", d.log_text())) >= 5
    assert load.done >= 60
    assert worker_pid(d) == worker, "reloaded in place: same worker process"

    # observe mode after a reload: the stranger is let through, and it is logged
    mark = d.log_size()
    d.write_config(BASE + "[milter]\nmode = observe\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for_log(r"SIGHUP: reloaded: mode=observe", mark)
    assert post(d, STRANGER) == "continue"
    d.wait_for_log(r"OBSERVE: would REJECT", mark)


def test_invalid_config_on_hup_keeps_the_running_one(daemon):
    d = daemon
    mark = d.log_size()
    good = d.cfg_path.read_text()
    d.cfg_path.write_text(good + "[spf]\nfail = bounce\n")
    with Load(d, threads=2) as load:
        load.wait_for(10)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log(r"ERROR SIGHUP: reload failed, keeping the running configuration: "
                       + re.escape(f"{d.cfg_path}: [spf] fail: expected one of accept, "
                                   "reject, tempfail, got 'bounce'"), mark)
        load.wait_for(10)
    assert load.wrong == []
    assert post(d, STRANGER) == DEFAULT_REFUSAL
    assert "SIGHUP: reloaded" not in d.log_text(mark)


def test_hup_reopens_the_log_file(daemon):
    d = daemon
    rotated = Path(f"{d.log_path}.1")
    os.rename(d.log_path, rotated)  # what logrotate does before its postrotate HUP
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for_log(r"SIGHUP: reloaded")
    assert d.log_path.exists()
    assert "SIGHUP" not in rotated.read_text()
    assert "starting:" not in d.log_text()


def test_hup_drops_the_caches():
    d = make_daemon("[lists]\ncache_ttl = 3600\nnegative_cache_ttl = 3600\n").start()
    try:
        assert post(d, STRANGER) == DEFAULT_REFUSAL
        d.cli("members", "add", LIST, STRANGER)
        assert post(d, STRANGER) == DEFAULT_REFUSAL, "cached for an hour"
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log(r"caches dropped")
        assert post(d, STRANGER) == "continue"
    finally:
        d.close()


def test_hup_says_which_options_need_a_restart(daemon):
    d = daemon
    other = d.dir / "other.sock"
    d.write_config(BASE + f"[milter]\nsocket = unix:{other}\ntimeout = 60\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for_log(re.escape(f"WARNING SIGHUP: {d.cfg_path}: [milter] socket changed "
                             f"({d.socket} -> unix:{other}): needs a restart; still using "
                             f"{d.socket}"))
    d.wait_for_log(r"\[milter\] timeout changed \(600.0 -> 60.0\): needs a restart")
    d.wait_for_log(r"SIGHUP: reloaded")
    assert post(d, MEMBER) == "continue", "still serving on the old socket"
    assert not other.exists()


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_finishes_transactions_in_flight_and_exits_0(daemon):
    d = daemon
    held = []
    for sender in (MEMBER, STRANGER, MEMBER):  # three transactions stopped after RCPT
        m = Mta(d).connect(INT_IP).helo()
        assert m.mail(sender) == CONTINUE and m.rcpt(LIST) == CONTINUE
        held.append((m, sender))
    with Load(d, threads=3) as load:
        load.wait_for(10)
        mark = d.log_size()
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for_log(r"SIGTERM: stopping: refusing new connections; waiting up to 30s "
                       r"for \d+ in flight", mark)
        time.sleep(0.3)
        assert d.proc.poll() is None, "still waiting for the held transactions"
        with pytest.raises((OSError, MilterError)):
            Mta(d)  # refused: the MTA applies its milter_default_action
        for m, sender in held:
            m.header("From", sender)
            got = smtp(m.eom()[-1])
            assert got == ("continue" if sender == MEMBER else DEFAULT_REFUSAL)
            m.sock.close()
        code, took = wait_exit(d)
    assert code == 0
    assert took < 2.0, took
    assert load.wrong == [], load.wrong[:5]
    log = d.log_text(mark)
    assert "all connections finished" in log and "listgate stopped" in log


#: an LD_PRELOAD library that widens libmilter's stop races: mi_stop() pauses 20 ms each
#: time it answers "go on" (calls inside libmilter go through its PLT, so they reach
#: this one).  The listener then spends its time between reading the stop flag and
#: locking the listening socket, where smfi_stop closed the socket (MI_FAILURE: exit
#: 1), and a worker between taking a new connection and its negotiate callback, which
#: crashed (SIGSEGV) once smfi_main had returned.  See daemon.Worker._end.
SLOW_STOP_CHECK = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>
static int (*real_mi_stop)(void);
int mi_stop(void) {
    if (!real_mi_stop) {
        /* pymilter loads libmilter with RTLD_LOCAL: RTLD_NEXT cannot see it */
        void *h = dlopen(LIBMILTER, RTLD_NOW | RTLD_NOLOAD);
        real_mi_stop = (int (*)(void)) dlsym(h ? h : RTLD_NEXT, "mi_stop");
    }
    int r = real_mi_stop();
    if (r == 0)
        usleep(20000);
    return r;
}
"""


@pytest.fixture(scope="module")
def slow_stop_check(tmp_path_factory) -> str:
    import milter

    libs = subprocess.run(["ldd", milter.__file__], capture_output=True, text=True,
                          check=True).stdout
    libmilter = re.search(r"libmilter\S* => (\S+)", libs).group(1)
    d = tmp_path_factory.mktemp("slowstop")
    (d / "slowstop.c").write_text(SLOW_STOP_CHECK)
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DLIBMILTER="{libmilter}"', "-o",
                    str(d / "slowstop.so"), str(d / "slowstop.c"), "-ldl"], check=True)
    return str(d / "slowstop.so")


@pytest.mark.parametrize("run", range(5))
def test_sigterm_under_load_exits_0_however_libmilters_threads_are_timed(run, slow_stop_check):
    """SIGTERM while the MTA keeps connecting: the drain ends, and the worker must exit
    0 with its stop line.  With smfi_stop it exited 1 (once in a CI run; in 2 of 8
    runs here): libmilter's own stop races, widened by SLOW_STOP_CHECK."""
    d = make_daemon().start(env={"LD_PRELOAD": slow_stop_check})
    try:
        with Load(d, threads=3) as load:
            load.wait_for(5)
            mark = d.log_size()
            d.proc.send_signal(signal.SIGTERM)
            code, _took = wait_exit(d)
        log = d.log_text(mark)
        assert code == 0, log + d.stderr_path.read_text(errors="replace")
        assert "listgate stopped" in log and "ERROR" not in log, log
        assert load.wrong == [], load.wrong[:5]
    finally:
        d.close()


def test_sigterm_on_an_idle_daemon_is_quick(daemon):
    d = daemon
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    took = time.monotonic() - t0
    assert took < 1.5, f"stopping took {took:.2f}s (libmilter alone polls every 5 s)"


def test_shutdown_timeout_bounds_the_wait():
    d = make_daemon("[milter]\nshutdown_timeout = 1\n").start()
    try:
        idle = Mta(d).connect(INT_IP).helo()  # an SMTP session that never ends
        assert idle.mail(MEMBER) == CONTINUE
        d.proc.send_signal(signal.SIGTERM)
        code, took = wait_exit(d)
        assert code == 0
        assert 0.9 < took < 3.0, took
        d.wait_for_log(r"WARNING \[milter\] shutdown_timeout: 1 connection\(s\) still open "
                       r"after 1s are cut off")
        idle.sock.close()
    finally:
        d.close()


def test_sigint_stops_at_once_even_with_a_transaction_in_flight(daemon):
    d = daemon
    m = Mta(d).connect(INT_IP).helo()
    assert m.mail(MEMBER) == CONTINUE
    d.proc.send_signal(signal.SIGINT)
    code, took = wait_exit(d)
    assert code == 0
    assert took < 1.5, took
    d.wait_for_log(r"SIGINT: stopping: refusing new connections; waiting up to 0s for 1 in "
                   r"flight")
    m.sock.close()


def test_sigterm_to_the_worker_itself_also_stops_cleanly(daemon):
    d = daemon
    os.kill(worker_pid(d), signal.SIGTERM)  # e.g. systemd's stop signals every process
    code, _ = wait_exit(d)
    assert code == 0
    d.wait_for_log(r"libmilter stopped on a signal sent to the worker process")


def test_worker_stops_when_the_main_process_is_killed():
    d = make_daemon().start()
    worker = worker_pid(d)
    d.proc.kill()
    d.proc.wait()
    end = time.monotonic() + 5
    while Path(f"/proc/{worker}").exists():
        status = Path(f"/proc/{worker}/status").read_text(errors="replace")
        if "State:\tZ" in status:
            break
        assert time.monotonic() < end, "the orphaned worker must stop by itself"
        time.sleep(0.05)
    d.wait_for_log(r"the main process is gone: stopping")
    shutil.rmtree(d.dir, ignore_errors=True)


def test_log_directory_removed_the_daemon_still_answers_and_stops():
    d = make_daemon()
    logdir = d.dir / "log"
    logdir.mkdir()
    d.log_path = logdir / "listgate.log"
    d.write_config(BASE + f"[milter]\nlog_file = {d.log_path}\n")
    d.start()
    try:
        shutil.rmtree(logdir)  # every log line now fails to reopen the file
        time.sleep(REOPEN_CHECK_SECONDS)  # once the daemon looks (once per second)
        assert post(d, STRANGER) == DEFAULT_REFUSAL
        assert post(d, MEMBER) == "continue"
        d.proc.send_signal(signal.SIGTERM)
        code, took = wait_exit(d)
        assert code == 0 and took < 2.0, took
        assert "FileNotFoundError" in d.stderr_path.read_text(), "reported on stderr"
    finally:
        d.close()


def test_usr1_to_the_main_process_logs_stats(daemon):
    daemon.proc.send_signal(signal.SIGUSR1)
    daemon.wait_for_log(r"INFO stats: list cache \d+ hits/\d+ misses")


# --------------------------------------------------------------------------- user/group


@pytest.fixture
def system_user():
    """A throw-away system user (and its group), removed after the test."""
    name = f"lgt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def _give(d: ListgateDaemon, user: pwd.struct_passwd) -> None:
    for p in [d.dir, *d.dir.iterdir()]:
        os.chown(p, user.pw_uid, user.pw_gid)


def test_privilege_drop_socket_owned_by_user_and_postfix_delivers(
        system_user, postfix_factory, smtp_sink):
    u = system_user
    d = make_daemon(f"[milter]\nuser = {u.pw_name}\n")
    _give(d, u)
    d.start()
    try:
        sock = Path(d.socket[5:])
        assert sock.stat().st_uid == u.pw_uid, "the socket belongs to the daemon user"
        assert d.log_path.stat().st_uid == u.pw_uid, "so does the log file"
        for pid in (d.proc.pid, worker_pid(d)):
            status = Path(f"/proc/{pid}/status").read_text()
            uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
            assert uids == [str(u.pw_uid)] * 4, status
            groups = re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()
            assert groups == [str(u.pw_gid)], "no supplementary group of root's is kept"
        d.wait_for_log(rf"running as user {u.pw_name} \(uid {u.pw_uid}, gid {u.pw_gid}\)")
        pf = postfix_factory(milter=d.postfix_milter)
        msg = infra.make_message(from_=MEMBER, to=LIST, subject="as the daemon user")
        r = infra.smtp_transaction("127.0.0.1", pf.port, mail_from=MEMBER, rcpts=[LIST],
                                   message=msg, helo="mail.corp.test", source_ip="127.0.0.1")
        assert r.data is not None and r.data.code == 250, r
        delivered(smtp_sink, msg)
        d.wait_for_log(r"ACCEPT: list=dev@lists\.test")
        # the database and the log stay writable through a reload
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log(r"SIGHUP: reloaded")
        assert d.stop() == 0
        assert not sock.exists(), "an unprivileged libmilter removes its socket at exit"
    finally:
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)


def serve(cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*LISTGATE, "serve", "-c", str(cfg)], capture_output=True,
                          timeout=30)


def test_unknown_user_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[milter]\nsocket = unix:{tmp_path}/s.sock\nuser = no-such-user-lg\n")
    r = serve(cfg)
    assert r.returncode == 2
    assert r.stderr.decode().strip() == (
        f"listgate: config error: {cfg}: [milter] user: no such user 'no-such-user-lg'")
    cfg.write_text(f"[milter]\nsocket = unix:{tmp_path}/s.sock\ngroup = no-such-group-lg\n")
    r = serve(cfg)
    assert r.returncode == 2 and "[milter] group: no such group 'no-such-group-lg'" in (
        r.stderr.decode())


def serve_as_nobody(cfg: Path, err: Path) -> int:
    """``listgate serve`` in a forked child that first becomes nobody (not an exec:
    the test interpreter may live where nobody cannot read it); its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            sys.stderr = open(err, "w")  # flushed before _exit
            # imported while still root: the interpreter's own files may be root's only
            # (building the parser imports every command's module and what they import)
            import listgate.daemon  # noqa: F401
            from listgate.cli import build_parser, main
            build_parser()
            nobody = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setresgid(nobody.pw_gid, nobody.pw_gid, nobody.pw_gid)
            os.setresuid(nobody.pw_uid, nobody.pw_uid, nobody.pw_uid)
            code = main(["serve", "-c", str(cfg)])
        except BaseException:  # noqa: BLE001 - shown; the child must _exit
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_not_root_cannot_switch_user():
    tmp_path = Path(tempfile.mkdtemp(prefix="listgate-test-"))  # nobody can read it
    os.chmod(tmp_path, 0o755)
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[milter]\nsocket = unix:{tmp_path}/s.sock\nuser = root\n")
    os.chmod(cfg, 0o644)
    code = serve_as_nobody(cfg, tmp_path / "err")
    err = (tmp_path / "err").read_text()
    shutil.rmtree(tmp_path)
    assert code == 1, err
    assert err.strip() == (
        f"listgate: {cfg}: [milter] user = root: running as uid 65534, not root, "
        f"so cannot switch to uid 0")


@pytest.fixture
def open_dir():
    """A directory of root's that every user can read (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="listgate-test-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unreachable_socket_directory(tmp_path, system_user):
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[milter]\nsocket = unix:{tmp_path}/s.sock\nuser = {system_user.pw_name}\n")
    r = serve(cfg)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"listgate: {cfg}: [milter] socket: directory {tmp_path}: Permission denied "
        f"(as user {system_user.pw_name})")


def test_unwritable_socket_directory_and_database(open_dir, system_user):
    u = system_user
    tmp_path = open_dir  # root's: the user cannot create the socket here
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[milter]\nsocket = unix:{tmp_path}/s.sock\nuser = {u.pw_name}\n"
                   f"[sqlite]\npath = {tmp_path}/db/listgate.db\n")
    r = serve(cfg)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"listgate: {cfg}: [milter] socket: directory {tmp_path} is not writable by user "
        f"{u.pw_name}: cannot create the socket there")

    sockdir, dbdir = tmp_path / "run", tmp_path / "db"
    sockdir.mkdir()
    dbdir.mkdir()
    os.chown(sockdir, u.pw_uid, u.pw_gid)
    cfg.write_text(f"[milter]\nsocket = unix:{sockdir}/s.sock\nuser = {u.pw_name}\n"
                   f"[sqlite]\npath = {dbdir}/listgate.db\n")
    subprocess.run([*LISTGATE, "-c", str(cfg), "db", "init"], check=True, capture_output=True)
    r = serve(cfg)  # the database is root's
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"listgate: {cfg}: [sqlite] path: {dbdir}/listgate.db is not readable and writable "
        f"by user {u.pw_name}")
    os.chown(dbdir / "listgate.db", u.pw_uid, u.pw_gid)
    r = serve(cfg)  # the file is the user's, its directory is not
    assert r.returncode == 1
    assert f"[sqlite] path: directory {dbdir} is not writable by user {u.pw_name}" in (
        r.stderr.decode())
    assert not (sockdir / "s.sock").exists()


def test_missing_socket_directory(tmp_path):
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[milter]\nsocket = unix:{tmp_path}/nope/s.sock\n")
    r = serve(cfg)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"listgate: {cfg}: [milter] socket: directory {tmp_path}/nope does not exist")


def test_stale_socket_left_by_a_crash_is_replaced_and_logged():
    """A socket file nothing listens on (the daemon was killed -9) is removed at
    start-up, the log says so, and the new daemon serves on that path."""
    d = make_daemon()
    path = d.socket.split(":", 1)[1]
    try:
        import socket as socketlib

        s = socketlib.socket(socketlib.AF_UNIX)
        s.bind(path)  # a socket file with no listener: what a crash leaves
        s.close()
        assert Path(path).is_socket()
        d.start()
        assert re.search(rf"removed the stale socket {re.escape(path)}: nothing listened on "
                         rf"it", d.log_text()), d.log_text()
        assert post(d, MEMBER) == "continue"
        assert post(d, STRANGER) == DEFAULT_REFUSAL
    finally:
        d.close()


def test_socket_in_use_is_not_taken_from_a_running_daemon(daemon):
    """A second daemon on the same socket path fails, naming it, and leaves the
    running one reachable (libmilter alone would unlink the live socket)."""
    r = serve(daemon.cfg_path)
    path = daemon.socket.split(":", 1)[1]
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"listgate: {daemon.cfg_path}: [milter] socket: {path}: another process listens "
        f"on it (a listgate already running?); stop it first")
    assert post(daemon, MEMBER) == "continue"


def test_something_else_at_the_socket_path_is_left_alone(tmp_path):
    (tmp_path / "s.sock").write_text("not a socket\n")
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[milter]\nsocket = unix:{tmp_path}/s.sock\nlog_file = {tmp_path}/l\n"
                   f"[sqlite]\npath = {tmp_path}/db\n")
    r = serve(cfg)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"listgate: {cfg}: [milter] socket: {tmp_path}/s.sock exists and is not a socket: "
        f"not removing it")
    assert (tmp_path / "s.sock").read_text() == "not a socket\n"
