"""pytest fixtures for listgate's end-to-end tests: real dnsmasq, smtp-sink and Postfix.

The servers themselves are in ``infra.py`` (importable as ``infra`` from tests in this
directory). Fixtures:

``dns_factory`` (session)
    ``dns_factory(txt=None, a=None, ptr=None, mx=None, *, zones=...) -> DnsServer``:
    starts a dnsmasq with those records (see :class:`infra.DnsServer`); every server
    made is stopped at the end of the session.
``dns_records`` (session) / ``dns_server`` (session)
    ``dns_server`` is ``dns_factory(**dns_records)``; override ``dns_records`` (a dict
    of DnsServer keyword arguments, default ``{}``) in a conftest or test module to
    give it zone data. ``dns_server.restart(txt=...)`` changes records, same port.
``smtp_sink`` (function; one session-wide sink behind it)
    the :class:`infra.SmtpSink` Postfix relays to, cleared before each test.
``relay_domains`` (session)
    the domains a Postfix instance relays by default: ``["lists.test"]``; override it.
``postfix_factory`` (function)
    ``postfix_factory(milter=None, extra=None, *, relay_domains=None, sink=None,
    **kwargs) -> PostfixInstance``: a started private Postfix relaying to ``smtp_sink``
    (or *sink*), ``smtpd_milters = milter``, *extra* main.cf settings. Stopped (and its
    files removed) when the test ends; if the test failed, the tail of its maillog is
    printed (shown under "Captured stdout teardown").
``session_postfix_factory`` (session)
    the same, but instances live until the end of the session (for module- or
    session-scoped fixtures that share one instance between tests).
``mta_factory`` (module) / ``mta`` (module)
    ``mta_factory(daemon, ipv6=False)``: a session Postfix relaying lists.test and
    elsewhere.test to the sink with the :class:`lgdaemon.ListgateDaemon` ``daemon`` as
    its milter; ``mta`` is ``mta_factory(daemon)`` for the module's ``daemon`` fixture.
    Scenarios written against these two run through sendmail too: the
    test_sendmail_*.py modules import them and override ``mta_factory`` with:
``sendmail_factory`` (module)
    the same interface; the MTA is a private sendmail (see ``sendmail_mta.py``).

Missing tools make every test here FAIL (never skip) with a message naming them.
"""

from __future__ import annotations

import os
import pwd
import sys

import pytest

# Make `import infra` work whatever pytest's import mode (tests here do it too).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import infra
import sendmail_mta
from mm3_fixtures import mailman3, mm3_new_list  # noqa: F401 - fixtures for every e2e test


def _missing_requirements() -> list[str]:
    problems = []
    for tool in ("dnsmasq", "smtp-sink", "postfix", "postconf", "postqueue"):
        try:
            infra.find_tool(tool)
        except infra.InfraError:
            problems.append(f"program {tool!r} not found")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        problems.append("user 'postfix' does not exist")
    try:
        import dns.resolver  # noqa: F401
    except ImportError:
        problems.append("python package 'dnspython' is not installed in this environment")
    if os.geteuid() != 0:
        problems.append("the e2e tests must run as root (postfix start, smtp-sink -u postfix)")
    return problems


