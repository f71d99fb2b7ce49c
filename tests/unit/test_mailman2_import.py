"""`listgate lists import --from mailman2 DIR`: the store then decides as Mailman 2 did.

Mailman 2 lists (real-format pickles) are imported into a fresh SQLite store through
the CLI; then a corpus of From-only posts is decided twice -- by the Mailman 2
backend and by the SQLite backend on the imported data -- and must agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_mailman2 import DIGESTS, MEMBERS, OPTIONS, write_list

from listgate import cli, config
from listgate.backends.mailman2 import Mailman2Backend, mailman3_entry
from listgate.backends.sqlite import SqliteBackend
from listgate.chain import list_verdict

POLICY = {
    "accept_these_nonmembers": ["Friend@Y.org", "^.*@trusted\\.org$", "^a|b@c", "@friends"],
    "hold_these_nonmembers": ["^hold"],
    "reject_these_nonmembers": ["rej@y.org", "^(bad"],
    "discard_these_nonmembers": ["DISC@y.org"],
}
SENDERS = ["m@x.org", "mod@x.org", "Mixed@X.org", "d@x.org", "dmod@x.org", "friend@y.org",
           "x@TRUSTED.org", "a@zzz.org", "xxb@c.com", "pal@z.org", "dpal@z.org",
           "holdme@y.org", "rej@y.org", "disc@y.org", "stranger@y.org", "bad@y.org"]


@pytest.fixture
def mm2(tmp_path: Path) -> Path:
    d = tmp_path / "lists"
    write_list(d, "dev", members=MEMBERS, digest_members=DIGESTS, user_options=OPTIONS,
               member_moderation_action=1, generic_nonmember_action=2, **POLICY)
    write_list(d, "friends", real_name="Friends", members={"pal@z.org": 0},
               digest_members={"dpal@z.org": 0})
    write_list(d, "open", real_name="Open", generic_nonmember_action=0)
    return d


def run(*args: str) -> int:
    return cli.main(list(args))


def test_import_then_agree(mm2: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[sqlite]\npath = {tmp_path}/store.db\n")
    assert run("-c", str(cfg), "lists", "import", "--from", "mailman2", str(mm2)) == 0
    assert "imported 3 lists" in capsys.readouterr().out
    store = SqliteBackend(f"{tmp_path}/store.db")
    mm2_backend = Mailman2Backend(str(mm2))
    rows = []
    for sender in SENDERS:
        s = sender.lower()
        a = list_verdict(mm2_backend.list_facts("dev@lists.test", (s,), s))
        b = list_verdict(store.list_facts("dev@lists.test", (s,), s))
        rows.append((sender, a.action, b.action))
        assert (a.action, a.hold_kind) == (b.action, b.hold_kind), (sender, a, b)
    print("\n".join(f"{s:20} mailman2={a:8} store={b}" for s, a, b in rows))
    # re-running is a sync, not an append
    assert run("-c", str(cfg), "lists", "import", "--from", "mailman2", str(mm2)) == 0
    assert store.list_facts("dev@lists.test", ("m@x.org",), "").senders[0].is_member


@pytest.mark.parametrize(("entry", "sender", "hit"), [
    ("^a|b@c", "xxb@c.com", True), ("^a|b@c", "a@zzz", True), ("^a|b@c", "zzz@q", False),
    ("^.*@Trusted\\.org$", "x@trusted.org", True), ("^x", "yx@q", False),
])
def test_pattern_translation_keeps_re_search_ignorecase(entry: str, sender: str,
                                                        hit: bool) -> None:
    assert bool(re.search(entry, sender, re.IGNORECASE)) is hit
    assert bool(re.match(mailman3_entry(entry), sender)) is hit


def test_import_from_a_missing_dir_fails_clearly(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[sqlite]\npath = {tmp_path}/store.db\n")
    assert run("-c", str(cfg), "lists", "import", "--from", "mailman2",
               str(tmp_path / "nope")) == 1
    assert "cannot list" in capsys.readouterr().err


def test_config_parses() -> None:
    config.parse("[lists]\nbackend = mailman2\n")


def test_lists_ls_shows_the_mailman2_lists(mm2: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[lists]\nbackend = mailman2\n[mailman2]\nlists_dir = {mm2}\n"
                   f"[sqlite]\npath = {tmp_path}/unused.db\n")
    assert run("-c", str(cfg), "lists", "ls") == 0
    assert capsys.readouterr().out.split() == [
        "dev@lists.test", "friends@lists.test", "open@lists.test"]


def test_require_authenticated_sender_with_mailman2(mm2: Path) -> None:
    """A forged member From, and a forged accept-listed From, count for nothing."""
    from listgate.engine import CONTINUE, REJECT, Engine
    from listgate.spfcheck import SpfResult

    class Softfail:
        def check(self, ip: str, sender: str, helo: str,
                  receiver: str | None = None) -> SpfResult:
            return SpfResult("softfail" if sender else "none", "mailfrom", "", "x")

    for mode, frm, action in [("no", "m@x.org", CONTINUE), ("yes", "m@x.org", REJECT),
                              ("no", "friend@y.org", CONTINUE),
                              ("yes", "friend@y.org", REJECT)]:
        cfg = config.parse(f"[network]\ninternal_connect = 10.0.0.0/8\n"
                           f"[lists]\nbackend = mailman2\nrequire_authenticated_sender = {mode}\n"
                           f"[mailman2]\nlists_dir = {mm2}\n")
        engine = Engine(cfg, Mailman2Backend(str(mm2)), Softfail(),  # type: ignore[arg-type]
                        lambda h, i: False)
        s = engine.session("1")
        s.connect("mail.y.org", "192.0.2.1")
        s.helo("mail.y.org")
        assert s.mail("stranger@y.org").action == CONTINUE
        assert s.rcpt("dev@lists.test").action == CONTINUE
        s.header("From", frm)
        assert s.eom().decision.action == action, (mode, frm)
