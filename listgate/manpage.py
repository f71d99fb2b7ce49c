"""The manual pages, generated from the sources admins already see, so they cannot drift.

* ``listgate(8)``: the command line as :func:`listgate.cli.build_parser` defines it --
  every command, alias, option, help text and epilog (the exit status, the signals),
  the same text ``--help`` prints;
* ``listgate.cfg(5)``: ``etc/listgate.cfg``, the commented example config, whose
  comment above each ``# key = default`` line is that key's documentation.

The pages are kept in the tree (``man/``) so that ``pip install`` and the Debian
package install them without running anything; ``tests/unit/test_manpages.py``
regenerates them and fails when the files differ.  After changing a help text or a
comment of etc/listgate.cfg: ``make man`` (``python3 -m listgate.manpage man``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from listgate import __version__
from listgate.config import SCHEMA

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "etc" / "listgate.cfg"


def _text(s: str) -> str:
    """Running text for roff: backslashes escaped, no line starting with . or '."""
    s = re.sub(r"\s+", " ", s.replace("\\", "\\e")).strip()
    return "\\&" + s if s else s


def _literal(s: str) -> str:
    """A command or option: its hyphens are minus signs (what the user types)."""
    return s.replace("\\", "\\e").replace("-", "\\-")


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        m = action.metavar
        return m if isinstance(m, str) else " ".join(m)
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _arg_usage(action: argparse.Action) -> str:
    mv = _metavar(action)
    if action.nargs == "?":
        mv = f"[{mv}]"
    elif action.nargs == "*":
        mv = f"[{mv} ...]"
    elif action.nargs == "+":
        mv = f"{mv} [{mv} ...]"
    if not action.option_strings:
        return mv
    opt = action.option_strings[0] if len(action.option_strings) == 1 else (
        min(action.option_strings, key=len))
    takes = action.nargs != 0
    part = f"{opt} {mv}" if takes else opt
    return part if action.required else f"[{part}]"


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        try:
            text = text % {**vars(action), "prog": prog}
        except (KeyError, TypeError, ValueError):
            pass
    return text


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
            and not isinstance(a, argparse._SubParsersAction)]


def _subcommands(parser: argparse.ArgumentParser
                 ) -> list[tuple[str, list[str], argparse.ArgumentParser]]:
    """``(name, aliases, parser)`` of each subcommand, in definition order."""
    out: list[tuple[str, list[str], argparse.ArgumentParser]] = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            seen: dict[int, tuple[str, list[str], argparse.ArgumentParser]] = {}
            for name, sub in a.choices.items():
                if id(sub) in seen:
                    seen[id(sub)][1].append(name)
                else:
                    seen[id(sub)] = (name, [], sub)
                    out.append(seen[id(sub)])
    return out


def _synopsis(path: str, parser: argparse.ArgumentParser) -> str:
    parts = [_arg_usage(a) for a in _options(parser)]
    if _subcommands(parser):
        parts.append("COMMAND ...")
    return " ".join([path, *parts])


def _command_section(path: str, aliases: list[str], parser: argparse.ArgumentParser,
                     out: list[str]) -> None:
    subs = _subcommands(parser)
    out.append(f'.SS "{_literal(path)}"')
    if aliases:
        out.append(_text(f"Also: {', '.join(aliases)}."))
        out.append(".br")
    out.append(f".B {_literal(_synopsis(path, parser))}")
    out.append(".PP")
    if parser.description:
        out.append(_text(parser.description))
    for a in _options(parser):
        if a.dest == "config" and path != "listgate":
            continue  # -c/--config: documented once, under listgate
        out.append(".TP")
        names = ", ".join(a.option_strings) or _metavar(a)
        mv = f" {_metavar(a)}" if a.option_strings and a.nargs != 0 else ""
        out.append(f".B {_literal(names + mv)}")
        out.append(_text(_help(a, parser.prog)) or "\\&")
    if parser.epilog:
        out.append(".PP")
        out.append(_text(parser.epilog))
    for name, als, sub in subs:
        _command_section(f"{path} {name}", [f"{path} {x}" for x in als], sub, out)


