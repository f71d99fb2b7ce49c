"""listgate.dmarc: Mailman 3's dmarc-mitigation rule, with a fake resolver.

Answers are real dnspython messages (built, sent through the wire format and parsed
back, so RRsets are merged as a real resolver's would be); the fake resolver counts
queries and can move a fake clock to spend the time budget.
"""

from __future__ import annotations

import email.utils
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from listgate import dmarc
from listgate.dmarc import MITIGATE, NO, UNKNOWN, DmarcChecker, address_mitigated, from_address


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _txt(*strings: str) -> str:
    return " ".join('"' + s.replace('"', '\\"') + '"' for s in strings)


def answer(qname: str, *rrsets: tuple[str, str, list[str]], ttl: int = 300,
           wire: bool = True) -> dns.resolver.Answer:
    """A dnspython Answer for ``qname`` TXT with ``(owner, type, [rdata text])`` RRsets."""
    q = dns.message.make_query(qname, "TXT")
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    for owner, rdtype, rdatas in rrsets:
        rs = r.find_rrset(r.answer, dns.name.from_text(owner), dns.rdataclass.IN,
                          dns.rdatatype.from_text(rdtype), create=True, force_unique=not wire)
        rs.update_ttl(ttl)
        for text in rdatas:
            rs.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text))
    if wire:
        r = dns.message.from_wire(r.to_wire())
    return dns.resolver.Answer(dns.name.from_text(qname), dns.rdatatype.TXT,
                               dns.rdataclass.IN, r)


def dmarc_txt(qname: str, *records: str, ttl: int = 300) -> dns.resolver.Answer:
    """TXT records at ``qname`` itself, one RRset."""
    return answer(qname, (qname, "TXT", [_txt(r) for r in records]), ttl=ttl)


def nxdomain(qname: str, soa_ttl: int = 600, minimum: int = 120) -> dns.resolver.NXDOMAIN:
    q = dns.message.make_query(qname, "TXT")
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.authority.append(dns.rrset.from_text(
        "test.", soa_ttl, "IN", "SOA", f"ns.test. host.test. 1 3600 600 86400 {minimum}"))
    name = dns.name.from_text(qname)
    return dns.resolver.NXDOMAIN(qnames=[name], responses={name: r})


def nodata(qname: str) -> dns.resolver.NoAnswer:
    q = dns.message.make_query(qname, "TXT")
    r = dns.message.make_response(q)
    r.authority.append(dns.rrset.from_text(
        "test.", 60, "IN", "SOA", "ns.test. host.test. 1 3600 600 86400 60"))
    return dns.resolver.NoAnswer(response=r)


class FakeResolver:
    """``resolve(name, lifetime)`` from a table: an Answer, an exception, or a callable."""

    def __init__(self, table: dict, clock: Clock | None = None, cost: float = 0.0) -> None:
        self.table = {k.lower().rstrip("."): v for k, v in table.items()}
        self.asked: list[tuple[str, float]] = []
        self.clock, self.cost = clock, cost

    def __call__(self, name: str, lifetime: float):
        self.asked.append((name, lifetime))
        if self.clock is not None:
            self.clock.now += self.cost
        entry = self.table.get(name.lower().rstrip("."))
        if entry is None:
            raise nxdomain(name)
        if isinstance(entry, BaseException):
            raise entry
        return entry

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.asked]


def checker(table: dict, timeout: float = 5.0, **kw) -> tuple[DmarcChecker, FakeResolver]:
    clock = kw.pop("clock", None) or Clock()
    fake = FakeResolver(table, clock=clock, **kw)
    return DmarcChecker(timeout, resolve=fake, clock=clock), fake


D = "_dmarc.example.com"


# --------------------------------------------------------------------------- policies


@pytest.mark.parametrize("policy", ["reject", "quarantine", "REJECT"])
def test_reject_and_quarantine_mitigate(policy):
    c, fake = checker({D: dmarc_txt(D, f"v=DMARC1; p={policy}; rua=mailto:d@example.com")})
    a = c.mitigate("Anne <anne@example.com>", [])
    assert a.status == MITIGATE and a.mitigate
    assert D in a.reason and f"p={policy.lower()}" in a.reason
    assert fake.names == [D + "."]  # absolute: no search list
    # which one it was (Mailman 2 may spare quarantine domains)
    assert a.policy == policy.lower()


@pytest.mark.parametrize("record", ["v=DMARC1; p=none", "v=DMARC1; p=", "v=DMARC1; p=bogus",
                                    "v=DMARC1; adkim=s"])
