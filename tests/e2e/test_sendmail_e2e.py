"""Every scenario of test_postfix.py, through a real sendmail instead of Postfix.

smtplib -> sendmail (Debian's, unpacked by scripts/install-sendmail.sh; its milter
lines read from README.md) -> listgate -> smtp-sink, SPF from dnsmasq. The scenarios
are imported, so they assert the same replies, headers and log lines; only the
``mta_factory`` fixture differs. Below them, what is sendmail's own: the README's
lines in the sendmail.cf built from them, F=T, and the macros listgate reads.
"""

from __future__ import annotations

from sendmail_mta import sendmail_factory as mta_factory  # noqa: F401 - overrides conftest's
from test_postfix import *  # noqa: F403 - the scenarios (test_*) and their fixtures
