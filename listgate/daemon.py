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

Hence two processes.  The main process (the PID systemd and the admin signal) never
runs libmilter: it only turns HUP/TERM/INT/USR1 into one byte on a pipe to a worker
process it forks, and exits with the worker's status.  The worker runs libmilter and
a control thread reading that pipe:

* HUP re-reads the config and swaps the engine for new connections (a replaced
  engine's backend is closed when its last connection ends);
* TERM refuses new connections at negotiation (the MTA applies its
  ``milter_default_action``, as for a stopped daemon), waits up to ``[milter]
  shutdown_timeout`` for those in flight, then calls ``smfi_stop`` and wakes the
  listener with a connection of its own: exit 0 well under a second when idle;
* INT does the same without waiting.

Signals sent to the worker itself still reach libmilter, which then stops at once
(connections in flight are cut off): under systemd use ``KillMode=mixed`` so that
only the main process gets SIGTERM.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dns.resolver
import Milter

from listgate import __version__
from listgate.app import build_engine
from listgate.config import Config, ConfigError, load
from listgate.engine import Engine
from listgate.logfile import FastFormatter, LogFile, lean_records
from listgate.milter import ListgateMilter
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

#: libmilter's listener poll interval (MI_CHK_TIME), the longest smfi_stop can block
MI_CHK_TIME = 5.0

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
    writable, open the log, then fork the worker.
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
    return supervise(cfg)


def supervise(cfg: Config) -> int:
    """Fork the worker and relay HUP/TERM/INT/USR1 to it; its exit status.

    The signals are blocked across the fork: the worker starts with them blocked (as
    libmilter wants), and the main process installs its handlers before unblocking.
    """
    rfd, wfd = os.pipe()
    signal.pthread_sigmask(signal.SIG_BLOCK, set(_COMMANDS))
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            os.close(wfd)
            for sig in _COMMANDS:
                signal.signal(sig, signal.SIG_DFL)
            code = Worker(cfg, rfd).run()
        except ConfigError as e:
            print(f"listgate: config error: {e}", file=sys.stderr)
            code = 2
        except BaseException:  # the worker must end with _exit
            log.exception("listgate worker failed")
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(rfd)

    def relay(signum: int, _frame: object) -> None:
        try:
            os.write(wfd, _COMMANDS[signal.Signals(signum)])
        except OSError:
            pass  # the worker is gone: waitpid below returns

    for sig in _COMMANDS:
        signal.signal(sig, relay)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_COMMANDS))
    _, status = os.waitpid(pid, 0)  # retried after each signal handler (PEP 475)
    os.close(wfd)
    if os.WIFSIGNALED(status):
        log.error("listgate worker %d killed by signal %s", pid,
                  signal.Signals(os.WTERMSIG(status)).name)
        return 1
    return os.WEXITSTATUS(status)


# --------------------------------------------------------------------------- the worker


class Worker:
    """The process that runs libmilter, and its control thread."""

    def __init__(self, cfg: Config, control_fd: int) -> None:
        #: the configuration in force (replaced by a successful reload)
        self.cfg = cfg
        #: the start-up configuration: its RESTART_ONLY values stay in force
        self.boot_cfg = cfg
        self.control_fd = control_fd
        self._lock = threading.Lock()
        self.stopping = False
        self._hurry = threading.Event()
        #: the Prometheus metrics, when [metrics] listen is set
        self.metrics: Any = None

    def run(self) -> int:
        cfg = self.cfg
        setup_logging(cfg)  # the worker's own handler (closes the inherited one)
        engine = build_engine(cfg, log, background_refresh=True)
        log_stats_on_sigusr1(lambda: ListgateMilter.engine)
        if cfg.metrics.listen:  # [metrics]: imported only when on, so free when off
            from listgate import metrics

            # after the signal mask: the server thread inherits it
            self.metrics = metrics.start(cfg, engine, log)
        check_backend(engine)
        ListgateMilter.engine = engine
        Milter.factory = ListgateMilter
        Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
        sock = cfg.milter.socket
        os.umask(cfg.milter.umask)
        port = _inet_port(sock)
        if port is not None and cfg.milter.tcp_nodelay:
            set_nodelay_when_bound(port)
        threading.Thread(target=self._control, name="control", daemon=True).start()
        self.rescuer = Rescuer(ListgateMilter.busy, lambda: sock)
        self.rescuer.start()
        log.info("listgate %s starting: socket=%s mode=%s backend=%s", __version__, sock,
                 cfg.milter.mode, engine.backend.name)
        try:
            Milter.runmilter("listgate", sock, int(cfg.milter.timeout))
        except Milter.milter.error as e:
            log.error("milter failed on %s: %s", sock, e)
            return 1
        if not self.stopping:
            self.stopping = True
            log.warning("libmilter stopped on a signal sent to the worker process (pid %d) "
                        "itself: connections in flight are cut off.  Send signals to the main "
                        "process (pid %d): it drains on SIGTERM, reloads on SIGHUP",
                        os.getpid(), os.getppid())
        log.info("listgate stopped (%s)", ListgateMilter.engine.stats())
        ListgateMilter.engine.close()
        return 0

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
                return
            self.stopping = True
        ListgateMilter.accepting = False
        threading.Thread(target=self._stop, args=(drain, why), name="stop", daemon=True).start()

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
            self._stop_libmilter()

    def _stop_libmilter(self) -> None:
        # libmilter's stop flag: the listener closes and -- in Debian's build, with its
        # worker pool -- no connection is served any more, hence the drain above first.
        stopper = threading.Thread(target=_smfi_stop, name="smfi_stop", daemon=True)
        stopper.start()
        # smfi_stop waits for the listener's poll (up to MI_CHK_TIME): a connection
        # of our own wakes it.  Retried, since one made before the stop flag was set
        # is just accepted (and refused at negotiation) as any other.
        deadline = time.monotonic() + MI_CHK_TIME + 1
        while stopper.is_alive() and time.monotonic() < deadline:
            wake_listener(self.boot_cfg.milter.socket)
            stopper.join(0.05)

    def _drain(self, timeout: float) -> int:
        """Wait until no connection is open, ``timeout`` passes or SIGINT; the number left."""
        deadline = time.monotonic() + timeout
        while not self._hurry.is_set():
            left = ListgateMilter.connections.wait_idle(
                min(0.1, max(0.0, deadline - time.monotonic())))
            if left == 0:
                # one more look: a connection accepted just now may be negotiating
                time.sleep(0.05)
                if ListgateMilter.connections.count() == 0:
                    return 0
            elif time.monotonic() >= deadline:
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


def _smfi_stop() -> None:
    try:
        Milter.milter.stop()
    except Exception as e:  # noqa: BLE001 - logged; the worker still drains and exits
        log.error("smfi_stop failed: %s", e)


def wake_listener(spec: str) -> None:
    """Connect to our own milter socket (and hang up) to end libmilter's poll now."""
    try:
        if spec.startswith(("unix:", "local:")):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(spec.split(":", 1)[1])
            return
        m = re.fullmatch(r"inet6?:(\d+)@\[?([^\]]*)\]?", spec)
        if not m:
            return
        host = m.group(2)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        with socket.create_connection((host, int(m.group(1))), timeout=1):
            pass
    except OSError:
        pass


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
    """

    after = 0.05
    every = 0.05

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
        while not self._stop.wait(self.every):
            try:
                if self.busy.longest() > self.after:
                    wake_listener(self.socket_spec())
                    self.pokes += 1
            except Exception:  # a helper thread must never die of it
                log.exception("rescuer")


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
