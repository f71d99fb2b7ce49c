"""``listgate check``: one SMTP transaction through the daemon's own decision code.

The admin's question "what would happen to this message?" gets the daemon's exact
answer: the same Engine, backend, resolver and config, driven stage by stage the way
the milter drives it, with the result printed as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from listgate.app import build_engine
from listgate.config import Config
from listgate.engine import CONTINUE, Decision, Session

log = logging.getLogger("listgate")


def parse_header_block(data: bytes) -> list[tuple[str, str]]:
    """The header fields of a message as (name, value), unfolded the way an MTA hands
    them to a milter: value without the leading space, folds kept, bytes decoded as
    UTF-8 with surrogateescape (pymilter's default)."""
    text = data.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
    fields: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if line == "":
            break
        if line[0] in " \t" and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + "\n" + line)
        elif ":" in line:
            name, _, value = line.partition(":")
            if not name.strip() or " " in name or "\t" in name:
                continue  # a malformed line: an MTA would not pass it as a header
            fields.append((name, value[1:] if value.startswith(" ") else value))
        elif not fields:
            break  # no header block at all (a mbox "From " line is not a header either)
    return fields


def message_body(data: bytes) -> bytes:
    """The body as an MTA hands it to a milter: after the blank line, CRLF line ends."""
    text = data.replace(b"\r\n", b"\n")
    _head, sep, body = text.partition(b"\n\n")
    return body.replace(b"\n", b"\r\n") if sep else b""


def _decision(action: str, d: Decision) -> dict[str, Any]:
    return {"action": action, "smtp_reply": str(d.reply) if d.reply else None,
            "reasons": list(d.reasons)}


def transaction(session: Session, *, client_name: str, client_ip: str | None,
                helo: str | None, mail_from: str, rcpts: list[str], auth: str | None,
                message: bytes | None) -> dict[str, Any]:
    """Drive ``session`` through one transaction; the result as ``listgate check`` prints it."""
    s = session
    out: dict[str, Any] = {"action": "accept", "smtp_reply": None, "stage": "eom",
                           "client_class": None, "spf": None, "rcpts": [], "list": None,
                           "list_verdict": None, "list_rule": None, "list_undecided": False,
                           "reasons": [], "added_headers": [], "auth": None}

    def finish(extra: dict[str, Any]) -> dict[str, Any]:
        out.update(extra)
        out["client_class"] = s.client_class
        if s.spf is not None:
            out["spf"] = {"result": s.spf.result, "identity": s.spf.identity}
        out["rcpts"] = [{"address": r.address, "list": r.list, "status": r.status,
                         "reply": str(r.reply) if r.reply else None} for r in s.rcpts]
        return out

    s.connect(client_name, client_ip)
    if helo is not None:
        s.helo(helo)
    d = s.mail(mail_from, auth)
    if d.refuses:
        return finish({**_decision(d.action, d), "stage": s.stage})
    refusals = []
    for r in rcpts:
        d = s.rcpt(r)
        if d.refuses:
            refusals.append(d)
    if not any(r.status == "accepted" for r in s.rcpts):
        first = refusals[0] if refusals else Decision("reject")
        return finish({**_decision(first.action, first), "stage": "rcpt"})
    for name, value in parse_header_block(message or b""):
        s.header(name, value)
    s.body(message_body(message or b""))
    result = s.eom()
    # after the answer, so that asking cannot change the headers the daemon would add
    out["auth"] = s.auth_facts().as_json()
    action = "accept" if result.decision.action == CONTINUE else result.decision.action
    out.update(_decision(action, result.decision))
    out["list"] = result.list_address
    v = result.list_verdict
    out["list_verdict"] = v.action if v else None
    # the link of the posting chain that decided, and whether it could not be judged
    out["list_rule"] = v.rule if v else None
    out["list_undecided"] = v.undecided if v else False
    if action == "accept":
        # the order the MTA ends up with: each index-0 insertion lands above the ones
        # before it, appends go to the end
        tops = [[n, v] for n, v, i in result.add_headers if i == 0]
        out["added_headers"] = tops[::-1] + [[n, v] for n, v, i in result.add_headers if i]
    return finish({})


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "check", parents=[parent],
        help="what would the daemon answer to this transaction? (prints one JSON object)",
        description="Run the daemon's decision code for one SMTP transaction and print the "
                    "answer as JSON (it always prints JSON; --json is accepted for "
                    "scripts that pass it to every command).",
        epilog="exit status: 0 whatever the verdict; 2 usage or config error")
    p.add_argument("--json", action="store_true", help="the output is JSON already")
    p.add_argument("--client-ip", required=True, help="the SMTP client's IP address")
    p.add_argument("--client-name", help="its verified PTR name (default: [IP], i.e. none)")
    p.add_argument("--helo", help="the HELO/EHLO name (omit for a client that sent none)")
    p.add_argument("--mail-from", required=True, help="envelope sender ('' = null sender)")
    p.add_argument("--rcpt", action="append", required=True, help="a recipient (repeatable)")
    p.add_argument("--auth", help="the SMTP AUTH user name, if the client authenticated")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the daemon's log lines on stderr")
    p.add_argument("message", nargs="?", help="the message file (headers are read), - = stdin")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from listgate.received import normalize_ip

    try:
        ip = normalize_ip(args.client_ip)
    except ValueError:
        print(f"listgate: --client-ip {args.client_ip!r} is not an IP address", file=sys.stderr)
        return 2
    message = None
    if args.message == "-":
        message = sys.stdin.buffer.read()
    elif args.message:
        try:
            with open(args.message, "rb") as f:
                message = f.read()
        except OSError as e:
            print(f"listgate: {args.message}: {e.strerror}", file=sys.stderr)
            return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    log.propagate = False
    engine = build_engine(cfg, log)
    try:
        result = transaction(engine.session("check"), client_name=args.client_name or f"[{ip}]",
                             client_ip=ip, helo=args.helo, mail_from=args.mail_from,
                             rcpts=args.rcpt, auth=args.auth, message=message)
    finally:
        engine.close()
    json.dump(result, sys.stdout, ensure_ascii=True)
    sys.stdout.write("\n")
    return 0
