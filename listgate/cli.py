"""The ``listgate`` command: serve, check, and the membership store's admin commands."""

from __future__ import annotations

import argparse
import os
import sys

from listgate import __version__
from listgate.config import ConfigError, load

DEFAULT_CONFIG = "/etc/listgate/listgate.cfg"


def build_parser() -> argparse.ArgumentParser:
    config_help = f"config file (default: $LISTGATE_CONFIG or {DEFAULT_CONFIG})"
    # -c is accepted before and after the command; SUPPRESS keeps the command's
    # parser from overwriting a -c given before it
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-c", "--config", default=argparse.SUPPRESS, help=config_help)
    parser = argparse.ArgumentParser(
        prog="listgate",
        description="Milter that rejects, at SMTP time, posts a mailing list would not accept.")
    parser.add_argument("-c", "--config", help=config_help,
                        default=os.environ.get("LISTGATE_CONFIG", DEFAULT_CONFIG))
    parser.add_argument("--version", action="version", version=f"listgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", parents=[parent], help="run the milter daemon")
    serve.set_defaults(func=_serve)
    from listgate import admin, check, configcheck, report

    check.register(sub, parent)
    admin.register(sub, parent)
    report.register(sub, parent)
    configcheck.register(sub, parent)
    return parser


def _serve(args: argparse.Namespace, cfg: object) -> int:
    from listgate.daemon import serve

    return serve(cfg)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    # a command may do without the config (`report LOGFILE...`): needs_config(args)
    needs_config = getattr(args, "needs_config", None)
    try:
        cfg = load(args.config) if needs_config is None or needs_config(args) else None
        return args.func(args, cfg)
    except ConfigError as e:
        # also raised while building the backend (e.g. a world-readable password file)
        print(f"listgate: config error: {e}", file=sys.stderr)
        return 2
