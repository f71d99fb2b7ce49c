"""A real GNU Mailman 3.3.10 on loopback, for listgate's end-to-end tests.

:class:`Mailman3` runs Mailman from the venv that ``scripts/install-mailman3.sh``
makes (``$LISTGATE_MM3_VENV``, default ``/var/tmp/listgate-mailman3/venv``) with a
private var dir, SQLite, the REST API and the LMTP runner on free 127.0.0.1 ports,
``NullMTA`` (no alias maps) and an :class:`infra.SmtpSink` as its outgoing SMTP
server, so that the copies Mailman delivers to list members can be read.

It answers "what does Mailman really do with this post?"::

    with Mailman3() as mm:
        mm.create_list("dev@lists.test", default_nonmember_action="reject")
        mm.subscribe("dev@lists.test", "alice@example.test")
        mid = mm.post(make_message(from_="alice@example.test", to="dev@lists.test"),
                      "alice@example.test", "dev@lists.test")
        assert mm.outcome(mid) == "accept"

The decision is read from Mailman's own ``vette`` log (written by the terminal chains
``accept``, ``hold``, ``reject`` and ``discard``), then confirmed: a hold must show up
in ``GET /3.1/lists/{id}/held``, an accepted post in the SMTP sink (when the list has
members). ``create_list`` subscribes :data:`PROBE_MEMBER` by default so that every
accepted post produces outgoing mail.

Beyond the four chains, :meth:`Mailman3.outcome` also answers ``lmtp-NNN`` (the
LMTP runner refused the post, e.g. ``lmtp-501`` for ``msg.defects``; ``post(...,
check=False)`` returns instead of raising :class:`LmtpRefused`),
``autorespond-discard`` (``autorespond_postings = respond_and_discard``) and
``shunt`` (a runner raised on the post: :meth:`Mailman3.shunted` has the exception
and traceback). It never waits longer than its *timeout*.

Configuration: :meth:`Mailman3.configure` / :meth:`Mailman3.config` (any REST list
attribute, e.g. ``moderator_password``, returned as its sha512_crypt hash),
:meth:`Mailman3.add_header_match` / :meth:`header_matches` /
:meth:`clear_header_matches`, the site's ``[antispam]`` via ``Mailman3(header_checks=
[...], jump_chain=...)`` (:meth:`Mailman3.antispam` reads it back), and
:meth:`Mailman3.shell` for what REST cannot set (``bounce_matching_headers``, a
header match with an invalid regexp).

DNS: Mailman's DMARC rule queries ``_dmarc.<From domain>`` whenever a list mitigates
DMARC. The master and the runners start through wrappers in the instance's ``bin/``
(``[paths.here] bin_dir``) that load ``listgate_mm3_shim``: the queries go to
``Mailman3(dmarc_dns=(host, port))`` or, by default, answer NXDOMAIN without a packet
leaving the process; the public suffix list is the copy Mailman ships.

No pytest dependency (``mm3_fixtures.py`` wraps this in fixtures). The runners poll
their queues every :attr:`Mailman3.sleep_time` (0.1 s instead of Mailman's 1 s), and
only the runners needed for posting are started (see :data:`DEFAULT_RUNNERS`): start
takes ~3-4 s, a post is decided in ~0.1-0.2 s (~0.3 s until an accepted post reached
the sink).

On disk: ``/var/tmp/listgate-e2e/mailman3-XXXX/`` (``infra.E2E_ROOT``) holds
``mailman.cfg``, ``gunicorn.cfg``, ``mailman-cmd.out`` (output of the ``mailman``
commands and the runners' stderr) and ``var/`` (SQLite DB, queues, ``var/logs/``:
``mailman.log``, ``vette.log`` (the decisions), ``rest.log`` (REST access/errors),
``smtp.log``). It is removed by ``stop()``; set ``LISTGATE_E2E_KEEP=1`` to keep it.
Every instance is also stopped at interpreter exit (``infra.stop_all``).
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import json
import os
import pickle
import re
import shutil
import signal
import smtplib
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import infra

__all__ = [
    "ALL_RUNNERS",
    "DEFAULT_RUNNERS",
    "HEADER_MATCH_ACTIONS",
    "MAILMAN_VERSION",
    "OUTCOMES",
    "PROBE_MEMBER",
    "Decision",
    "LmtpRefused",
    "Mailman3",
    "Mailman3Error",
    "Shunted",
    "default_mailman_bin",
]

MAILMAN_VERSION = "3.3.10"
#: Default venv of scripts/install-mailman3.sh.
DEFAULT_VENV = "/var/tmp/listgate-mailman3/venv"
INSTALL_HINT = "run scripts/install-mailman3.sh to install Mailman 3.3.10 into its own venv"

#: Every runner Mailman 3.3.10 starts by default.
ALL_RUNNERS = (
    "archive", "bounces", "command", "in", "lmtp", "out", "pipeline", "rest", "retry",
    "task", "virgin", "digest",
)
#: What posting needs: lmtp (receives), in (the moderation chains), pipeline (list
#: decoration), out (delivery to the members), virgin (notices to senders/moderators),
#: rest. The others only cost start-up time (each runner is a Python process).
DEFAULT_RUNNERS = ("lmtp", "in", "pipeline", "out", "virgin", "rest")
#: Runners on a post's way whose queue polling interval is set to ``sleep_time``.
_FAST_RUNNERS = ("archive", "command", "in", "out", "pipeline", "virgin")

#: Subscribed to every list made by ``create_list`` (unless ``probe_member=False``), so
#: that accepted posts are delivered to the SMTP sink.
PROBE_MEMBER = "delivery-probe@mm3-harness.test"

#: What :meth:`Mailman3.outcome` returns: the four terminal chains; the incoming
#: runner's ``autorespond_postings = respond_and_discard`` ("<mid> list post replied
#: and discarded" in vette.log, before any chain runs); ``shunt`` (a runner raised on
#: the post: it sits in var/queue/shunt); and ``lmtp-NNN`` for a post the LMTP runner
#: refused (e.g. ``lmtp-501``: ``msg.defects``; ``lmtp-550``: no such list).
OUTCOMES = ("accept", "hold", "reject", "discard", "autorespond-discard", "shunt")
#: The ``action`` values ``POST /lists/{id}/header-matches`` takes (``Action`` enum;
#: omitted = None, i.e. ``[antispam] jump_chain``).
HEADER_MATCH_ACTIONS = ("hold", "reject", "discard", "accept", "defer")

# Mailman's REST runner is a gunicorn; gunicorn >= 25.1 would otherwise create a control
# socket $HOME/.gunicorn/gunicorn.ctl shared by all instances (unknown keys are ignored
# by older gunicorns).
GUNICORN_CFG = """\
[gunicorn]
graceful_timeout = 5
timeout = 360
control_socket_disable = true
"""

# Marker in the environment of every process of one instance (to find leftovers).
_ENV_MARK = "LISTGATE_MM3_INSTANCE"

# $bin_dir/listgate_mm3_shim.py, imported by the wrappers below before Mailman runs.
# Mailman's master starts each runner as "$bin_dir/runner" with an environment of
# only LANG/LC_* (bin/master.py PRESERVE_ENVS), so this is how the runners get it.
_SHIM = """\
\"\"\"listgate test harness: loaded into every Mailman process of one instance.

