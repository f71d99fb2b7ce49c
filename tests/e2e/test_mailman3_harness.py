"""Smoke tests of the real-Mailman-3 harness (``mailman3.py``, ``mm3_fixtures.py``):
REST works and posts get the outcome Mailman's rules say. They FAIL (never skip) when
Mailman cannot be installed or started."""

from __future__ import annotations

import time

import infra
import pytest
from mailman3 import HEADER_MATCH_ACTIONS, PROBE_MEMBER, LmtpRefused, Mailman3, Mailman3Error
from mm3_fixtures import install_mailman3, mailman3, mm3_new_list  # noqa: F401

MEMBER = "alice@example.test"
OUTSIDER = "mallory@example.test"


def post(mm: Mailman3, fqdn: str, sender: str, **kwargs) -> str:
    """Post a small message From *sender* (also the envelope sender) to list *fqdn*."""
    msg = infra.make_message(from_=sender, to=fqdn, **kwargs)
    return mm.post(msg, sender, fqdn)


def test_rest_basics(mailman3, mm3_new_list):  # noqa: F811
    status, versions = mailman3.rest("GET", "system/versions")
    assert status == 200
    assert "3.3.10" in versions["mailman_version"]
    assert mailman3.rest_url == f"http://127.0.0.1:{mailman3.rest_port}/3.1"

    fqdn = mm3_new_list(accept_these_nonmembers=["a@x.test", "^.*@y\\.test$"])
    list_id = fqdn.replace("@", ".")
    status, lists = mailman3.rest("GET", "lists")
    assert status == 200
    entry = next(e for e in lists["entries"] if e["list_id"] == list_id)
    assert entry["fqdn_listname"] == fqdn
    assert entry["mail_host"] == "lists.test"
    assert entry["list_name"] == fqdn.split("@")[0]
    assert entry["member_count"] == 1  # the delivery probe

    config = mailman3.config(fqdn)
    assert config["default_member_action"] == "defer"
    assert config["default_nonmember_action"] == "hold"
    assert config["emergency"] is False
    assert config["accept_these_nonmembers"] == ["a@x.test", "^.*@y\\.test$"]
    assert config["hold_these_nonmembers"] == []

    # Form-encoded PATCH: a list value as repeated keys, "key=" empties it.
    status, _ = mailman3.rest("PATCH", f"lists/{list_id}/config",
                              {"hold_these_nonmembers": ["h1@x.test", "h2@x.test"],
                               "accept_these_nonmembers": []}, form=True)
    assert status == 204
    config = mailman3.config(list_id)
    assert config["hold_these_nonmembers"] == ["h1@x.test", "h2@x.test"]
    assert config["accept_these_nonmembers"] == []

    plain = mailman3.subscribe(fqdn, "plus+tag@example.test")
    assert plain["role"] == "member" and plain["email"] == "plus+tag@example.test"
    assert "moderation_action" not in plain  # None = the list's default_member_action
    assert mailman3.member(fqdn, "plus+tag@example.test")["member_id"] == plain["member_id"]
    assert mailman3.member(fqdn, "plus@example.test") is None
    moderated = mailman3.subscribe(fqdn, "mod@example.test", moderation_action="hold")
    assert moderated["moderation_action"] == "hold"
    owner = mailman3.subscribe(fqdn, "owner@example.test", role="owner")
    assert owner["role"] == "owner"
    assert mailman3.member(fqdn, "owner@example.test") is None  # not a member

    assert mailman3.link_address("plus+tag@example.test", "plus.alt@other.test") == [
        "plus+tag@example.test", "plus.alt@other.test"]

    mailman3.ban("banned-rest@example.test", fqdn)
    mailman3.ban("banned-rest@example.test", fqdn)  # again: no error
    assert mailman3.is_banned("banned-rest@example.test", fqdn)
    assert not mailman3.is_banned("banned-rest@example.test")  # list ban only
    assert not mailman3.is_banned("Banned-Rest@example.test", fqdn)  # exact, case-sensitive
    assert not mailman3.is_banned(OUTSIDER, fqdn)


