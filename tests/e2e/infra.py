"""Real-process infrastructure for listgate's end-to-end tests.

Everything here drives real programs on loopback, no mocks:

* :class:`DnsServer` -- a private ``dnsmasq`` answering TXT/A/AAAA/PTR/MX records
  given as Python data (for SPF lookups).
* :class:`SmtpSink` -- Postfix's ``smtp-sink`` capturing every relayed message to a
  directory; :meth:`SmtpSink.messages` parses the captures (envelope + ``email``).
* :class:`PostfixInstance` -- a private Postfix instance (own config, queue, data
  directory and log) whose smtpd listens on ``127.0.0.1:<free port>``, relays the
  configured domains to a sink and optionally talks to a milter.
* :func:`smtp_transaction` -- an SMTP client that records every reply instead of
  raising on 4xx/5xx.

The module has no pytest dependency (``conftest.py`` wraps it in fixtures). All
servers bind to 127.0.0.1 only. A missing tool raises :class:`InfraError` with a
hint to run ``scripts/install-debian-deps.sh test``.

Layout on disk: everything lives under :data:`E2E_ROOT` (``/var/tmp/listgate-e2e``,
mode 0755 so that the ``postfix`` user can traverse it), one ``mkdtemp`` directory
per server, removed by ``stop()``; Postfix logs go to ``/var/log/listgate-e2e/``.
Set ``LISTGATE_E2E_KEEP=1`` to keep the directories and logs for debugging.
"""

from __future__ import annotations

import atexit
import email
import email.message
import email.policy
import fcntl
import grp
import ipaddress
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Self

__all__ = [
    "E2E_ROOT",
    "DnsServer",
    "InfraError",
    "PostfixInstance",
    "Reply",
    "SinkMessage",
    "SmtpResult",
    "SmtpSink",
    "find_tool",
    "free_port",
    "make_message",
    "pid_alive",
    "processes_with_env",
    "smtp_transaction",
    "stop_all",
    "stop_instances",
]

#: Root of all on-disk state of the e2e servers (override with LISTGATE_E2E_ROOT).
E2E_ROOT = Path(os.environ.get("LISTGATE_E2E_ROOT", "/var/tmp/listgate-e2e"))
#: Directory of the private Postfix instances' maillog files (must start with /var).
LOG_ROOT = Path(os.environ.get("LISTGATE_E2E_LOG_ROOT", "/var/log/listgate-e2e"))
#: Number of Postfix config-directory slots listed in alternate_config_directories.
POSTFIX_SLOTS = 16

LOOPBACK = "127.0.0.1"
INSTALL_HINT = ("run scripts/install-debian-deps.sh test (as root, or make test) to install "
                "the e2e test dependencies")


class InfraError(RuntimeError):
    """A test server could not be found, configured, started or stopped."""


# Servers started and not yet stopped: stopped at interpreter exit as a safety net.
_LIVE: dict[int, object] = {}


def _register(server) -> None:
    _LIVE[id(server)] = server


def _unregister(server) -> None:
    _LIVE.pop(id(server), None)


@atexit.register
def stop_all() -> None:
    """Stop every server of this module that is still running (also run at exit)."""
    servers = list(_LIVE.values())
    for server in servers:
        if isinstance(server, PostfixInstance):
            try:
                server.request_stop()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
    for server in servers:
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _keep_files() -> bool:
    return os.environ.get("LISTGATE_E2E_KEEP", "") not in ("", "0", "no", "false")


# --------------------------------------------------------------------------- helpers


def find_tool(name: str) -> str:
    """Return the absolute path of program *name*, searching PATH plus the sbin dirs.

    Raises :class:`InfraError` (with the install hint) if it is not installed.
    """
    extra = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/lib/postfix/sbin"]
    path = os.pathsep.join([os.environ.get("PATH", ""), *extra])
    found = shutil.which(name, path=path)
    if not found:
        raise InfraError(f"required program {name!r} not found: {INSTALL_HINT}")
    return found


_issued_ports: set[int] = set()


def free_port(udp_too: bool = False) -> int:
    """Return a currently free TCP port on 127.0.0.1 (and UDP as well if *udp_too*).

    Ports are never handed out twice by one process. There is an unavoidable race with
    other processes; the servers here retry with a new port when binding fails.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port in _issued_ports:
            continue
        if udp_too:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((LOOPBACK, port))
            except OSError:
                continue
        _issued_ports.add(port)
        return port
    raise InfraError("could not find a free port on 127.0.0.1")


def _make_workdir(prefix: str) -> Path:
    E2E_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(E2E_ROOT, 0o755)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=E2E_ROOT))
    os.chmod(d, 0o755)
    return d


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def _wait_tcp(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait until something accepts TCP connections on 127.0.0.1:*port*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _socket_bound(ip: str, port: int, proto: str = "tcp") -> bool | None:
    """True if a TCP socket listens (or a UDP socket is bound) on ip:port, per Linux
    /proc/net/{tcp,udp} (IPv4 only); None if /proc cannot tell."""
    hexip = "".join(f"{b:02X}" for b in reversed(socket.inet_aton(ip)))
    want = f"{hexip}:{port:04X}"
    state = "0A" if proto == "tcp" else "07"  # TCP_LISTEN / TCP_CLOSE (unconnected UDP)
    try:
        with open(f"/proc/net/{proto}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1] == want and fields[3] == state:
                    return True
    except OSError:
        return None
    return False


def _tcp_listening(ip: str, port: int) -> bool:
    """True if a TCP socket listens on ip:port, without connecting when /proc tells."""
    bound = _socket_bound(ip, port, "tcp")
    if bound is not None:
        return bound
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie (the master daemon is reparented to
    PID 1, which may take a while to reap it; kill(pid, 0) succeeds on zombies)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _terminate(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Stop a child process we started (SIGTERM, then SIGKILL) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def processes_with_env(name: str, value: str) -> list[int]:
    """PIDs of processes whose environment contains ``name=value`` (Linux /proc)."""
    needle = f"{name}={value}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry))
    return pids


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 60):
    """Run a command, return CompletedProcess with text stdout/stderr.

    Output goes through temporary files, not pipes: ``postfix reload`` leaves a
    ``postsuper &`` behind that would keep a pipe open (and us waiting) for ~1.5 s.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout
        )
        out.seek(0)
        err.seek(0)
        res = subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )
    if check and res.returncode != 0:
        raise InfraError(
            f"command failed (exit {res.returncode}): {' '.join(argv)}\n"
            f"stdout: {res.stdout.strip()}\nstderr: {res.stderr.strip()}"
        )
    return res