DNS: Mailman's DMARC rule builds a fresh dns.resolver.Resolver() (from
/etc/resolv.conf) per look-up. Here it asks only the server in shim.json's "dns"
([host, port]), or, when that is null, no server at all: every query raises
NXDOMAIN without a packet being sent.
\"\"\"
import json
import os

import dns.name
import dns.resolver

_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "shim.json")) as _f:
    SETTINGS = json.load(_f)

_orig_init = dns.resolver.Resolver.__init__


def _init(self, filename="/etc/resolv.conf", configure=True):
    _orig_init(self, filename, configure=False)
    server = SETTINGS.get("dns")
    if server:
        self.nameservers = [server[0]]
        self.port = int(server[1])
    else:
        self.nameservers = ["127.0.0.1"]
        self.port = 9  # never used: see _nxdomain


def _nxdomain(self, qname, *args, **kwargs):
    name = dns.name.from_text(str(qname)) if not isinstance(qname, dns.name.Name) else qname
    raise dns.resolver.NXDOMAIN(qnames=[name], responses={})


dns.resolver.Resolver.__init__ = _init
if not SETTINGS.get("dns"):
    dns.resolver.Resolver.resolve = _nxdomain
    dns.resolver.Resolver.query = _nxdomain


def run(mlist, code):
    \"\"\"``mailman shell [-l LIST] -r listgate_mm3_shim.run CODE``: exec CODE with
    ``m`` (the list or None), ``config``, ``getUtility``; then commit.\"\"\"
    from mailman.config import config
    from zope.component import getUtility

    scope = {"m": mlist, "config": config, "getUtility": getUtility}
    exec(code, scope)
    config.db.commit()


def run_site(code):
    run(None, code)
"""

_WRAPPER = """\
#!{python}
import sys

import listgate_mm3_shim  # noqa: F401  (DNS; see the module)
from mailman.bin.{module} import main

if __name__ == "__main__":
    sys.argv[0] = {argv0!r}
    sys.exit(main())
