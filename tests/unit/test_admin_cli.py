"""The admin commands, driven through a real argparse tree built with ``admin.register``,
on both engines of the store (SQLite, and PostgreSQL: tests/conftest.py)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from pgcluster import store_config_for

from listgate import admin, config
from listgate.backends import open_backend, open_store

LIST = "dev@example.org"


def build_parser() -> argparse.ArgumentParser:
    """What ``listgate.cli`` does: a common parent with -c, handed to every leaf."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-c", "--config", default=argparse.SUPPRESS)
    top = argparse.ArgumentParser(prog="listgate")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    admin.register(sub, parent)
    return top


class Cli:
    def __init__(self, cfg_text: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.cfg = config.parse(cfg_text)
        self.engine = self.cfg.lists.backend
        #: how messages name the store: the file, or the PostgreSQL database
        self.path = open_store(self.cfg).path
        self.parser = build_parser()
        self.capsys = capsys

    def exists(self) -> bool:
        with open_store(self.cfg) as store:
            return store.exists()

    @property
    def missing(self) -> str:
        """What a reading command says about a store that was never initialised."""
        if self.engine == "sqlite":
            return (f"no database at {self.path}: if it was lost, restore it (from a backup, or "
                "'listgate db init' then 'listgate lists import' of an export); on a new "
                "host, create it with 'listgate db init'")
        return (f"postgresql {self.path} is not an initialised listgate database "
                "(run 'listgate db init')")

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        args = self.parser.parse_args(argv)
        rc = args.func(args, self.cfg)
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ok(self, *argv: str) -> str:
        rc, out, err = self(*argv)
        assert rc == 0, (argv, rc, out, err)
        return out

    def export(self) -> dict:
        return json.loads(self.ok("lists", "export", "-"))


@pytest.fixture
def bare_cli(store_config: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    """A CLI whose database does not exist yet (or, on PostgreSQL, is empty)."""
    return Cli(store_config, capsys)


@pytest.fixture
def cli(bare_cli: Cli) -> Cli:
    """A CLI on an initialised, empty database (what the package's install leaves)."""
    bare_cli.ok("db", "init")
    return bare_cli


def test_every_leaf_takes_the_config_option(cli: Cli) -> None:
    args = cli.parser.parse_args(["lists", "ls", "-c", "/etc/x.cfg"])
    assert args.config == "/etc/x.cfg"
    args = cli.parser.parse_args(["members", "add", LIST, "a@example.org", "--config", "y"])
    assert args.config == "y" and args.addresses == ["a@example.org"]


def test_group_without_command_is_a_usage_error(cli: Cli) -> None:
    with pytest.raises(SystemExit) as e:
        cli.parser.parse_args(["lists"])
    assert e.value.code == 2


def test_db_upgrade_if_exists(bare_cli: Cli) -> None:
    """The package's upgrade step on a host without a store: nothing to do, exit 0."""
    assert bare_cli.ok("db", "upgrade", "--if-exists") == (
        f"no database at {bare_cli.path}: nothing to upgrade\n")
    assert not bare_cli.exists()
    bare_cli.ok("db", "init")
    assert "nothing to do" in bare_cli.ok("db", "upgrade", "--if-exists")


def test_db_init(bare_cli: Cli) -> None:
    cli = bare_cli
    assert "initialised database" in cli.ok("db", "init")
    assert "already initialised" in cli.ok("db", "init")
    assert cli.exists()


def test_no_command_but_db_init_creates_the_database(bare_cli: Cli, tmp_path: Path) -> None:
    """A lost store must not come back as an empty one from the next members add."""
    cli = bare_cli
    (tmp_path / "x.json").write_text('{"version": 1, "lists": []}')
    for argv in (("lists", "ls"), ("lists", "show", LIST), ("members", "ls", LIST),
                 ("bans", "ls"), ("lists", "export", "-"), ("lists", "create", LIST),
                 ("members", "add", LIST, "a@example.org"), ("bans", "add", "x@example.org"),
                 ("lists", "import", str(tmp_path / "x.json")), ("db", "upgrade")):
        rc, out, err = cli(*argv)
        assert rc == 1, argv
        assert err == f"listgate: {cli.missing}\n"
        assert out == ""
    assert not cli.exists()


def test_create_set_show_ls(cli: Cli) -> None:
    out = cli.ok("lists", "create", "Dev@Example.org", "--default-nonmember-action", "reject")
    assert out == f"created list {LIST}\n"
    cli.ok("lists", "create", "b@example.org", "--emergency", "yes")
    assert cli.ok("lists", "ls") == f"b@example.org\n{LIST}\n"
    out = cli.ok("lists", "set", LIST, "accept_these_nonmembers",
                 "^.*@example\\.com$, @b@example.org,x@example.net")
    assert out == (f'{LIST}: accept_these_nonmembers = '
                   '["^.*@example\\\\.com$", "@b@example.org", "x@example.net"]\n')
    cli.ok("lists", "set", LIST, "hold_these_nonmembers", '["^a{1,3}@example\\\\.org$"]')
    cli.ok("lists", "set", LIST, "default_member_action", "Hold")
    cli.ok("lists", "set", LIST, "emergency", "no")
    cli.ok("members", "add", LIST, "a@example.org")
    shown = json.loads(cli.ok("lists", "show", LIST))
    assert shown == {
        "address": LIST,
        "default_member_action": "hold",
        "default_nonmember_action": "reject",
        "emergency": False,
        "accept_these_nonmembers": ["^.*@example\\.com$", "@b@example.org", "x@example.net"],
        "hold_these_nonmembers": ["^a{1,3}@example\\.org$"],
        "reject_these_nonmembers": [],
        "discard_these_nonmembers": [],
        # the rest of Mailman 3's posting-chain settings, at its defaults
        "approval_passwords": [],
        "header_matches": [],
        "max_message_size": 40,
        "max_num_recipients": 10,
        "require_explicit_destination": True,
        "acceptable_aliases": [],
        "administrivia": True,
        "bounce_matching_headers": "",
        "newsgroup_moderation": "none",
        "dmarc_mitigate_action": "no_mitigation",
        "dmarc_addresses": [],
        "dmarc_moderation_notice": "",
        "autorespond_postings": "none",
        "filter_content": False,
        "member_count": 1,
        "nonmember_count": 0,
        "ban_count": 0,
    }
    cli.ok("lists", "set", LIST, "accept_these_nonmembers", "")
    assert json.loads(cli.ok("lists", "show", LIST))["accept_these_nonmembers"] == []
    assert json.loads(cli.ok("lists", "show", "b@example.org"))["emergency"] is True
    assert cli.ok("lists", "delete", "b@example.org") == "deleted list b@example.org\n"
    assert cli.ok("lists", "ls") == f"{LIST}\n"


def test_mixed_case_exact_entries_warn(cli: Cli) -> None:
    cli.ok("lists", "create", LIST)
    rc, _out, err = cli("lists", "set", LIST, "accept_these_nonmembers", "Bob@example.org")
    assert rc == 0
    assert "'Bob@example.org' has upper-case letters and will never match" in err


def test_members_from_file_and_ls(cli: Cli, tmp_path: Path) -> None:
    cli.ok("lists", "create", LIST)
    f = tmp_path / "members.txt"
    f.write_text("# the founders\nAlice@Example.org\n\n  bob@example.org   # the builder\n"
                 "carol@example.net\n")
    out = cli.ok("members", "add", LIST, "dave@example.org", "--file", str(f))
    assert out == f"{LIST}: added or updated 4 members\n"
    cli.ok("members", "add", LIST, "bob@example.org", "--moderation-action", "hold")
    cli.ok("members", "add", LIST, "bot@example.net", "--nonmember",
           "--moderation-action", "accept")
    assert cli.ok("members", "ls", LIST) == (
        "alice@example.org\tdefault\nbob@example.org\thold\n"
        "carol@example.net\tdefault\ndave@example.org\tdefault\n"
    )
    assert cli.ok("members", "ls", LIST, "--nonmember") == "bot@example.net\taccept\n"
    out = cli.ok("members", "remove", LIST, "ALICE@example.org", "nobody@example.org")
    assert out == f"{LIST}: removed 1 of 2 members\n"
    assert "alice" not in cli.ok("members", "ls", LIST)
    # the daemon's view agrees
    backend = open_backend(cli.cfg)
    f1, f2 = backend.list_facts(LIST, ["bob@example.org", "bot@example.net"]).senders
    assert f1.is_member and f1.member_action == "hold"
    assert not f2.is_member and f2.nonmember_action == "accept"
    backend.close()


def test_members_from_stdin(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli.ok("lists", "create", LIST)
    monkeypatch.setattr("sys.stdin", io.StringIO("x@example.org\ny@example.org\n"))
    cli.ok("members", "add", LIST, "--file", "-")
    assert cli.ok("members", "ls", LIST) == "x@example.org\tdefault\ny@example.org\tdefault\n"


def test_bad_address_in_file_names_the_line(cli: Cli, tmp_path: Path) -> None:
    cli.ok("lists", "create", LIST)
    f = tmp_path / "m.txt"
    f.write_text("good@example.org\nnot an address\n")
    rc, _out, err = cli("members", "add", LIST, "--file", str(f))
    assert rc == 2
    assert err == f"listgate: {f}:2: invalid address 'not an address': contains white space\n"
    assert cli.ok("members", "ls", LIST) == ""  # nothing half-added


def test_missing_member_file_is_operational(cli: Cli, tmp_path: Path) -> None:
    cli.ok("lists", "create", LIST)
    rc, _out, err = cli("members", "add", LIST, "--file", str(tmp_path / "nope.txt"))
    assert rc == 1
    assert err == f"listgate: {tmp_path / 'nope.txt'}: No such file or directory\n"


def test_no_addresses_is_a_usage_error(cli: Cli) -> None:
    cli.ok("lists", "create", LIST)
    rc, _out, err = cli("members", "add", LIST)
    assert (rc, err) == (2, "listgate: no addresses given (ADDR arguments or --file)\n")


def test_bad_action_value(cli: Cli) -> None:
    cli.ok("lists", "create", LIST)
    expected = ("listgate: invalid default_member_action 'bogus': "
                "expected one of hold, reject, discard, accept, defer\n")
    rc, out, err = cli("lists", "set", LIST, "default_member_action", "bogus")
    assert (rc, out, err) == (2, "", expected)
    rc, _out, err = cli("lists", "create", "x@example.org", "--default-member-action", "bogus")
    assert (rc, err) == (2, expected)
    rc, _out, err = cli("members", "add", LIST, "a@example.org", "--moderation-action", "nope")
    assert rc == 2 and "invalid moderation_action 'nope'" in err
    rc, _out, err = cli("lists", "set", LIST, "emergency", "perhaps")
    assert (rc, err) == (2, "listgate: invalid emergency 'perhaps': expected yes or no\n")
    rc, _out, err = cli("lists", "set", LIST, "colour", "red")
    assert rc == 2 and err.startswith("listgate: invalid option 'colour': expected one of ")
    rc, _out, err = cli("lists", "set", LIST, "hold_these_nonmembers", "^(")
    assert rc == 2 and "bad regular expression" in err


def test_unknown_list(cli: Cli) -> None:
    cli.ok("db", "init")
    for argv in (("lists", "show", "nope@example.org"),
                 ("lists", "set", "nope@example.org", "emergency", "yes"),
                 ("lists", "delete", "Nope@example.org"),
                 ("members", "add", "nope@example.org", "a@example.org"),
                 ("members", "ls", "nope@example.org"),
                 ("bans", "add", "a@example.org", "--list", "nope@example.org")):
        rc, out, err = cli(*argv)
        assert (rc, out, err) == (1, "", "listgate: no such list: nope@example.org\n"), argv
    cli.ok("lists", "create", LIST)
    rc, _out, err = cli("lists", "create", LIST)
    assert (rc, err) == (1, f"listgate: list {LIST} already exists\n")


def test_bans(cli: Cli) -> None:
    cli.ok("lists", "create", LIST)
    out = cli.ok("bans", "add", "troll@example.com", "^.*@spam\\.example$")
    assert out == "global: banned troll@example.com\nglobal: banned ^.*@spam\\.example$\n"
    cli.ok("bans", "add", "x@example.com", "--list", LIST)
    assert "was already banned" in cli.ok("bans", "add", "x@example.com", "--list", LIST)
    assert cli.ok("bans", "ls") == "^.*@spam\\.example$\ntroll@example.com\n"
    assert cli.ok("bans", "ls", "--list", LIST) == "x@example.com\n"
    rc, _out, err = cli("bans", "add", "ok@example.com", "^(")
    assert rc == 2 and "'^('" in err
    assert "ok@example.com" not in cli.ok("bans", "ls")  # all or nothing
    assert cli.ok("bans", "remove", "troll@example.com") == "global: unbanned troll@example.com\n"
    assert "was not banned" in cli.ok("bans", "remove", "troll@example.com")
    assert cli.ok("bans", "ls") == "^.*@spam\\.example$\n"


def populate(cli: Cli) -> None:
    cli.ok("lists", "create", LIST, "--default-member-action", "hold")
    cli.ok("lists", "create", "announce@example.org", "--default-nonmember-action", "discard")
    cli.ok("lists", "set", LIST, "accept_these_nonmembers", "@announce@example.org,^.*@corp\\.")
    cli.ok("members", "add", LIST, "a@example.org", "b@example.org")
    cli.ok("members", "add", LIST, "c@example.org", "--moderation-action", "accept")
    cli.ok("members", "add", LIST, "n@example.net", "--nonmember", "--moderation-action", "reject")
    cli.ok("members", "add", "announce@example.org", "boss@example.org")
    cli.ok("bans", "add", "^.*@spam\\.example$")
    cli.ok("bans", "add", "troll@example.com", "--list", LIST)


def test_export_import_round_trip(cli: Cli, tmp_path: Path) -> None:
    populate(cli)
    backup = tmp_path / "backup.json"
    assert cli.ok("lists", "export", str(backup)) == ""
    saved = json.loads(backup.read_text())
    assert saved == cli.export()
    assert saved["version"] == 2
    dev = next(d for d in saved["lists"] if d["address"] == LIST)
    assert dev["members"] == [
        {"address": "a@example.org", "moderation_action": None},
        {"address": "b@example.org", "moderation_action": None},
        {"address": "c@example.org", "moderation_action": "accept"},
    ]
    assert dev["nonmembers"] == [{"address": "n@example.net", "moderation_action": "reject"}]
    assert saved["bans"] == [{"list": None, "entry": "^.*@spam\\.example$"},
                             {"list": LIST, "entry": "troll@example.com"}]

    # drift: changed settings, extra and missing members, a new ban, a new list
    cli.ok("lists", "set", LIST, "default_member_action", "defer")
    cli.ok("lists", "set", LIST, "accept_these_nonmembers", "")
    cli.ok("members", "add", LIST, "intruder@example.org")
    cli.ok("members", "remove", LIST, "a@example.org")
    cli.ok("members", "add", LIST, "c@example.org")
    cli.ok("bans", "add", "later@example.com")
    cli.ok("lists", "create", "extra@example.org")

    out = cli.ok("lists", "import", str(backup))
    assert out == "imported 2 lists (4 members, 1 nonmembers), 2 bans\n"
    after = cli.export()
    assert [d["address"] for d in after["lists"]] == ["announce@example.org", LIST,
                                                     "extra@example.org"]
    assert [d for d in after["lists"] if d["address"] != "extra@example.org"] == saved["lists"]
    assert after["bans"] == saved["bans"]

    # idempotent
    cli.ok("lists", "import", str(backup))
    assert cli.export() == after

    # --prune makes the store exactly the file
    out = cli.ok("lists", "import", str(backup), "--prune")
    assert out.endswith("; pruned 1 lists\n")
    assert cli.export() == saved
    assert cli.ok("lists", "export", str(backup)) == ""
    assert json.loads(backup.read_text()) == saved


def test_import_into_a_fresh_database(cli: Cli, tmp_path: Path, engine: str,
                                      request: pytest.FixtureRequest,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    populate(cli)
    text = cli.ok("lists", "export", "-")
    (tmp_path / "elsewhere").mkdir()
    if engine == "sqlite":
        other = Cli(store_config_for(engine, tmp_path / "elsewhere", request), cli.capsys)
    else:  # another database of the cluster
        cluster = request.getfixturevalue("pg_cluster")
        name = cluster.create_database()
        request.addfinalizer(lambda: cluster.drop_database(name))
        other = Cli("[lists]\nbackend = postgresql\n[postgresql]\nconninfo = "
                    f"{cluster.conninfo(name)}\n", cli.capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    other.ok("db", "init")
    out = other.ok("lists", "import", "-")
    assert out.startswith("imported 2 lists")
    assert other.export() == json.loads(text)


def test_import_without_bans_key_keeps_bans(cli: Cli, tmp_path: Path) -> None:
    populate(cli)
    f = tmp_path / "lists.json"
    f.write_text(json.dumps({"version": 1, "lists": [
        {"address": "new@example.org", "members": [{"address": "Z@example.org"}]},
    ]}))
    assert cli.ok("lists", "import", str(f)) == "imported 1 lists (1 members, 0 nonmembers)\n"
    exported = cli.export()
    assert len(exported["bans"]) == 2
    new = next(d for d in exported["lists"] if d["address"] == "new@example.org")
    assert new["default_nonmember_action"] == "hold"
    assert new["members"] == [{"address": "z@example.org", "moderation_action": None}]


@pytest.mark.parametrize(("doc", "message"), [
    ("{", "not valid JSON"),
    ('{"version": 3, "lists": []}', "unsupported version 3"),
    ('{"version": 1, "lists": [{"address": "x@example.org", "colour": 1}]}',
     "lists[0]: unknown key 'colour'"),
    ('{"version": 1, "lists": [{"address": "x@example.org", "default_member_action": "x"}]}',
     "invalid x@example.org default_member_action 'x'"),
    ('{"version": 1, "lists": [{"address": "x@example.org", "members": [{"address": "bad"}]}]}',
     "invalid x@example.org member address 'bad'"),
    ('{"version": 1, "lists": [], "bans": [{"list": "y@example.org", "entry": "a@b.c"}]}',
     "which is not in the file"),
])
def test_bad_import_is_a_usage_error(cli: Cli, tmp_path: Path, doc: str, message: str) -> None:
    populate(cli)
    before = cli.export()
    f = tmp_path / "bad.json"
    f.write_text(doc)
    rc, out, err = cli("lists", "import", str(f), "--prune")
    assert rc == 2 and out == ""
    assert err.startswith(f"listgate: {f}: ") and message in err, err
    assert cli.export() == before  # nothing applied


def test_written_data_is_what_the_store_reads(cli: Cli) -> None:
    populate(cli)
    with open_store(cli.cfg) as store:
        assert store.get_list(LIST).default_member_action == "hold"
        assert store.bans(list=LIST) == ["troll@example.com"]


def test_list_aliases_and_json(cli: Cli) -> None:
    """`members list` as well as `ls`, `rm` as well as `remove`, and --json where a
    command prints data (scripts parse that, not the tab-separated lines)."""
    cli.ok("lists", "create", LIST)
    cli.ok("members", "add", LIST, "b@example.org", "a@example.org")
    cli.ok("members", "add", LIST, "bot@example.net", "--nonmember",
           "--moderation-action", "accept")
    cli.ok("bans", "add", "^.*@spam\\.example$")
    assert cli.ok("lists", "list") == cli.ok("lists", "ls") == f"{LIST}\n"
    assert json.loads(cli.ok("lists", "ls", "--json")) == [LIST]
    assert cli.ok("members", "list", LIST) == cli.ok("members", "ls", LIST) == (
        "a@example.org\tdefault\nb@example.org\tdefault\n")
    assert json.loads(cli.ok("members", "list", LIST, "--nonmember", "--json")) == [
        {"address": "bot@example.net", "moderation_action": "accept"}]
    assert json.loads(cli.ok("bans", "list", "--json")) == ["^.*@spam\\.example$"]
    cli.ok("members", "rm", LIST, "a@example.org")
    assert json.loads(cli.ok("members", "ls", LIST, "--json")) == [
        {"address": "b@example.org", "moderation_action": None}]
    cli.ok("bans", "rm", "^.*@spam\\.example$")
    assert cli.ok("bans", "ls") == ""
    cli.ok("lists", "rm", LIST)
    assert json.loads(cli.ok("lists", "ls", "--json")) == []


def test_help_documents_the_exit_status(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parser.parse_args(["members", "list", "--help"])
    out = capsys.readouterr().out
    assert "exit status: 0 success; 1 operational error" in " ".join(out.split())
