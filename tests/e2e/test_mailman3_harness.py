"""Smoke tests of the real-Mailman-3 harness (``mailman3.py``, ``mm3_fixtures.py``):
REST works and posts get the outcome Mailman's rules say. They FAIL (never skip) when
Mailman cannot be installed or started."""

from __future__ import annotations

import time

import infra
import pytest
from mailman3 import PROBE_MEMBER, LmtpRefused, Mailman3
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