# --------------------------------------------------------------------------- DNS


def _dnsmasq_quote(value: str) -> str:
    """Quote one TXT character-string for a dnsmasq *config file* line.

    In a config file dnsmasq strips the double quotes and understands ``\\\\`` and
    ``\\"`` inside them, so spaces, commas, colons, ``;`` and ``#`` survive exactly.
    (On the command line it would NOT strip quotes: they would end up in the record.)
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"control characters are not supported in TXT data: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_name(name: str) -> str:
    name = name.rstrip(".")
    if not name or any(c in name for c in ',/"#\\ \t\n'):
        raise ValueError(f"bad DNS name for the test zone: {name!r}")
    return name


def _as_list(value) -> list:
    if isinstance(value, (str, bytes, tuple)):
        return [value]
    return list(value)


class _Server:
    """What the DNS and SMTP servers share: a child process on a loopback port."""

    _proc: subprocess.Popen | None
    host: str
    port: int | None
    workdir: Path

    def start(self):  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, argv: list[str], name: str) -> Path:
        """Start the server in its own session, output to ``workdir/NAME.stderr``."""
        errf = self.workdir / f"{name}.stderr"
        with open(errf, "wb") as err:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return errf

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} running={self.running}>"


class DnsServer(_Server):
    """A private dnsmasq on 127.0.0.1:<free port> (UDP and TCP) serving test records.

    Args:
        txt: ``{name: records}``. *records* is a str (one TXT RR), or a list of RRs;
            each RR is a str (one character-string; dnsmasq splits data longer than
            255 bytes into several) or a tuple of str (one RR with several
            character-strings). Any characters but control characters are fine,
            e.g. ``{"pass.test": ["v=spf1 ip4:127.0.0.2 -all"]}``.
        a: ``{name: ip or [ips]}``: A records (AAAA for IPv6 addresses). NOTE: these
            use dnsmasq ``--address=/name/ip``, which also answers for every name
            *below* ``name``; a name that has only A records answers NXDOMAIN (not
            NODATA) for TXT queries.
        ptr: ``{ip or reverse name: hostname}``: PTR records
            (``"127.0.0.2"`` -> ``2.0.0.127.in-addr.arpa``).
        mx: ``{name: host or [(preference, host), ...]}``: MX records.
        cname: ``{alias: target}``: CNAME records (dnsmasq ``--cname``); the target
            must be a name dnsmasq itself has records for (e.g. a ``txt`` name).
        zones: domains dnsmasq is authoritative for (``--local=/zone/``): unknown
            names in them are NXDOMAIN. Names outside every zone get REFUSED.
        log_queries: log every query; :meth:`queries` then lists them.

    ``start()`` (also called by ``with``) returns once the server answers queries.
    Attributes: ``port``, ``host``, ``nameservers`` (``"127.0.0.1:PORT"``).
    dnsmasq cannot change records at run time: :meth:`restart` with new records keeps
    the port (and raises :class:`InfraError` if another process took it meanwhile).
    """

    def __init__(
        self,
        txt: Mapping[str, object] | None = None,
        a: Mapping[str, object] | None = None,
        ptr: Mapping[str, str] | None = None,
        mx: Mapping[str, object] | None = None,
        *,
        cname: Mapping[str, str] | None = None,
        zones: Iterable[str] = ("test", "in-addr.arpa"),
        log_queries: bool = False,
        startup_timeout: float = 10.0,
        ttl: int = 0,
    ) -> None:
        self.log_queries = log_queries
        #: the TTL of every answer (dnsmasq's --local-ttl): 0, the default, keeps tests
        #: free of resolver caching; a benchmark wants real-world TTLs
        self.ttl = ttl
        self.txt = dict(txt or {})
        self.a = dict(a or {})
        self.ptr = dict(ptr or {})
        self.mx = dict(mx or {})
        self.cname = dict(cname or {})
        self.zones = [z.strip(".") for z in zones]
        self.startup_timeout = startup_timeout
        self.host = LOOPBACK
        self.port: int | None = None
        self.workdir: Path | None = None
        self._proc: subprocess.Popen | None = None

    # -- configuration
    def config_text(self) -> str:
        """The dnsmasq config file contents for the current records."""
        lines = []
        for name, records in self.txt.items():
            name = _check_name(name)
            for rr in _as_list(records):
                strings = [rr] if isinstance(rr, str) else list(rr)
                if not strings:
                    raise ValueError(f"empty TXT record for {name}")
                lines.append(f"txt-record={name}," + ",".join(map(_dnsmasq_quote, strings)))
        for name, ips in self.a.items():
            name = _check_name(name)
            for ip in _as_list(ips):
                ip = str(ipaddress.ip_address(ip))
                lines.append(f"address=/{name}/{ip}")
        for ip_or_name, target in self.ptr.items():
            try:
                rname = ipaddress.ip_address(ip_or_name).reverse_pointer
            except ValueError:
                rname = _check_name(ip_or_name)
            lines.append(f"ptr-record={rname},{_check_name(target)}")
        for name, entries in self.mx.items():
            name = _check_name(name)
            for entry in _as_list(entries):
                pref, host = (10, entry) if isinstance(entry, str) else entry
                lines.append(f"mx-host={name},{_check_name(host)},{int(pref)}")
        for alias, target in self.cname.items():
            lines.append(f"cname={_check_name(alias)},{_check_name(target)}")
        return "\n".join(lines) + "\n"

    @property
    def nameservers(self) -> str:
        """``"127.0.0.1:PORT"``."""
        return f"{self.host}:{self.port}"

    def resolver(self, timeout: float = 3.0):
        """A ``dns.resolver.Resolver`` (dnspython) pointed at this server only."""
        import dns.resolver

        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.host]
        r.port = self.port
        r.timeout = r.lifetime = timeout
        return r

    # -- life cycle
    def start(self) -> DnsServer:
        if self._proc is not None:
            return self
        dnsmasq = find_tool("dnsmasq")
        if self.workdir is None:
            self.workdir = _make_workdir("dns-")
        conf = self.workdir / "records.conf"
        conf.write_text(self.config_text())
        os.chmod(conf, 0o644)
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        keep_port = self.port is not None
        last_err = ""
        for _attempt in range(5):
            if not keep_port:
                self.port = free_port(udp_too=True)
            argv = [
                dnsmasq,
                "-k",
                f"--port={self.port}",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                f"--conf-file={conf}",
                "--bind-interfaces",
                f"--listen-address={self.host}",
                "--pid-file=",  # no pid file: several instances must coexist
                f"--user={user}",  # no uid/gid change (fails in some containers)
                f"--group={group}",
                "--cache-size=0",
                "--log-facility=-",  # log to stderr, never to syslog
                f"--local-ttl={self.ttl}",
                *(["--log-queries"] if self.log_queries else []),
                *(f"--local=/{z}/" for z in self.zones),
            ]
            errf = self._spawn(argv, "dnsmasq")
            if self._wait_ready():
                _register(self)
                return self
            _terminate(self._proc)
            self._proc = None
            last_err = _tail(errf)
            if keep_port:
                break
        self.stop()
        raise InfraError(f"dnsmasq did not start or answer on {self.nameservers}:\n{last_err}")

    def _wait_ready(self) -> bool:
        import dns.exception
        import dns.resolver

        resolver = self.resolver(timeout=0.5)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if _socket_bound(self.host, self.port, "udp") is False:
                time.sleep(0.02)  # not bound yet: a query now would just time out
                continue
            try:
                resolver.resolve("listgate-e2e-probe.invalid", "A")
                return True
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
                return True  # any answer (even REFUSED) means it is serving
            except dns.exception.Timeout:
                time.sleep(0.05)
        return False

    def queries(self) -> list[tuple[str, str]]:
        """``[(qtype, name), ...]`` received so far (needs ``log_queries=True``)."""
        text = _tail(self.workdir / "dnsmasq.stderr", 10_000_000) if self.workdir else ""
        return re.findall(r"query\[(\w+)\] (\S+) from ", text)

    def restart(self, **records) -> DnsServer:
        """Restart with changed records (keyword args as in the constructor), same port."""
        for key, value in records.items():
            if key not in ("txt", "a", "ptr", "mx", "cname"):
                raise TypeError(f"unknown record type {key!r}")
            setattr(self, key, dict(value or {}))
        _terminate(self._proc)
        self._proc = None
        return self.start()

    def stop(self) -> None:
        """Stop dnsmasq and remove its working directory. Idempotent. A later
        ``start()`` reuses the port."""
        _unregister(self)
        _terminate(self._proc)
        self._proc = None
        if self.workdir is not None and not _keep_files():
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


# --------------------------------------------------------------------------- smtp-sink


class FaultyDns:
    """A name server that misbehaves on purpose, in front of a :class:`DnsServer`.

    A UDP forwarder on 127.0.0.1:<free port> (in this process): queries for names
    under one of ``slow`` are answered ``delay`` seconds late, those under one of
    ``silent`` never (``silent=("",)``: none at all, a server that has hung); the rest
    are forwarded at once.  ``upstream`` is the :class:`DnsServer` that has the records
    (None with ``silent=("",)``).  Attributes: ``port``, ``nameservers``, ``queries``
    (names asked, in order).  Works as a context manager, like the servers above.
    """

    def __init__(self, upstream: DnsServer | None, *, slow: Iterable[str] = (),
                 delay: float = 0.0, silent: Iterable[str] = ()) -> None:
        self.upstream = upstream
        self.slow = tuple(s.lower().strip(".") for s in slow)
        self.silent = tuple(s.lower().strip(".") for s in silent)
        self.delay = delay
        self.host = LOOPBACK
        self.port: int | None = None
        self.queries: list[str] = []
        self._sock: socket.socket | None = None

    @staticmethod
    def _under(name: str, suffixes: tuple[str, ...]) -> bool:
        return any(s == "" or name == s or name.endswith("." + s) for s in suffixes)

    @property
    def nameservers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FaultyDns:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.host, 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._loop, name="faulty-dns", daemon=True).start()
        _register(self)
        return self

    def _loop(self) -> None:
        sock = self._sock
        while sock is not None and sock.fileno() >= 0:
            try:
                data, addr = sock.recvfrom(65535)
            except OSError:
                return
            threading.Thread(target=self._answer, args=(sock, data, addr), daemon=True).start()

    def _answer(self, sock: socket.socket, data: bytes, addr) -> None:
        import dns.message
        import dns.query

        try:
            q = dns.message.from_wire(data)
            name = q.question[0].name.to_text().lower().rstrip(".")
        except Exception:  # noqa: BLE001 - not a query we understand: ignored
            return
        self.queries.append(name)
        if self.upstream is None or self._under(name, self.silent):
            return
        if self._under(name, self.slow):
            time.sleep(self.delay)
        try:
            r = dns.query.udp(q, self.upstream.host, port=self.upstream.port, timeout=5)
            sock.sendto(r.to_wire(), addr)
        except Exception:  # noqa: BLE001 - upstream gone or this socket closed
            pass

    @property
    def running(self) -> bool:
        return self._sock is not None

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        _unregister(self)

    def __enter__(self) -> FaultyDns:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LoopThreads:
    """Threads running ``self._run(i)`` until :meth:`stop` (load for the daemon tests);
    a context manager.  Subclasses check ``self._stop`` in their loop."""

    join_timeout = 30.0

    def __init__(self, threads: int) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def _run(self, i: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.join_timeout)


class SlowTcpProxy:
    """A TCP proxy on 127.0.0.1:<free port> (in this process) to ``target`` that makes
    the target slow to answer: every chunk the client sends (an HTTP request, say) is
    held ``delay`` seconds before it is passed on, as a busy Mailman REST API holds a
    request before it answers.  ``port``; a context manager."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.host = LOOPBACK
        self.port: int | None = None
        self._srv: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def start(self) -> SlowTcpProxy:
        self._srv = socket.create_server((self.host, 0))
        self.port = self._srv.getsockname()[1]
        threading.Thread(target=self._accept, name="slow-proxy", daemon=True).start()
        _register(self)
        return self

    def _accept(self) -> None:
        srv = self._srv
        while srv is not None:
            try:
                client, _ = srv.accept()
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return
            self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, self.delay),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0),
                             daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while chunk := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def running(self) -> bool:
        return self._srv is not None

    def stop(self) -> None:
        if self._srv is not None:
            self._srv.close()
            self._srv = None
        for c in self._conns:
            c.close()
        self._conns.clear()
        _unregister(self)

    def __enter__(self) -> SlowTcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _split_args(args: str) -> tuple[str, list[str]]:
    """Split ``"<addr> PARAM=x ..."`` (smtp-sink's X-Mail-Args) into addr, params."""
    args = args.strip()
    if args.startswith("<"):
        end = args.find(">")
        if end != -1:
            return args[1:end], args[end + 1 :].split()
    parts = args.split()
    return (parts[0] if parts else ""), parts[1:]


