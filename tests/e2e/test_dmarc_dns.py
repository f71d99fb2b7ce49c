"""listgate.dmarc against a real dnsmasq, and against Mailman 3's own rule.

DmarcChecker asks through dnspython's default resolver as
``listgate.spfcheck.configure_dns`` sets it up.  The same records are then put to
Mailman 3.3.10's ``mailman.rules.dmarc`` (its venv's Python, in a subprocess running
``mm3_dmarc.py``): wherever listgate says "mitigate" or "no", Mailman must say the
same; the differences are the documented ones (DNS failure, record order, A-label
suffix rules).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import dns.resolver
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mailman3

from listgate.dmarc import MITIGATE, NO, UNKNOWN, DmarcChecker
from listgate.spfcheck import configure_dns

TXT = {
    "_dmarc.reject.test": "v=DMARC1; p=reject; rua=mailto:dmarc@reject.test",
    "_dmarc.quarantine.test": "v=DMARC1; p=quarantine",
    "_dmarc.none.test": "v=DMARC1; p=none",
    "_dmarc.sp.test": "v=DMARC1; p=none; sp=reject",
    "_dmarc.spnone.test": "v=DMARC1; p=reject; sp=none",
    "_dmarc.spf.test": "v=spf1 -all",
    "_dmarc.mail.withspf.test": "v=spf1 -all",
    "_dmarc.withspf.test": "v=DMARC1; p=quarantine",
    "_dmarc.two.test": ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
    "_dmarc.tworeject.test": ["v=DMARC1; p=reject", "v=DMARC1; p=quarantine"],
    # a public suffix (IDN, A-label) that publishes a policy: see the last test
    "_dmarc.xn--55qx5d.cn": "v=DMARC1; p=reject",
}
CNAME = {"_dmarc.alias.test": "_dmarc.reject.test"}

#: From header value -> what listgate must say
EXPECTED = {
    "Anne <anne@reject.test>": MITIGATE,
    "Upper <ANNE@REJECT.TEST>": MITIGATE,
    "anne@quarantine.test": MITIGATE,
    "anne@none.test": NO,
    "anne@mail.none.test": NO,  # organisational domain p=none
    "anne@mail.reject.test": MITIGATE,  # organisational domain p=reject, no sp=
    "anne@sp.test": NO,  # sp= is for subdomains only
    "anne@a.mail.sp.test": MITIGATE,  # sp=reject
    "anne@spnone.test": MITIGATE,
    "anne@mail.spnone.test": NO,  # sp=none wins over p=reject
    "anne@alias.test": MITIGATE,  # CNAME to _dmarc.reject.test
    "anne@mail.alias.test": MITIGATE,  # the organisational domain's CNAME
    "anne@nothing.test": NO,  # NXDOMAIN, its own organisational domain
    "anne@a.b.nothing.test": NO,
    "anne@spf.test": NO,  # no v=DMARC1 record
    "anne@mail.withspf.test": MITIGATE,  # not DMARC there: organisational domain
    "anne@tworeject.test": MITIGATE,  # whichever record Mailman reads
    "anne@two.test": UNKNOWN,  # depends on which record Mailman's resolver lists first
    "anne": NO,
}


@pytest.fixture(scope="module")
def dmarc_dns(dns_factory):
    server = dns_factory(txt=TXT, cname=CNAME, zones=("test", "cn"))
    saved = dns.resolver.default_resolver
    configure_dns([("127.0.0.1", server.port)], 2)
    yield server
    dns.resolver.default_resolver = saved


def test_policies_through_the_configured_resolver(dmarc_dns):
    checker = DmarcChecker(timeout=2)
    got = {value: checker.mitigate(value, []) for value in EXPECTED}
    assert {v: a.status for v, a in got.items()} == EXPECTED
    assert "p=reject" in got["anne@mail.reject.test"].reason
    assert "sp=reject" in got["anne@a.mail.sp.test"].reason
    assert "CNAME to _dmarc.reject.test." in got["anne@alias.test"].reason


def test_dmarc_addresses_decide_without_dns(dmarc_dns):
    checker = DmarcChecker(timeout=2)
    assert checker.mitigate("anne@none.test", ["^.*@none\\.test$"]).status == MITIGATE
    assert checker.mitigate("anne@none.test", ["ANNE@none.test"]).status == MITIGATE


def test_answers_cached_for_their_ttl(dns_factory):
    server = dns_factory(txt=TXT, ttl=2, log_queries=True)
    saved = dns.resolver.default_resolver
    configure_dns([("127.0.0.1", server.port)], 2)
    try:
        checker = DmarcChecker(timeout=2)
        for _ in range(3):
            assert checker.mitigate("anne@reject.test", []).status == MITIGATE
            assert checker.mitigate("anne@nothing.test", []).status == NO
        asked = server.queries()
        assert asked.count(("TXT", "_dmarc.reject.test")) == 1
        assert asked.count(("TXT", "_dmarc.nothing.test")) == 1  # negative answers too
        time.sleep(2.2)  # the records' TTL
        checker.mitigate("anne@reject.test", [])
        assert server.queries().count(("TXT", "_dmarc.reject.test")) == 2
    finally:
        dns.resolver.default_resolver = saved


@pytest.fixture
def silent_dns():
    """A UDP socket on loopback that receives queries and never answers."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    saved = dns.resolver.default_resolver
    yield silent.getsockname()[1]
    dns.resolver.default_resolver = saved
    silent.close()