def test_other_policies_do_not_mitigate_and_stop_looking(record):
    c, fake = checker({D: dmarc_txt(D, record)})
    a = c.mitigate("anne@mail.example.com", [])
    assert a.status == NO
    assert fake.names == ["_dmarc.mail.example.com.", D + "."]  # org domain asked...
    c, fake = checker({"_dmarc.mail.example.com": dmarc_txt("_dmarc.mail.example.com", record)})
    assert c.mitigate("anne@mail.example.com", []).status == NO
    assert fake.names == ["_dmarc.mail.example.com."]  # ...but not after a DMARC record


def test_sp_at_the_from_domain_itself_is_ignored():
    # Mailman's test_domain_with_subdomain_policy: sp= counts at the org domain only
    c, _ = checker({D: dmarc_txt(D, "v=DMARC1; sp=quarantine;")})
    assert c.mitigate("anne@example.com", []).status == NO
    c, _ = checker({D: dmarc_txt(D, "v=DMARC1; p=none; sp=reject")})
    assert c.mitigate("anne@example.com", []).status == NO


@pytest.mark.parametrize(("record", "status", "tag"), [
    ("v=DMARC1; sp=quarantine;", MITIGATE, "sp=quarantine"),  # Mailman's own test
    ("v=DMARC1; p=none; sp=reject", MITIGATE, "sp=reject"),
    ("v=DMARC1; p=reject; sp=none", NO, "sp=none"),  # sp= wins over p=
    ("v=DMARC1; p=reject", MITIGATE, "p=reject"),  # no sp=: p= applies
    ("v=DMARC1; p=none", NO, "p=none"),
])
def test_organisational_domain_sp_takes_precedence(record, status, tag):
    c, fake = checker({D: dmarc_txt(D, record)})
    a = c.mitigate("anne@sub.domain.example.com", [])
    assert a.status == status
    assert tag in a.reason and "organisational domain _dmarc.example.com" in a.reason
    assert fake.names == ["_dmarc.sub.domain.example.com.", D + "."]


def test_nxdomain_nodata_and_non_dmarc_records_keep_looking():
    sub = "_dmarc.mail.example.com"
    for first in (None,  # NXDOMAIN
                  nodata(sub),
                  dmarc_txt(sub, "v=spf1 -all"),
                  dmarc_txt(sub, "v=DMARC01; p=reject;"),  # Mailman's test_wrong_dmarc_version
                  dmarc_txt(sub, "v=DMARC1 ; p=reject"),  # exactly "v=DMARC1;"
                  dmarc_txt(sub, "v=dmarc1; p=reject")):
        table = {D: dmarc_txt(D, "v=DMARC1; p=reject")}
        if first is not None:
            table[sub] = first
        c, fake = checker(table)
        a = c.mitigate("anne@mail.example.com", [])
        assert a.status == MITIGATE, first
        assert fake.names == [sub + ".", D + "."]


def test_no_record_anywhere_is_no():
    c, fake = checker({})
    a = c.mitigate("anne@mail.example.com", [])
    assert a.status == NO and "NXDOMAIN" in a.reason
    assert len(fake.asked) == 2
    # a domain that is its own organisational domain: one name only
    c, fake = checker({})
    assert c.mitigate("anne@example.com", []).status == NO
    assert fake.names == [D + "."]


def test_organisational_domains_from_the_public_suffix_list():
    assert dmarc.organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert dmarc.organizational_domain("co.uk") == "co.uk"
    assert dmarc.organizational_domain("a.foo.ck") == "a.foo.ck"  # *.ck
    assert dmarc.organizational_domain("a.www.ck") == "www.ck"  # !www.ck
    assert dmarc.organizational_domain("a.b.x.test") == "x.test"  # unknown TLD
    c, fake = checker({})
    c.mitigate("anne@a.b.example.co.uk", [])
    assert fake.names == ["_dmarc.a.b.example.co.uk.", "_dmarc.example.co.uk."]


# --------------------------------------------------------------------------- several records


def test_two_dmarc_records_as_separate_rrsets_are_ignored():
    # what Mailman's test_multiple_records mocks: RFC 7489 says ignore them
    a = answer(D, (D, "TXT", [_txt("v=DMARC1; p=reject;")]),
               (D, "TXT", [_txt("v=DMARC1; p=none;")]), wire=False)
    c, _ = checker({D: a})
    got = c.mitigate("anne@example.com", [])
    assert got.status == NO and "2 v=DMARC1 records" in got.reason