def listgate_8(parser: argparse.ArgumentParser | None = None) -> str:
    """listgate(8), from the argparse parser ``--help`` prints."""
    if parser is None:
        from listgate.cli import build_parser

        parser = build_parser()
    from listgate.cli import DEFAULT_CONFIG

    d = SCHEMA
    out = [".\\\" Generated by listgate/manpage.py from listgate/cli.py's parser: do not edit.",
           f'.TH LISTGATE 8 "" "listgate {__version__}" "System Administration"',
           ".SH NAME",
           "listgate \\- " + _text(parser.description or "").rstrip("."),
           ".SH SYNOPSIS",
           f".B {_literal(_synopsis('listgate', parser))}",
           ".SH DESCRIPTION",
           _text("listgate is a milter for Postfix and sendmail in front of mailing lists: "
                 "it rejects at SMTP time the posts the list manager (its embedded SQLite "
                 "store, Mailman 3 over its REST API, or Mailman 2's list files) would not "
                 "accept, so spam never reaches the moderation queue and forged senders "
                 "never get a bounce.  It also checks HELO and SPF, verifies DKIM for lists "
                 "that require authenticated senders, and adds Received-SPF and "
                 "Authentication-Results headers."),
           ".PP",
           _text("listgate serve runs the daemon; the other commands check a config or a "
                 "post, manage the SQLite store, and summarise the log.  Each command's "
                 "--help prints the text of its section below."),
           ".SH COMMANDS"]
    for name, als, sub in _subcommands(parser):
        _command_section(f"listgate {name}", [f"listgate {x}" for x in als], sub, out)
    out += [".SH OPTIONS"]
    for a in _options(parser):
        out.append(".TP")
        mv = f" {_metavar(a)}" if a.nargs != 0 else ""
        out.append(f".B {_literal(', '.join(a.option_strings) + mv)}")
        out.append(_text(_help(a, parser.prog)))
    out += [".SH EXIT STATUS", _text(parser.epilog or ""),
            ".SH ENVIRONMENT", ".TP", ".B LISTGATE_CONFIG",
            _text(f"The config file when -c is not given (default {DEFAULT_CONFIG})."),
            ".SH FILES",
            ".TP", f".B {_literal(DEFAULT_CONFIG)}", _text("The configuration; see "
                                                        "listgate.cfg(5)."),
            ".TP", f".B {_literal(d['milter']['socket'].default.split(':', 1)[1])}",
            _text("The milter socket ([milter] socket)."),
            ".TP", f".B {_literal(d['sqlite']['path'].default)}",
            _text("The embedded store ([sqlite] path)."),
            ".SH SEE ALSO",
            ".BR listgate.cfg (5),",
            ".BR postconf (5),",
            ".BR master (5),",
            ".BR sendmail (8)"]
    return "\n".join(out) + "\n"


def read_example_config(text: str) -> tuple[list[str], list[tuple[str, list[tuple[
        str, str, list[str]]]]], list[str]]:
    """etc/listgate.cfg as (preamble lines, [(section, [(key, default, comment
    lines)])], trailing comment lines after the last key)."""
    preamble: list[str] = []
    sections: list[tuple[str, list[tuple[str, str, list[str]]]]] = []
    pending: list[str] = []
    for line in text.splitlines():
        m = re.fullmatch(r"\[([a-z0-9]+)\]", line.strip())
        if m and m.group(1) in SCHEMA:
            if not sections:
                preamble, pending = pending, []
            sections.append((m.group(1), []))
            continue
        k = re.fullmatch(r"# ([a-z_0-9]+) =(?: (.*))?", line)
        if k and sections and k.group(1) in SCHEMA[sections[-1][0]]:
            sections[-1][1].append((k.group(1), k.group(2) or "", pending))
            pending = []
            continue
        if line.startswith("#"):
            pending.append(line[1:].strip())
        elif not line.strip() and pending and not sections:
            pending.append("")
    return preamble, sections, pending


def listgate_cfg_5(text: str | None = None) -> str:
    """listgate.cfg(5), from the commented example config."""
    if text is None:
        text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    preamble, sections, trailer = read_example_config(text)
    out = [".\\\" Generated by listgate/manpage.py from etc/listgate.cfg: do not edit.",
           f'.TH LISTGATE.CFG 5 "" "listgate {__version__}" "File Formats"',
           ".SH NAME",
           "listgate.cfg \\- listgate configuration file",
           ".SH SYNOPSIS",
           ".B /etc/listgate/listgate.cfg",
           ".SH DESCRIPTION"]
    paragraph: list[str] = []
    for line in [*preamble, ""]:
        if line:
            paragraph.append(line)
        elif paragraph:
            out += [_text(" ".join(paragraph)), ".PP"]
            paragraph = []
    out.append(_text("Each key below is shown with its default.  listgate config check "
                     "validates a file and shows what it will do; listgate serve re-reads "
                     "the file on SIGHUP (see listgate(8))."))
    for section, keys in sections:
        out.append(f'.SH "[{section}]"')
        for key, default, comment in keys:
            out += [".TP", f".B {_literal(key)} = {_literal(default)}".rstrip(),
                    _text(" ".join(comment)) or "\\&"]
    if trailer:
        out += [".SH PER-LIST SECTIONS"]
        prose = [c for c in trailer if not re.match(r"\[|[a-z_]+ = ", c)]
        example = [c for c in trailer if re.match(r"\[|[a-z_]+ = ", c)]
        out.append(_text(" ".join(prose)))
        if example:
            out += [".PP", ".nf", *(_literal(c).replace("%", "%") for c in example), ".fi"]
    out += [".SH SEE ALSO", ".BR listgate (8)"]
    return "\n".join(out) + "\n"


PAGES = {"listgate.8": listgate_8, "listgate.cfg.5": listgate_cfg_5}


def main(argv: list[str] | None = None) -> int:
    """``python3 -m listgate.manpage DIR``: write both pages into DIR."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python3 -m listgate.manpage DIR", file=sys.stderr)
        return 2
    target = Path(args[0])
    target.mkdir(parents=True, exist_ok=True)
    for name, render in PAGES.items():
        (target / name).write_text(render(), encoding="utf-8")
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