@pytest.mark.parametrize("value", ["anne@reject.test", "anne@a.b.mail.reject.test"])
def test_silent_server_is_unknown_within_the_budget(silent_dns, value):
    budget = 1.5
    configure_dns([("127.0.0.1", silent_dns)], budget)
    checker = DmarcChecker(timeout=budget)
    start = time.monotonic()
    answer = checker.mitigate(value, [])
    elapsed = time.monotonic() - start
    assert answer.status == UNKNOWN and "timeout" in answer.reason.lower()
    assert elapsed < budget + 1
    # never cached: the next post asks again (and is bounded again)
    start = time.monotonic()
    assert checker.mitigate(value, []).status == UNKNOWN
    assert time.monotonic() - start < budget + 1


# --------------------------------------------------------------------------- Mailman


def _suffix_list_file() -> str:
    try:
        import publicsuffixlist
    except ImportError:
        from listgate._vendor import publicsuffixlist
    return os.path.join(os.path.dirname(publicsuffixlist.__file__), "public_suffix_list.dat")


def _mailman_answers(port: int, values: list[str], timeout: float = 1.0) -> dict[str, bool]:
    python = mailman3.default_mailman_bin().parent / "python"
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mm3_dmarc.py")
    run = subprocess.run([str(python), script, str(port), _suffix_list_file(), str(timeout)],
                         input=json.dumps(values), capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_mailman_agrees(dmarc_dns):
    mm = _mailman_answers(dmarc_dns.port, list(EXPECTED))
    for value, status in EXPECTED.items():
        if status != UNKNOWN:
            assert mm[value] == (status == MITIGATE), value
    # dnsmasq lists "p=none" first and Mailman reads only that one
    assert mm["anne@two.test"] is False


def test_mailman_mitigates_on_timeout_listgate_does_not(silent_dns):
    value = "anne@reject.test"
    assert _mailman_answers(silent_dns, [value]) == {value: True}
    configure_dns([("127.0.0.1", silent_dns)], 1.0)
    assert DmarcChecker(timeout=1.0).mitigate(value, []).status == UNKNOWN


def test_known_difference_a_label_suffix_rules(dmarc_dns):
    # Mailman's list holds 公司.cn in Unicode only, so for an A-label domain it takes
    # xn--55qx5d.cn as the organisational domain and reads that suffix's record;
    # publicsuffixlist knows xn--55qx5d.cn is a public suffix
    value = "anne@a.b.xn--55qx5d.cn"
    assert _mailman_answers(dmarc_dns.port, [value]) == {value: True}
    answer = DmarcChecker(timeout=2).mitigate(value, [])
    assert answer.status == NO and "_dmarc.b.xn--55qx5d.cn" in answer.reason