def test_several_records_in_one_rrset_mailman_reads_one_of_them():
    # real DNS: one RRset, of which Mailman reads next(iter(rrset.items))
    c, _ = checker({D: dmarc_txt(D, "v=DMARC1; p=reject", "v=DMARC1; p=quarantine")})
    assert c.mitigate("anne@example.com", []).status == MITIGATE  # either way
    c, _ = checker({D: dmarc_txt(D, "v=DMARC1; p=none", "v=DMARC1; p=bogus")})
    assert c.mitigate("anne@example.com", []).status == NO  # either way
    c, _ = checker({D: dmarc_txt(D, "v=DMARC1; p=reject", "v=DMARC1; p=none")})
    a = c.mitigate("anne@example.com", [])
    assert a.status == UNKNOWN and "first" in a.reason
    # a non-DMARC record first sends Mailman on to the organisational domain
    sub = "_dmarc.mail.example.com"
    c, _ = checker({sub: dmarc_txt(sub, "v=DMARC1; p=reject", "google-site-verification=x"),
                    D: dmarc_txt(D, "v=DMARC1; p=quarantine")})
    assert c.mitigate("anne@mail.example.com", []).status == MITIGATE
    c, _ = checker({sub: dmarc_txt(sub, "v=DMARC1; p=reject", "google-site-verification=x")})
    assert c.mitigate("anne@mail.example.com", []).status == UNKNOWN


def test_too_many_orderings_is_unknown():
    records = [f"v=DMARC1; p=reject; x={i}" for i in range(dmarc.MAX_ORDERINGS + 1)]
    c, _ = checker({D: dmarc_txt(D, *records)})
    assert c.mitigate("anne@example.com", []).status == UNKNOWN


# --------------------------------------------------------------------------- CNAME


def test_cname_followed():
    tgt = "_dmarc.example.net"
    c, _ = checker({D: answer(D, (D, "CNAME", [tgt + "."]),
                              (tgt, "TXT", [_txt("v=DMARC1; p=reject;")]))})
    a = c.mitigate("anne@example.com", [])
    assert a.status == MITIGATE and "CNAME to _dmarc.example.net." in a.reason


def test_cname_chain_and_loop():
    net, org = "_dmarc.example.net", "_dmarc.example.org"
    chain = answer(D, (D, "CNAME", [net + "."]), (net, "CNAME", [org + "."]),
                   (org, "TXT", [_txt("v=DMARC1; p=quarantine;")]))
    c, _ = checker({D: chain})
    assert c.mitigate("anne@example.com", []).status == MITIGATE
    # Mailman's test_looping_cnames: the loop is cut where it closes
    loop = answer(D, (D, "CNAME", [org + "."]), (org, "CNAME", [D + "."]),
                  (org, "TXT", [_txt("v=DMARC1; p=reject;")]))
    c, _ = checker({D: loop})
    assert c.mitigate("anne@example.com", []).status == MITIGATE


def test_cname_whose_target_has_no_txt_in_the_answer_is_no():
    # Mailman's test_cname_wrong_txt_name: TXT for the alias, not for the target
    a = answer(D, (D, "CNAME", ["_dmarc.example.net."]),
               (D, "TXT", [_txt("v=DMARC1; p=reject;")]), wire=False)
    c, _ = checker({D: a})
    assert c.mitigate("anne@example.com", []).status == NO


def test_case_of_owner_names_and_cname_targets():
    # an owner name in upper case matches (Mailman lowercases it) ...
    up = "_dmarc.EXAMPLE.com"
    c, _ = checker({D: answer(D, (up, "TXT", [_txt("v=DMARC1; p=reject;")]))})
    assert c.mitigate("anne@example.com", []).status == MITIGATE
    # ... and so does a CNAME owner in upper case (test_uppercase_in_returned_cname)
    net = "_dmarc.example.net"
    c, _ = checker({D: answer(D, (up, "CNAME", [net + "."]),
                              (net, "TXT", [_txt("v=DMARC1; p=reject;")]))})
    assert c.mitigate("anne@example.com", []).status == MITIGATE
    # but a CNAME *target* is compared as written: Mailman misses it (a quirk kept)
    c, _ = checker({D: answer(D, (D, "CNAME", ["_dmarc.EXAMPLE.net."]),
                              (net, "TXT", [_txt("v=DMARC1; p=reject;")]), wire=False)})
    assert c.mitigate("anne@example.com", []).status == NO


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("error", [
    dns.resolver.LifetimeTimeout(timeout=1.0, errors={}),
    dns.exception.Timeout(),
    dns.resolver.NoNameservers(),
    dns.resolver.NoResolverConfiguration(),
    dns.resolver.YXDOMAIN(),
    RuntimeError("surprise"),
])
def test_dns_failure_is_unknown_never_mitigate(error):
    c, _ = checker({D: error})
    a = c.mitigate("anne@example.com", [])
    assert a.status == UNKNOWN and D in a.reason
    # also when it is the organisational domain's lookup that fails
    c, _ = checker({D: error})
    assert c.mitigate("anne@mail.example.com", []).status == UNKNOWN


