"""``listgate serve``: privileges, logging, the socket, pymilter's main loop, signals.

How libmilter (sendmail 8.17, Debian's libmilter1.0.1) treats signals -- read in its
signal.c, main.c, listener.c and engine.c -- and what listgate does about it:

* ``smfi_main`` (pymilter's ``runmilter``) blocks SIGHUP, SIGTERM and SIGINT in the
  calling thread and starts a signal thread that waits for them (sigwait).  On the
  first one it sets the process-wide stop flag and *exits*: HUP and TERM alike set
  ``MILTER_STOP`` (stop accepting; but see the worker pool below), INT ``MILTER_ABRT``
  (connections are dropped at their next command).  HUP is *not* a reload.
* The stop flag only ever increases: once set, ``smfi_main`` can never serve again in
  that process (a second ``runmilter`` returns at once).  So "return from smfi_main
  on HUP, reload, call it again" cannot work.
* The listener polls with a 5 s timeout (``MI_CHK_TIME``) while holding the mutex that
  ``mi_closener`` (called by the signal thread / ``smfi_stop``) needs: that is why a
  stop took up to 5 s.  A connection to our own socket ends the wait at once.
* ``smfi_main`` returns as soon as the listener is closed; it does not wait for the
  connections.  Worse, Debian's libmilter is built with ``_FFR_WORKERS_POOL``
  (worker.c): its pool controller and workers also quit on the stop flag, so a
  connection waiting for its next MTA command is never served again -- the MTA gets
  no answer until its own milter timeout.  Draining must happen *before* the flag.
* A second thread of ours ``sigwait``-ing SIGHUP would race libmilter's for each
  signal: whichever the kernel wakes gets it.

Hence two processes (or more, during a takeover).  The main process (the PID systemd
and the admin signal) never runs libmilter: it starts worker processes (a fresh
interpreter each, see :class:`Supervisor`), turns HUP/TERM/INT/USR1 into one byte on
a pipe to the serving worker, replaces a worker that dies, and on USR2 lets a new
worker take over the socket.  A worker runs libmilter and a control thread reading
that pipe:

* HUP re-reads the config and swaps the engine for new connections (a replaced
  engine's backend is closed when its last connection ends);
* TERM refuses new connections at negotiation (the MTA applies its
  ``milter_default_action``, as for a stopped daemon), waits up to ``[milter]
  shutdown_timeout`` for those in flight, then ends the worker process itself, with
  libmilter still running: letting ``smfi_main`` return while the MTA still
  connects is not safe (two races, see ``Worker._end``); exit 0 well under a second
  when idle;
* INT does the same without waiting;
* D (sent after a USR2 takeover) serves the connections it has without refusing
  any, for at most ``[milter] reload_timeout``, then stops the same way.

Signals sent to the worker itself still reach libmilter, which then stops at once
(connections in flight are cut off): under systemd use ``KillMode=mixed`` so that
only the main process gets SIGTERM.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import re
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dns.resolver
import Milter

from listgate import __version__, milter
from listgate.app import build_engine
from listgate.config import Config, ConfigError, load
from listgate.engine import Engine
from listgate.logfile import FastFormatter, LogFile, lean_records
from listgate.milter import ListgateMilter, run_milter
from listgate.model import BackendError

log = logging.getLogger("listgate")

def setup_logging(cfg: Config) -> logging.Logger:
    """One line per event to ``log_file`` (``-`` = stderr), safe with logrotate.

    Called again on SIGHUP, which reopens the file (and may move it).  Opened after the
    switch to ``[milter] user``, so the file -- and the one re-created after logrotate
    moved it away -- belongs to the daemon user.
    """
    lean_records()
    if cfg.milter.log_file == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(FastFormatter())
    else:
        # reopens the file when logrotate moves it away (checked once per second);
        # a file that cannot be reopened loses the line, never raises into a callback
        handler = LogFile(cfg.milter.log_file)
    old, log.handlers[:] = log.handlers[:], [handler]
    for h in old:  # after the swap: a reopen (SIGHUP) loses no line
        h.close()
    log.setLevel(cfg.milter.log_level.upper())
    log.propagate = False
    return log


def _inet_port(spec: str) -> int | None:
    m = re.fullmatch(r"inet6?:(\d+)@.*", spec)
    return int(m.group(1)) if m else None


def set_nodelay_when_bound(port: int, deadline: float = 10.0) -> threading.Thread:
    """Set TCP_NODELAY on libmilter's listening socket once it exists.

    libmilter creates the socket itself and has no option for this; without it each
    end-of-message that adds a header and then answers (two small writes) waits for
    the MTA's delayed ACK -- measured 2.59x the MTA's own time vs 1.43x with it.
    Accepted sockets inherit the option on Linux.
    """

    def find_and_set() -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for fd in _socket_fds():
                try:
                    s = socket.socket(fileno=os.dup(fd))
                except OSError:
                    continue
                try:
                    if (s.type == socket.SOCK_STREAM
                            and s.family in (socket.AF_INET, socket.AF_INET6)
                            and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                            and s.getsockname()[1] == port):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        log.info("TCP_NODELAY set on the milter socket (port %d)", port)
                        return
                except OSError:
                    pass
                finally:
                    s.close()
            time.sleep(0.01)
        log.warning("could not find the milter socket on port %d to set TCP_NODELAY", port)

    t = threading.Thread(target=find_and_set, name="nodelay", daemon=True)
    t.start()
    return t


def _socket_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                fds.append(int(name))
        except OSError:
            continue
    return fds



#: [milter] keys read once at start-up: a reload that changes them says so
RESTART_ONLY = ("socket", "umask", "timeout", "user", "group", "tcp_nodelay")


#: the worker's control commands, one byte each on the pipe from the main process
_COMMANDS = {signal.SIGHUP: b"H", signal.SIGTERM: b"T", signal.SIGINT: b"I",
             signal.SIGUSR1: b"U"}


def log_stats_on_sigusr1(current: Callable[[], Engine]) -> threading.Thread:
    """Log the cache statistics whenever SIGUSR1 arrives at the worker itself.

    The main thread sits inside libmilter's C loop, where a Python signal handler
    would never run; instead SIGUSR1 is blocked in every thread (threads inherit the
    mask, so call this before any is started) and one thread waits for it -- the only
    one, so no race.  The signals libmilter's own signal thread waits for (TERM, HUP,
    INT) are blocked too: a thread of ours that left them open would receive SIGTERM
    and die by it.  (SIGUSR1 to the main process arrives through the control pipe.)
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, set(_COMMANDS))

    def wait() -> None:
        while True:
            signal.sigwait({signal.SIGUSR1})
            log.info("stats: %s", current().stats())

    t = threading.Thread(target=wait, name="sigusr1", daemon=True)
    t.start()
    return t