"""


class Mailman3Error(infra.InfraError):
    """Mailman could not be started, answered unexpectedly, or a post got lost."""


class LmtpRefused(Mailman3Error):
    """Mailman's LMTP runner refused the post (``code``/``reply``: its answer;
    ``message_id``: the post's Message-ID, whose :meth:`Mailman3.outcome` is then
    ``"lmtp-<code>"``)."""

    def __init__(self, message: str, code: int, reply: str, message_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply
        self.message_id = message_id


@dataclass(frozen=True)
class Decision:
    """What Mailman did with one post, as logged by the terminal chain in vette.log.

    ``action``: accept/hold/reject/discard; ``reasons``: the moderation reasons Mailman
    logged (hold: ``"reason1; reason2"``, discard: e.g. ``"[n/a]"``, else ``""``);
    ``line``: the vette.log line; ``seconds``: from the LMTP post to the decision
    being seen (None if unknown).
    """

    action: str
    message_id: str
    reasons: str
    line: str
    seconds: float | None = None
    #: holds only (with ``confirm``): the ``X-Mailman-Rule-Hits`` / ``-Misses``
    #: headers the hold chain put on the held copy, i.e. every rule that hit/missed
    #: on the way, in chain order (e.g. ``("no-subject", "max-size")``).
    rule_hits: tuple[str, ...] = ()
    rule_misses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shunted:
    """A post in ``var/queue/shunt`` (a runner raised on it).

    ``queue``: the runner's queue (``msgdata['whichq']``: ``in`` = the chains,
    ``pipeline``, ``out``...); ``filebase``: the queue file's name; ``error``: the
    ``Uncaught runner exception: ...`` text from mailman.log (``""`` if not found);
    ``traceback``: the traceback logged with it.
    """

    message_id: str
    queue: str
    filebase: str
    error: str
    traceback: str


@dataclass(frozen=True)
class _Post:
    offset: int  # size of vette.log before the post
    posted_at: float  # time.monotonic() of the post
    rcpts: list[str]


def default_mailman_bin() -> Path:
    """``$LISTGATE_MM3_VENV/bin/mailman`` (default venv: /var/tmp/listgate-mailman3)."""
    return Path(os.environ.get("LISTGATE_MM3_VENV", DEFAULT_VENV)) / "bin" / "mailman"


def _norm_mid(message_id: str) -> str:
    """``" <x@y> "`` -> ``"x@y"`` (Message-IDs are compared without the brackets)."""
    mid = message_id.strip()
    if mid.startswith("<") and mid.endswith(">"):
        mid = mid[1:-1].strip()
    return mid


def _q(value: str) -> str:
    """Quote one path segment (an address: ``+`` must become ``%2B``)."""
    return urllib.parse.quote(value, safe="@")


def _list_id(fqdn_or_id: str) -> str:
    """``dev@lists.test`` -> ``dev.lists.test``; a list id is returned unchanged."""
    if "@" in fqdn_or_id:
        local, _, domain = fqdn_or_id.partition("@")
        return f"{local}.{domain}"
    return fqdn_or_id


class Mailman3:
    """A private, real Mailman 3 (see the module docstring).

    Arguments:
        mailman_bin: the ``mailman`` script (default :func:`default_mailman_bin`).
        sink: the SMTP server Mailman delivers to; default: an own
            :class:`infra.SmtpSink`, started and stopped with Mailman.
        runners: the runners to start (default :data:`DEFAULT_RUNNERS`).
        sleep_time: queue polling interval of the queue runners (Mailman's default is
            ``1s``).
        startup_timeout: seconds to wait for REST and LMTP to answer.
        header_checks: site ``[antispam] header_checks`` lines (``"X-Spam: yes"``:
            header name, colon, Python regexp), a sequence or one string.
        jump_chain: site ``[antispam] jump_chain`` (Mailman's default: ``hold``).
        dmarc_dns: ``(host, port)`` of the DNS server the runners' DMARC look-ups
            use (e.g. an :class:`infra.DnsServer`); default None: no DNS query ever
            leaves Mailman, every look-up answers NXDOMAIN (no DMARC policy anywhere).
            The public suffix list is always the copy Mailman ships (never fetched).
        extra_config: more ``mailman.cfg`` text, appended as is (a section that the
            harness writes itself, e.g. ``[antispam]`` when *header_checks* or
            *jump_chain* are given, must not appear again).

    Attributes: ``rest_url`` (``http://127.0.0.1:PORT/3.1``), ``rest_port``,
    ``lmtp_port``, ``admin_user``, ``admin_pass``, ``sink``, ``workdir`` (the
    instance directory), ``var_dir``, ``log_dir``, ``config_path``, ``start_seconds``
    (how long the last ``start()`` took).
    """

    def __init__(
        self,
        mailman_bin: str | os.PathLike | None = None,
        *,
        sink: infra.SmtpSink | None = None,
        runners: Iterable[str] = DEFAULT_RUNNERS,
        sleep_time: str = "0.1s",
        startup_timeout: float = 90.0,
        admin_user: str = "restadmin",
        admin_pass: str = "restpass",
        site_owner: str = "postmaster@mm3-harness.test",
        header_checks: Sequence[str] | str = (),
        jump_chain: str | None = None,
        dmarc_dns: tuple[str, int] | None = None,
        extra_config: str = "",
    ) -> None:
        self.mailman_bin = Path(mailman_bin) if mailman_bin else default_mailman_bin()
        self.runners = tuple(runners)
        unknown = set(self.runners) - set(ALL_RUNNERS)
        if unknown:
            raise ValueError(f"unknown Mailman runners: {sorted(unknown)}")
        if "rest" not in self.runners or "lmtp" not in self.runners:
            raise ValueError("the rest and lmtp runners are required")
        self.sleep_time = sleep_time
        self.startup_timeout = startup_timeout
        self.admin_user = admin_user
        self.admin_pass = admin_pass
        self.site_owner = site_owner
        self.header_checks = (
            [ln for ln in header_checks.splitlines() if ln.strip()]
            if isinstance(header_checks, str) else list(header_checks))
        for line in self.header_checks:
            if "\n" in line or "\r" in line:
                raise ValueError(f"one header check per line: {line!r}")
        self.jump_chain = jump_chain
        self.dmarc_dns = dmarc_dns
        self.extra_config = extra_config
        self.sink = sink
        self._own_sink = sink is None
        self.host = infra.LOOPBACK
        self.rest_port: int | None = None
        self.lmtp_port: int | None = None
        self.workdir: Path | None = None
        self.start_seconds: float | None = None
        self._started = False
        # message id (normalised) -> what post() knows about it
        self._posts: dict[str, _Post] = {}
        # message id (normalised) -> the LMTP refusal of that post
        self._refused: dict[str, LmtpRefused] = {}

    # ------------------------------------------------------------------ paths
    @property
    def var_dir(self) -> Path:
        return self._need_workdir() / "var"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "logs"

    @property
    def config_path(self) -> Path:
        return self._need_workdir() / "mailman.cfg"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}/3.1"

    @property
    def bin_dir(self) -> Path:
        """The instance's ``bin/``: wrappers of Mailman's scripts (see
        :meth:`_write_wrappers`)."""
        return self._need_workdir() / "bin"

    @property
    def python(self) -> Path:
        """The Python of Mailman's venv."""
        return self.mailman_bin.parent / "python"

    def _suffix_list_path(self) -> Path:
        lib = self.mailman_bin.parent.parent / "lib"
        found = sorted(lib.glob("python3*/site-packages/mailman/rules/data/"
                                "public_suffix_list.dat"))
        if not found:
            raise Mailman3Error(f"Mailman's public_suffix_list.dat not found under {lib}")
        return found[0]

    def log_path(self, name: str = "mailman") -> Path:
        """``var/logs/NAME.log`` (mailman, vette, smtp, ...)."""
        return self.log_dir / f"{name}.log"

    def log_text(self, name: str = "mailman", limit: int = 6000) -> str:
        """The last *limit* characters of ``var/logs/NAME.log`` ("" if none)."""
        if self.workdir is None:
            return ""
        return infra._tail(self.log_path(name), limit)

    def _need_workdir(self) -> Path:
        if self.workdir is None:
            raise Mailman3Error("Mailman3 instance has no working directory (not started)")
        return self.workdir

    # ------------------------------------------------------------------ config
    def config_text(self) -> str:
        """The ``mailman.cfg`` for the current ports and directories."""
        var = self.var_dir
        lines = [
            "# Generated by listgate tests/e2e/mailman3.py",
            "[mailman]",
            "layout: here",
            f"site_owner: {self.site_owner}",
            "",
            "[paths.here]",
            f"var_dir: {var}",
            # Our wrappers of master/runner/mailman (see _write_wrappers): the master
            # is started as $bin_dir/master, the runners as $bin_dir/runner.
            f"bin_dir: {self.bin_dir}",
            "",
            "[database]",
            "class: mailman.database.sqlite.SQLiteDatabase",
            f"url: sqlite:///{var}/data/mailman.db",
            "",
            "[webservice]",
            f"hostname: {self.host}",
            f"port: {self.rest_port}",
            f"admin_user: {self.admin_user}",
            f"admin_pass: {self.admin_pass}",
            "workers: 1",
            f"configuration: {self._need_workdir() / 'gunicorn.cfg'}",
            "",
            "[mta]",
            "incoming: mailman.mta.null.NullMTA",
            f"lmtp_host: {self.host}",
            f"lmtp_port: {self.lmtp_port}",
            f"smtp_host: {self.host}",
            f"smtp_port: {self.sink.port if self.sink else 25}",
            "",
            # The chains' decisions (ACCEPT/HOLD/REJECT/DISCARD) get their own file
            # (by default they go to mailman.log).
            "[logging.vette]",
            "path: vette.log",
            "",
            # The REST server's access and error log (else mailman.log is mostly that).
            "[logging.gunicorn]",
            "path: rest.log",
            "",
            # DMARC mitigation needs the public suffix list: the shipped copy, never
            # a download (var/public_suffix_list.dat caches it).
            "[dmarc]",
            f"org_domain_data_url: file://{self._suffix_list_path()}",
            "",
        ]
        if self.header_checks or self.jump_chain is not None:
            lines.append("[antispam]")
            if self.header_checks:
                lines.append("header_checks:")
                lines.extend(f"    {check}" for check in self.header_checks)
            if self.jump_chain is not None:
                lines.append(f"jump_chain: {self.jump_chain}")
            lines.append("")
        for name in ALL_RUNNERS:
            lines.append(f"[runner.{name}]")
            lines.append(f"start: {'yes' if name in self.runners else 'no'}")
            if name in _FAST_RUNNERS:
                lines.append(f"sleep_time: {self.sleep_time}")
            lines.append("")
        text = "\n".join(lines)
        if self.extra_config:
            text += "\n" + self.extra_config.strip() + "\n"
        return text

    # ------------------------------------------------------------------ life cycle
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MAILMAN_CONFIG_FILE"] = str(self.config_path)
        env[_ENV_MARK] = str(self.workdir)
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        return env

    def _mailman(self, *args: str, timeout: float = 60, check: bool = True):
        root = ["--run-as-root"] if os.geteuid() == 0 else []
        argv = [str(self.python), str(self.bin_dir / "mailman"), *root,
                "-C", str(self.config_path), *args]
        out = self._need_workdir() / "mailman-cmd.out"
        with open(out, "ab") as f:
            f.write(f"$ {' '.join(argv)}\n".encode())
            f.flush()
            res = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(),
                timeout=timeout,
                check=False,
            )
        if check and res.returncode != 0:
            raise Mailman3Error(
                f"'mailman {' '.join(args)}' failed (exit {res.returncode}):\n"
                f"{infra._tail(out, 3000)}\n--- {self.log_path()}:\n{self.log_text()}"
            )
        return res

    def start(self) -> Mailman3:
        """Start Mailman (and the own sink); returns once REST and LMTP answer."""
        if self._started:
            return self
        if not self.mailman_bin.exists():
            raise Mailman3Error(f"{self.mailman_bin} not found: {INSTALL_HINT}")
        t0 = time.monotonic()
        if self.sink is None:
            self.sink = infra.SmtpSink()
        if self._own_sink:
            self.sink.start()
        infra._register(self)
        last_error = ""
        try:
            for _attempt in range(3):
                self._prepare()
                try:
                    self._mailman("start", timeout=60)
                    self._started = True
                    self._wait_ready()
                    self.start_seconds = time.monotonic() - t0
                    return self
                except Mailman3Error as exc:
                    last_error = str(exc)
                    self._stop_mailman()
                    if not self._ports_taken():
                        raise
                    # Another process took a port meanwhile: new ports, new var dir.
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise Mailman3Error(f"Mailman did not start (ports kept being taken):\n{last_error}")

    def _prepare(self) -> None:
        """A fresh instance directory, new ports and mailman.cfg."""
        if self.workdir is not None and not infra._keep_files():
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = infra._make_workdir("mailman3-")
        self.var_dir.mkdir()
        for _ in range(20):
            self.rest_port = infra.free_port()
            self.lmtp_port = infra.free_port()
            if not self._ports_taken():
                break
        self._write_wrappers()
        self.config_path.write_text(self.config_text())
        (self.workdir / "gunicorn.cfg").write_text(GUNICORN_CFG)
        self._posts.clear()

    def _write_wrappers(self) -> None:
        """``$bin_dir``: ``master``, ``runner`` and ``mailman`` that import
        ``listgate_mm3_shim`` (beside them, so ``-r listgate_mm3_shim.run`` of
        ``mailman shell`` finds it too) and then run Mailman's own ``main``."""
        bin_dir = self.bin_dir
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "listgate_mm3_shim.py").write_text(_SHIM)
        (bin_dir / "shim.json").write_text(json.dumps(
            {"dns": list(self.dmarc_dns) if self.dmarc_dns else None}))
        for name, module in (("master", "master"), ("runner", "runner"),
                             ("mailman", "mailman")):
            path = bin_dir / name
            path.write_text(_WRAPPER.format(python=self.python, module=module,
                                            argv0=str(self.mailman_bin.parent / name)))
            path.chmod(0o755)

    def _ports_taken(self) -> bool:
        """True if something listens on one of our ports (call it while none of this
        instance's processes run)."""
        return any(
            port is not None and infra._tcp_listening(self.host, port)
            for port in (self.rest_port, self.lmtp_port)
        )

    def master_pid(self) -> int | None:
        """The master runner's pid from ``var/master.pid`` (None if not there/dead)."""
        if self.workdir is None:
            return None
        try:
            pid = int((self.var_dir / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if infra.pid_alive(pid) else None

    def _pids(self) -> list[int]:
        """Every live process of this instance: the master and the ``mailman``
        commands carry an environment marker; the runners (which the master starts
        with a fresh environment) are found by the config path on their command line."""
        if self.workdir is None:
            return []
        me = os.getpid()
        pids = set(infra.processes_with_env(_ENV_MARK, str(self.workdir)))
        needle = str(self.config_path).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in argv:
                pids.add(int(entry))
        return sorted(p for p in pids if p != me and infra.pid_alive(p))

    def _runner_pids(self) -> dict[str, int]:
        """``{runner name: pid}`` of the runner processes that are up."""
        found: dict[str, int] = {}
        for pid in self._pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for arg in argv:
                m = re.match(rb"--runner=([a-z]+):", arg)
                if m:
                    found.setdefault(m.group(1).decode(), pid)
        return found

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        master_seen_at = None
        t0 = time.monotonic()
        first_pids: dict[str, int] = {}
        while True:
            now = time.monotonic()
            pid = self.master_pid()
            if pid is not None:
                master_seen_at = master_seen_at or now
            elif master_seen_at is not None or now - t0 > 20:
                raise Mailman3Error(self._failure("Mailman's master runner died"))
            runners = self._runner_pids()
            for name, rpid in runners.items():
                if first_pids.setdefault(name, rpid) != rpid:
                    # The master restarts a runner that died (e.g. port in use).
                    raise Mailman3Error(self._failure(f"Mailman's {name} runner died"))
            if (
                pid is not None
                and not set(self.runners) - set(runners)
                and self._lmtp_ready()
                and self._rest_ready()
            ):
                return
            if now > deadline:
                missing = set(self.runners) - set(self._runner_pids())
                raise Mailman3Error(self._failure(
                    f"Mailman did not answer within {self.startup_timeout:.0f} s "
                    f"(REST {self.rest_url}, LMTP {self.host}:{self.lmtp_port}; "
                    f"runners not running: {sorted(missing) or 'none'})"
                ))
            time.sleep(0.1)

    def _rest_ready(self) -> bool:
        if not infra._tcp_listening(self.host, self.rest_port):
            return False
        try:
            status, body = self.rest("GET", "system/versions", timeout=5)
        except Mailman3Error:
            return False
        if status != 200 or not isinstance(body, dict):
            return False
        version = str(body.get("mailman_version", ""))
        if MAILMAN_VERSION not in version.split():
            raise Mailman3Error(
                f"{self.rest_url} answers with {version!r}, expected {MAILMAN_VERSION}"
            )
        return True

    def _lmtp_ready(self) -> bool:
        if not infra._tcp_listening(self.host, self.lmtp_port):
            return False
        try:
            with smtplib.LMTP(self.host, self.lmtp_port, timeout=5) as lmtp:
                code, _msg = lmtp.noop()
                return code == 250
        except (OSError, smtplib.SMTPException):
            return False

    def _failure(self, what: str) -> str:
        out = ""
        if self.workdir is not None:
            out = infra._tail(self.workdir / "mailman-cmd.out", 2000)
        rest = self.log_text("rest", 3000)
        rest = "\n".join(ln for ln in rest.splitlines() if '"GET /3.1/system' not in ln)
        return (
            f"{what}.\n--- last lines of {self.log_path()}:\n{self.log_text()}"
            + (f"\n--- last lines of {self.log_path('rest')}:\n{rest}" if rest else "")
            + (f"\n--- mailman command output:\n{out}" if out else "")
        )

    def _stop_mailman(self) -> None:
        """``mailman stop``, wait, then kill whatever of this instance is left."""
        if self.workdir is None:
            return
        if self.master_pid() is not None:
            try:
                self._mailman("stop", timeout=30, check=False)
            except (subprocess.TimeoutExpired, OSError):
                pass
        deadline = time.monotonic() + 10
        while self._pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            pids = self._pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self._pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        left = self._pids()
        self._started = False
        if left:
            raise Mailman3Error(f"Mailman processes survived SIGKILL: {left}")

    def stop(self) -> None:
        """Stop Mailman and the own sink, remove the instance directory. Idempotent."""
        infra._unregister(self)
        try:
            self._stop_mailman()
        finally:
            self._started = False
            if self._own_sink and self.sink is not None:
                self.sink.stop()
            if self.workdir is not None and not infra._keep_files():
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    @property
    def running(self) -> bool:
        return self._started and self.master_pid() is not None

    def __enter__(self) -> Mailman3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<Mailman3 rest={self.rest_port} lmtp={self.lmtp_port} "
                f"sink={self.sink.port if self.sink else None} running={self.running}>")

    # ------------------------------------------------------------------ REST
    def rest(
        self,
        method: str,
        path: str,
        data: Mapping[str, object] | None = None,
        *,
        form: bool = False,
        timeout: float = 30,
    ) -> tuple[int, object]:
        """One REST call: ``(HTTP status, parsed JSON body or None)``; never raises on
        4xx/5xx (only when Mailman cannot be reached at all).

        *path* is relative to :attr:`rest_url` (``"lists"``, ``"/lists/x/config"``),
        or absolute (``"/3.0/..."``, ``"http://..."``). Quote addresses in it yourself
        (``+`` -> ``%2B``; the helpers do). *data* is sent as JSON (Mailman's REST
        takes JSON and form bodies alike; JSON keeps lists, booleans and ``None``);
        ``form=True`` sends it form-encoded instead, a list value as repeated keys and
        an empty list as ``key=``.
        """
        if path.startswith(("http://", "https://")):
            url = path
        elif re.match(r"/3\.[01]/", path):
            url = f"http://{self.host}:{self.rest_port}{path}"
        else:
            url = f"{self.rest_url}/{path.lstrip('/')}"
        body = None
        headers = {
            "Authorization": "Basic " + base64.b64encode(
                f"{self.admin_user}:{self.admin_pass}".encode()).decode(),
            "Accept": "application/json",
        }
        if data is not None:
            if form:
                pairs: list[tuple[str, str]] = []
                for key, value in data.items():
                    values = value if isinstance(value, (list, tuple)) else [value]
                    if not values:
                        pairs.append((key, ""))
                    for v in values:
                        pairs.append((key, _form_value(v)))
                body = urllib.parse.urlencode(pairs).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                body = json.dumps(dict(data)).encode()
                headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=body, method=method.upper(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise Mailman3Error(
                f"Mailman REST {method} {url} failed: {exc} (see {self.log_path()})"
            ) from exc
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, None

    def _rest_ok(self, method: str, path: str, data=None, ok=(200, 201, 204), **kw):
        status, body = self.rest(method, path, data, **kw)
        if status not in ok:
            raise Mailman3Error(
                f"Mailman REST {method} {path} {data!r} -> {status} {body!r} "
                f"(see {self.log_path()})"
            )
        return status, body

    # ------------------------------------------------------------------ helpers
    def create_domain(self, mail_host: str) -> dict:
        """Create domain *mail_host* (no error if it exists); return its JSON."""
        status, body = self.rest("GET", f"domains/{_q(mail_host)}")
        if status == 200:
            return body
        self._rest_ok("POST", "domains", {"mail_host": mail_host})
        return self._rest_ok("GET", f"domains/{_q(mail_host)}")[1]

    def create_list(
        self, fqdn: str, *, probe_member: bool = True, **settings: object
    ) -> str:
        """Create list *fqdn* (``name@domain``; the domain too if needed), set its
        config *settings* (``PATCH /lists/{id}/config``, e.g.
        ``default_nonmember_action="reject"``, ``emergency=True``,
        ``accept_these_nonmembers=["a@x.test", "^.*@y\\.test$"]``) and, if
        *probe_member*, subscribe :data:`PROBE_MEMBER`. Returns the list id."""
        _local, _, domain = fqdn.partition("@")
        if not domain:
            raise ValueError(f"not a list address: {fqdn!r}")
        self.create_domain(domain)
        self._rest_ok("POST", "lists", {"fqdn_listname": fqdn}, ok=(201,))
        list_id = _list_id(fqdn)
        if settings:
            self.configure(list_id, **settings)
        if probe_member:
            self.subscribe(list_id, PROBE_MEMBER)
        return list_id

    def configure(self, fqdn_or_id: str, **settings: object) -> None:
        """PATCH list settings (``/lists/{id}/config``); lists as Python lists."""
        self._rest_ok("PATCH", f"lists/{_list_id(fqdn_or_id)}/config", settings, ok=(204,))

    def config(self, fqdn_or_id: str, attribute: str | None = None):
        """The list's settings (``GET /lists/{id}/config``), or the value of one
        *attribute* (``GET /lists/{id}/config/{attribute}``)."""
        path = f"lists/{_list_id(fqdn_or_id)}/config"
        if attribute is None:
            return self._rest_ok("GET", path, ok=(200,))[1]
        return self._rest_ok("GET", f"{path}/{attribute}", ok=(200,))[1][attribute]

    # ------------------------------------------------------------------ header matches
    def add_header_match(
        self,
        fqdn_or_id: str,
        header: str,
        pattern: str,
        action: str | None = None,
        *,
        tag: str | None = None,
        position: int | None = None,
    ) -> dict:
        """Append a rule to the list's ``header_matches`` (``POST
        /lists/{id}/header-matches``; *action* one of :data:`HEADER_MATCH_ACTIONS`
        or None = ``[antispam] jump_chain``); with *position*, then move it there
        (``PATCH .../header-matches/{n} position=``). Returns the rule's JSON
        (``position``, ``header`` (REST lowercases it), ``pattern``, ``action`` when
        set, ``tag`` when set). REST refuses (400) an invalid regexp, an unknown action
        and a (header, pattern) pair the list already has."""
        list_id = _list_id(fqdn_or_id)
        data: dict[str, object] = {"header": header, "pattern": pattern}
        if action is not None:
            data["action"] = action
        if tag is not None:
            data["tag"] = tag
        self._rest_ok("POST", f"lists/{list_id}/header-matches", data, ok=(201,))
        rules = self.header_matches(list_id)
        rule = rules[-1]
        if position is not None and position != rule["position"]:
            self._rest_ok("PATCH", f"lists/{list_id}/header-matches/{rule['position']}",
                          {"position": position}, ok=(204,))
            rule = self._rest_ok("GET", f"lists/{list_id}/header-matches/{position}",
                                 ok=(200,))[1]
        return rule

    def header_matches(self, fqdn_or_id: str) -> list[dict]:
        """The list's header match rules in order (``GET .../header-matches``)."""
        body = self._rest_ok("GET", f"lists/{_list_id(fqdn_or_id)}/header-matches",
                             ok=(200,))[1]
        return list(body.get("entries", []))

    def clear_header_matches(self, fqdn_or_id: str) -> None:
        """Remove all the list's header match rules (``DELETE .../header-matches``)."""
        self._rest_ok("DELETE", f"lists/{_list_id(fqdn_or_id)}/header-matches", ok=(204,))

    def antispam(self) -> dict:
        """``GET /system/configuration/antispam`` (``header_checks``, ``jump_chain``)."""
        return self._rest_ok("GET", "system/configuration/antispam", ok=(200,))[1]

    # ------------------------------------------------------------------ shell
    def shell(self, code: str, fqdn_or_id: str | None = None, timeout: float = 60) -> str:
        """Run Python *code* inside Mailman (``mailman shell [-l LIST] -r ...``),
        with ``m`` bound to the list (or None), ``config`` and ``getUtility``; the
        transaction is committed afterwards. Returns what the code printed. For what
        REST cannot do, e.g. ``m.bounce_matching_headers = "X-Foo: bar"`` or a header
        match with an invalid regexp. Costs ~1-2 s (a Mailman start-up)."""
        args = ["shell"]
        if fqdn_or_id is not None:
            args += ["-l", fqdn_or_id]
            args += ["-r", "listgate_mm3_shim.run", code]
        else:
            args += ["-r", "listgate_mm3_shim.run_site", code]
        root = ["--run-as-root"] if os.geteuid() == 0 else []
        argv = [str(self.python), str(self.bin_dir / "mailman"), *root,
                "-C", str(self.config_path), *args]
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                             cwd=self.workdir, env=self._env(), timeout=timeout,
                             check=False)
        if res.returncode != 0:
            raise Mailman3Error(
                f"mailman shell failed (exit {res.returncode}):\n"
                f"{res.stdout.decode(errors='replace')[-2000:]}"
                f"{res.stderr.decode(errors='replace')[-4000:]}")
        return res.stdout.decode("utf-8", "replace")

    def subscribe(
        self,
        fqdn_or_id: str,
        address: str,
        role: str = "member",
        moderation_action: str | None = None,
        display_name: str | None = None,
    ) -> dict:
        """Subscribe *address* with *role* (member/owner/moderator/nonmember), without
        confirmation, approval or welcome message; then set its *moderation_action*
        (hold/reject/discard/accept/defer) if given. Returns the member JSON."""
        list_id = _list_id(fqdn_or_id)
        data: dict[str, object] = {
            "list_id": list_id,
            "subscriber": address,
            "role": role,
            "pre_verified": True,
            "pre_confirmed": True,
            "pre_approved": True,
            "send_welcome_message": False,
        }
        if display_name is not None:
            data["display_name"] = display_name
        self._rest_ok("POST", "members", data, ok=(201,))
        member_path = f"lists/{list_id}/{role}/{_q(address)}"
        member = self._rest_ok("GET", member_path, ok=(200,))[1]
        if moderation_action is not None:
            self._rest_ok("PATCH", f"members/{member['member_id']}",
                          {"moderation_action": moderation_action}, ok=(204,))
            member = self._rest_ok("GET", member_path, ok=(200,))[1]
        return member

    def member(self, fqdn_or_id: str, address: str, role: str = "member") -> dict | None:
        """The member JSON (``GET /lists/{id}/{role}/{address}``), None if 404."""
        status, body = self.rest("GET", f"lists/{_list_id(fqdn_or_id)}/{role}/{_q(address)}")
        if status == 404:
            return None
        if status != 200:
            raise Mailman3Error(f"member lookup {address} -> {status} {body!r}")
        return body

    def link_address(self, user_address: str, other_address: str) -> list[str]:
        """Make *other_address* an address of the user that owns *user_address*
        (``POST /users/{user_address}/addresses email=other``; a user is created for
        *user_address* if it has none; if *other_address* belongs to another user,
        that user is absorbed). Returns the user's addresses afterwards."""
        status, _ = self.rest("GET", f"users/{_q(user_address)}")
        if status == 404:
            self._rest_ok("POST", "users", {"email": user_address}, ok=(201,))
        elif other_address.lower() in self.user_addresses(user_address):
            return self.user_addresses(user_address)
        path = f"users/{_q(user_address)}/addresses"
        status, body = self.rest("POST", path, {"email": other_address})
        if status == 400 and "other user" in json.dumps(body):
            self._rest_ok("POST", path, {"email": other_address, "absorb_existing": True},
                          ok=(201,))
        elif status != 201:
            raise Mailman3Error(f"POST {path} email={other_address} -> {status} {body!r}")
        return self.user_addresses(user_address)

    def user_addresses(self, address: str) -> list[str]:
        """All addresses of the user owning *address* ([] if it has no user)."""
        status, body = self.rest("GET", f"users/{_q(address)}/addresses")
        if status == 404:
            return []
        if status != 200:
            raise Mailman3Error(f"GET users/{address}/addresses -> {status} {body!r}")
        return [e["email"] for e in body.get("entries", [])]

    def ban(self, address_or_pattern: str, fqdn: str | None = None) -> None:
        """Ban an address or ``^regexp`` on list *fqdn*, or site-wide if None.
        No error if it is already banned."""
        base = f"lists/{_list_id(fqdn)}/bans" if fqdn else "bans"
        status, body = self.rest("POST", base, {"email": address_or_pattern})
        if status == 400 and "already banned" in json.dumps(body):
            return
        if status != 201:
            raise Mailman3Error(f"POST {base} email={address_or_pattern} -> {status} {body!r}")

    def is_banned(self, address: str, fqdn: str | None = None) -> bool:
        """``GET /lists/{id}/bans/{address}`` (or ``/bans/{address}``): 200 or 404."""
        base = f"lists/{_list_id(fqdn)}/bans" if fqdn else "bans"
        status, body = self.rest("GET", f"{base}/{urllib.parse.quote(address, safe='@')}")
        if status not in (200, 404):
            raise Mailman3Error(f"GET {base}/{address} -> {status} {body!r}")
        return status == 200

    def held(self, fqdn_or_id: str) -> list[dict]:
        """The list's held messages (``GET /lists/{id}/held`` entries)."""
        body = self._rest_ok("GET", f"lists/{_list_id(fqdn_or_id)}/held", ok=(200,))[1]
        return list(body.get("entries", []))

    # ------------------------------------------------------------------ posting
    def post(
        self,
        msg: bytes | str,
        mail_from: str,
        rcpt: str | Sequence[str],
        *,
        timeout: float = 30,
        check: bool = True,
    ) -> str:
        """Deliver *msg* to Mailman over LMTP (``MAIL FROM:<mail_from>``, one RCPT per
        *rcpt*). Returns the message's Message-ID (as in the header, e.g.
        ``"<x@y>"``), which :meth:`outcome` takes. The message must have one.

        If Mailman refuses a recipient or the data, the refusal is remembered
        (:meth:`outcome` then answers ``"lmtp-<code>"``, e.g. ``"lmtp-501"`` for a
        message with defects) and, with *check* (the default), :class:`LmtpRefused`
        is raised; with ``check=False`` the Message-ID is returned as usual."""
        raw = msg.encode() if isinstance(msg, str) else bytes(msg)
        mid = _message_id_of(raw)
        if not mid or not _norm_mid(mid):
            raise ValueError("the message needs a Message-ID header (outcome() matches on it)")
        rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        key = _norm_mid(mid)
        self._refused.pop(key, None)
        self._posts[key] = _Post(self._vette_size(), time.monotonic(), rcpts)
        refusal: LmtpRefused | None = None
        try:
            with smtplib.LMTP(self.host, self.lmtp_port, timeout=timeout) as lmtp:
                lmtp.ehlo_or_helo_if_needed()
                refused = lmtp.sendmail(mail_from, rcpts, raw)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            refusal = LmtpRefused(
                f"LMTP refused all recipients {rcpts}: {exc.recipients}", code,
                text.decode(errors="replace") if isinstance(text, bytes) else str(text),
                mid)
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error
            refusal = LmtpRefused(
                f"LMTP refused the post: {exc.smtp_code} {text!r}", exc.smtp_code,
                text.decode(errors="replace") if isinstance(text, bytes) else str(text),
                mid)
        except (OSError, smtplib.SMTPException) as exc:
            raise Mailman3Error(
                f"LMTP delivery to {self.host}:{self.lmtp_port} failed: {exc}\n"
                + self._failure("LMTP failed")
            ) from exc
        else:
            if refused:
                code, text = next(iter(refused.values()))
                refusal = LmtpRefused(
                    f"LMTP refused recipients {refused}", code,
                    text.decode(errors="replace") if isinstance(text, bytes) else str(text),
                    mid)
        if refusal is not None:
            self._refused[key] = refusal
            if check:
                raise refusal
        return mid

    def lmtp_refusal(self, message_id: str) -> LmtpRefused | None:
        """The LMTP refusal of the post *message_id* (None if it was taken)."""
        return self._refused.get(_norm_mid(message_id))

    def _vette_size(self) -> int:
        try:
            return self.log_path("vette").stat().st_size
        except OSError:
            return 0

    def find_decision(self, message_id: str) -> Decision | None:
        """The decision logged for *message_id* so far (since it was posted, if it
        was posted with :meth:`post`), else None. The last one wins. An LMTP
        refusal counts (action ``lmtp-<code>``), and so does the incoming runner's
        autorespond discard (action ``autorespond-discard``)."""
        mid = _norm_mid(message_id)
        info = self._posts.get(mid)
        offset, posted_at = (info.offset, info.posted_at) if info else (0, None)
        refusal = self._refused.get(mid)
        if refusal is not None:
            return Decision(f"lmtp-{refusal.code}", message_id.strip(), refusal.reply,
                            f"{refusal.code} {refusal.reply}", 0.0)
        try:
            with open(self.log_path("vette"), "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        found: Decision | None = None
        for line in _log_records(text):
            hit = _parse_vette(line, mid)
            if hit is not None:
                action, reasons = hit
                secs = time.monotonic() - posted_at if posted_at is not None else None
                found = Decision(action, message_id.strip(), reasons, line, secs)
        return found

    def decide(self, message_id: str, timeout: float = 30.0, confirm: bool = True) -> Decision:
        """Wait until Mailman has decided on the post *message_id*; return the
        :class:`Decision`. With *confirm*, a hold must also be listed by
        ``GET /lists/{id}/held`` (its rule hits/misses are read from there) and an
        accepted post must reach the SMTP sink (when its list has members; otherwise
        the ACCEPT line alone counts).

        A post that lands in the shunt queue instead (a runner raised on it, before
        or after a chain decided) is decided as ``shunt``: ``reasons`` is
        ``"<queue>: <exception>"``, ``line`` the chain's vette.log line if any.

        Never waits longer than *timeout* seconds: then raises
        :class:`Mailman3Error` (with the queues and the log tails).
        """
        deadline = time.monotonic() + timeout
        decision = None
        next_shunt_check = 0.0
        mid = _norm_mid(message_id)
        while decision is None:
            decision = self.find_decision(message_id)
            if decision is not None:
                break
            now = time.monotonic()
            if now >= next_shunt_check:
                shunted = self._shunt_decision(message_id, "")
                if shunted is not None:
                    return shunted
                next_shunt_check = now + 0.2
            if now > deadline:
                raise Mailman3Error(self._lost(message_id, timeout, "no decision logged"))
            if not self.running:
                raise Mailman3Error(self._failure("Mailman is not running any more"))
            time.sleep(0.02)
        if not confirm or decision.action not in ("hold", "accept"):
            return decision
        hits: tuple[str, ...] = ()
        misses: tuple[str, ...] = ()
        if decision.action == "hold":
            m = re.search(r"HOLD: (\S+@\S+) post from", decision.line)
            list_id = _list_id(m.group(1)) if m else None
            while list_id is not None:
                entry = next((e for e in self.held(list_id)
                              if _norm_mid(str(e.get("message_id", ""))) == mid), None)
                if entry is not None:
                    hits, misses = _rule_headers(str(entry.get("msg", "")))
                    break
                if time.monotonic() > deadline:
                    raise Mailman3Error(self._lost(
                        message_id, timeout, f"HOLD logged but not in lists/{list_id}/held"))
                time.sleep(0.05)
        elif self._expects_delivery(mid):
            while not self.delivered(message_id):
                now = time.monotonic()
                if now >= next_shunt_check:
                    shunted = self._shunt_decision(message_id, decision.line)
                    if shunted is not None:
                        return shunted
                    next_shunt_check = now + 0.2
                if now > deadline:
                    raise Mailman3Error(self._lost(
                        message_id, timeout, "ACCEPT logged but nothing reached the sink"))
                time.sleep(0.02)
        info = self._posts.get(mid)
        secs = time.monotonic() - info.posted_at if info is not None else None
        return Decision(decision.action, decision.message_id, decision.reasons,
                        decision.line, secs, hits, misses)

    def outcome(self, message_id: str, timeout: float = 30.0, confirm: bool = True) -> str:
        """What Mailman did with the post *message_id*: one of :data:`OUTCOMES`
        (``"accept"``, ``"hold"``, ``"reject"``, ``"discard"``,
        ``"autorespond-discard"``, ``"shunt"``) or ``"lmtp-<code>"`` (see
        :meth:`decide`; bounded by *timeout*)."""
        return self.decide(message_id, timeout, confirm).action

    def decide_all(
        self, message_ids: Iterable[str], timeout: float = 60.0, confirm: bool = True
    ) -> dict[str, Decision]:
        """:meth:`decide` for many posts (posted before, so that Mailman works on
        them all at once), within *timeout* seconds in all."""
        deadline = time.monotonic() + timeout
        return {mid: self.decide(mid, max(0.5, deadline - time.monotonic()), confirm)
                for mid in message_ids}

    def _shunt_decision(self, message_id: str, line: str) -> Decision | None:
        shunted = self.shunted(message_id)
        if shunted is None:
            return None
        info = self._posts.get(_norm_mid(message_id))
        secs = time.monotonic() - info.posted_at if info is not None else None
        return Decision("shunt", message_id.strip(), f"{shunted.queue}: {shunted.error}",
                        line, secs)

    def shunted(self, message_id: str) -> Shunted | None:
        """The post *message_id* if it is in ``var/queue/shunt`` (else None)."""
        mid = _norm_mid(message_id)
        qdir = self.var_dir / "queue" / "shunt"
        try:
            files = sorted(qdir.glob("*.pck"))
        except OSError:
            return None
        for path in files:
            found = _read_queue_file(path)
            if found is None or _norm_mid(found[0]) != mid:
                continue
            error, tb = self._shunt_error(path.stem)
            return Shunted(message_id.strip(), found[1], path.stem, error, tb)
        return None

    def _shunt_error(self, filebase: str) -> tuple[str, str]:
        """(exception, traceback) logged before ``SHUNTING: filebase``."""
        try:
            text = self.log_path().read_text("utf-8", "replace")
        except OSError:
            return "", ""
        at = text.find(f"SHUNTING: {filebase}")
        if at < 0:
            return "", ""
        start = text.rfind("Uncaught runner exception: ", 0, at)
        if start < 0:
            return "", ""
        chunk = text[start:at]
        first, _, rest = chunk.partition("\n")
        error = first[len("Uncaught runner exception: "):].strip()
        # the traceback is logged as a record of its own: drop the log prefixes
        lines = [_LOG_RECORD.sub("", ln, count=1) for ln in rest.splitlines()]
        tb = "\n".join(ln for ln in lines if ln.strip()).strip()
        # The traceback's last line names the exception class too ("KeyError: 'x'").
        last = next((ln.strip() for ln in reversed(tb.splitlines())
                     if ln.strip() and not ln.startswith(" ")), "")
        if last and error in last:
            error = last
        return error, tb

    def delivered(self, message_id: str) -> list[infra.SinkMessage]:
        """The sink's messages with this Message-ID (the list's copies of a post)."""
        if self.sink is None:
            return []
        mid = _norm_mid(message_id)
        return [m for m in self.sink.messages()
                if _norm_mid(str(m.message.get("Message-ID", ""))) == mid]

    def _expects_delivery(self, mid: str) -> bool:
        """Whether an accepted post *mid* (normalised) must reach the sink: it was
        posted with :meth:`post` to a list that has members."""
        info = self._posts.get(mid)
        if info is None or self.sink is None:
            return False
        for rcpt in info.rcpts:
            status, body = self.rest("GET", f"lists/{_q(rcpt)}")
            if status == 200 and int(body.get("member_count", 0)) > 0:
                return True
        return False

    def _lost(self, message_id: str, timeout: float, what: str) -> str:
        queues = []
        qdir = self.var_dir / "queue"
        if qdir.is_dir():
            for q in sorted(qdir.iterdir()):
                files = sorted(p.name for p in q.iterdir()) if q.is_dir() else []
                if files:
                    queues.append(f"{q.name}: {files[:5]}")
        return (
            f"post {message_id}: {what} within {timeout:.0f} s.\n"
            f"--- queues: {'; '.join(queues) or 'all empty'}\n"
            f"--- last lines of {self.log_path('vette')}:\n{self.log_text('vette', 3000)}\n"
            f"--- last lines of {self.log_path()}:\n{self.log_text('mailman', 5000)}"
        )


_LOG_RECORD = re.compile(r"^[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d \d{4} \(\d+\) ?")


def _log_records(text: str) -> list[str]:
    """Mailman log *text* as records: a line that does not start with the
    ``Dec 01 12:00:00 2026 (PID) `` prefix continues the record before it (a logged
    header value can contain its folding CRLF)."""
    records: list[str] = []
    for line in text.splitlines():
        if records and not _LOG_RECORD.match(line):
            records[-1] += "\n" + line
        else:
            records.append(line)
    return records


def _message_id_of(raw: bytes) -> str | None:
    """The Message-ID header of *raw* as Mailman's LMTP runner reads it (compat32)."""
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    mid = parsed.get("Message-ID")
    return None if mid is None else str(mid).strip()


class _Stub:
    """Stands in for every class in a queue pickle (nothing of Mailman is imported)."""

    def __init__(self, *args, **kwargs) -> None:
        self._args = args

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state


class _QueueUnpickler(pickle.Unpickler):
    _REAL = frozenset({("datetime", "datetime"), ("datetime", "timedelta"),
                       ("datetime", "timezone"), ("datetime", "date")})

    def find_class(self, module: str, name: str):
        if (module, name) in self._REAL:
            return super().find_class(module, name)
        return type(name, (_Stub,), {"__module__": "stub." + module})


def _read_queue_file(path: Path) -> tuple[str, str] | None:
    """(Message-ID, msgdata['whichq']) of a Mailman queue file (``.pck``: a pickle
    of the pickled message, then a pickle of the metadata), None if unreadable."""
    try:
        with open(path, "rb") as f:
            msgsave = _QueueUnpickler(f).load()
            try:
                msgdata = _QueueUnpickler(f).load()
            except Exception:  # noqa: BLE001 - metadata is a bonus
                msgdata = {}
        if isinstance(msgsave, bytes):
            msg = _QueueUnpickler(io.BytesIO(msgsave)).load()
        else:
            msg = msgsave
    except Exception:  # noqa: BLE001 - a half-written or foreign file
        return None
    if isinstance(msg, str):  # _plaintext queue entries
        mid = _message_id_of(msg.encode("utf-8", "surrogateescape"))
    else:
        mid = next((str(v) for k, v in getattr(msg, "_headers", [])
                    if str(k).lower() == "message-id" and isinstance(v, str)), None)
    if mid is None:
        return None
    whichq = msgdata.get("whichq", "?") if isinstance(msgdata, dict) else "?"
    return mid, str(whichq)


def _rule_headers(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(X-Mailman-Rule-Hits, X-Mailman-Rule-Misses) of a held message's text."""
    parsed = email.message_from_string(text, policy=email.policy.compat32)

    def split(name: str) -> tuple[str, ...]:
        value = re.sub(r"\s+", " ", str(parsed.get(name, "")))
        return tuple(v.strip() for v in value.split(";") if v.strip())

    return split("X-Mailman-Rule-Hits"), split("X-Mailman-Rule-Misses")


def _form_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def _parse_vette(line: str, mid: str) -> tuple[str, str] | None:
    """(action, reasons) if vette.log *line* is a chain decision about *mid*.

    Mailman 3.3.10's formats (chains/{accept,hold,reject,discard}.py; the log prefix
    is ``Nov 22 05:28:27 2026 (PID) ``; message ids with their angle brackets)::

        ACCEPT: <mid>
        HOLD: list@domain post from sender held, message-id=<mid>: reason; reason
        REJECT: <mid>
        DISCARD: <mid>; [reasons]
        <mid> list post replied and discarded     (runners/incoming.py)
    """
    for bracketed in (f"<{mid}>", mid):
        if line.endswith(f" {bracketed} list post replied and discarded"):
            return "autorespond-discard", "list post replied and discarded"
        if line.endswith(f" ACCEPT: {bracketed}"):
            return "accept", ""
        if line.endswith(f" REJECT: {bracketed}"):
            return "reject", ""
        key = f" DISCARD: {bracketed}; "
        if key in line:
            return "discard", line.split(key, 1)[1]
        key = f" held, message-id={bracketed}: "
        if " HOLD: " in line and key in line:
            return "hold", line.split(key, 1)[1]
    return None
