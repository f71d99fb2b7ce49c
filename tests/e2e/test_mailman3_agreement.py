"""listgate predicts what a real Mailman 3 does: a corpus of posts, both ways.

Each post goes into a real Mailman 3.3.10 over LMTP (its real outcome read from
vette.log / the held queue / its outgoing mail) and through ``listgate check`` with
the mailman3 backend; then, after ``listgate lists import --from mailman3``, through
``listgate check`` with the SQLite store.  Every verdict must agree.  The agreement
table is printed (``pytest -s``).
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate, make_msgid
from pathlib import Path

import pytest
from lgdaemon import LISTGATE, merge_ini
from mm3_fixtures import install_mailman3  # noqa: F401 - documents the dependency

D = "agree.test"
OPEN, STRICT, MODERATED, EMERGENCY = (f"{n}@{D}" for n in
                                      ("open", "strict", "moderated", "emergency"))


@dataclass(frozen=True)
class Post:
    name: str
    list: str
    envelope: str
    headers: tuple[tuple[str, str], ...]


def P(name: str, lst: str, frm: str | None, envelope: str = "bounce@env.test",
      **more: str) -> Post:
    headers = ([("From", frm)] if frm is not None else []) + [
        (k.replace("_", "-").title(), v) for k, v in more.items()]
    return Post(name, lst, envelope, tuple(headers))


CORPUS = [
    P("member", OPEN, "alice@a.test"),
    P("member, display name and case", OPEN, "Alice Liddell <ALICE@A.Test>"),
    P("member, RFC 2047 display name", OPEN, "=?utf-8?q?Al=C3=AFce?= <alice@a.test>"),
    P("member in Reply-To", OPEN, "stranger@x.test", reply_to="alice@a.test"),
    P("member in Sender", OPEN, "stranger@x.test", sender="alice@a.test"),
    P("member as envelope only", OPEN, "stranger@x.test", envelope="alice@a.test"),
    P("two From addresses, second a member", OPEN, "x@x.test, alice@a.test"),
    P("member subscribed mixed case", OPEN, "bob@b.test"),
    P("+tag member, exact", OPEN, "carol+tag@c.test"),
    P("+tag member, without the tag", OPEN, "carol@c.test"),
    P("linked address of a member's user", OPEN, "dave@other.test"),
    P("nonmember", OPEN, "stranger@x.test"),
    P("no From, nonmember envelope", OPEN, None, envelope="stranger@x.test"),
    P("no From, null sender", OPEN, None, envelope=""),
    P("empty From, null sender", OPEN, "", envelope=""),
    P("list ban exact", OPEN, "troll@t.test"),
    P("global ban exact", OPEN, "spammer@s.test"),
    P("global ban pattern", OPEN, "x@banned.test"),
    P("global ban pattern, upper case", OPEN, "X@BANNED.TEST"),
    P("banned Reply-To beats member From", OPEN, "alice@a.test", reply_to="troll@t.test"),
    P("nonmember record accept", OPEN, "nmacc@n.test"),
    P("nonmember record discard", OPEN, "nmdisc@n.test"),
    P("nonmember record defer", OPEN, "nmdefer@n.test"),
    P("accept_these exact", STRICT, "friend@f.test"),
    P("accept_these exact, header in upper case", STRICT, "FRIEND@F.TEST"),
    P("accept_these regexp", STRICT, "x@trusted.test"),
    P("accept_these @list reference", STRICT, "alice@a.test"),
    P("accept_these via Reply-To", STRICT, "stranger@x.test", reply_to="friend@f.test"),
    P("hold_these regexp", STRICT, "hold1@h.test"),
    P("reject_these exact", STRICT, "rej@r.test"),
    P("discard_these exact", STRICT, "disc@d2.test"),
    P("mixed-case discard entry never matches", STRICT, "mixed@case.test"),
    P("default_nonmember_action reject", STRICT, "stranger@x.test"),
    P("moderated member hold", STRICT, "modh@m.test"),
    P("moderated member reject", STRICT, "modr@m.test"),
    P("moderated member discard", STRICT, "modd@m.test"),
    P("member action accept", STRICT, "moda@m.test"),
    P("moderated list, member", MODERATED, "alice@a.test"),
    P("moderated list, nonmember", MODERATED, "stranger@x.test"),
    P("emergency, member", EMERGENCY, "alice@a.test"),
    P("emergency, nonmember", EMERGENCY, "stranger@x.test"),
]


def message(post: Post, mid: str) -> bytes:
    hdrs = [*post.headers, ("To", post.list), ("Subject", post.name),
            ("Date", formatdate()), ("Message-ID", mid)]
    return "".join(f"{k}: {v}\r\n" for k, v in hdrs).encode() + b"\r\nHello list.\r\n"


@pytest.fixture(scope="module")
def lists(mailman3):
    m = mailman3
    m.create_list(OPEN)
    for a in ("alice@a.test", "Bob@B.test", "carol+tag@c.test", "dave@d.test"):
        m.subscribe(OPEN, a)
    m.link_address("dave@d.test", "dave@other.test")
    m.subscribe(OPEN, "nmacc@n.test", role="nonmember", moderation_action="accept")
    m.subscribe(OPEN, "nmdisc@n.test", role="nonmember", moderation_action="discard")
    m.subscribe(OPEN, "nmdefer@n.test", role="nonmember", moderation_action="defer")
    m.ban("troll@t.test", OPEN)
    m.ban("spammer@s.test")
    m.ban(r"^.*@banned\.test$")
    m.create_list(STRICT, default_nonmember_action="reject",
                  accept_these_nonmembers=["friend@f.test", r"^.*@trusted\.test$", f"@{OPEN}"],
                  hold_these_nonmembers=[r"^hold.*@h\.test$"],
                  reject_these_nonmembers=["rej@r.test"],
                  discard_these_nonmembers=["disc@d2.test", "Mixed@Case.test"])
    for a, act in (("modh@m.test", "hold"), ("modr@m.test", "reject"),
                   ("modd@m.test", "discard"), ("moda@m.test", "accept")):
        m.subscribe(STRICT, a, moderation_action=act)
    m.create_list(MODERATED, default_member_action="hold")
    m.subscribe(MODERATED, "alice@a.test")
    m.create_list(EMERGENCY, emergency=True)
    m.subscribe(EMERGENCY, "alice@a.test")
    return m


def write_cfg(path: Path, body: str) -> Path:
    path.write_text(merge_ini("[milter]\nlog_file = -\n", body))
    return path


def listgate_check(cfg: Path, post: Post, msg: bytes) -> dict:
    r = subprocess.run([*LISTGATE, "-c", str(cfg), "check", "--client-ip", "127.0.0.1",
                        "--mail-from", post.envelope, "--rcpt", post.list, "-"],
                       input=msg, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_listgate_agrees_with_mailman3(lists, tmp_path):
    m = lists
    rest = (f"[mailman3]\nurl = {m.rest_url}\nuser = {m.admin_user}\n"
            f"password = {m.admin_pass}\n")
    mm3_cfg = write_cfg(tmp_path / "mm3.cfg", "[lists]\nbackend = mailman3\n" + rest)
    posts = [(p, make_msgid(domain="corpus.test")) for p in CORPUS]
    msgs = {mid: message(p, mid) for p, mid in posts}
    with ThreadPoolExecutor(4) as pool:
        predicted = dict(zip((mid for _, mid in posts), pool.map(
            lambda pm: listgate_check(mm3_cfg, pm[0], msgs[pm[1]]), posts), strict=True))
    for p, mid in posts:
        m.post(msgs[mid], p.envelope, p.list)
    real = {mid: m.outcome(mid) for _, mid in posts}

    # the same corpus through the SQLite store after importing this Mailman
    sqlite_cfg = write_cfg(tmp_path / "sqlite.cfg", f"[sqlite]\npath = {tmp_path}/s.db\n" + rest)
    subprocess.run([*LISTGATE, "-c", str(sqlite_cfg), "db", "init"], check=True,
                   capture_output=True)
    r = subprocess.run([*LISTGATE, "-c", str(sqlite_cfg), "lists", "import", "--from",
                        "mailman3", m.rest_url], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    with ThreadPoolExecutor(4) as pool:
        imported = dict(zip((mid for _, mid in posts), pool.map(
            lambda pm: listgate_check(sqlite_cfg, pm[0], msgs[pm[1]]), posts), strict=True))

    rows, bad = [], []
    for p, mid in posts:
        a, b, c = real[mid], predicted[mid]["list_verdict"], imported[mid]["list_verdict"]
        rows.append(f"{p.name:45} mailman={a:8} listgate={b:8} imported={c:8}"
                    f"{'' if a == b == c else '  <-- DISAGREE'}")
        if not a == b == c:
            bad.append((p, a, predicted[mid], imported[mid]))
    print("\n" + "\n".join(rows))
    assert not bad, bad
    assert {real[mid] for _, mid in posts} == {"accept", "hold", "reject", "discard"}