def test_member_post_is_accepted_and_delivered(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list()
    mailman3.subscribe(fqdn, MEMBER)
    mid = post(mailman3, fqdn, MEMBER, subject="hello members")
    decision = mailman3.decide(mid)
    assert decision.action == "accept", decision
    copies = mailman3.delivered(mid)
    assert copies, "accepted post did not reach the SMTP sink"
    rcpts = {r for m in copies for r in m.rcpt_to}
    assert {MEMBER, PROBE_MEMBER} <= rcpts
    assert copies[0].message["List-Id"].strip("<> ").endswith(fqdn.replace("@", "."))


def test_nonmember_post_is_held(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list()
    mid = post(mailman3, fqdn, OUTSIDER)
    assert mailman3.outcome(mid) == "hold"
    held = [e for e in mailman3.held(fqdn) if e["message_id"] == mid]
    assert held and held[0]["sender"] == OUTSIDER
    assert mailman3.delivered(mid) == []


def test_nonmember_action_reject(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list(default_nonmember_action="reject")
    assert mailman3.outcome(post(mailman3, fqdn, OUTSIDER)) == "reject"


def test_discard_these_nonmembers(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list(discard_these_nonmembers=[OUTSIDER, "^.*@spam\\.test$"],
                        default_nonmember_action="accept")
    assert mailman3.outcome(post(mailman3, fqdn, OUTSIDER)) == "discard"
    assert mailman3.outcome(post(mailman3, fqdn, "bot@spam.test")) == "discard"
    assert mailman3.outcome(post(mailman3, fqdn, "someone@example.test")) == "accept"


def test_banned_addresses_are_discarded(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list()
    other = mm3_new_list()
    mailman3.subscribe(fqdn, "banned-member@example.test")
    mailman3.ban("banned-member@example.test", fqdn)
    mailman3.ban("^.*@evil\\.test$")  # site-wide pattern
    decision = mailman3.decide(post(mailman3, fqdn, "banned-member@example.test"))
    assert decision.action == "discard"
    assert "is banned" in decision.reasons
    assert mailman3.outcome(post(mailman3, fqdn, "X@Evil.test")) == "discard"
    assert mailman3.is_banned("x@evil.test", other)  # global bans apply to every list
    assert mailman3.is_banned("x@evil.test")


def test_linked_address_of_member_is_accepted(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list()
    mailman3.subscribe(fqdn, "carol@example.test")
    # The other address already exists (without a user) once it has posted.
    assert mailman3.outcome(post(mailman3, fqdn, "carol@home.test")) == "hold"
    mailman3.link_address("carol@example.test", "carol@home.test")
    assert "carol@home.test" in mailman3.user_addresses("carol@example.test")
    assert mailman3.outcome(post(mailman3, fqdn, "carol@home.test")) == "accept"

    # An address that already has its own user (a member elsewhere): that user is
    # absorbed into the member's user.
    other = mm3_new_list()
    mailman3.subscribe(fqdn, "dave@example.test")
    mailman3.subscribe(other, "dave@work.test")
    assert mailman3.outcome(post(mailman3, fqdn, "dave@work.test")) == "hold"
    assert set(mailman3.link_address("dave@example.test", "dave@work.test")) == {
        "dave@example.test", "dave@work.test"}
    assert mailman3.outcome(post(mailman3, fqdn, "dave@work.test")) == "accept"


def test_emergency_holds_member_posts(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list(emergency=True)
    mailman3.subscribe(fqdn, MEMBER)
    decision = mailman3.decide(post(mailman3, fqdn, MEMBER))
    assert decision.action == "hold"
    assert "Emergency" in decision.reasons


def test_member_moderation_action(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list()
    mailman3.subscribe(fqdn, "rej@example.test", moderation_action="reject")
    mailman3.subscribe(fqdn, "dis@example.test", moderation_action="discard")
    assert mailman3.outcome(post(mailman3, fqdn, "rej@example.test")) == "reject"
    assert mailman3.outcome(post(mailman3, fqdn, "dis@example.test")) == "discard"


def test_lmtp_refuses_unknown_list(mailman3):  # noqa: F811
    with pytest.raises(LmtpRefused) as info:
        post(mailman3, "no-such-list@lists.test", MEMBER)
    assert info.value.code == 550


def test_decision_latency(mailman3, mm3_new_list):  # noqa: F811
    """Posts are decided quickly (runners poll every 0.1 s); prints the timings."""
    fqdn = mm3_new_list()
    mailman3.subscribe(fqdn, MEMBER)
    times = {}
    for sender, want in ((MEMBER, "accept"), (OUTSIDER, "hold")):
        for _ in range(3):
            decision = mailman3.decide(post(mailman3, fqdn, sender))
            assert decision.action == want
            times.setdefault(want, []).append(decision.seconds)
    print(f"Mailman start {mailman3.start_seconds:.1f} s; decision seconds: {times}")
    assert max(max(v) for v in times.values()) < 10


def test_private_instance_starts_and_stops_cleanly():
    install_mailman3()
    mm = Mailman3()
    t0 = time.monotonic()
    with mm:
        started = time.monotonic() - t0
        assert mm.running
        pids = mm._pids()
        assert len(pids) >= 7  # master + 6 runners (+ gunicorn worker)
        workdir = mm.workdir
        assert (mm.var_dir / "master.pid").exists()
        config = mm.config_path.read_text()
        assert "incoming: mailman.mta.null.NullMTA" in config
        assert f"smtp_port: {mm.sink.port}" in config
    print(f"private Mailman: start {started:.1f} s, stop {time.monotonic() - t0 - started:.1f} s")
    assert not [p for p in pids if infra.pid_alive(p)]
    assert mm.workdir is None and not workdir.exists()
    assert not mm.sink.running


def test_config_attributes_set_and_read_back(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list()
    settings = {
        "moderator_password": "pässwörd", "max_message_size": 7, "max_num_recipients": 4,
        "require_explicit_destination": False,
        "acceptable_aliases": ["zed@lists.test", r"^.*-team@lists\.test$", "Alias@Lists.Test",
                               "^\\S+@Upper\\.test$"],
        "administrivia": False, "dmarc_mitigate_action": "discard",
        "dmarc_addresses": ["dm@x.test", "^.*@dmarc\\.test$"],
        "newsgroup_moderation": "open_moderated", "autorespond_postings": "respond_and_continue",
        "emergency": True, "filter_content": True,
    }
    mailman3.configure(fqdn, **settings)
    config = mailman3.config(fqdn)
    # REST stores the passlib hash (sha512_crypt) and returns it as a str; never the
    # password itself.
    hashed = config["moderator_password"]
    assert isinstance(hashed, str) and hashed.startswith("$6$rounds=656000$")
    assert mailman3.config(fqdn, "moderator_password") == hashed
    # acceptable_aliases are stored lowercased, regexps too (r"\S" becomes r"\s"!),
    # and come back sorted.
    assert config["acceptable_aliases"] == sorted(
        a.lower() for a in settings["acceptable_aliases"])
    assert "^\\s+@upper\\.test$" in config["acceptable_aliases"]
    for name, value in settings.items():
        if name not in ("moderator_password", "acceptable_aliases"):
            assert config[name] == value, name
    # a fresh list's defaults, which listgate's chain must assume
    defaults = mailman3.config(mm3_new_list())
    assert defaults["moderator_password"] is None
    assert {k: defaults[k] for k in (
        "administrivia", "require_explicit_destination", "max_num_recipients",
        "max_message_size", "emergency", "dmarc_mitigate_action", "newsgroup_moderation",
        "autorespond_postings", "filter_content", "acceptable_aliases",
        "dmarc_addresses")} == {
        "administrivia": True, "require_explicit_destination": True,
        "max_num_recipients": 10, "max_message_size": 40, "emergency": False,
        "dmarc_mitigate_action": "no_mitigation", "newsgroup_moderation": "none",
        "autorespond_postings": "none", "filter_content": False, "acceptable_aliases": [],
        "dmarc_addresses": []}
    # Not in the REST config at all: header matches have their own resource, and
    # bounce_matching_headers (suspicious-header) can only be set with mailman shell.
    assert "header_matches" not in config and "bounce_matching_headers" not in config
    status, body = mailman3.rest("PATCH", f"lists/{fqdn}/config",
                                 {"bounce_matching_headers": "X-Foo: bar"})
    assert status == 400, body
    mailman3.shell("m.bounce_matching_headers = 'X-Foo: ^bar'", fqdn)
    out = mailman3.shell("print(repr(m.bounce_matching_headers))", fqdn)
    assert out.strip() == "'X-Foo: ^bar'"
    default_bmh = mailman3.shell("print(repr(m.bounce_matching_headers))", mm3_new_list())
    assert "deprecated setting" in default_bmh  # a comment line: matches nothing


def test_header_matches_over_rest(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list()
    assert mailman3.header_matches(fqdn) == []
    assert HEADER_MATCH_ACTIONS == ("hold", "reject", "discard", "accept", "defer")
    for i, action in enumerate((*HEADER_MATCH_ACTIONS, None)):
        rule = mailman3.add_header_match(fqdn, f"X-Rule-{i}", f"p{i}", action, tag="T")
        assert rule["position"] == i and rule["header"] == f"x-rule-{i}"  # lowercased
        assert rule.get("action") == action  # no action: the key is absent
        assert rule["tag"] == "T"  # POST keeps the tag's case (PATCH lowercases)
    blank = mailman3.add_header_match(fqdn, "X-Blank", "b", "")  # "" = no action
    assert "action" not in blank
    moved = mailman3.add_header_match(fqdn, "X-First", "f", "hold", position=0)
    rules = mailman3.header_matches(fqdn)
    assert moved["position"] == 0 and rules[0]["header"] == "x-first"
    assert [r["position"] for r in rules] == list(range(len(rules)))
    for bad in ({"header": "X-A", "pattern": "[unclosed"},  # invalid regexp
                {"header": "X-A", "pattern": "a", "action": "bogus"},
                {"header": "x-first", "pattern": "f"}):  # the same (header, pattern)
        status, body = mailman3.rest("POST", f"lists/{fqdn}/header-matches", bad)
        assert status == 400, (bad, body)
    mailman3.clear_header_matches(fqdn)
    assert mailman3.header_matches(fqdn) == []


def test_outcomes_beyond_the_four_chains(mailman3, mm3_new_list):  # noqa: F811
    fqdn = mm3_new_list()
    mailman3.subscribe(fqdn, MEMBER)
    # LMTP refusal (msg.defects -> 501): raised, remembered, and an outcome
    broken = infra.make_message(from_=MEMBER, to=fqdn, headers=[
        ("MIME-Version", "1.0"), ("Content-Type", "multipart/mixed")])
    with pytest.raises(LmtpRefused) as info:
        mailman3.post(broken, MEMBER, fqdn)
    assert info.value.code == 501 and "defects" in info.value.reply
    assert mailman3.outcome(info.value.message_id) == "lmtp-501"
    again = infra.make_message(from_=MEMBER, to=fqdn, headers=[
        ("MIME-Version", "1.0"), ("Content-Type", "multipart/mixed")])
    mid = mailman3.post(again, MEMBER, fqdn, check=False)
    assert mailman3.lmtp_refusal(mid).code == 501
    assert mailman3.decide(mid).action == "lmtp-501"
    # autorespond_postings respond_and_discard: the incoming runner, before the chain
    auto = mm3_new_list(autorespond_postings="respond_and_discard")
    mailman3.subscribe(auto, MEMBER)
    decision = mailman3.decide(post(mailman3, auto, MEMBER))
    assert decision.action == "autorespond-discard", decision
    assert "list post replied and discarded" in decision.line
    # a runner exception -> shunt (a header_matches rule with action defer: there is no
    # 'defer' chain)
    shunty = mm3_new_list()
    mailman3.subscribe(shunty, MEMBER)
    mailman3.add_header_match(shunty, "X-Whatever", "x", "defer")
    mid = post(mailman3, shunty, MEMBER)
    decision = mailman3.decide(mid)
    assert decision.action == "shunt", decision
    assert decision.reasons == "in: KeyError: 'defer'"
    shunted = mailman3.shunted(mid)
    assert shunted.queue == "in" and shunted.error == "KeyError: 'defer'"
    assert "Traceback" in shunted.traceback and "chains/headers.py" in shunted.traceback
    assert (mailman3.var_dir / "queue" / "shunt" / f"{shunted.filebase}.pck").exists()
    # holds carry the rule hits Mailman stamped on the held copy
    held = mailman3.decide(post(mailman3, fqdn, MEMBER, subject=""))
    assert held.action == "hold" and "no-subject" in held.rule_hits
    assert "approved" in held.rule_misses
    # never hangs: a post Mailman never got
    t0 = time.monotonic()
    with pytest.raises(Mailman3Error, match="no decision logged"):
        mailman3.decide("<never-posted@mm3-harness.test>", timeout=1)
    assert time.monotonic() - t0 < 5


def test_dmarc_lookups_never_leave_the_harness(mailman3, mm3_new_list):  # noqa: F811
    """Without ``dmarc_dns`` every DMARC look-up answers NXDOMAIN (no packet sent):
    a list that mitigates DMARC accepts posts from domains not in dmarc_addresses."""
    fqdn = mm3_new_list(dmarc_mitigate_action="reject", dmarc_addresses=["dm@x.test"])
    mailman3.subscribe(fqdn, MEMBER)
    mailman3.subscribe(fqdn, "dm@x.test")
    assert mailman3.outcome(post(mailman3, fqdn, MEMBER)) == "accept"
    assert mailman3.outcome(post(mailman3, fqdn, "dm@x.test")) == "reject"
    assert mailman3.antispam()["header_checks"] == ""  # the session Mailman: none
    assert mailman3.antispam()["jump_chain"] == "hold"


def test_site_antispam_and_dmarc_dns():
    """A private Mailman with [antispam] header_checks, jump_chain and a DNS server
    for DMARC."""
    install_mailman3()
    dns = infra.DnsServer(txt={"_dmarc.strict.test": "v=DMARC1; p=reject"}).start()
    try:
        with Mailman3(header_checks=["X-Spam-Flag: ^yes", "X-Other: (a|b)"],
                      jump_chain="discard", dmarc_dns=(dns.host, dns.port)) as mm:
            antispam = mm.antispam()
            # what REST shows: the config value as lazr.config keeps it (a leading
            # newline, one check per line)
            assert antispam["header_checks"] == "\nX-Spam-Flag: ^yes\nX-Other: (a|b)"
            assert antispam["jump_chain"] == "discard"
            fqdn = "site@lists.test"
            mm.create_list(fqdn, dmarc_mitigate_action="reject")
            for member in (MEMBER, "someone@strict.test"):
                mm.subscribe(fqdn, member)
            spam = post(mm, fqdn, MEMBER, headers=[("X-Spam-Flag", "YES")])
            decision = mm.decide(spam)
            assert decision.action == "discard", decision  # jump_chain
            assert "matched a header rule" in decision.reasons
            # a list rule without an action uses jump_chain too
            mm.add_header_match(fqdn, "X-List", "yes")
            assert mm.outcome(post(mm, fqdn, MEMBER, headers=[("X-List", "yes")])) == "discard"
            assert mm.outcome(post(mm, fqdn, MEMBER)) == "accept"
            # DMARC through the given DNS server: p=reject -> reject
            assert mm.outcome(post(mm, fqdn, "someone@strict.test")) == "reject"
    finally:
        dns.stop()