@pytest.fixture(scope="session", autouse=True)
def e2e_requirements() -> None:
    """Fail (not skip) every e2e test, with one clear message, if a tool is missing."""
    problems = _missing_requirements()
    if problems:
        pytest.fail(
            "e2e test requirements missing: " + "; ".join(problems) + f". {infra.INSTALL_HINT}",
            pytrace=False,
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the item (``item.rep_call`` ...) for teardown."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _test_failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    setup = getattr(request.node, "rep_setup", None)
    return bool((rep is not None and rep.failed) or (setup is not None and setup.failed))


# --------------------------------------------------------------------------- DNS


@pytest.fixture(scope="session")
def dns_factory():
    """Factory: ``dns_factory(txt=..., a=..., ptr=..., mx=...) -> started DnsServer``."""
    servers: list[infra.DnsServer] = []

    def make(txt=None, a=None, ptr=None, mx=None, **kwargs) -> infra.DnsServer:
        server = infra.DnsServer(txt, a, ptr, mx, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def dns_records() -> dict:
    """Keyword arguments for the session ``dns_server``; override to add zone data."""
    return {}


@pytest.fixture(scope="session")
def dns_server(dns_factory, dns_records) -> infra.DnsServer:
    """A session-wide dnsmasq serving ``dns_records``."""
    return dns_factory(**dns_records)


# --------------------------------------------------------------------------- sink


@pytest.fixture(scope="session")
def smtp_sink_session():
    """The session-wide smtp-sink (not cleared between tests: prefer ``smtp_sink``)."""
    sink = infra.SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def smtp_sink(smtp_sink_session) -> infra.SmtpSink:
    """The session-wide smtp-sink, emptied before the test."""
    smtp_sink_session.clear()
    return smtp_sink_session


# --------------------------------------------------------------------------- Postfix


@pytest.fixture(scope="session")
def relay_domains() -> list[str]:
    """Domains Postfix instances relay by default (override to change)."""
    return ["lists.test"]


class _PostfixFactory:
    def __init__(self, default_sink: infra.SmtpSink, default_domains: list[str]) -> None:
        self.default_sink = default_sink
        self.default_domains = default_domains
        self.instances: list[infra.PostfixInstance] = []

    def __call__(
        self,
        milter=None,
        extra=None,
        *,
        relay_domains=None,
        sink: infra.SmtpSink | None = None,
        **kwargs,
    ) -> infra.PostfixInstance:
        pf = infra.PostfixInstance(
            relay_domains if relay_domains is not None else self.default_domains,
            (sink or self.default_sink).port,
            milters=milter,
            extra=extra,
            **kwargs,
        )
        self.instances.append(pf)
        return pf.start()

    def close(self, show_logs: bool = False) -> None:
        if show_logs:
            for pf in self.instances:
                print(f"---- maillog of {pf!r} ({pf.log_path}) ----")
                print(pf.log_text()[-6000:])
        infra.stop_instances(self.instances)
        self.instances.clear()


@pytest.fixture
def postfix_factory(smtp_sink, relay_domains, request):
    """Factory: ``postfix_factory(milter=None, extra=None, *, relay_domains=None,
    sink=None, **PostfixInstance_kwargs) -> started PostfixInstance``, stopped after
    the test."""
    factory = _PostfixFactory(smtp_sink, relay_domains)
    yield factory
    factory.close(show_logs=_test_failed(request))


@pytest.fixture(scope="session")
def session_postfix_factory(smtp_sink_session, relay_domains):
    """Like ``postfix_factory`` but instances live until the end of the session."""
    factory = _PostfixFactory(smtp_sink_session, relay_domains)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def mta_factory(session_postfix_factory):
    """``mta_factory(daemon, ipv6=False)``: a started MTA (has ``.port``) asking
    ``daemon``; a Postfix here, sendmail where test_sendmail_*.py override it."""
    def make(daemon, *, ipv6: bool = False) -> infra.PostfixInstance:
        return session_postfix_factory(milter=daemon.postfix_milter, ipv6=ipv6,
                                       relay_domains=["lists.test", "elsewhere.test"])
    return make


@pytest.fixture(scope="module")
def mta(daemon, mta_factory):
    """The module's MTA in front of the module's ``daemon`` fixture."""
    return mta_factory(daemon)


@pytest.fixture(scope="module")
def sendmail_factory(smtp_sink_session):
    """Like ``mta_factory``, but each MTA is a private sendmail (sendmail_mta.py) built
    from README.md's sendmail lines; stopped with the module. Fails, never skips,
    when sendmail is not unpacked."""
    problems = sendmail_mta.missing_requirements()
    if problems:
        pytest.fail("sendmail e2e requirements missing: " + "; ".join(problems), pytrace=False)
    instances: list[sendmail_mta.SendmailInstance] = []

    def make(daemon, *, ipv6: bool = False) -> sendmail_mta.SendmailInstance:
        sm = sendmail_mta.SendmailInstance(daemon.socket, smtp_sink_session.port,
                                           ["lists.test", "elsewhere.test"], ipv6=ipv6)
        instances.append(sm)
        return sm.start()

    yield make
    for sm in instances:
        sm.stop()