@dataclass
class SinkMessage:
    """One mail transaction captured by :class:`SmtpSink`.

    Attributes:
        mail_from: envelope sender without angle brackets (``""`` for ``<>``).
        rcpt_to: envelope recipients without angle brackets, in RCPT order.
        message: the message parsed by ``email.message_from_bytes`` (compat32 policy:
            header values are raw strings; ``message.items()`` keeps header order, so
            ``message.items()[0]`` is the topmost header).
        raw: the message bytes as received (dot-unstuffed, LF line endings).
        client_addr, helo: the client (normally Postfix's smtp client) as smtp-sink
            saw it; mail_params / rcpt_params: ESMTP parameters (e.g. ``SIZE=...``).
        path: the capture file.
    """

    path: Path
    mail_from: str
    rcpt_to: list[str]
    message: email.message.Message
    raw: bytes
    client_addr: str = ""
    helo: str | None = None
    mail_params: list[str] = field(default_factory=list)
    rcpt_params: list[list[str]] = field(default_factory=list)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """All headers, top to bottom, as (name, raw value) pairs."""
        return list(self.message.items())

    @property
    def first_header(self) -> tuple[str, str]:
        """The topmost header (name, value)."""
        return self.message.items()[0]

    @property
    def body(self) -> str:
        """The body as text (not decoded from transfer encodings)."""
        payload = self.message.get_payload()
        return payload if isinstance(payload, str) else str(payload)


