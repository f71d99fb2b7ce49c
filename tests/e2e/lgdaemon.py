"""Run the real listgate daemon (``python -m listgate serve``) for tests.

The daemon is started exactly as an admin starts it: a config file on disk, the
SQLite store created with the ``listgate`` CLI, a unix or inet socket.  Tests read
its log file, which is what an admin reads.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import infra

LISTGATE = [sys.executable, "-m", "listgate"]


class ListgateDaemon:
    """A listgate daemon with its own directory, config, database and log."""

    def __init__(self, *, transport: str = "unix", config: str = "",
                 nameservers: str = "", workdir: Path | None = None) -> None:
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="listgate-test-"))
        os.chmod(self.dir, 0o755)  # postfix's smtpd must reach the socket
        self.db = self.dir / "listgate.db"
        self.log_path = self.dir / "listgate.log"
        self.cfg_path = self.dir / "listgate.cfg"
        if transport == "unix":
            self.socket = f"unix:{self.dir}/listgate.sock"
            self.postfix_milter = f"unix:{self.dir}/listgate.sock"
        else:
            self.port = infra.free_port()
            self.socket = f"inet:{self.port}@127.0.0.1"
            self.postfix_milter = f"inet:127.0.0.1:{self.port}"
        self.transport = transport
        self.extra_config = config
        self.nameservers = nameservers
        self.proc: subprocess.Popen | None = None
        self.write_config()
        # what the Debian package's first install (or `make run`) does: only an explicit
        # `listgate db init` creates the store, never the daemon or a list command
        from listgate.backends.sqlite import SqliteStore

        with SqliteStore(str(self.db)) as store:
            store.init()

    def write_config(self, extra: str | None = None) -> None:
        if extra is not None:
            self.extra_config = extra
        # the test daemon runs as root while Postfix connects as user postfix; it logs
        # at debug so that tests can also read the per-stage lines (connect, SPF...)
        base = (f"[milter]\nsocket = {self.socket}\nlog_file = {self.log_path}\numask = 000\n"
                f"log_level = debug\n"
                f"authserv_id = mx.listgate.test\n"
                f"[sqlite]\npath = {self.db}\n")
        if self.nameservers:
            base += f"[dns]\nnameservers = {self.nameservers}\ntimeout = 2\n"
        self.cfg_path.write_text(merge_ini(base, self.extra_config))

    def cli(self, *args: str, check: bool = True, input: bytes | None = None
            ) -> subprocess.CompletedProcess:
        """Run ``listgate -c CFG ARGS...`` (the admin CLI) and return the result."""
        r = subprocess.run([*LISTGATE, "-c", str(self.cfg_path), *args], input=input,
                           capture_output=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"listgate {' '.join(args)} failed ({r.returncode}): "
                                 f"{r.stderr.decode(errors='replace')}")
        return r

    def start(self, timeout: float = 15.0, env: dict[str, str] | None = None) -> ListgateDaemon:
        """Start the daemon; ``env``: variables added to its environment."""
        mark = self.log_size()
        # stderr to a file: a pipe nobody reads would block the daemon once full
        self.stderr_path = self.dir / "stderr.log"
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen([*LISTGATE, "serve", "-c", str(self.cfg_path)],
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         env={**os.environ, **env} if env else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.stderr_path.read_text(errors="replace")
                raise AssertionError(f"listgate exited {self.proc.returncode}: {err}"
                                     f"{self.log_text(mark)}")
            if "starting:" in self.log_text(mark) and self._listening():
                return self
            time.sleep(0.05)
        raise AssertionError(f"listgate did not start within {timeout}s: {self.log_text(mark)}")

    def _listening(self) -> bool:
        if self.transport == "unix":
            return Path(self.socket[5:]).exists()
        return infra._tcp_listening("127.0.0.1", self.port)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, as systemd would; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("listgate did not stop within 10 s of SIGTERM") from None

    def close(self) -> None:
        """Stop (asserting the clean exit SIGTERM promises) and remove the directory."""
        try:
            assert self.stop() == 0, "SIGTERM must stop listgate cleanly (exit 0)"
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, since: int = 0, timeout: float = 10.0,
                     count: int = 1) -> re.Match:
        """The ``count``-th line matching ``pattern`` after offset ``since``."""
        deadline = time.monotonic() + timeout
        while True:
            found = list(re.finditer(pattern, self.log_text(since), re.M))
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r}:\n{self.log_text(since)}")
            time.sleep(0.05)

    def check(self, *args: str, message: bytes | None = None) -> dict:
        """``listgate check`` with this daemon's config; the parsed JSON."""
        import json

        r = self.cli("check", *args, *(["-"] if message is not None else []), input=message)
        return json.loads(r.stdout)


def merge_ini(base: str, extra: str) -> str:
    """Append ``extra`` to ``base``, merging keys of sections both have."""
    import configparser

    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(base)
    cp.read_string(extra)
    lines = []
    for section in cp.sections():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {v}" for k, v in cp.items(section))
    return "\n".join(lines) + "\n"
