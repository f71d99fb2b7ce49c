"""pytest fixtures for a real Mailman 3.3.10 (see ``mailman3.py``).

Import them into a conftest or a test module (``from mm3_fixtures import *``, or by
name)::

``mailman3`` (session)
    a started :class:`mailman3.Mailman3` with its own :class:`infra.SmtpSink`, shared
    by the whole session (use unique list names per test: ``mm3_new_list``). First runs
    ``scripts/install-mailman3.sh`` (idempotent; ~0.1 s when already installed). If
    Mailman cannot be installed or started, every test using it FAILS (never skips)
    with the script's output or Mailman's log tail.
``mm3_new_list`` (function)
    ``mm3_new_list(name=None, domain="lists.test", *, probe_member=True, **settings)
    -> "name@domain"``: a new list on the session Mailman (name unique per session
    when not given), with *settings* PATCHed into its config.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import infra
from mailman3 import Mailman3, Mailman3Error

__all__ = ["install_mailman3", "mailman3", "mm3_new_list"]

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-mailman3.sh"

_list_counter = itertools.count(1)


def install_mailman3(timeout: float = 900) -> None:
    """Run scripts/install-mailman3.sh; ``pytest.fail`` with its output if it fails."""
    try:
        res = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"{INSTALL_SCRIPT} could not run: {exc}", pytrace=False)
    if res.returncode != 0:
        out = res.stdout.decode("utf-8", "replace")[-6000:]
        pytest.fail(
            f"{INSTALL_SCRIPT} failed (exit {res.returncode}); Mailman 3 is needed by "
            f"these tests:\n{out}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def mailman3():
    """A started real Mailman 3.3.10 (own SMTP sink), stopped at the end of the session."""
    install_mailman3()
    mm = Mailman3()
    try:
        mm.start()
    except (Mailman3Error, infra.InfraError, OSError) as exc:
        mm.stop()
        pytest.fail(f"Mailman 3 did not start: {exc}", pytrace=False)
    yield mm
    mm.stop()


@pytest.fixture
def mm3_new_list(mailman3):
    """Factory: ``mm3_new_list(name=None, domain="lists.test", **settings) -> fqdn``."""

    def make(
        name: str | None = None,
        domain: str = "lists.test",
        *,
        probe_member: bool = True,
        **settings: object,
    ) -> str:
        if name is None:
            name = f"list{next(_list_counter)}"
        fqdn = f"{name}@{domain}"
        mailman3.create_list(fqdn, probe_member=probe_member, **settings)
        return fqdn

    return make