# --------------------------------------------------------------------------- privileges


@dataclass(frozen=True)
class Identity:
    """Who the daemon runs as after start-up (``[milter] user`` / ``group``)."""

    user: str  #: empty: keep the user
    uid: int
    group: str
    gid: int

    def describe(self) -> str:
        return f"user {self.user or os.geteuid()} (uid {self.uid}, gid {self.gid})"


def resolve_identity(cfg: Config) -> Identity | None:
    """The configured user and group, looked up; None if neither is set.

    Raises ConfigError (exit 2) naming the key when the user or group does not exist.
    """
    user, group = cfg.milter.user, cfg.milter.group
    if not user and not group:
        return None
    uid, gid = os.geteuid(), os.getegid()
    if user:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"{cfg.path}: [milter] user: no such user {user!r}") from None
        uid, gid = pw.pw_uid, pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"{cfg.path}: [milter] group: no such group {group!r}") from None
    return Identity(user, uid, group or (grp.getgrgid(gid).gr_name if _gid_known(gid) else ""),
                    gid)


def _gid_known(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


def switch_identity(ident: Identity | None) -> str | None:
    """Become ``ident`` (only root can); the problem as one line, or None.

    Order matters: supplementary groups first (initgroups: the user's groups from
    /etc/group, e.g. ``list`` for reading Mailman 2's files), then the gid, then the
    uid -- after setuid the process could no longer change its groups.  Real, effective
    and saved ids are all set, and regaining root is checked to fail.
    """
    if ident is None:
        return None
    if os.geteuid() != 0:
        if ident.user and ident.uid != os.geteuid():
            return (f"[milter] user = {ident.user}: running as uid {os.geteuid()}, not root, "
                    f"so cannot switch to uid {ident.uid}")
        if ident.gid != os.getegid() and ident.gid not in os.getgroups():
            return (f"[milter] group = {ident.group}: running as gid {os.getegid()}, not "
                    f"root, so cannot switch to gid {ident.gid}")
        return None  # already that identity (e.g. systemd's User=)
    try:
        if ident.user:
            os.initgroups(ident.user, ident.gid)
        else:
            os.setgroups([ident.gid])
        os.setresgid(ident.gid, ident.gid, ident.gid)
        os.setresuid(ident.uid, ident.uid, ident.uid)
    except OSError as e:
        return f"[milter] user/group: cannot switch to {ident.describe()}: {e.strerror}"
    if ident.uid != 0:
        try:
            os.setuid(0)
        except OSError:
            pass
        else:
            return f"[milter] user: could regain root after switching to {ident.describe()}"
    return None


def check_paths(cfg: Config) -> str | None:
    """What the daemon must be able to write, checked as the user it now runs as.

    Better a clear line at start-up than a socket libmilter cannot create or a
    database error on the first message.
    """
    who = f"user {pwd.getpwuid(os.geteuid()).pw_name if _uid_known() else os.geteuid()}"
    sock = cfg.milter.socket
    if sock.startswith(("unix:", "local:")):
        parent = os.path.dirname(sock.split(":", 1)[1]) or "/"
        try:
            os.listdir(parent)
        except FileNotFoundError:
            return f"[milter] socket: directory {parent} does not exist"
        except OSError as e:
            return f"[milter] socket: directory {parent}: {e.strerror} (as {who})"
        if not os.access(parent, os.W_OK | os.X_OK):
            return (f"[milter] socket: directory {parent} is not writable by {who}: "
                    f"cannot create the socket there")
    if cfg.lists.backend == "sqlite" and os.path.exists(cfg.sqlite.path):
        db = cfg.sqlite.path
        parent = os.path.dirname(os.path.abspath(db))
        if not os.access(db, os.R_OK | os.W_OK):
            return f"[sqlite] path: {db} is not readable and writable by {who}"
        if not os.access(parent, os.W_OK | os.X_OK):
            return (f"[sqlite] path: directory {parent} is not writable by {who} "
                    f"(SQLite writes its journal next to the database)")
    return None


def _uid_known() -> bool:
    try:
        pwd.getpwuid(os.geteuid())
    except KeyError:
        return False
    return True


# --------------------------------------------------------------------------- the main process


def serve(cfg: Config) -> int:
    """Run the milter until SIGTERM/SIGINT; return the exit status.

    Start-up order: switch user (before anything is created, so the socket, the log
    file and the SQLite journal belong to the daemon user), check what must be
    writable, open the log, then start the worker.
    """
    try:
        ident = resolve_identity(cfg)
    except ConfigError as e:
        print(f"listgate: config error: {e}", file=sys.stderr)
        return 2
    problem = switch_identity(ident) or check_paths(cfg)
    if problem:
        print(f"listgate: {cfg.path}: {problem}", file=sys.stderr)
        return 1
    try:
        setup_logging(cfg)
    except OSError as e:
        print(f"listgate: {cfg.path}: [milter] log_file: cannot open {cfg.milter.log_file} "
              f"as uid {os.geteuid()}: {e.strerror}", file=sys.stderr)
        return 1
    if ident is not None:
        log.info("running as %s", ident.describe())
    problem = clear_stale_socket(cfg.milter.socket)
    if problem:
        log.error("%s: %s", cfg.path, problem)
        if cfg.milter.log_file != "-":
            print(f"listgate: {cfg.path}: {problem}", file=sys.stderr)
        return 1
    return supervise(cfg)


def clear_stale_socket(spec: str) -> str | None:
    """Remove a unix socket file a crashed daemon left behind; the problem, or None.

    A daemon's first worker renames its socket over whatever is at the path, so a
    second daemon started by mistake would silently take the socket from a running one
    (the MTA then talks to the second, the first keeps running unreachable).  So:
    a socket nothing listens on (connection refused) is stale and removed, and the log
    says so; one that answers belongs to a running listgate (start-up fails, naming
    it); anything else at the path is not ours to delete.
    """
    if not spec.startswith(("unix:", "local:")):
        return None
    path = spec.split(":", 1)[1]
    try:
        state = _socket_state(path, timeout=2)
    except OSError as e:
        if e.filename:  # lstat's: the path itself cannot be looked at
            return f"[milter] socket: {path}: {e.strerror}"
        return f"[milter] socket: {path}: cannot tell whether it is in use: {e.strerror}"
    if state == "missing":
        return None
    if state == "other":
        return f"[milter] socket: {path} exists and is not a socket: not removing it"
    if state == "listening":
        return (f"[milter] socket: {path}: another process listens on it (a listgate "
                f"already running?); stop it first")
    try:
        os.unlink(path)
    except OSError as e:
        return f"[milter] socket: cannot remove the stale socket {path}: {e.strerror}"
    log.warning("removed the stale socket %s: nothing listened on it (left by a daemon "
                "that did not exit cleanly)", path)
    return None


def supervise(cfg: Config) -> int:
    """Run workers until a stop; the exit status (see :class:`Supervisor`)."""
    return Supervisor(cfg).run()


#: how the main process starts a worker: a fresh interpreter, so that a takeover after
#: a package upgrade runs the new code
_WORKER_BOOT = ("import sys; from listgate.daemon import worker_main; "
                "sys.exit(worker_main(sys.argv[1:]))")
#: a new worker that is not listening after this long is given up (and killed)
WORKER_READY_TIMEOUT = 60.0
#: crash-loop backoff: a worker that dies within QUICK_CRASH seconds of its start
#: counts as a crash in a row; the n-th in a row waits min(2 ** (n - 2), BACKOFF_MAX)
#: seconds before the next start (the first none).  A worker that lived longer resets it.
QUICK_CRASH = 10.0
BACKOFF_MAX = 30.0


@dataclass
class Child:
    """A worker process, as the main process sees it."""

    pid: int
    control: int  #: write end of its control pipe (one-byte commands)
    status: int  #: read end of its status pipe: b"R" once it listens
    listen: str  #: the socket spec it listens on
    path: str | None  #: its own socket file (unix sockets), linked to the public name
    why: str  #: "start", "reload" or "respawn"
    started: float = 0.0
    ready: bool = False
    error: str = ""  #: why it could not start (a config error), as it reported it

    def send(self, cmd: bytes) -> None:
        try:
            os.write(self.control, cmd)
        except OSError:
            pass  # gone: reaped below


class Supervisor:
    """The main process: starts the workers, relays signals, replaces a crashed worker,
    and lets a fresh worker take over the socket on SIGUSR2 (``systemctl reload``).

    With a unix socket each worker creates its socket file under a name of its own
    (``PATH.<main pid>-<n>``); once it answers there, that file is renamed over the
    public name ``PATH`` the MTA connects to, so there is no instant at which ``PATH``
    is missing.  The worker it replaces still holds its own listener, now nameless: it
    serves what it had, and what was queued on that listener, and stops when its
    connections end (bounded by ``[milter] reload_timeout``).  The name libmilter
    unlinks when it stops (a daemon not running as root) is the worker's own, long
    gone, never the public one.  Over TCP two listeners cannot share
    the port (libmilter binds without SO_REUSEPORT), so SIGUSR2 reloads in place.

    A worker that dies (killed, or a non-zero exit) is replaced at once; in a crash loop
    the restarts back off (1, 2, 4 ... 30 s).  Meanwhile the public name points at a
    dead socket: the MTA's connections are refused and it applies its
    ``milter_default_action``.  A worker that exits 0 stopped on purpose (SIGTERM sent to
    the worker itself): the daemon exits 0.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        spec = cfg.milter.socket
        self.public = spec.split(":", 1)[1] if spec.startswith(("unix:", "local:")) else None
        self.current: Child | None = None
        self.pending: Child | None = None
        self.draining: dict[int, Child] = {}
        self.stopping: bytes | None = None
        self.status = 0
        self.generation = 0
        self.crashes = 0  #: crashes in a row (see QUICK_CRASH)
        self.respawn_at: float | None = None
        self._wake: tuple[int, ...] = ()

    # -- workers

    def spawn(self, why: str) -> Child:
        self.generation += 1
        if self.public is None:
            listen, path = self.cfg.milter.socket, None
        else:
            path = f"{self.public}.{os.getpid()}-{self.generation}"
            listen = f"unix:{path}"
        rc, wc = os.pipe()
        rs, ws = os.pipe()
        for fd in (rc, ws):
            os.set_inheritable(fd, True)
        # -P: python -c would put the current directory first on sys.path, so a
        # daemon started where a listgate/ directory is (a source tree) ran that code
        argv = [sys.executable, "-P", "-c", _WORKER_BOOT, "--control-fd", str(rc),
                "--status-fd", str(ws), "--listen", listen, "--generation",
                str(self.generation), "--why", why, "-c", self.cfg.path]
        # the commands stay blocked across fork and exec: the worker starts with them
        # blocked, as libmilter wants, and no handler of ours runs in the child
        signal.pthread_sigmask(signal.SIG_BLOCK, {*_COMMANDS, signal.SIGUSR2, signal.SIGCHLD})
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child execs at once
                try:
                    signal.set_wakeup_fd(-1)
                    for sig in (*_COMMANDS, signal.SIGUSR2, signal.SIGCHLD):
                        signal.signal(sig, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2, signal.SIGCHLD})
                    try:
                        os.execv(sys.executable, argv)
                    except OSError as e:
                        # e.g. an interpreter under a directory the daemon user cannot
                        # enter: serve from this fork, on the code already loaded
                        for fd in self._fds():
                            with contextlib.suppress(OSError):
                                os.close(fd)
                        worker_main(argv[4:], note=f"cannot exec {sys.executable} ({e.strerror})")
                finally:
                    os._exit(127)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK,
                                   {*_COMMANDS, signal.SIGUSR2, signal.SIGCHLD})
        os.close(rc)
        os.close(ws)
        return Child(pid, wc, rs, listen, path, why, time.monotonic())

    def _fds(self) -> list[int]:
        """The main process's own descriptors, which a forked worker must not hold (a
        worker learns that the main process is gone from its control pipe's EOF)."""
        fds = list(self._wake)
        for c in (self.current, self.pending, *self.draining.values()):
            if c is not None:
                fds += [c.control, c.status]
        return fds

    def promote(self, child: Child) -> None:
        """``child`` listens: make it the one the MTA reaches; the old one hands over."""
        child.ready = True
        if self.pending is child:
            self.pending = None
        if child.path is not None:
            # atomic: PATH always names a listening socket.  A rename, not a second
            # hard link: sendmail refuses a milter socket with more than one link
            # ("unsafe: Hard links not allowed")
            os.rename(child.path, self.public)
        old, self.current = self.current, child
        if child.why == "respawn":
            log.info("worker %d serving after the crash (%.2fs after it started)", child.pid,
                     time.monotonic() - child.started)
        if old is not None:
            log.info("reload: worker %d (new code and config) took over %s in %.2fs; worker "
                     "%d finishes the connections it has", child.pid, self.cfg.milter.socket,
                     time.monotonic() - child.started, old.pid)
            old.send(b"D")
            self.draining[old.pid] = old
        if self.stopping:
            child.send(self.stopping)

    def _forget(self, child: Child) -> None:
        for fd in (child.control, child.status):
            with contextlib.suppress(OSError):
                os.close(fd)
        if child.path is not None:
            # libmilter unlinks it itself unless it runs as root; a crash leaves it
            with contextlib.suppress(OSError):
                os.unlink(child.path)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            what = (f"killed by signal {signal.Signals(-code).name}" if code < 0
                    else f"exited with status {code}")
            if self.pending is not None and pid == self.pending.pid:
                child, self.pending = self.pending, None
                self._forget(child)
                if child.why == "start" and self.stopping:
                    self.status = 0  # stopped (SIGTERM/SIGINT) while it was starting
                elif child.why == "start":
                    if not child.error:  # a config error it printed on stderr itself
                        log.error("listgate worker %d %s before it listened", pid, what)
                    self.status = code if code > 0 else 1
                    self.stopping = b"T"
                elif child.why == "reload":
                    log.error("SIGUSR2: reload failed, keeping the running worker %d: the new "
                              "worker %d %s before it listened%s",
                              self.current.pid if self.current else 0, pid, what,
                              f": {child.error}" if child.error else "")
                else:
                    self._crashed(child, what)
            elif self.current is not None and pid == self.current.pid:
                child, self.current = self.current, None
                self._forget(child)
                if self.stopping or code == 0:
                    self.status = code if code >= 0 else 1
                    if code != 0:
                        log.error("listgate worker %d %s while stopping", pid, what)
                    if not self.stopping:  # it stopped on its own (a signal sent to it)
                        self.stopping = b"T"
                        for c in self.draining.values():
                            c.send(b"T")
                else:
                    self._crashed(child, what)
            elif pid in self.draining:
                child = self.draining.pop(pid)
                self._forget(child)
                log.info("worker %d (replaced by a reload) %s", pid, what)

    def _crashed(self, child: Child, what: str) -> None:
        now = time.monotonic()
        self.crashes = self.crashes + 1 if now - child.started < QUICK_CRASH else 1
        n = self.crashes
        delay = 0.0 if n == 1 else min(2.0 ** (n - 2), BACKOFF_MAX)
        log.error("listgate worker %d %s: starting a new one%s", child.pid, what,
                  f" in {delay:g}s ({n} crashes in a row, each within {QUICK_CRASH:g}s of "
                  "its start)" if delay else "")
        self.respawn_at = now + delay

    # -- signals

    def on_signal(self, signum: int) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGCHLD:
            return  # reaped by the loop
        if sig in (signal.SIGTERM, signal.SIGINT):
            cmd = _COMMANDS[sig]
            self.stopping = b"I" if b"I" in (cmd, self.stopping) else cmd
            self.respawn_at = None
            for c in (self.current, *self.draining.values()):
                if c is not None:
                    c.send(cmd)
            if self.pending is not None:  # not serving anything yet
                with contextlib.suppress(OSError):
                    os.kill(self.pending.pid, signal.SIGKILL)
            return
        if self.stopping:
            return
        if sig == signal.SIGUSR2:
            self.takeover()
        elif self.current is not None:
            self.current.send(_COMMANDS[sig])

    def takeover(self) -> None:
        if self.current is None or self.pending is not None:
            log.warning("SIGUSR2: a worker is starting already; reload not repeated")
            return
        if self.public is None:
            log.warning("SIGUSR2: over TCP a new worker cannot take over the port while the "
                        "old one listens: reloading the configuration in place (the running "
                        "code stays; restart for new code)")
            self.current.send(b"H")
            return
        log.info("SIGUSR2: starting a new worker to take over %s", self.cfg.milter.socket)
        self.pending = self.spawn("reload")

    # -- the loop

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        self._wake = (wake_r, wake_w)
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (*_COMMANDS, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(sig, lambda *_a: None)  # the wakeup fd carries the number
        if self.public is not None:
            remove_stale_sockets(self.public)
        self.pending = self.spawn("start")
        while self.current or self.pending or self.draining or not self.stopping:
            now = time.monotonic()
            if self.respawn_at is not None and now >= self.respawn_at and not self.pending:
                self.respawn_at = None
                if not self.stopping:
                    self.pending = self.spawn("respawn")
            timeout = 1.0
            if self.respawn_at is not None:
                timeout = max(0.0, min(timeout, self.respawn_at - now))
            fds = [wake_r] + ([self.pending.status] if self.pending else [])
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                readable = []
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    for signum in os.read(wake_r, 256):
                        self.on_signal(signum)
            pending = self.pending
            if pending is not None and pending.status in readable:
                with contextlib.suppress(OSError):
                    said = os.read(pending.status, 4096)
                    if said == b"R":
                        self.promote(pending)
                    elif said.startswith(b"E"):
                        pending.error = said[1:].decode("utf-8", "replace")
            self.reap()
            pending = self.pending
            if (pending is not None and not pending.ready
                    and time.monotonic() - pending.started > WORKER_READY_TIMEOUT):
                log.error("worker %d is not listening after %gs: killed", pending.pid,
                          WORKER_READY_TIMEOUT)
                with contextlib.suppress(OSError):
                    os.kill(pending.pid, signal.SIGKILL)
        if self.public is not None:
            remove_stale_sockets(self.public, public_too=True)
        return self.status


def remove_stale_sockets(public: str, public_too: bool = False) -> None:
    """Remove the per-worker socket files a crashed daemon left beside ``public``
    (``PATH.<pid>-<n>``), and at exit ``public`` itself, when nothing listens on
    them."""
    parent = os.path.dirname(public) or "."
    base = os.path.basename(public)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    pattern = re.compile(re.escape(base) + r"\.\d+-\d+")
    for name in names:
        if pattern.fullmatch(name) or (public_too and name == base):
            path = os.path.join(parent, name)
            if _stale_socket(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _socket_state(path: str, timeout: float) -> str:
    """What is at ``path``: "missing", "other" (not a socket), "stale" (a socket file
    nobody listens on) or "listening".  Other errors (no permission) raise OSError."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return "other"
    except FileNotFoundError:
        return "missing"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except ConnectionRefusedError:
            return "stale"
        except FileNotFoundError:
            return "missing"
    return "listening"


def _stale_socket(path: str) -> bool:
    """A socket file nobody listens on."""
    try:
        return _socket_state(path, timeout=0.5) == "stale"
    except OSError:
        return False


def worker_main(argv: list[str], note: str = "") -> int:
    """A worker process, exec'd by the main process (see :class:`Supervisor`).
    ``note``: why it runs in a plain fork instead (logged)."""
    import argparse

    p = argparse.ArgumentParser(prog="listgate worker")
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--status-fd", type=int, required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--generation", type=int, default=1)
    p.add_argument("--why", default="start")
    p.add_argument("-c", dest="config", required=True)
    args = p.parse_args(argv)
    code = 1
    try:
        cfg = load(args.config)
        if args.generation > 1:
            # connection ids of their own: after a takeover two workers log at once
            milter.CONN_ID_PREFIX = f"{args.generation}."
        code = Worker(cfg, args.control_fd, args.status_fd, args.listen, note,
                      takeover=args.why == "reload").run()
    except ConfigError as e:
        print(f"listgate: config error: {e}", file=sys.stderr)
        # the main process logs it (this process has no log without a config)
        with contextlib.suppress(OSError):
            os.write(args.status_fd, b"E" + str(e).encode("utf-8", "replace")[:3000])
        code = 2
    except BaseException:  # the worker must end with _exit
        log.exception("listgate worker failed")
    finally:
        logging.shutdown()
        os._exit(code)


# --------------------------------------------------------------------------- the worker


class Worker:
    """The process that runs libmilter, and its control thread."""

    def __init__(self, cfg: Config, control_fd: int, status_fd: int | None = None,
                 listen: str | None = None, note: str = "", takeover: bool = False) -> None:
        self.note = note
        #: started by a reload: the log says "taking over", not "starting" (listgate
        #: report forgets the connections it knows at a "starting:" line)
        self.takeover = takeover
        #: the configuration in force (replaced by a successful reload)
        self.cfg = cfg
        #: where this worker listens: its own socket file (see Supervisor), or the port
        self.listen = listen or cfg.milter.socket
        #: b"R" is written here once the socket answers
        self.status_fd = status_fd
        #: the drain's end (time.monotonic()); a SIGTERM during a hand-over brings it in
        self._drain_deadline = 0.0
        #: a new worker took over the public socket name (see hand_over)
        self.handed_over = False
        #: the start-up configuration: its RESTART_ONLY values stay in force
        self.boot_cfg = cfg
        self.control_fd = control_fd
        self._lock = threading.Lock()
        self.stopping = False
        self._hurry = threading.Event()
        #: the stop line is logged and the backend closed once (see _finish)
        self._finishing = threading.Lock()
        self._finished = False
        #: the Prometheus metrics, when [metrics] listen is set
        self.metrics: Any = None

    def run(self) -> int:
        cfg = self.cfg
        setup_logging(cfg)  # the worker's own handler (closes the inherited one)
        if self.note:
            log.warning("worker %d: %s: it runs the code the main process loaded (a reload "
                        "takes new config, not new code)", os.getpid(), self.note)
        engine = build_engine(cfg, log, background_refresh=True)
        log_stats_on_sigusr1(lambda: ListgateMilter.engine)
        if cfg.metrics.listen:  # [metrics]: imported only when on, so free when off
            from listgate import metrics

            # after the signal mask: the server thread inherits it
            self.metrics = metrics.start(cfg, engine, log)
        check_backend(engine)
        ListgateMilter.engine = engine
        Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
        sock = self.listen
        os.umask(cfg.milter.umask)
        port = _inet_port(sock)
        # over TCP, answering DATA removes a delayed ACK per message (ListgateMilter.data)
        ListgateMilter.data_reply = sock.startswith("inet")
        if port is not None and cfg.milter.tcp_nodelay:
            set_nodelay_when_bound(port)
        threading.Thread(target=self._control, name="control", daemon=True).start()
        self.rescuer = Rescuer(ListgateMilter.busy, lambda: self.wake_specs()[-1])
        self.rescuer.start()
        if self.status_fd is not None:
            threading.Thread(target=self._report_ready, name="ready", daemon=True).start()
        # the socket the MTA reaches; a unix socket is created as this worker's own file
        # first and renamed to it once it answers (see Supervisor)
        log.info("listgate %s %s: socket=%s mode=%s backend=%s (worker %d)", __version__,
                 "taking over" if self.takeover else "starting", self.boot_cfg.milter.socket,
                 cfg.milter.mode, engine.backend.name, os.getpid())
        if sock != self.boot_cfg.milter.socket:
            log.debug("worker %d listens on %s until it is renamed", os.getpid(), sock)
        # Returns only when libmilter stops on its own (a signal sent to this process, or
        # a failure): a stop of ours ends the process from the stop thread (see _end).
        try:
            run_milter("listgate", sock, int(cfg.milter.timeout))
        except Milter.milter.error as e:
            log.error("milter failed on %s: %s", sock, e)
            return 1
        if not self.stopping:
            self.stopping = True
            log.warning("libmilter stopped on a signal sent to the worker process (pid %d) "
                        "itself: connections in flight are cut off.  Send signals to the main "
                        "process (pid %d): it drains on SIGTERM, reloads on SIGHUP",
                        os.getpid(), os.getppid())
        self._finish()
        return 0

    def _finish(self) -> None:
        """The last words: the stop line with the counters, and the backend closed.
        Once, whichever of the stop thread and the main thread gets here first."""
        with self._finishing:
            if self._finished:
                return
            self._finished = True
            log.info("listgate stopped (%s)", ListgateMilter.engine.stats())
            ListgateMilter.engine.close()

    def _end(self) -> None:
        """End this worker process, with libmilter still running, once no connection is
        open (or the drain's timeout cut them off).

        Not smfi_stop: with Debian's libmilter 8.17 and pymilter, letting ``smfi_main``
        return is not safe while the MTA still connects (and during a drain it does,
        to be refused at negotiation).  Measured with the window widened
        (tests/e2e/test_daemon_ops.py, SLOW_STOP_CHECK), both ended in exit status 1:

        * libmilter's listener reads its stop flag, then locks the listening socket;
          smfi_stop can set the flag and close the socket in between, and the listener
          takes the closed socket for a broken one: MI_FAILURE ("cannot run main");
        * when ``smfi_main`` returns pymilter forgets the interpreter, while a libmilter
          worker may be starting the negotiate callback of a connection accepted just
          before: SIGSEGV in pymilter's ``_get_context`` (a core dump showed
          ``PyThreadState_New(interp=0x0)``).

        Ending the process loses nothing: what is open now was given up on by the
        drain, and a connection accepted meanwhile would be refused at negotiation; the
        MTA applies its milter_default_action to both, as for a stopped daemon.  The
        kernel closes the listening socket; the main process removes its file."""
        code = 0
        try:
            self._finish()
        except BaseException:  # the worker must end with _exit
            log.exception("stopping failed")
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _report_ready(self) -> None:
        """Tell the main process once our socket answers (libmilter binds it inside
        runmilter), so it can point the public name at it."""
        fd, self.status_fd = self.status_fd, None
        assert fd is not None
        try:
            deadline = time.monotonic() + WORKER_READY_TIMEOUT
            while time.monotonic() < deadline and not self.stopping:
                if wake_listener(self.listen):
                    os.write(fd, b"R")
                    return
                time.sleep(0.01)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- control

    def _control(self) -> None:
        """Execute the main process's commands; its end (EOF) means stop."""
        while True:
            try:
                cmd = os.read(self.control_fd, 1)
            except InterruptedError:
                continue
            except OSError:
                cmd = b""
            try:
                if cmd == b"H":
                    self.reload()
                elif cmd == b"U":
                    log.info("stats: %s", ListgateMilter.engine.stats())
                elif cmd == b"T":
                    self.stop(drain=True, why="SIGTERM")
                elif cmd == b"D":
                    self.hand_over()
                elif cmd == b"I":
                    self.stop(drain=False, why="SIGINT")
                elif not cmd:
                    self.stop(drain=True, why="the main process is gone")
                    return
            except Exception:  # keep serving whatever a command does
                log.exception("control command %r failed", cmd)

    def stop(self, drain: bool = True, why: str = "SIGTERM") -> None:
        """Refuse new connections, let those in flight finish (``drain``, bounded by
        ``shutdown_timeout``), then stop libmilter: ``runmilter`` returns in the main
        thread.  A second stop without ``drain`` (SIGINT) cuts the wait short."""
        with self._lock:
            if not drain:
                self._hurry.set()
            if self.stopping:
                # a hand-over in progress: now bounded by shutdown_timeout
                self._drain_deadline = min(
                    self._drain_deadline, time.monotonic() + self.cfg.milter.shutdown_timeout)
                return
            self.stopping = True
        ListgateMilter.accepting = False
        threading.Thread(target=self._stop, args=(drain, why), name="stop", daemon=True).start()

    def hand_over(self) -> None:
        """A new worker took over the public socket name: serve the connections we have
        (and those still queued on our own listener) without refusing any, then stop;
        at most ``[milter] reload_timeout`` seconds."""
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
            self.handed_over = True
        threading.Thread(target=self._hand_over, name="hand-over", daemon=True).start()

    def wake_specs(self) -> list[str]:
        """Where a connection reaches our own listener: the name it was created under
        (until the main process renames it), then the public name -- until a
        takeover, after which no name reaches it."""
        if self.handed_over or self.listen == self.boot_cfg.milter.socket:
            return [self.listen]
        return [self.listen, self.boot_cfg.milter.socket]

    def _hand_over(self) -> None:
        try:
            timeout = self.cfg.milter.reload_timeout
            log.info("reload: a new worker serves new connections; this worker (pid %d) "
                     "finishes its %d, for at most %gs ([milter] reload_timeout)",
                     os.getpid(), ListgateMilter.connections.count(), timeout)
            time.sleep(0.2)  # what was queued on our listener before the switch is served
            left = self._drain(timeout)
            if left:
                log.warning("[milter] reload_timeout: %d connection(s) of the replaced worker "
                            "still open after %gs are cut off", left, timeout)
        finally:
            self._end()

    def _stop(self, drain: bool, why: str) -> None:
        try:
            timeout = self.cfg.milter.shutdown_timeout if drain else 0.0
            n = ListgateMilter.connections.count()
            log.info("%s: stopping: refusing new connections; waiting up to %gs for %d in "
                     "flight", why, timeout, n)
            left = self._drain(timeout)
            if left:
                log.warning("[milter] shutdown_timeout: %d connection(s) still open after %gs "
                            "are cut off (the MTA applies its milter_default_action)",
                            left, timeout)
            elif n:
                log.info("all connections finished")
        finally:  # whatever happened above, the daemon must stop
            self._end()

    def _drain(self, timeout: float) -> int:
        """Wait until no connection is open, ``timeout`` passes or SIGINT; the number left."""
        self._drain_deadline = time.monotonic() + timeout
        while not self._hurry.is_set():
            left = ListgateMilter.connections.wait_idle(
                min(0.1, max(0.0, self._drain_deadline - time.monotonic())))
            if left == 0:
                # one more look: a connection accepted just now may be negotiating
                time.sleep(0.05)
                if ListgateMilter.connections.count() == 0:
                    return 0
            elif time.monotonic() >= self._drain_deadline:
                return left
        return ListgateMilter.connections.count()

    # -- reload

    def reload(self) -> None:
        """SIGHUP: reopen the log, re-read the config, and serve new connections with
        a new engine (fresh list, DNS and backend caches).  An invalid config keeps the
        running one; connections in flight finish on the engine they started with."""
        try:
            new = load(self.cfg.path)
        except ConfigError as e:
            self._reopen_log(self.cfg)
            log.error("SIGHUP: reload failed, keeping the running configuration: %s", e)
            return
        self._reopen_log(new)
        log.info("SIGHUP: reloading %s", new.path)
        running = self.boot_cfg.section("milter")
        wanted = new.section("milter")
        for key in RESTART_ONLY:
            if wanted[key] != running[key]:
                log.warning("SIGHUP: %s: [milter] %s changed (%s -> %s): needs a restart; "
                            "still using %s", new.path, key, _show(key, running[key]),
                            _show(key, wanted[key]), _show(key, running[key]))
        resolver = dns.resolver.default_resolver
        try:
            engine = build_engine(new, log, background_refresh=True)
        except Exception as e:  # noqa: BLE001 - e.g. an unreadable password file
            dns.resolver.default_resolver = resolver
            log.error("SIGHUP: reload failed, keeping the running configuration: %s", e)
            return
        if self.metrics is not None:
            from listgate import metrics

            metrics.attach(self.metrics, engine, log)
        engine.warm_up()
        old, ListgateMilter.engine = ListgateMilter.engine, engine
        self.cfg = new
        ListgateMilter.connections.retire(old)
        check_backend(engine)
        log.info("SIGHUP: reloaded: mode=%s backend=%s; list, DNS and backend caches dropped "
                 "(%s)", new.milter.mode, engine.backend.name, old.stats())

    def _reopen_log(self, cfg: Config) -> None:
        try:
            setup_logging(cfg)
            if self.metrics is not None:
                from listgate import metrics

                metrics.keep_info(log)
        except OSError as e:
            log.error("SIGHUP: cannot open [milter] log_file %s: %s; logging on where it was",
                      cfg.milter.log_file, e.strerror)


def _show(key: str, value: object) -> str:
    return f"{value:03o}" if key == "umask" and isinstance(value, int) else str(value)


def wake_listener(spec: str) -> bool:
    """Connect to our own milter socket (and hang up) to end libmilter's poll now.
    Whether it answered."""
    try:
        if spec.startswith(("unix:", "local:")):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(spec.split(":", 1)[1])
            return True
        m = re.fullmatch(r"inet6?:(\d+)@\[?([^\]]*)\]?", spec)
        if not m:
            return False
        host = m.group(2)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        with socket.create_connection((host, int(m.group(1))), timeout=1):
            pass
        return True
    except OSError:
        return False


class Rescuer:
    """Keeps libmilter's worker pool from leaving a connection unserved while the other
    workers wait on DNS or the backend.

    Debian's libmilter runs connections on a pool of worker threads (worker.c, built
    with ``_FFR_WORKERS_POOL``).  When a command arrives it wakes an idle worker if its
    count says there is one, else starts a new one.  That count still includes a worker
    already woken for another command, so in a burst one command can be left waiting
    with no worker to run it -- until some worker finishes its own.  If every other
    worker is waiting on a slow DNS answer, that is the DNS wait: measured, a new SMTP
    session waited 8.0 s for its banner behind an 8 s DNS delay, once in six bursts of
    40 sessions.

    A finished command is what rescues it: a worker that ends its task runs the next one
    waiting.  So while some callback has been waiting longer than :attr:`after`, this
    thread connects to the milter socket and hangs up every :attr:`every` seconds: the
    worker that takes that trivial session (no callback runs) ends it at once and picks
    up whatever was left waiting.  Nothing is done while callbacks answer promptly.

    One poke frees about one command: its worker runs the waiting commands in turn
    until one of them waits itself (another MAIL FROM on the slow DNS), and stays
    there.  A burst of 40 sessions behind a slow domain thus got one negotiation per
    poke, and the last banner came after 1.2-1.4 s on a loaded machine.  So a poke
    that is followed, within :attr:`settle`, by more callbacks beginning than usual
    (the rate of the tick before) freed something, and twice as many pokes follow, at
    most :attr:`most` per tick; a poke that frees nothing ends the round.  A poke
    costs ~50 us of CPU (both ends, unix socket), so even a round that runs to
    :attr:`most` on every tick stays below 4% of a core.
    """

    after = 0.05
    every = 0.05
    #: how long a poke's effect is awaited before the next, larger round
    settle = 0.01
    #: the most pokes per tick
    most = 32

    def __init__(self, busy: Any, socket_spec: Callable[[], str]) -> None:
        self.busy = busy
        self.socket_spec = socket_spec
        self.pokes = 0
        self._stop = threading.Event()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="rescuer", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last = self.busy.begun
        while not self._stop.wait(self.every):
            try:
                if self.busy.longest() > self.after:
                    # the callbacks begun in a settle-long window of the tick just past
                    usual = (self.busy.begun - last) * self.settle / self.every
                    self._rescue(usual)
            except Exception:  # a helper thread must never die of it
                log.exception("rescuer")
            last = self.busy.begun

    def _rescue(self, usual: float) -> None:
        """Poke; while the pokes free commands (see the class), poke twice as many."""
        n = sent = 0
        while True:
            n = min(max(1, 2 * n), self.most - sent)
            before = self.busy.begun
            spec = self.socket_spec()
            for _ in range(n):
                wake_listener(spec)
                self.pokes += 1
            sent += n
            if sent >= self.most or self._stop.wait(self.settle):
                return
            if self.busy.begun - before <= usual:
                return


def check_backend(engine: Engine) -> None:
    """Say at start-up and on reload, loudly, when the gate cannot work as configured.

    An unreadable or missing store is an ERROR (every recipient gets 451, or passes
    unchecked with ``on_backend_error = accept``) and an empty one a WARNING (no
    recipient is a list, so nothing is gated): either may be a lost database, and the
    admin should learn it from the first line after ``starting:``, not from the posts.
    """
    b = engine.backend
    try:
        lists = b.lists()
    except BackendError as e:
        log.error("backend %s cannot be read: %s; until it can, %s", b.name, e,
                  "list posts pass UNCHECKED (on_backend_error = accept)" if engine.fail_open
                  else "every recipient is answered 451 4.3.0 (tempfail), since no "
                       "recipient can be told from a list")
        return
    if not lists:
        log.warning("backend %s holds no lists: no recipient is a list, so no post is "
                    "gated; if lists were there, the store was lost or the config names the "
                    "wrong one", b.name)
    engine.warm_up()
