"""Sender extraction (Mailman 3's rules), reply sanitising, config validation."""

import email.utils
import re
from pathlib import Path

import pytest

from listgate import addresses, config
from listgate.compat32 import Unevaluable
from listgate.reply import Reply, clean

ROOT = Path(__file__).resolve().parents[2]


# -- senders -------------------------------------------------------------------------

def test_senders_order_and_headers() -> None:
    h = {"from": ["Bob <Bob@X.org>"], "reply-to": ["r1@y.org, R2@y.org"],
         "sender": ["s@z.org"]}
    assert addresses.senders(h, "Env@E.org") == [
        "bob@x.org", "env@e.org", "r1@y.org", "r2@y.org", "s@z.org"]


def test_senders_all_occurrences_and_invalid_dropped() -> None:
    h = {"from": ["a@x.org", "b@x.org"], "reply-to": ["not-an-address", "c@localhost",
                                                    "bad space@x.org"]}
    assert addresses.senders(h, "") == ["a@x.org", "b@x.org"]


def test_senders_no_plus_folding_and_null_sender() -> None:
    assert addresses.senders({"from": ["bob+tag@x.org"]}, "") == ["bob+tag@x.org"]
    assert addresses.senders({}, "") == []


def test_encoded_words_are_decoded_before_parsing_as_mailman_does() -> None:
    # Message.senders decodes RFC 2047 first (str(make_header(decode_header(v)))), then
    # parses the decoded text: an encoded display name that spells an address is parsed
    # as Mailman parses it.  What getaddresses makes of the result depends on the Python
    # (3.11.2 as Debian patches it refuses it; 3.11.7 finds both addresses); Mailman
    # runs on the same Python as listgate, so the answer must be exactly that parse.
    h = {"from": ["=?utf-8?q?member=40x=2Eorg?= <spammer@evil.org>"]}
    decoded = [a.lower() for _n, a in email.utils.getaddresses(
        ["member@x.org <spammer@evil.org>"]) if addresses.is_valid(a.lower())]
    assert addresses.senders(h, "") == decoded
    assert addresses.senders({"from": ["=?utf-8?q?x?= <spammer@evil.org>"]}, "") == [
        "spammer@evil.org"]
    assert addresses.senders({"from": ["=?utf-8?b?YWxpY2VAYS50ZXN0?="]}, "") == ["alice@a.test"]
    # folded, and the decoded text has no CR/LF left
    assert addresses.senders({"from": ["Al =?utf-8?q?ice?=\n <ALICE@A.test>"]}, "") == [
        "alice@a.test"]


def test_an_undecodable_sender_header_is_unevaluable_as_mailman_fails_on_it() -> None:
    with pytest.raises(Unevaluable):
        addresses.senders({"from": ["=?no-such-charset?q?x?= <a@b.org>"]}, "")


@pytest.mark.parametrize(("addr", "ok"), [
    ("a@b.org", True), ("a.b+c@x.y.z", True), ("a@b", False), ("a@-b.org", False),
    ("a b@c.org", False), ("a\"q\"@c.org", False), ("", False), ("a@b..org", False),
    ("a@b_c.org", False), ("ünï@x.org", False),
])
def test_mailman_validator(addr: str, ok: bool) -> None:
    assert addresses.is_valid(addr) is ok


def test_malformed_header_is_no_address() -> None:
    assert addresses.header_addresses(["\udcff\udcfe <<<>>> ,,, @@@"]) == []


def test_strip_brackets() -> None:
    assert addresses.strip_brackets("<a@b.org>") == "a@b.org"
    assert addresses.strip_brackets("<>") == ""
    assert addresses.strip_brackets("<@relay.org:a@b.org>") == "a@b.org"


# -- replies ---------------------------------------------------------------------------

def test_clean_removes_crlf_controls_and_bounds_length() -> None:
    assert clean("evil\r\n250 ok\x00\x7f") == "evil?250 ok?"
    assert clean("x" * 500, 50) == "x" * 47 + "..."
    assert clean("caf\u00e9 \udcff") == "caf? ?"


def test_reply_text_is_one_safe_line() -> None:
    r = Reply("550", "5.7.1", "a\nb" + "y" * 1000)
    assert "\n" not in r.text and len(r.text) <= 400
    assert str(r).startswith("550 5.7.1 a?b")