def parse_sink_file(path: Path) -> SinkMessage:
    """Parse one ``smtp-sink -d`` capture file.

    The format (found empirically with Postfix 3.7's smtp-sink): LF line endings;
    ``X-Client-Addr:``, ``X-Client-Proto:``, optional ``X-Helo-Args:``, one
    ``X-Mail-Args: <sender> [params]``, one ``X-Rcpt-Args: <rcpt> [params]`` per RCPT
    in order, then a 3-line ``Received: from HELO ([ADDR])`` / ``\\tby smtp-sink ...;``
    / ``\\tDATE`` header, then the message exactly as received (dot-unstuffed), then
    one extra empty line. The file is created at DATA and closed after the final dot.
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    info: dict[str, list[str]] = {}
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-"):
        name, _, value = lines[i].decode("utf-8", "surrogateescape").partition(":")
        info.setdefault(name, []).append(value.strip())
        i += 1
    if i >= len(lines) or not lines[i].startswith(b"Received: from "):
        raise InfraError(f"unexpected smtp-sink capture format in {path}:\n{data[:500]!r}")
    i += 1
    for _ in range(2):  # the two continuation lines of smtp-sink's Received header
        if i < len(lines) and lines[i][:1] in (b"\t", b" "):
            i += 1
    raw = b"\n".join(lines[i:])
    if raw.endswith(b"\n\n"):
        raw = raw[:-1]  # smtp-sink appends one empty line
    sender, mail_params = _split_args(info.get("X-Mail-Args", [""])[0])
    rcpts, rcpt_params = [], []
    for rarg in info.get("X-Rcpt-Args", []):
        addr, params = _split_args(rarg)
        rcpts.append(addr)
        rcpt_params.append(params)
    return SinkMessage(
        path=path,
        mail_from=sender,
        rcpt_to=rcpts,
        message=email.message_from_bytes(raw, policy=email.policy.compat32),
        raw=raw,
        client_addr=info.get("X-Client-Addr", [""])[0],
        helo=(info.get("X-Helo-Args") or [None])[0],
        mail_params=mail_params,
        rcpt_params=rcpt_params,
    )


class SmtpSink(_Server):
    """Postfix's ``smtp-sink`` on 127.0.0.1:<free port>, capturing every transaction.

    Started as root with ``-u postfix`` and ``-d DIR/%M.`` (one capture file per
    transaction, created at DATA). Attributes: ``port``, ``host``, ``directory``.

    * :meth:`messages` -- completed captures as :class:`SinkMessage`, oldest first.
    * :meth:`wait_for` -- wait until at least *n* messages arrived.
    * :meth:`clear` -- forget the captured messages.
    * ``extra_args`` -- more smtp-sink options, e.g. ``["-r", "RCPT"]`` (soft-reject
      every RCPT) or ``["-f", "DATA"]`` (hard-reject DATA).
    """

    def __init__(self, extra_args: Sequence[str] = (), startup_timeout: float = 10.0) -> None:
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.host = LOOPBACK
        self.port: int | None = None
        self.workdir: Path | None = None
        self.directory: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._cache: dict[str, SinkMessage] = {}

    def start(self) -> SmtpSink:
        if self._proc is not None:
            return self
        sink = find_tool("smtp-sink")
        self.workdir = _make_workdir("sink-")
        self.directory = self.workdir / "messages"
        self.directory.mkdir()
        argv_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postfix")
            except KeyError as exc:
                raise InfraError(f"user 'postfix' missing: {INSTALL_HINT}") from exc
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
            argv_user = ["-u", "postfix"]
        last_err = ""
        for _attempt in range(5):
            self.port = free_port()
            argv = [
                sink,
                *argv_user,
                "-d",
                f"{self.directory}/%M.",
                *self.extra_args,
                f"{self.host}:{self.port}",
                "100",
            ]
            errf = self._spawn(argv, "smtp-sink")
            if _wait_tcp(self.port, self.startup_timeout, self._proc):
                _register(self)
                return self
            _terminate(self._proc)
            self._proc = None
            last_err = _tail(errf)
        self.stop()
        raise InfraError(f"smtp-sink did not start:\n{last_err}")

    def _open_files(self) -> set[str]:
        """Names of capture files smtp-sink still has open (transactions in progress)."""
        names: set[str] = set()
        if self._proc is None or self._proc.poll() is not None:
            return names
        fd_dir = f"/proc/{self._proc.pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            return names
        prefix = f"{self.directory}/"
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                names.add(target[len(prefix) :])
        return names

    def _complete_files(self) -> list[Path]:
        if self.directory is None:
            return []
        # list the directory BEFORE looking at smtp-sink's open files: a file created
        # in between would otherwise look complete while it is still empty
        present = [p for p in self.directory.iterdir() if p.is_file()]
        open_now = self._open_files()
        files = []
        for p in present:
            if p.name in open_now:
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if st.st_size == 0:
                continue  # not written yet (or an aborted transaction)
            files.append((st.st_mtime_ns, p.name, p))
        return [p for _m, _n, p in sorted(files)]

    def messages(self) -> list[SinkMessage]:
        """All completely received messages, oldest first (by capture-file mtime)."""
        result = []
        for p in self._complete_files():
            msg = self._cache.get(p.name)
            if msg is None:
                msg = self._cache[p.name] = parse_sink_file(p)
            result.append(msg)
        return result

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until at least *n* messages are complete; return :meth:`messages`.

        Raises ``TimeoutError`` (listing what did arrive) after *timeout* seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            if len(msgs) >= n:
                return msgs
            if time.monotonic() >= deadline:
                got = [(m.mail_from, m.rcpt_to, m.message.get("Subject")) for m in msgs]
                raise TimeoutError(f"smtp-sink got {len(msgs)} of {n} messages: {got}")
            time.sleep(0.05)

    def clear(self) -> None:
        """Delete all completed captures (transactions in progress are kept)."""
        for p in self._complete_files():
            p.unlink(missing_ok=True)
            self._cache.pop(p.name, None)

    def stop(self) -> None:
        """Stop smtp-sink and remove its directory. Idempotent."""
        _unregister(self)
        _terminate(self._proc)
        self._proc = None
        if self.workdir is not None and not _keep_files():
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = self.directory = None
        self._cache.clear()


# --------------------------------------------------------------------------- Postfix

MASTER_CF = """\
# Generated by listgate tests/e2e/infra.py. chroot column is n everywhere.
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _read_logical_lines(path: Path) -> list[str]:
    """main.cf logical lines (continuation lines start with whitespace)."""
    out: list[str] = []
    for line in path.read_text().splitlines():
        if line[:1] in (" ", "\t") and out and line.strip() and not line.lstrip().startswith("#"):
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


