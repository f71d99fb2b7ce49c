"""``listgate db copy``: a store moved from SQLite to PostgreSQL and back gives the same
verdicts (on a real file and the private PostgreSQL cluster of tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from listgate import chain, cli, config, dbcopy, model
from listgate.backends import open_store
from listgate.backends.sqlite import SqliteBackend

LIST = "dev@example.org"


def run(cfg: Path, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["-c", str(cfg), *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def populate(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ("db", "init"),
        ("lists", "create", LIST, "--default-member-action", "hold"),
        ("lists", "create", "announce@example.org", "--default-nonmember-action", "discard"),
        ("lists", "create", "open@example.org", "--default-nonmember-action", "accept"),
        ("lists", "set", LIST, "accept_these_nonmembers", "@announce@example.org,^.*@corp\\."),
        ("lists", "set", LIST, "reject_these_nonmembers", "^spam.*@"),
        ("lists", "set", LIST, "max_message_size", "100"),
        ("lists", "set", "open@example.org", "emergency", "yes"),
        ("members", "add", LIST, "a@example.org", "b@example.org"),
        ("members", "add", LIST, "c@example.org", "--moderation-action", "accept"),
        ("members", "add", LIST, "d@example.org", "--moderation-action", "reject"),
        ("members", "add", LIST, "n@example.net", "--nonmember", "--moderation-action",
         "reject"),
        ("members", "add", LIST, "ok@example.net", "--nonmember", "--moderation-action",
         "accept"),
        ("members", "add", "announce@example.org", "boss@example.org"),
        ("bans", "add", "^.*@spam\\.example$", "global@example.com"),
        ("bans", "add", "troll@example.com", "a@example.org", "--list", LIST),
        ("site", "set", "jump_chain", "reject"),
    ):
        rc, out, err = run(cfg, *argv, capsys=capsys)
        assert rc == 0, (argv, out, err)


def verdicts(backend: model.Backend, doc: dict) -> dict[tuple[str, str], str]:
    out = {}
    for address, senders in dbcopy.probes(doc):
        facts = backend.list_facts(address, senders)
        for s in facts.senders:
            v = chain.list_verdict(model.ListFacts(facts.policy, (s,), facts.site))
            out[address, s.address] = f"{v.action} {v.rule}"
    return out


def test_sqlite_to_postgresql_and_back(tmp_path: Path, pg_database: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    lite = tmp_path / "sqlite.cfg"
    lite.write_text(f"[sqlite]\npath = {tmp_path}/store.db\n")
    pg = tmp_path / "pg.cfg"
    pg.write_text(f"[lists]\nbackend = postgresql\n[postgresql]\nconninfo = {pg_database}\n")
    populate(lite, capsys)
    original = json.loads(run(lite, "lists", "export", "-", capsys=capsys)[1])
    src = SqliteBackend(f"{tmp_path}/store.db")
    before = verdicts(src, original)
    src.close()
    # the probes cover every kind of answer
    assert {v.split()[0] for v in before.values()} == {"accept", "hold", "reject", "discard"}
    assert before[LIST, "a@example.org"].startswith("discard banned")
    assert before[LIST, "boss@example.org"] == "accept nonmember-moderation"

    # the target must exist first (only db init creates a store)
    rc, _out, err = run(pg, "db", "copy", "--from", f"sqlite:{tmp_path}/store.db",
                        capsys=capsys)
    assert rc == 1 and "not an initialised listgate database" in err
    run(pg, "db", "init", capsys=capsys)
    with open_store(config.load(str(pg))) as s:  # a stale list the copy must remove
        s.create_list("stale@example.org")
    rc, out, err = run(pg, "db", "copy", "--from", f"sqlite:{tmp_path}/store.db",
                       capsys=capsys)
    assert (rc, err) == (0, ""), out
    lines = out.splitlines()
    assert lines[0].startswith("copied 3 lists (5 members, 2 nonmembers), 4 bans from ")
    assert lines[0].endswith("; pruned 1 lists")
    assert lines[1] == f"verdicts compared: {len(before)} senders on 3 lists, all identical"
    assert json.loads(run(pg, "lists", "export", "-", capsys=capsys)[1]) == original
    from listgate.backends import open_backend

    dst = open_backend(config.load(str(pg)))
    assert verdicts(dst, original) == before
    dst.close()

    # and back, into a new SQLite file
    back = tmp_path / "back.cfg"
    back.write_text(f"[sqlite]\npath = {tmp_path}/back.db\n")
    run(back, "db", "init", capsys=capsys)
    rc, out, err = run(back, "db", "copy", "--from", f"postgresql:{pg_database}",
                       capsys=capsys)
    assert (rc, err) == (0, ""), out
    assert out.splitlines()[1].endswith("all identical")
    assert json.loads(run(back, "lists", "export", "-", capsys=capsys)[1]) == original


def test_a_difference_is_found_and_reported(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.cfg", tmp_path / "b.cfg"
    a.write_text(f"[sqlite]\npath = {tmp_path}/a.db\n")
    b.write_text(f"[sqlite]\npath = {tmp_path}/b.db\n")
    populate(a, capsys)
    populate(b, capsys)
    run(b, "members", "remove", LIST, "c@example.org", capsys=capsys)
    doc = json.loads(run(a, "lists", "export", "-", capsys=capsys)[1])
    ba, bb = SqliteBackend(f"{tmp_path}/a.db"), SqliteBackend(f"{tmp_path}/b.db")
    compared, diffs = dbcopy.compare(doc, ba, bb)
    assert compared > 10
    assert diffs == [f"{LIST} c@example.org: accept (member-moderation) before, "
                     "hold (nonmember-moderation) after"]


def test_bad_source_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[sqlite]\npath = {tmp_path}/c.db\n")
    run(cfg, "db", "init", capsys=capsys)
    rc, _out, err = run(cfg, "db", "copy", "--from", "mysql:x", capsys=capsys)
    assert rc == 2 and "expected sqlite:PATH or postgresql:CONNINFO" in err
    rc, _out, err = run(cfg, "db", "copy", "--from", f"sqlite:{tmp_path}/none.db",
                        capsys=capsys)
    assert rc == 1 and "no database at" in err