# -- config ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("[spf]\nfail = bounce\n", "x.cfg: [spf] fail: expected one of accept, reject, tempfail"),
    ("[milter]\nsocket = /tmp/s\n", "x.cfg: [milter] socket: expected unix:/path"),
    ("[network]\ninternal_connect = 10.0.0.0/8, nonsense\n",
     "x.cfg: [network] internal_connect: 'nonsense' is not an IP address"),
    ("[dns]\nnameservers = 127.0.0.1:99999\n", "x.cfg: [dns] nameservers: port 99999"),
    ("[dns]\ntimeout = -1\n", "x.cfg: [dns] timeout: must not be negative"),
    ("[lists]\nreject_message = 100% %(nope)s\n", "x.cfg: [lists] reject_message: bad template"),
    ("[lists]\nbogus = 1\n", "x.cfg: [lists] bogus: unknown option"),
    ("[bogus]\n", "x.cfg: [bogus]: unknown section"),
    ("[list:dev@lists.test]\nfoo = 1\n", "x.cfg: [list:dev@lists.test] foo: unknown option"),
    ("[list:dev@lists.test]\nmember_hold_action = maybe\n",
     "x.cfg: [list:dev@lists.test] member_hold_action: expected one of"),
    ("[list:nonsense]\n", "x.cfg: [list:nonsense]: expected [list:NAME@DOMAIN]"),
    ("no section header\n", "x.cfg: File contains no section headers"),
])
def test_config_errors_name_file_section_key(text: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "x.cfg")
    assert str(e.value).startswith(message), str(e.value)


def test_config_values_and_list_overrides() -> None:
    c = config.parse("[dns]\nnameservers = 127.0.0.1:5353, [::1]:53, 10.0.0.1\n"
                     "[list:Dev@Lists.Test]\nnonmember_hold_action = accept\n", "x.cfg")
    assert c.dns.nameservers == (("127.0.0.1", 5353), ("::1", 53), ("10.0.0.1", 53))
    assert c.for_list("dev@lists.test", "nonmember_hold_action") == "accept"
    assert c.for_list("other@lists.test", "nonmember_hold_action") == "reject"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "nope.cfg"))


def test_example_config_documents_every_key_with_its_default() -> None:
    """etc/listgate.cfg names every option (commented, at its default) and parses."""
    text = (ROOT / "etc" / "listgate.cfg").read_text()
    config.parse(text, "etc/listgate.cfg")
    blocks = dict(re.findall(r"^\[([a-z0-9]+)\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S))
    for section, opts in config.SCHEMA.items():
        assert section in blocks, f"[{section}] missing"
        for key, opt in opts.items():
            m = re.search(rf"^#?[ ]*{key} =[ ]?(.*)$", blocks[section], re.M)
            assert m, f"[{section}] {key} not documented in etc/listgate.cfg"
            if key != "reject_message":
                assert opt.parse(m.group(1)) == opt.parse(opt.default), (
                    f"[{section}] {key}: example shows {m.group(1)!r}, default is {opt.default!r}")


@pytest.mark.parametrize(("headers", "envelope", "primary"), [
    ({"from": ["A <A@x.org>, b@x.org"], "sender": ["s@x.org"]}, "e@x.org", "a@x.org"),
    ({"from": ["garbage"], "sender": ["S@x.org"]}, "e@x.org", "garbage"),
    ({"from": [""], "sender": ["S@x.org"]}, "e@x.org", "s@x.org"),
    ({"reply-to": ["r@x.org"]}, "E@x.org", "e@x.org"),
    ({}, "", ""),
    # Message.get_sender: the first address of From is empty -> Sender, not From's second
    ({"from": ["undisclosed-recipients:;, b@x.org"], "sender": ["S@x.org"]}, "e@x.org",
     "s@x.org"),
    # never RFC 2047 decoded; lowercased as Python 2 lowercases bytes (A-Z only)
    ({"from": ["=?utf-8?q?a=40x.org?= <C@X.ORG>"]}, "", "c@x.org"),
    ({"from": ["ÄBC@X.ORG"]}, "", "Äbc@x.org"),
])
def test_mailman2_primary_sender(headers: dict, envelope: str, primary: str) -> None:
    """Mailman 2.1.39 ``Message.get_sender()`` (USE_ENVELOPE_SENDER = No)."""
    assert addresses.mailman2_sender(headers, envelope) == primary
