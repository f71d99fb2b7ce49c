"""The decision engine stage by stage, with a dict-backed backend and a scripted SPF.

These are unit tests of pure logic; the real backend, DNS and MTA are exercised by
the protocol and end-to-end tests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from listgate import config
from listgate.engine import CONTINUE, REJECT, TEMPFAIL, Engine, Session
from listgate.model import Backend, BackendError, HeaderMatch, ListFacts, ListPolicy, SenderFacts
from listgate.spfcheck import SpfResult

LIST = "dev@lists.test"
OTHER = "ops@lists.test"


class DictBackend(Backend):
    name = "dict"

    def __init__(self) -> None:
        self.policies = {LIST: ListPolicy(LIST), OTHER: ListPolicy(OTHER)}
        self.members: dict[str, dict[str, str | None]] = {LIST: {"m@x.org": None}, OTHER: {}}
        self.broken = False
        self.calls = 0

    def lists(self) -> list[str]:
        return sorted(self.policies)

    def find_list(self, address: str) -> str | None:
        if self.broken:
            raise BackendError("sqlite /nope: unable to open database file")
        return address if address in self.policies else None

    def list_facts(self, list_address: str, senders: Sequence[str], primary: str = "",
                   max_age: float | None = None) -> ListFacts:
        self.calls += 1
        if self.broken:
            raise BackendError("sqlite /nope: unable to open database file")
        m = self.members[list_address]
        return ListFacts(self.policies[list_address], tuple(
            SenderFacts(s, is_member=s in m, member_action=m.get(s)) for s in senders))


class ScriptedSpf:
    """``result`` for the MAIL FROM identity, ``helo_result`` for the HELO identity."""

    def __init__(self, result: str = "pass", helo_result: str = "none") -> None:
        self.result = result
        self.helo_result = helo_result
        self.calls: list[tuple[str, str, str]] = []
        self.receivers: list[str | None] = []

    def check(self, ip: str, sender: str, helo: str, receiver: str | None = None) -> SpfResult:
        self.calls.append((ip, sender, helo))
        self.receivers.append(receiver)
        result = self.result if sender else self.helo_result
        return SpfResult(result, "mailfrom" if sender else "helo", "explained %",
                         f"{result.capitalize()} (test) client-ip={ip}")


def make(cfgtext: str = "", spf: str = "pass", dyn: bool = False,
         backend: DictBackend | None = None, helo_spf: str = "none",
         ) -> tuple[Engine, DictBackend, ScriptedSpf]:
    cfg = config.parse("[network]\ninternal_connect = 10.0.0.0/8\n" + cfgtext, "t.cfg")
    b = backend or DictBackend()
    s = ScriptedSpf(spf, helo_spf)
    return Engine(cfg, b, s, lambda host, ip: dyn), b, s  # type: ignore[arg-type]


def external(engine: Engine, helo: str | None = "mail.x.org", ip: str = "192.0.2.1",
             host: str = "mail.x.org") -> Session:
    s = engine.session("1")
    s.connect(host, ip)
    if helo is not None:
        s.helo(helo)
    return s


def post(s: Session, frm: str, rcpt: str = LIST, mail_from: str = "bounce@x.org"):
    assert s.mail(mail_from).action == CONTINUE
    assert s.rcpt(rcpt).action == CONTINUE
    s.header("From", frm)
    s.header("To", rcpt)  # an explicit destination and a Subject: Mailman holds posts
    s.header("Subject", "a post")  # without them (implicit-dest, no-subject)
    return s.eom()


# -- connection classes ------------------------------------------------------------------

@pytest.mark.parametrize(("host", "ip", "cfg", "dyn", "cls"), [
    ("gw.x.org", "10.1.2.3", "", False, ["INTERNAL"]),
    ("mail.x.org", "192.0.2.1", "", False, ["EXTERNAL"]),
    ("[192.0.2.1]", "192.0.2.1", "", False, ["EXTERNAL", "DYN"]),
    ("unknown", "192.0.2.1", "", False, ["EXTERNAL", "DYN"]),
    ("dsl-1-2-3-4.isp.net", "192.0.2.1", "", True, ["EXTERNAL", "DYN"]),
    ("relay.x.org", "192.0.2.1", "trusted_relay = 192.0.2.0/24\n", False,
     ["EXTERNAL", "TRUSTED"]),
    ("v6.x.org", "2001:db8::1", "trusted_relay = 2001:db8::/32\n", False,
     ["EXTERNAL", "TRUSTED"]),
    ("m.x.org", "::ffff:10.0.0.5", "", False, ["INTERNAL"]),
    ("localhost", None, "", False, ["INTERNAL"]),
])
def test_classification(host: str, ip: str | None, cfg: str, dyn: bool, cls: list[str]) -> None:
    engine, _, _ = make(cfg, dyn=dyn)
    s = engine.session("1")
    s.connect(host, ip)
    assert s.client_class == cls


def test_localhost_ptr_from_outside_rejected_at_mail() -> None:
    engine, _, _ = make()
    s = external(engine, host="localhost")
    d = s.mail("a@x.org")
    assert d.action == REJECT and str(d.reply).startswith("550 5.7.1")
    assert s.stage == "connect"


# -- HELO -----------------------------------------------------------------------------------

@pytest.mark.parametrize("helo", ["192.0.2.1", "2001:db8::1", " 10.0.0.1 "])
def test_numeric_helo_rejected(helo: str) -> None:
    engine, _, _ = make()
    s = external(engine, helo=helo)
    d = s.mail("a@x.org")
    assert (d.action, d.reply.code, d.reply.xcode) == (REJECT, "550", "5.7.1")
    assert "numeric hello" in d.reasons[0] and s.stage == "helo"


def test_address_literal_helo_is_fine() -> None:
    engine, _, _ = make()
    assert external(engine, helo="[192.0.2.1]").mail("a@x.org").action == CONTINUE


def test_hello_blacklist_and_subdomains() -> None:
    engine, _, _ = make("hello_blacklist = lists.test\n")
    d = external(engine, helo="mx.LISTS.test").mail("a@x.org")
    assert d.action == REJECT and "spam from self" in d.reasons[0]


def test_no_helo_rejected_at_mail_but_internal_and_auth_exempt() -> None:
    engine, _, _ = make()
    d = external(engine, helo=None).mail("a@x.org")
    assert d.action == REJECT and d.reasons == ("no HELO before MAIL FROM",)
    s = engine.session("2")
    s.connect("gw", "10.0.0.1")
    assert s.mail("a@x.org").action == CONTINUE
    s = external(engine, helo="192.0.2.1")
    assert s.mail("a@x.org", auth_user="alice").action == CONTINUE
    assert s.client_class == ["INTERNAL"]


# -- MAIL FROM --------------------------------------------------------------------------------

def test_internal_domain_forgery_and_foreign_internal() -> None:
    engine, _, _ = make("internal_domains = x.org\nreject_foreign_internal = yes\n")
    d = external(engine).mail("ceo@sub.x.org")
    assert d.action == REJECT and "internal domain" in d.reasons[0]
    s = engine.session("2")
    s.connect("gw", "10.0.0.1")
    d = s.mail("spam@elsewhere.net")
    assert d.action == REJECT and "foreign domain" in d.reasons[0]


def test_foreign_internal_only_logged_by_default(caplog: pytest.LogCaptureFixture) -> None:
    engine, _, _ = make("internal_domains = x.org\n")
    s = engine.session("2")
    s.connect("gw", "10.0.0.1")
    assert s.mail("spam@elsewhere.net").action == CONTINUE
    assert "possibly compromised" in caplog.text


@pytest.mark.parametrize(("result", "action", "code"), [
    ("pass", CONTINUE, None), ("softfail", CONTINUE, None), ("neutral", CONTINUE, None),
    ("none", CONTINUE, None), ("fail", REJECT, "550 5.7.23"),
    ("permerror", REJECT, "550 5.7.24"), ("temperror", TEMPFAIL, "451 4.7.24"),
])
def test_spf_default_policy(result: str, action: str, code: str | None) -> None:
    engine, _, _ = make(spf=result)
    d = external(engine).mail("a@x.org")
    assert d.action == action
    assert (str(d.reply)[:10] if d.reply else None) == code


def test_spf_policy_configurable_and_null_sender_uses_helo() -> None:
    engine, _, spf = make("[spf]\nsoftfail = tempfail\nfail = accept\n", helo_spf="softfail")
    s = external(engine)
    d = s.mail("<>")
    assert d.action == TEMPFAIL and str(d.reply).startswith("451 4.7.1 SPF softfail")
    assert spf.calls == [("192.0.2.1", "", "mail.x.org")]
    engine, _, _ = make("[spf]\nfail = accept\n", spf="fail")
    assert external(engine).mail("a@x.org").action == CONTINUE


def test_spf_skipped_for_internal_and_trusted() -> None:
    engine, _, spf = make("trusted_relay = 192.0.2.0/24\n", spf="fail")
    assert external(engine).mail("a@x.org").action == CONTINUE
    s = engine.session("2")
    s.connect("gw", "10.0.0.1")
    assert s.mail("a@x.org").action == CONTINUE
    assert spf.calls == []


# -- RCPT ---------------------------------------------------------------------------------------

def test_one_list_per_transaction() -> None:
    engine, _, _ = make()
    s = external(engine)
    s.mail("a@x.org")
    assert s.rcpt("<Dev@Lists.Test>").action == CONTINUE
    assert s.rcpts[0].list == LIST
    for r in (OTHER, "person@x.org", "dev-request@lists.test"):
        d = s.rcpt(r)
        assert d.action == TEMPFAIL
        assert str(d.reply) == "452 4.5.3 Please send each list post in a separate transaction"
    s = external(engine)
    s.mail("a@x.org")
    assert s.rcpt("person@x.org").action == CONTINUE
    assert s.rcpt("dev-owner@lists.test").action == CONTINUE
    assert s.rcpt(LIST).action == TEMPFAIL


def test_several_lists_when_allowed_any_refusal_refuses() -> None:
    engine, _, _ = make("[lists]\none_list_per_transaction = no\n")
    s = external(engine)
    s.mail("a@x.org")
    assert s.rcpt(LIST).action == CONTINUE
    assert s.rcpt(OTHER).action == CONTINUE
    s.header("From", "m@x.org")
    r = s.eom()
    assert r.decision.action == REJECT and r.list_address == OTHER
    assert str(r.decision.reply) == (
        "550 5.7.2 You are not permitted to post to ops@lists.test."
        " Contact ops-owner@lists.test for help.")


def test_backend_error_at_rcpt_tempfails_or_fails_open() -> None:
    b = DictBackend()
    b.broken = True
    engine, _, _ = make(backend=b)
    s = external(engine)
    s.mail("a@x.org")
    d = s.rcpt(LIST)
    assert d.action == TEMPFAIL and str(d.reply).startswith("451 4.3.0")
    engine, _, _ = make("[lists]\non_backend_error = accept\n", backend=b)
    s = external(engine)
    s.mail("a@x.org")
    assert s.rcpt(LIST).action == CONTINUE


# -- end of message ---------------------------------------------------------------

def test_member_accepted_with_received_spf_first() -> None:
    engine, _, _ = make()
    r = post(external(engine), "Member <M@X.org>")
    assert r.decision.action == CONTINUE and r.list_verdict.action == "accept"
    # both inserted at index 0 in this order: Received-SPF ends up as the first header
    assert r.add_headers == [
        ("Authentication-Results", "localhost; spf=pass smtp.mailfrom=x.org", 0),
        ("Received-SPF", "Pass (test) client-ip=192.0.2.1", 0)]


def test_nonmember_rejected_with_template_and_sanitised_values() -> None:
    engine, _, _ = make("[lists]\nreject_message = No %(sender)s on %(list)s, 100%% sure\n")
    r = post(external(engine), '"x" <evil%\r\n250@x.org>')
    assert r.decision.action == REJECT
    assert str(r.decision.reply).startswith("550 5.7.2 No ")
    assert "\r" not in str(r.decision.reply) and "100% sure" in str(r.decision.reply)


@pytest.mark.parametrize(("cfg", "action", "code"), [
    ("", REJECT, "550 5.7.2"),
    ("[lists]\nnonmember_hold_action = accept\n", CONTINUE, None),
    ("[lists]\nnonmember_hold_action = tempfail\n", TEMPFAIL, "451 4.7.2"),
    (f"[list:{LIST}]\nnonmember_hold_action = accept\n", CONTINUE, None),
])
def test_nonmember_hold_action(cfg: str, action: str, code: str | None) -> None:
    engine, _, _ = make(cfg)
    r = post(external(engine), "stranger@y.org")
    assert r.decision.action == action
    assert (str(r.decision.reply)[:9] if r.decision.reply else None) == code


@pytest.mark.parametrize(("cfg", "action"), [
    ("", CONTINUE), ("[lists]\nmember_hold_action = reject\n", REJECT),
])
def test_member_hold_action(cfg: str, action: str) -> None:
    b = DictBackend()
    b.members[LIST]["m@x.org"] = "hold"
    engine, _, _ = make(cfg, backend=b)
    r = post(external(engine), "m@x.org")
    assert r.list_verdict.action == "hold" and r.decision.action == action


def test_envelope_member_counts_and_null_sender_without_from_is_refused() -> None:
    engine, _, _ = make()
    r = post(external(engine), "stranger@y.org", mail_from="m@x.org")
    assert r.decision.action == CONTINUE
    s = external(engine)
    s.mail("<>")
    s.rcpt(LIST)
    r = s.eom()
    assert r.decision.action == REJECT and r.list_verdict.rule == "no-senders"


def test_backend_error_at_eom() -> None:
    b = DictBackend()
    engine, _, _ = make(backend=b)
    s = external(engine)
    s.mail("a@x.org")
    s.rcpt(LIST)
    b.broken = True
    s.header("From", "m@x.org")
    r = s.eom()
    assert r.decision.action == TEMPFAIL and str(r.decision.reply).startswith("451 4.3.0")


def test_facts_are_cached() -> None:
    engine, b, _ = make()
    for _ in range(3):
        post(external(engine), "m@x.org")
    # one lookup for the sender, and one per list for which lists need the body (both
    # then cached for cache_ttl)
    assert b.calls == 1 + len(b.policies)


def test_own_headers_removed_last_first() -> None:
    engine, _, _ = make()
    s = external(engine)
    s.mail("a@x.org")
    s.rcpt("person@x.org")
    s.header("X-Listgate-Verdict", "accept; forged")
    s.header("x-listgate-verdict", "accept; forged again")
    s.header("X-Listgate-Trusted", "submission=1.2.3.4")
    r = s.eom()
    assert r.decision.action == CONTINUE
    assert r.remove_headers == [("x-listgate-verdict", 2), ("X-Listgate-Verdict", 1),
                                ("X-Listgate-Trusted", 1)]


def test_header_flood_is_bounded() -> None:
    engine, _, _ = make()
    s = external(engine)
    s.mail("a@x.org")
    for i in range(1000):
        s.header("Received", f"from h{i} " + "x" * 100000)
    assert len(s.headers["received"]) == 100
    assert max(len(v) for v in s.headers["received"]) <= 65536


def test_observe_mode_never_refuses_and_reports() -> None:
    engine, _, _ = make("[milter]\nmode = observe\n", spf="fail")
    s = external(engine, helo="192.0.2.9")
    assert s.mail("a@x.org").action == CONTINUE
    assert s.rcpt(LIST).action == CONTINUE
    assert s.rcpt(OTHER).action == CONTINUE  # no 452 in observe mode
    s.header("From", "stranger@y.org")
    r = s.eom()
    assert r.decision.action == CONTINUE
    name, value, _ = r.add_headers[-1]
    assert name == "X-Listgate-Verdict"
    assert value.startswith("reject; stage=helo; numeric hello name")
    # the HELO refusal was only logged: the later checks still ran
    assert ("Received-SPF", "Fail (test) client-ip=192.0.2.1", 0) in r.add_headers
    assert s.spf.result == "fail"
    engine, _, _ = make("[milter]\nmode = observe\n")
    r = post(external(engine), "m@x.org")
    assert r.add_headers[-1][1].startswith("accept; list=dev@lists.test verdict=accept")


# -- internal-only lists ------------------------------------------------------------------

def test_internal_only_list_refused_at_rcpt_for_external_clients() -> None:
    engine, _, _ = make(f"organisation = Example Corp\n[lists]\ninternal_only = {LIST}\n")
    s = external(engine)
    s.mail("a@x.org")
    d = s.rcpt(LIST)
    assert d.action == REJECT
    assert str(d.reply) == "550 5.7.2 dev@lists.test accepts posts from inside Example Corp only"
    assert s.rcpts[0].status == "rejected"
    assert s.rcpt(OTHER).action == CONTINUE, "other lists are not internal-only"
    i = engine.session("2")
    i.connect("gw", "10.0.0.1")
    i.mail("a@x.org")
    assert i.rcpt(LIST).action == CONTINUE
    a = external(engine)
    a.mail("a@x.org", auth_user="alice")
    assert a.rcpt(LIST).action == CONTINUE, "SMTP AUTH counts as internal"


def test_internal_only_by_domain_and_default_org() -> None:
    engine, _, _ = make("[lists]\ninternal_only = lists.test\n")
    s = external(engine)
    s.mail("a@x.org")
    assert str(s.rcpt(OTHER).reply) == ("550 5.7.2 ops@lists.test accepts posts from inside "
                                        "lists.test only")


# -- trusted submission path ------------------------------------------------------------------

TRUST = ("[trust]\nsubmission_servers = 198.51.100.5, 2001:db8:5::/48\n"
         "relay_servers = 192.0.2.1\n")
SUBMITTED = "from laptop.home (dsl.isp.example [203.0.113.77]) by smtp.x.org (Postfix)"
FORGED = "from smtp.x.org (smtp.x.org [198.51.100.5]) by evil (Postfix)"


def trusted_post(engine: Engine, received: list[str], frm: str = "stranger@y.org",
                 client: str = "192.0.2.1", rcpt: str = LIST):
    s = engine.session("1")
    s.connect("relay.x.org", client)
    s.helo("relay.x.org")
    s.mail("bounce@x.org")
    d = s.rcpt(rcpt)
    if d.refuses:
        return s, d
    for v in received:
        s.header("Received", v)
    s.header("From", frm)
    return s, s.eom()


def test_trusted_path_accepts_a_nonmember_and_says_so() -> None:
    engine, _, _ = make(TRUST)
    hdr = "from smtp.x.org (smtp.x.org [198.51.100.5]) by relay.x.org (Postfix) with ESMTPS"
    _s, r = trusted_post(engine, [hdr, SUBMITTED])
    assert r.decision.action == CONTINUE and r.list_verdict.action == "hold"
    assert ("X-Listgate-Trusted", "submission=198.51.100.5", -1) in r.add_headers
    assert "trusted path via 198.51.100.5" in r.decision.reasons[0]


@pytest.mark.parametrize(("client", "received"), [
    ("192.0.2.1", ["from unknown.example (unknown.example [203.0.113.8]) by relay.x.org",
                   FORGED]),                      # unknown server in the middle
    ("203.0.113.9", [FORGED]),                    # client is no relay: headers are its own
    ("192.0.2.1", ["garbage without a from clause", FORGED]),
    # the submission server took it, without AUTH, from another server (seed 000 route 2)
    ("192.0.2.1", ["from smtp.x.org (smtp.x.org [198.51.100.5]) by relay.x.org (Postfix)",
                   "from mx.other.example (mx.other.example [203.0.113.9]) by smtp.x.org"
                   " (Postfix) with ESMTP", SUBMITTED]),
])
def test_untrusted_paths_get_the_normal_verdict(client: str, received: list[str]) -> None:
    engine, _, _ = make(TRUST)
    _s, r = trusted_post(engine, received, client=client)
    assert r.decision.action == REJECT
    assert all(h[0] != "X-Listgate-Trusted" for h in r.add_headers)


def test_trusted_path_action_reject_keeps_the_verdict() -> None:
    engine, _, _ = make(TRUST + "trusted_path_action = reject\n")
    hdr = "from smtp.x.org (smtp.x.org [198.51.100.5]) by relay.x.org (Postfix) with ESMTPS"
    _s, r = trusted_post(engine, [hdr, SUBMITTED])
    assert r.decision.action == REJECT


def test_internal_only_list_from_a_relay_needs_a_trusted_path() -> None:
    engine, _, _ = make(TRUST + f"[lists]\ninternal_only = {LIST}\n")
    hdr = "from smtp.x.org (smtp.x.org [198.51.100.5]) by relay.x.org (Postfix) with ESMTPS"
    _s, r = trusted_post(engine, [hdr, SUBMITTED], frm="m@x.org")
    assert r.decision.action == CONTINUE
    _s, r = trusted_post(engine, ["from evil (evil [203.0.113.8]) by relay.x.org"],
                         frm="m@x.org")
    assert str(r.decision.reply) == ("550 5.7.2 dev@lists.test accepts posts from inside "
                                     "lists.test only")
    assert "path not trusted" in r.decision.reasons[0]
    # the seed's second route: the reason says which hop broke the path
    _s, r = trusted_post(engine, [hdr, "from mx.other.example (mx.other.example [203.0.113.9])"
                                       " by smtp.x.org (Postfix) with ESMTP", SUBMITTED],
                         frm="m@x.org")
    assert str(r.decision.reply) == ("550 5.7.2 dev@lists.test accepts posts from inside "
                                     "lists.test only")
    assert r.decision.reasons[0] == (
        f"list={LIST} internal-only, path not trusted: untrusted: submission server "
        "198.51.100.5 received it from 203.0.113.9 without authentication (with ESMTP), and "
        "older Received header 3 shows it came from another server")
    # a client that is neither relay nor submission server: refused at RCPT already
    _s, d = trusted_post(engine, [hdr], client="203.0.113.9")
    assert d.action == REJECT and "EXTERNAL" in d.reasons[0]


def test_client_is_the_submission_server_over_ipv6() -> None:
    engine, _, _ = make(TRUST)
    _s, r = trusted_post(engine, [SUBMITTED], client="2001:db8:5::25")
    assert ("X-Listgate-Trusted", "submission=2001:db8:5::25", -1) in r.add_headers


@pytest.mark.parametrize(("cfg", "action"), [("", REJECT), ("[spf]\nhelo_fail = accept\n",
                                                            CONTINUE)])
def test_helo_spf_fail_for_a_non_null_sender(cfg: str, action: str) -> None:
    engine, _, spf = make(cfg, helo_spf="fail")
    d = external(engine).mail("a@x.org")
    assert d.action == action
    if action == REJECT:
        assert str(d.reply).startswith("550 5.7.23 SPF fail for HELO mail.x.org")
        assert spf.calls == [("192.0.2.1", "", "mail.x.org")]


def test_trusted_relay_spf_judges_the_relays_client_at_eom() -> None:
    engine, _, spf = make("trusted_relay = 192.0.2.0/24\n", spf="fail")
    s = external(engine)
    assert s.mail("a@x.org").action == CONTINUE and spf.calls == []
    s.rcpt("person@x.org")
    s.header("Received", "from mail.sender.example (mail.sender.example [203.0.113.5]) "
                         "by backup-mx.x.org (Postfix) with ESMTP id 1")
    r = s.eom()
    assert spf.calls == [("203.0.113.5", "a@x.org", "mail.sender.example")]
    assert r.decision.action == REJECT and str(r.decision.reply).startswith("550 5.7.23")


@pytest.mark.parametrize(("mode", "action"), [("yes", REJECT), ("observe", CONTINUE),
                                              ("no", CONTINUE)])
def test_require_authenticated_sender_modes(mode: str, action: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    engine, _, _ = make(f"[list:{LIST}]\nrequire_authenticated_sender = {mode}\n",
                        spf="softfail")
    caplog.set_level(logging.INFO, logger="listgate")
    engine.log.addHandler(caplog.handler)  # whatever another test did to propagation
    try:
        r = post(external(engine), "m@x.org", mail_from="stranger@y.org")
    finally:
        engine.log.removeHandler(caplog.handler)
    assert r.decision.action == action
    if mode == "yes":
        assert "From m@x.org not authenticated: SPF softfail, no aligned DKIM" in \
            r.decision.reasons[0]
    if mode == "observe":
        assert "OBSERVE: require_authenticated_sender would make list=dev@lists.test hold " \
               "instead of accept" in caplog.text
    assert engine.auth_needs_body is (mode != "no")


def test_received_spf_names_the_same_host_as_authentication_results() -> None:
    """With no [milter] authserv_id both headers name the MTA (macro j)."""
    engine, _b, spf = make()
    s = engine.session("1")
    s.connect("mail.pass.test", "192.0.2.10", "mx.example.org")
    s.helo("mail.pass.test")
    assert not s.mail("<a@pass.test>").refuses
    assert spf.receivers[-1] == "mx.example.org" == s.authserv_id


def test_a_refusal_rests_on_a_fresh_answer_not_a_cached_one() -> None:
    # cache_ttl 60 s: accepts reuse the cached "not a member"; refusal_max_age 0: a
    # refusal first asks the backend again, so a sender who just subscribed gets in
    engine, b, _ = make("[lists]\ncache_ttl = 60\nrefusal_max_age = 0\n")
    assert post(external(engine), "new@x.org").decision.action == REJECT
    b.members[LIST]["new@x.org"] = None  # subscribed a moment later
    assert post(external(engine), "new@x.org").decision.action == CONTINUE


def test_with_the_default_refusal_max_age_a_young_cached_answer_is_used() -> None:
    engine, b, _ = make("[lists]\ncache_ttl = 60\n")
    assert post(external(engine), "new@x.org").decision.action == REJECT
    calls = b.calls
    assert post(external(engine), "new@x.org").decision.action == REJECT
    assert b.calls == calls, "a refusal within refusal_max_age (5 s) of the answer reuses it"


def test_a_header_rule_on_x_listgate_trusted_sees_the_header_listgate_adds() -> None:
    # the README's suggestion: a Mailman header_matches rule "x-listgate-trusted:
    # ^submission=" accept.  The list manager sees the header listgate adds, so the
    # chain must see it too (and never a forged incoming one, which is removed)
    b = DictBackend()
    b.policies[LIST] = ListPolicy(LIST, header_matches=(
        HeaderMatch("x-listgate-trusted", "^submission=", "accept"),))
    engine, _, _ = make(TRUST + "trusted_path_action = reject\n", backend=b)
    hdr = "from smtp.x.org (smtp.x.org [198.51.100.5]) by relay.x.org (Postfix) with ESMTPS"
    _s, r = trusted_post(engine, [hdr, SUBMITTED])
    assert r.decision.action == CONTINUE
    assert "rule=header-match-dev.lists.test-0" in r.decision.reasons[0]
    # an untrusted path gets no such header: the nonmember is refused
    _s, r = trusted_post(engine, ["from evil (evil [203.0.113.8]) by relay.x.org"])
    assert r.decision.action == REJECT
