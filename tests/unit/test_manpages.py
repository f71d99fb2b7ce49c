"""The manual pages are generated from --help and etc/listgate.cfg and cannot drift.

The pages in man/ are what pip and the Debian package install; regenerating them
must give the same bytes (after a change: ``make man``).  And what they are made
from must be complete: every command and alias, every option's help, every config
key with its default."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from listgate import cli, manpage
from listgate.config import SCHEMA

ROOT = Path(__file__).resolve().parents[2]
#: the tree's example config (the package test runs these tests on the installed code)
EXAMPLE = (ROOT / "etc" / "listgate.cfg").read_text(encoding="utf-8")


def generate(name: str) -> str:
    return manpage.listgate_8() if name == "listgate.8" else manpage.listgate_cfg_5(EXAMPLE)


@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_committed_page_is_the_generated_one(name: str) -> None:
    committed = (ROOT / "man" / name).read_text(encoding="utf-8")
    assert committed == generate(name), (
        f"man/{name} is out of date with its sources: run `make man`")


def _plain(roff: str) -> str:
    """The page's text as a reader sees it, near enough to find help texts in."""
    text = re.sub(r"^\.\S+ ?", "", roff, flags=re.M)
    text = text.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")
    return re.sub(r"\s+", " ", text)


def _leaves(parser: argparse.ArgumentParser, path: str = "listgate"):
    for name, aliases, sub in manpage._subcommands(parser):
        yield f"{path} {name}", [f"{path} {a}" for a in aliases], sub
        yield from _leaves(sub, f"{path} {name}")


def test_every_command_alias_and_option_help_is_in_listgate_8() -> None:
    page = _plain(manpage.listgate_8())
    commands = list(_leaves(cli.build_parser()))
    assert len(commands) > 25
    for path, aliases, sub in commands:
        assert path in page
        for a in aliases:
            assert a in page
        if sub.description:
            assert re.sub(r"\s+", " ", sub.description).strip() in page, path
        for action in manpage._options(sub):
            if action.help:
                assert re.sub(r"\s+", " ", manpage._help(action, sub.prog)) in page, (
                    path, action.dest)
        if sub.epilog:
            assert re.sub(r"\s+", " ", sub.epilog) in page
    assert "members list" in page and "lists list" in page and "bans list" in page


def test_every_config_key_and_default_is_in_listgate_cfg_5() -> None:
    _pre, sections, _trailer = manpage.read_example_config(EXAMPLE)
    documented = {(s, k): d for s, keys in sections for k, d, _c in keys}
    assert set(documented) == {(s, k) for s, opts in SCHEMA.items() for k in opts}
    for (s, k), default in documented.items():
        assert default == SCHEMA[s][k].default.strip(), (s, k)
    page = manpage.listgate_cfg_5(EXAMPLE)
    for s, opts in SCHEMA.items():
        assert f'.SH "[{s}]"' in page
        for k in opts:
            assert f".B {manpage._literal(k)} =" in page


@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_man_renders_the_page_without_warnings(name: str) -> None:
    man = shutil.which("man")
    assert man, "man-db is installed by scripts/install-debian-deps.sh"
    p = subprocess.run([man, "--warnings", "-l", str(ROOT / "man" / name)],
                       capture_output=True, text=True, env={"MANWIDTH": "80", "PATH":
                                                            "/usr/bin:/bin"})
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert ("LISTGATE(8)" if name.endswith(".8") else "LISTGATE.CFG(5)") in p.stdout
