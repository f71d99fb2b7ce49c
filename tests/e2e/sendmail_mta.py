"""A private sendmail for the end-to-end tests: Debian's sendmail, unpacked by
``scripts/install-sendmail.sh`` (it conflicts with the postfix package), configured with
README.md's own sendmail lines, listening on loopback and relaying to an smtp-sink.

Only the milter lines come from the README (the block under "## sendmail", with the
socket substituted); :data:`HARNESS_MC` is what makes sendmail a private,
loopback-only relay that needs no /etc/mail, no DNS, no syslog and no daemon install.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import infra

#: Where scripts/install-sendmail.sh unpacks the Debian packages.
SENDMAIL_ROOT = Path(os.environ.get("LISTGATE_SENDMAIL_ROOT", "/var/tmp/listgate-sendmail"))
SENDMAIL = SENDMAIL_ROOT / "usr/libexec/sendmail/sendmail"
CF_DIR = SENDMAIL_ROOT / "usr/share/sendmail/cf"
README = Path(__file__).resolve().parents[2] / "README.md"
#: The socket the README's lines name; tests substitute their daemon's.
README_SOCKET = "unix:/run/listgate/listgate.sock"
INSTALL_HINT = "run scripts/install-sendmail.sh (as root; make test does)"
#: sendmail's name for itself inside its UTS namespace (see SendmailInstance.start).
NODENAME = "sendmail.listgate.test"

#: The test-only part of sendmail.mc; README's lines go in at ``{milter}``.
HARNESS_MC = """\
divert(-1)
dnl listgate e2e harness: a private loopback relay (tests/e2e/sendmail_mta.py)
divert(0)dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `mx.sendmail.test')dnl
dnl host names from a private file only (no DNS), for client names and relay hosts
define(`confSERVICE_SWITCH_FILE', `{dir}/service.switch')dnl
define(`confHOSTS_FILE', `{dir}/hosts')dnl
define(`QUEUE_DIR', `{dir}/queue')dnl
define(`confPID_FILE', `{dir}/sendmail.pid')dnl
define(`STATUS_FILE', `{dir}/statistics')dnl
define(`ALIAS_FILE', `')dnl
define(`confCW_FILE', `-o {dir}/local-host-names')dnl
define(`confCR_FILE', `-o {dir}/relay-domains')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
dnl the listgate socket lives below /tmp or /var/tmp: sticky world-writable dirs
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
dnl never refuse or queue because two shared cores are busy
define(`confREFUSE_LA', `999')dnl
define(`confQUEUE_LA', `999')dnl
define(`confTO_IDENT', `0s')dnl
define(`SMART_HOST', `[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {sink_port}')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`nocanonify')dnl
RELAY_DOMAIN(`{relay_domains}')dnl
DAEMON_OPTIONS(`{daemon_options}')dnl
{milter}
MAILER(`smtp')dnl
"""


def readme_mc(socket_spec: str, readme: Path = README) -> str:
    """The .mc lines of README.md's sendmail section, naming ``socket_spec``.

    The block is the first fenced block after "## sendmail" that starts with
    ``dnl listgate``; it must name README_SOCKET exactly once (so the README shows the
    default socket and the test can point it at its own daemon)."""
    text = readme.read_text()
    section = text.split("\n## sendmail\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"^```\n(dnl listgate.*?)^```$", section, re.M | re.S)
    if not m:
        raise AssertionError("README.md: no ```dnl listgate ...``` block under ## sendmail")
    block = m.group(1)
    if block.count(README_SOCKET) != 1:
        raise AssertionError(f"README.md's sendmail block must name {README_SOCKET} once")
    return block.replace(README_SOCKET, socket_spec)


def missing_requirements() -> list[str]:
    """What the sendmail tests lack (empty when all is there)."""
    problems = []
    if not os.access(SENDMAIL, os.X_OK):
        problems.append(f"{SENDMAIL} missing: {INSTALL_HINT}")
    if shutil.which("m4") is None:
        problems.append(f"program 'm4' not found: {infra.INSTALL_HINT}")
    if not own_uts_namespace():
        problems.append("`unshare --uts` is not allowed here: sendmail needs a host name "
                        "with a dot (see SendmailInstance.start)")
    return problems


@functools.cache
def own_uts_namespace() -> bool:
    """Whether ``unshare --uts`` works here (root, and not forbidden by a container)."""
    try:
        return subprocess.run(["unshare", "--uts", "hostname", NODENAME],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class SendmailInstance(infra._Server):
    """sendmail -bD (foreground daemon) on ``host:port``, relaying ``relay_domains`` to
    the smtp-sink on 127.0.0.1:``sink_port``, with README.md's milter lines for
    ``milter`` (a listgate socket spec). ``ipv6=True``: listen on [::1] instead.

    sendmail logs only to syslog; ``trace_text()`` is its SMTP trace (``-X``) instead.
    """

    def __init__(self, milter: str, sink_port: int, relay_domains: Sequence[str],
                 *, ipv6: bool = False, startup_timeout: float = 15.0) -> None:
        self.milter = milter
        self.sink_port = sink_port
        self.relay_domains = list(relay_domains)
        self.ipv6 = ipv6
        self.host = "::1" if ipv6 else infra.LOOPBACK
        self.port = None
        self.startup_timeout = startup_timeout
        self._proc = None
        self.workdir = infra._make_workdir("sendmail-")
        self.cf_path = self.workdir / "sendmail.cf"
        self.trace_path = self.workdir / "smtp.trace"

    def mc_text(self) -> str:
        """The whole sendmail.mc: the harness around README.md's lines."""
        family = "Family=inet6, " if self.ipv6 else ""
        return HARNESS_MC.format(
            dir=self.workdir, sink_port=self.sink_port,
            relay_domains=" ".join(self.relay_domains),
            daemon_options=f"Port={self.port}, Addr={self.host}, {family}Name=MTA",
            milter=readme_mc(self.milter).rstrip("\n"))

    def _write_config(self) -> None:
        queue = self.workdir / "queue"
        queue.mkdir(mode=0o700, exist_ok=True)
        (self.workdir / "service.switch").write_text("hosts files\naliases files\n")
        (self.workdir / "hosts").write_text(f"127.0.0.1 localhost\n127.0.0.1 {NODENAME}\n")
        mc = self.workdir / "sendmail.mc"
        mc.write_text(self.mc_text())
        r = infra._run(["m4", f"-D_CF_DIR_={CF_DIR}/", str(CF_DIR / "m4/cf.m4"), str(mc)])
        if r.stderr.strip():
            raise infra.InfraError(f"m4 {mc}: {r.stderr.strip()}")
        self.cf_path.write_text(r.stdout)

    def start(self) -> SendmailInstance:
        """Build sendmail.cf with m4 and start sendmail; retried on another port if the
        chosen one was taken meanwhile.

        sendmail qualifies its host name before it reads sendmail.cf and sleeps 60 s if
        the name has no dot and resolves to none (a container's short hostname), so it
        runs in a UTS namespace of its own with a dotted name (``unshare --uts``;
        without one it started after 60 s and did not deliver within 10 s when tried,
        so that is a missing requirement rather than a slow fallback)."""
        last = ""
        script = 'hostname "$1" && shift && exec "$@"'
        argv = ["unshare", "--uts", "sh", "-c", script, "sh", NODENAME, str(SENDMAIL),
                "-C", str(self.cf_path), "-bD", "-X", str(self.trace_path)]
        for _ in range(3):
            self.port = infra.free_port()
            self._write_config()
            errf = self._spawn(argv, "sendmail")
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and self.running:
                if self._listening():
                    infra._register(self)
                    return self
                time.sleep(0.05)
            infra._terminate(self._proc)
            self._proc = None
            last = infra._tail(errf)
        self.stop()
        raise infra.InfraError(f"sendmail did not start:\n{last}")

    def _listening(self) -> bool:
        if not self.ipv6:
            return infra._tcp_listening(self.host, self.port)
        try:  # infra's /proc check is IPv4 only; sendmail shrugs off an empty connection
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def trace_text(self) -> str:
        """The SMTP trace sendmail writes with -X (both its server and client side)."""
        return infra._tail(self.trace_path, 20000)

    def stop(self) -> None:
        """Stop sendmail (SIGTERM) and remove its files unless LISTGATE_E2E_KEEP."""
        infra._terminate(self._proc)
        self._proc = None
        infra._unregister(self)
        if not infra._keep_files():
            shutil.rmtree(self.workdir, ignore_errors=True)