def _blessed_dirs(default_main_cf: Path) -> set[str]:
    """Directories listed in alternate_config_directories / multi_instance_directories.

    Parsed like Postfix's mail_conf_checkdir(): raw main.cf lines, no $expansion,
    exact string comparison.
    """
    found: set[str] = set()
    for line in _read_logical_lines(default_main_cf):
        m = re.match(r"\s*(alternate_config_directories|multi_instance_directories)\s*=(.*)", line)
        if m:
            found.update(x for x in re.split(r"[,\s]+", m.group(2)) if x)
    return found


def _slot_dir(n: int) -> Path:
    return E2E_ROOT / f"postfix-conf-{n:02d}"


def ensure_alternate_config_directories() -> None:
    """Idempotently list our config-dir slots in the DEFAULT /etc/postfix/main.cf.

    ``postfix -c DIR start`` exits 1 silently unless DIR is listed there literally.
    A fixed pool of :data:`POSTFIX_SLOTS` directories keeps the list from growing.
    """
    default_cf = Path("/etc/postfix/main.cf")
    wanted = [str(_slot_dir(n)) for n in range(POSTFIX_SLOTS)]
    if not default_cf.exists():
        raise InfraError(f"{default_cf} missing (is postfix installed?): {INSTALL_HINT}")
    if set(wanted) <= _blessed_dirs(default_cf):
        return
    E2E_ROOT.mkdir(parents=True, exist_ok=True)
    with open(E2E_ROOT / ".main-cf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = _run([find_tool("postconf"), "-nh", "alternate_config_directories"]).stdout
        items = [x for x in re.split(r"[,\s]+", current.strip()) if x]
        items += [w for w in wanted if w not in items]
        _run([find_tool("postconf"), "-e", "alternate_config_directories = " + " ".join(items)])
        if not set(wanted) <= _blessed_dirs(default_cf):
            raise InfraError(f"could not add alternate_config_directories to {default_cf}")


def _format_milters(milters: str | Sequence[str] | None) -> str:
    if milters is None:
        return ""
    if isinstance(milters, str):
        return milters
    return ", ".join(milters)


class PostfixInstance:
    """A private Postfix 3.x instance relaying test domains to a sink.

    Args:
        relay_domains: domains accepted for relaying (the test list domains); mail to
            any other domain is rejected at RCPT with ``554 5.7.1 <addr>: Relay access
            denied`` (``smtpd_relay_restrictions = reject_unauth_destination``; NOT
            ``permit_mynetworks``: every test client is in 127.0.0.0/8 = mynetworks, so
            that would relay anything). Override through *extra* if needed.
        sink_port: port of the :class:`SmtpSink` (or any SMTP server) on 127.0.0.1
            that receives everything Postfix relays (default and relay transport).
        milters: ``smtpd_milters`` value: ``"unix:/path/sock"``,
            ``"inet:127.0.0.1:PORT"``, a list of those, a ``{ ... }`` form, or None.
            Unix paths are absolute (smtpd is not chrooted).
        extra: more main.cf settings ``{name: value}``, applied last (they override
            the defaults below).
        myhostname: Postfix's own name (in its banner and Received header).

    Defaults worth knowing: ``inet_interfaces = 127.0.0.1``, ``mynetworks =
    127.0.0.0/8``, ``mydestination =`` (nothing local), ``smtpd_peername_lookup = no``
    (clients are ``unknown[127.0.0.x]``; no DNS queries leave the machine),
    ``smtp_dns_support_level = disabled``, ``milter_default_action = tempfail``,
    ``milter_protocol = 6``, ``smtpd_error_sleep_time = 0``, 1-2 s retry times and a
    60 s queue lifetime. See :meth:`main_cf_settings`.

    What a milter sees with these settings (observed with Postfix 3.7): connect
    hostname ``"[127.0.0.2]"`` (the bracketed IP, since there is no PTR lookup),
    family ``'4'``, address ``127.0.0.2`` and the client port; macros ``j`` =
    myhostname, ``_`` = ``"unknown [127.0.0.2]"``, ``{daemon_name}`` = myhostname,
    ``{daemon_addr}`` = ``127.0.0.1``, ``v`` = ``"Postfix 3.7.11"``; ``{mail_host}`` /
    ``{rcpt_host}`` = the next hop, e.g. ``"[127.0.0.1]:SINKPORT"``.

    ``start()`` (``postfix check`` + ``postfix start``, ~0.3 s) returns once the
    master listens on the smtpd port, without connecting (a probe connection would
    reach the milter). ``stop()`` takes ~0.1 s. Attributes: ``host``, ``port``,
    ``config_dir``, ``queue_dir``, ``log_path``, ``syslog_name``. Several instances
    can run at once (each claims one of :data:`POSTFIX_SLOTS` config-dir slots,
    locked with flock, also across processes).
    """

    def __init__(
        self,
        relay_domains: Iterable[str],
        sink_port: int,
        *,
        milters: str | Sequence[str] | None = None,
        extra: Mapping[str, object] | None = None,
        myhostname: str = "mx.listgate.test",
        startup_timeout: float = 30.0,
        ipv6: bool = False,
    ) -> None:
        #: also listen on [::1] (same port), for IPv6 client tests
        self.ipv6 = ipv6
        self.relay_domains = list(relay_domains)
        self.sink_port = sink_port
        self.milters = milters
        self.extra = {k: str(v) for k, v in (extra or {}).items()}
        self.myhostname = myhostname
        self.startup_timeout = startup_timeout
        self.host = LOOPBACK
        self.port: int | None = None
        self.slot: int | None = None
        self.config_dir: Path | None = None
        self.workdir: Path | None = None
        self.queue_dir: Path | None = None
        self.log_path: Path | None = None
        self.syslog_name: str | None = None
        self._slot_lock = None
        self._started = False
        #: Output (warnings) of the last ``postfix check``; '' when clean.
        self.check_output = ""

    # -- configuration
    def main_cf_settings(self) -> dict[str, str]:
        """The main.cf settings this instance is (or will be) started with."""
        transport = f"smtp:[{LOOPBACK}]:{self.sink_port}"
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.workdir / "data"),
            "syslog_name": self.syslog_name,
            "maillog_file": str(self.log_path),
            "myhostname": self.myhostname,
            "mydomain": "listgate.test",
            "myorigin": "$myhostname",
            "inet_interfaces": f"{LOOPBACK}, [::1]" if self.ipv6 else LOOPBACK,
            "inet_protocols": "all" if self.ipv6 else "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8 [::1]/128" if self.ipv6 else "127.0.0.0/8",
            "relay_domains": ", ".join(self.relay_domains),
            "relay_recipient_maps": "",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "error:5.1.1 local delivery disabled in this test instance",
            "default_transport": transport,
            "relay_transport": transport,
            "smtp_dns_support_level": "disabled",
            "smtp_connect_timeout": "5s",
            "smtpd_peername_lookup": "no",
            "smtpd_milters": _format_milters(self.milters),
            "non_smtpd_milters": "",
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
            "smtpd_error_sleep_time": "0s",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "200",
            "smtpd_client_connection_rate_limit": "0",
            "in_flow_delay": "0s",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": "60s",
            "bounce_queue_lifetime": "60s",
            "delay_warning_time": "0h",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
        }
        settings.update(self.extra)
        return settings

    def _write_config(self) -> None:
        lines = ["# Generated by listgate tests/e2e/infra.py"]
        lines += [f"{k} = {v}" for k, v in self.main_cf_settings().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        listen = f"{LOOPBACK}:{self.port}"
        master = MASTER_CF.format(listen=listen)
        if self.ipv6:
            master += f"[::1]:{self.port} inet n - n - - smtpd\n"
        (self.config_dir / "master.cf").write_text(master)
        self._age_config()

    def _age_config(self) -> None:
        """Back-date main.cf/master.cf: every Postfix program (postconf, postfix, ...)
        sleeps ~2 s when it reads a main.cf modified within the last ~2 s."""
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))

    # -- slots
    def _claim_slot(self) -> None:
        E2E_ROOT.mkdir(parents=True, exist_ok=True)
        os.chmod(E2E_ROOT, 0o755)
        for n in range(POSTFIX_SLOTS):
            lock = open(E2E_ROOT / f"postfix-conf-{n:02d}.lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self.slot, self._slot_lock = n, lock
            self.config_dir = _slot_dir(n)
            self._kill_leftovers()  # a crashed earlier run may have left this slot busy
            if self.config_dir.exists():
                shutil.rmtree(self.config_dir)
            self.config_dir.mkdir(mode=0o755)
            return
        raise InfraError(f"all {POSTFIX_SLOTS} Postfix slots under {E2E_ROOT} are in use")

    def _kill_leftovers(self) -> None:
        """Stop processes of a previous Postfix that used this config dir."""
        cf = self.config_dir / "main.cf" if self.config_dir else None
        if cf is not None and cf.exists():
            _run([find_tool("postfix"), "-c", str(self.config_dir), "abort"], check=False)
        for pid in processes_with_env("MAIL_CONFIG", str(self.config_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- life cycle
    def _postfix(self, *args: str, check: bool = True):
        return _run([find_tool("postfix"), "-c", str(self.config_dir), *args], check=check)

    def postconf(self, *args: str) -> str:
        """Run ``postconf -c CONFIG_DIR ARGS...`` and return its stdout."""
        return _run([find_tool("postconf"), "-c", str(self.config_dir), *args]).stdout

    def start(self) -> PostfixInstance:
        if self._started:
            return self
        for tool in ("postfix", "postconf"):
            find_tool(tool)
        try:
            pwd.getpwnam("postfix")
        except KeyError as exc:
            raise InfraError(f"user 'postfix' missing: {INSTALL_HINT}") from exc
        ensure_alternate_config_directories()
        _register(self)
        try:
            self._claim_slot()
            self.workdir = _make_workdir(f"postfix-{self.slot:02d}-")
            self.queue_dir = self.workdir / "spool"
            self.queue_dir.mkdir(mode=0o755)
            data_dir = self.workdir / "data"
            data_dir.mkdir(mode=0o700)
            pw = pwd.getpwnam("postfix")
            os.chown(data_dir, pw.pw_uid, pw.pw_gid)
            LOG_ROOT.mkdir(parents=True, exist_ok=True)
            tag = self.workdir.name
            self.log_path = LOG_ROOT / f"{tag}.log"
            self.syslog_name = f"listgate-e2e/{tag}"
            self._start_postfix()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_postfix(self) -> None:
        last = ""
        for _attempt in range(5):
            self.port = free_port()
            self._write_config()
            chk = self._postfix("check", check=False)
            self.check_output = (chk.stdout + chk.stderr).strip()
            if chk.returncode != 0:
                raise InfraError(
                    f"postfix -c {self.config_dir} check failed:\n{self.check_output}\n"
                    f"log:\n{self.log_text()[-3000:]}"
                )
            # `postfix start` would repeat the same checks: skip them.
            (self.queue_dir / "quick-start").touch()
            res = self._postfix("start", check=False)
            self._started = res.returncode == 0
            if self._started and self._wait_listening(self.startup_timeout):
                return
            last = f"exit {res.returncode}: {res.stdout}{res.stderr}\nlog:\n{self.log_text()}"
            self._stop_postfix()
            if "Address already in use" not in last:
                break
        raise InfraError(f"postfix -c {self.config_dir} start failed: {last[-4000:]}")

    def _wait_listening(self, timeout: float) -> bool:
        """Wait until the master listens on the smtpd port.

        Watches /proc/net/tcp instead of connecting: a probe connection would reach
        the milter (as a connect from 127.0.0.1) and confuse tests that count them.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _tcp_listening(self.host, self.port):
                return True
            if not self.master_running():
                return False
            time.sleep(0.05)
        return False

    def master_pid(self) -> int | None:
        """PID of this instance's master process, or None."""
        if self.queue_dir is None:
            return None
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def master_running(self) -> bool:
        return self.master_pid() is not None

    def reload(self, timeout: float = 10.0) -> None:
        """``postfix reload`` and wait until the master logged it.

        Running smtpd processes finish their current session with the old settings;
        new connections after this returns get the new settings.
        """
        before = self.log_text().count("reload -- version")
        self._postfix("reload")
        deadline = time.monotonic() + timeout
        while self.log_text().count("reload -- version") <= before:
            if time.monotonic() > deadline:
                raise InfraError(f"postfix reload not logged:\n{self.log_text()[-2000:]}")
            time.sleep(0.05)

    def set_main(self, settings: Mapping[str, object], reload: bool = True) -> None:
        """Change main.cf settings with ``postconf -c DIR -e`` (then reload if running)."""
        if not settings:
            return
        self.extra.update({k: str(v) for k, v in settings.items()})
        self.postconf("-e", *(f"{k} = {v}" for k, v in settings.items()))
        self._age_config()
        if reload and self._started:
            self.reload()

    def set_milters(self, milters: str | Sequence[str] | None, reload: bool = True) -> None:
        """Change ``smtpd_milters`` (None = no milter) and reload."""
        self.milters = milters
        self.set_main({"smtpd_milters": _format_milters(milters)}, reload=reload)

    def log_mark(self) -> int:
        """Current size of the maillog, for ``log_text(since=mark)``."""
        try:
            return self.log_path.stat().st_size
        except (OSError, AttributeError):
            return 0

    def log_text(self, since: int = 0) -> str:
        """The instance's maillog (from byte offset *since*), '' if none yet."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match:
        """Wait until regex *pattern* matches the maillog (from *since*); return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text(since))
            if m:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{pattern!r} not in Postfix log:\n{self.log_text(since)[-3000:]}"
                )
            time.sleep(0.05)

    def queue_listing(self) -> str:
        """``postqueue -p`` output for this instance (``Mail queue is empty`` if so)."""
        res = _run([find_tool("postqueue"), "-c", str(self.config_dir), "-p"], check=False)
        return res.stdout + res.stderr

    def flush(self) -> None:
        """``postqueue -f``: retry deferred mail now."""
        _run([find_tool("postqueue"), "-c", str(self.config_dir), "-f"], check=False)

    def request_stop(self) -> None:
        """Send ``postfix stop`` without waiting (the master needs ~1.7 s to exit).

        Lets a caller stop many instances in parallel before calling ``stop()`` on
        each (which waits); see :func:`stop_instances`.
        """
        if self.config_dir is not None and self.master_running():
            self._postfix("stop", check=False)

    def _stop_postfix(self) -> None:
        if self.config_dir is None:
            return
        if self.master_running():
            self.request_stop()
            deadline = time.monotonic() + 10
            while self.master_running() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.master_running():
                self._postfix("abort", check=False)
                time.sleep(0.2)
        # Children get MAIL_CONFIG=config_dir in their environment from `postfix -c`.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pids = processes_with_env("MAIL_CONFIG", str(self.config_dir))
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL if time.monotonic() > deadline - 3 else 0)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        self._started = False

    def stop(self) -> None:
        """Stop Postfix (stop, then abort/kill leftovers), remove its files. Idempotent."""
        try:
            self._stop_postfix()
        finally:
            if not _keep_files():
                if self.workdir is not None:
                    shutil.rmtree(self.workdir, ignore_errors=True)
                if self.log_path is not None:
                    self.log_path.unlink(missing_ok=True)
                if self.config_dir is not None:
                    shutil.rmtree(self.config_dir, ignore_errors=True)
            if self._slot_lock is not None:
                self._slot_lock.close()
                self._slot_lock = None
            _unregister(self)

    @property
    def running(self) -> bool:
        return self._started and self.master_running()

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PostfixInstance {self.host}:{self.port} slot={self.slot} running={self.running}>"


