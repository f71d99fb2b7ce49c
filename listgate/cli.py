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
        description="Milter that rejects, at SMTP time, posts a mailing list would not accept.",
        epilog="exit status: 0 success; 1 an operational error (the backend, DNS, the "
               "socket, a file); 2 a usage or config error (the message names file, "
               "section and key).  Each command's own meaning is in its --help.")
    parser.add_argument("-c", "--config", help=config_help,
                        default=os.environ.get("LISTGATE_CONFIG", DEFAULT_CONFIG))
    parser.add_argument("--version", action="version", version=f"listgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", parents=[parent], help="run the milter daemon",
        description="Run the milter daemon in the foreground (under systemd: "
                    "listgate.service): switch to [milter] user, check the socket "
                    "directory and the store, replace a stale socket file nothing listens "
                    "on, then serve [milter] socket until SIGTERM.",
        epilog="signals (to the main process): HUP re-reads the config and reopens the log "
               "(new connections get the new config; socket, umask, timeout, user, group "
               "and tcp_nodelay need a restart); TERM stops accepting, lets the "
               "connections in flight finish (up to [milter] shutdown_timeout) and exits "
               "0; INT stops at once; USR1 logs the cache statistics.  exit status: 0 "
               "stopped by TERM or INT; 1 start-up failed (the socket, a directory, "
               "privileges, the log file, libmilter); 2 the config is invalid.")
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