def test_timeout_budget_covers_both_names():
    clock = Clock()
    c, fake = checker({D: dmarc_txt(D, "v=DMARC1; p=reject")}, timeout=2.0,
                      clock=clock, cost=2.5)
    a = c.mitigate("anne@mail.example.com", [])
    assert a.status == UNKNOWN and "time budget of 2 s" in a.reason
    assert fake.names == ["_dmarc.mail.example.com."]  # the second name never asked
    assert fake.asked[0][1] == 2.0  # the first got the whole budget


def test_second_lookup_gets_what_is_left():
    clock = Clock()
    c, fake = checker({D: dmarc_txt(D, "v=DMARC1; p=reject")}, timeout=2.0,
                      clock=clock, cost=0.5)
    assert c.mitigate("anne@mail.example.com", []).status == MITIGATE
    assert [round(t, 3) for _, t in fake.asked] == [2.0, 1.5]


def test_non_utf8_txt_is_unknown():
    q = dns.message.make_query(D, "TXT")
    r = dns.message.make_response(q)
    rs = r.find_rrset(r.answer, dns.name.from_text(D), dns.rdataclass.IN,
                      dns.rdatatype.TXT, create=True)
    rs.add(dns.rdata.from_text(dns.rdataclass.IN, "TXT", '"v=DMARC1; p=reject; x=\\255"'))
    a = dns.resolver.Answer(dns.name.from_text(D), dns.rdatatype.TXT, dns.rdataclass.IN, r)
    c, _ = checker({D: a})
    assert c.mitigate("anne@example.com", []).status == UNKNOWN


# --------------------------------------------------------------------------- caching


def test_answers_cached_for_their_ttl_errors_never():
    clock = Clock()
    c, fake = checker({D: dmarc_txt(D, "v=DMARC1; p=reject", ttl=100)}, clock=clock)
    for _ in range(3):
        assert c.mitigate("anne@example.com", []).status == MITIGATE
    assert len(fake.asked) == 1
    clock.now += 101
    assert c.mitigate("anne@example.com", []).status == MITIGATE
    assert len(fake.asked) == 2
    fake.table[D.lower()] = dns.exception.Timeout()
    clock.now += 101
    for _ in range(2):
        assert c.mitigate("anne@example.com", []).status == UNKNOWN
    assert len(fake.asked) == 4  # the failure was not kept


def test_negative_answers_cached_per_rfc2308_and_bounded():
    clock = Clock()
    c, fake = checker({}, clock=clock)
    fake.table["_dmarc.mail.example.com"] = nxdomain("_dmarc.mail.example.com",
                                                     soa_ttl=600, minimum=120)
    fake.table[D] = nxdomain(D, soa_ttl=100000, minimum=100000)
    c.mitigate("anne@mail.example.com", [])
    c.mitigate("anne@mail.example.com", [])
    assert len(fake.asked) == 2
    clock.now += 121  # min(SOA TTL, minimum) = 120 s for the first name ...
    c.mitigate("anne@mail.example.com", [])
    assert fake.names[2:] == ["_dmarc.mail.example.com."]
    clock.now += 3600  # ... and at most an hour for the second
    c.mitigate("anne@mail.example.com", [])
    assert fake.names[3:] == ["_dmarc.mail.example.com.", D + "."]


def test_cache_bounded():
    c = DmarcChecker(5.0, cache_size=2, resolve=FakeResolver({}))
    for i in range(5):
        c.policy(f"d{i}.example.com")
    assert len(c.cache) == 2