def stop_instances(instances: Iterable[PostfixInstance]) -> None:
    """Stop several Postfix instances, in parallel (``request_stop`` then ``stop``)."""
    instances = list(instances)
    for pf in instances:
        try:
            pf.request_stop()
        except Exception:  # noqa: BLE001 - stop() below retries and reports
            pass
    errors = []
    for pf in instances:
        try:
            pf.stop()
        except Exception as exc:  # noqa: BLE001 - stop the others first
            errors.append(exc)
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- SMTP client


class Reply(NamedTuple):
    """One SMTP reply. ``text`` joins the lines of a multi-line reply with ``\\n``.

    ``code`` is -1 when there was no reply (connection closed or timed out; ``text``
    then says what happened). ``str(reply)`` is ``"CODE TEXT"``.
    """

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def ok(self) -> bool:
        """True for 2xx and 3xx."""
        return 200 <= self.code < 400

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code (``"4.7.1"``) if the text starts with one."""
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", self.text)
        return m.group(1) if m else None


@dataclass
class SmtpResult:
    """Every reply of one :func:`smtp_transaction`, None for stages not reached.

    ``rcpts`` is aligned with the recipients passed in (None = RCPT not sent).
    ``data_cmd`` is the reply to the DATA command (354 normally) and ``data`` the
    reply after the final dot (or the DATA command's reply if that was not 354).
    """

    connect: Reply | None = None
    helo: Reply | None = None
    mail: Reply | None = None
    rcpts: list[Reply | None] = field(default_factory=list)
    data_cmd: Reply | None = None
    data: Reply | None = None
    quit: Reply | None = None

    def steps(self) -> list[tuple[str, Reply]]:
        """``[(stage, reply), ...]`` in protocol order; stages: connect, helo, mail,
        rcpt[i], data_cmd, data (QUIT excluded)."""
        out = [("connect", self.connect), ("helo", self.helo), ("mail", self.mail)]
        out += [(f"rcpt[{i}]", r) for i, r in enumerate(self.rcpts)]
        if self.data_cmd is not None and self.data_cmd.code != 354:
            out.append(("data", self.data))
        else:
            out += [("data_cmd", self.data_cmd), ("data", self.data)]
        return [(name, r) for name, r in out if r is not None]

    @property
    def final(self) -> Reply | None:
        """The first reply that is not 2xx/3xx, else the DATA reply (else the last one)."""
        stage = self.final_stage
        return None if stage is None else dict(self.steps())[stage]

    @property
    def final_stage(self) -> str | None:
        """Name of the stage :attr:`final` comes from ("mail", "rcpt[0]", "data"...)."""
        steps = self.steps()
        for name, reply in steps:
            if not reply.ok:
                return name
        return steps[-1][0] if steps else None

    @property
    def accepted(self) -> bool:
        """True if the message was accepted (final reply after DATA is 2xx)."""
        return self.data is not None and 200 <= self.data.code < 300

    @property
    def accepted_rcpts(self) -> list[int]:
        """Indexes of the recipients that got a 2xx reply."""
        return [i for i, r in enumerate(self.rcpts) if r is not None and 200 <= r.code < 300]


def _reply(code: int, msg: bytes | str) -> Reply:
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)
    return Reply(int(code), text)


def _dead(exc: BaseException) -> Reply:
    return Reply(-1, f"no reply: {type(exc).__name__}: {exc}")


def smtp_transaction(
    host: str,
    port: int,
    *,
    mail_from: str,
    rcpts: Sequence[str],
    message: bytes | str | None,
    helo: str = "mail.example.test",
    source_ip: str | None = None,
    use_ehlo: bool = True,
    skip_helo: bool = False,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    timeout: float = 30,
) -> SmtpResult:
    """Run one SMTP transaction and record every reply; never raises on 4xx/5xx.

    Connects from *source_ip* (e.g. ``"127.0.0.2"``; any 127/8 address works on
    Linux), sends EHLO (or HELO if not *use_ehlo*; nothing if *skip_helo*), ``MAIL
    FROM:<mail_from>`` (``""`` = null sender), one RCPT per *rcpts* entry, and DATA
    with *message* (str is UTF-8 encoded; line endings are normalised to CRLF and
    dots stuffed). ``message=None`` stops after RCPT. Always ends with QUIT.

    Stops early when a stage fails the whole transaction: a non-220 greeting, a
    non-2xx HELO/EHLO or MAIL, any 421 reply, or a lost connection (recorded as
    ``Reply(-1, ...)``). RCPT rejections don't stop it, but DATA is skipped when no
    recipient was accepted. A connection that cannot be made at all raises OSError
    (the server is not there: a test-infrastructure error, not an SMTP answer).
    """
    res = SmtpResult()
    in_data = False  # a failure after "354" leaves the server reading message text
    src = (source_ip, 0) if source_ip else None
    smtp = smtplib.SMTP(timeout=timeout, source_address=src)
    try:
        try:
            res.connect = _reply(*smtp.connect(host, port))
        except smtplib.SMTPServerDisconnected as exc:
            res.connect = _dead(exc)
            return res
        if res.connect.code != 220:
            return res
        if not skip_helo:
            try:
                if use_ehlo:
                    res.helo = _reply(*smtp.ehlo(helo))
                else:
                    res.helo = _reply(*smtp.helo(helo))
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                res.helo = _dead(exc)
                return res
            if not 200 <= res.helo.code < 300:
                return res
        try:
            res.mail = _reply(*smtp.mail(mail_from, list(mail_options)))
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            res.mail = _dead(exc)
            return res
        if not 200 <= res.mail.code < 300:
            return res
        res.rcpts = [None] * len(rcpts)
        for i, rcpt in enumerate(rcpts):
            try:
                res.rcpts[i] = _reply(*smtp.rcpt(rcpt, list(rcpt_options)))
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                res.rcpts[i] = _dead(exc)
                return res
            if res.rcpts[i].code == 421:
                return res
        if message is None or not res.accepted_rcpts:
            return res
        try:
            res.data_cmd = _reply(*smtp.docmd("DATA"))
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            res.data_cmd = res.data = _dead(exc)
            return res
        if res.data_cmd.code != 354:
            res.data = res.data_cmd
            return res
        body = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        body = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", body)
        body = re.sub(rb"(?m)^\.", b"..", body)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        in_data = True
        try:
            smtp.send(body + b".\r\n")
            res.data = _reply(*smtp.getreply())
            in_data = False
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            res.data = _dead(exc)
        return res
    finally:
        if smtp.sock is not None and not in_data:
            try:
                res.quit = _reply(*smtp.docmd("QUIT"))
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                res.quit = _dead(exc)
        smtp.close()


def make_message(
    *,
    from_: str = "sender@example.test",
    to: str | Sequence[str] = "list@lists.test",
    subject: str = "test message",
    body: str = "Hello list.\n",
    headers: Sequence[tuple[str, str]] = (),
    message_id: str | None = None,
) -> bytes:
    """A small RFC 5322 message (bytes, CRLF) with From/To/Subject/Date/Message-ID."""
    from email.utils import formatdate, make_msgid

    to_list = [to] if isinstance(to, str) else list(to)
    hdrs = [
        ("From", from_),
        ("To", ", ".join(to_list)),
        ("Subject", subject),
        ("Date", formatdate(localtime=False)),
        ("Message-ID", message_id or make_msgid(domain="example.test")),
        *headers,
    ]
    text = "".join(f"{k}: {v}\r\n" for k, v in hdrs) + "\r\n" + body
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