def test_shared_by_threads():
    c, fake = checker({D: dmarc_txt(D, "v=DMARC1; p=reject")})
    results: list[str] = []

    def work() -> None:
        for _ in range(200):
            results.append(c.mitigate("anne@example.com", []).status)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [MITIGATE] * 1600
    assert 1 <= len(fake.asked) <= 8


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(("value", "address"), [
    ("Anne Person <anne@example.com>", "anne@example.com"),
    ("anne@example.com (Anne)", "anne@example.com"),
    ('"a@b" <x@example.com>', "x@example.com"),
    ("anne", "anne"),
    ("", ""),
    (None, ""),
])
def test_from_address_is_mailmans_parseaddr(value, address):
    assert from_address(value) == address


def test_two_from_addresses_are_what_this_pythons_parseaddr_makes_of_them():
    # Mailman runs parseaddr(str(msg.get('from'))): on Python 3.11.7 the first address,
    # on security-patched Pythons (3.11.10+, Debian's 3.11.2) '' for two addresses
    value = "Anne <anne@example.com>,\n\tBob <bob@example.org>"
    assert from_address(value) == email.utils.parseaddr(value)[1]
    assert from_address(value) in ("anne@example.com", "")


def test_no_at_sign_or_no_from_is_no():
    c, fake = checker({})
    assert c.mitigate("anne", []).status == NO  # Mailman's test_no_at_sign_in_from_address
    assert c.mitigate(None, []).status == NO
    assert c.mitigate("", []).status == NO
    assert c.mitigate("anne@", []).status == NO  # parseaddr gives ''
    assert fake.asked == []


def test_quoted_local_part_with_at_uses_the_last_at():
    c, fake = checker({})
    c.mitigate('"a@b.example.org"@example.com', [])
    assert fake.names == [D + "."]


def test_from_address_case_does_not_matter():
    c, fake = checker({D: dmarc_txt(D, "v=DMARC1; p=reject")})
    assert c.mitigate("Anne <ANNE@EXAMPLE.COM>", []).status == MITIGATE
    assert fake.names == [D + "."]


def test_dmarc_addresses_exact_and_regexp():
    assert address_mitigated("Anne@Example.COM", ["anne@example.com"])
    assert address_mitigated("anne@example.com", ["ANNE@example.com"])
    assert not address_mitigated("anne@example.com", ["bob@example.com"])
    assert address_mitigated("anne@Example.com", ["^.*@example\\.com$"])
    assert address_mitigated("anne@example.com", ["^.*@EXAMPLE\\.COM$"])  # re.I
    assert not address_mitigated("anne@example.org", ["^.*@example\\.com$"])
    # without ^ it is not a regexp: compared as a whole address
    assert not address_mitigated("anne@example.com", [".*@example\\.com"])
    # re.search, not match: a pattern that starts with ^ is anchored anyway
    assert address_mitigated("x.anne@example.com", ["^(?!bob)"])
    with pytest.raises(dmarc.re.error):
        address_mitigated("anne@example.com", ["^(unclosed"])
    assert address_mitigated("anne@example.com", ["anne@example.com", "^(unclosed"])


def test_dmarc_addresses_need_no_dns():
    c, fake = checker({})
    a = c.mitigate("Anne <ANNE@example.org>", ["^[a-z]+@example\\.org$"])
    assert a.status == MITIGATE and "dmarc_addresses" in a.reason
    a = c.mitigate("anne@example.org", ["Anne@Example.org"])
    assert a.status == MITIGATE
    assert fake.asked == []
    a = c.mitigate("anne@example.org", ["^(bad"])
    assert a.status == UNKNOWN and "regexp" in a.reason


# --------------------------------------------------------------------------- odd domains


@pytest.mark.parametrize("value", ["anne@example.com.", "anne@a..example.com",
                                   "anne@[192.0.2.1]", "anne@" + "x" * 64 + ".com"])
def test_not_a_domain_is_unknown_without_dns(value):
    c, fake = checker({})
    # where this Python's parseaddr finds no address at all, it is simply "no"
    want = UNKNOWN if email.utils.parseaddr(value)[1] else NO
    assert c.mitigate(value, []).status == want
    assert fake.asked == []


def test_unicode_domain_is_asked_as_mailman_asks_it():
    # Mailman wants the name "_dmarc.bücher.example." literally; dnspython's answer
    # names are A-labels, so a record there never matches: not mitigated
    name = "_dmarc.xn--bcher-kva.example"
    c, fake = checker({"_dmarc.bücher.example": dmarc_txt(name, "v=DMARC1; p=reject")})
    assert c.mitigate("anne@bücher.example", []).status == NO
    assert fake.names == ["_dmarc.bücher.example."]
