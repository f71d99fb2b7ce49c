"""What the posting chain costs per verdict, in-process (part 6 of ``make bench``).

Run alone: ``.venv/bin/python bench/chain.py [--quick] [--json]``; ``bench/protocol.py``
calls :func:`run`.

The daemon's own Engine on a SQLite store (two lists: one at Mailman 3's defaults,
one that needs the body: a moderator password and a header rule), driven by
``listgate check``'s transaction function with an INTERNAL client (no SPF: what is
measured is the list decision).  Warm caches (every sender looked up once first), so
the backend is not what is timed.  Reported, in microseconds per post:

* ``transaction``: MAIL FROM to the end-of-message answer, the whole in-process path;
* ``chain``: :func:`listgate.chain.walk` alone on the same post and facts;
* ``sender_rules``: the walk of only the sender links (no-senders, banned-address,
  emergency, member- and nonmember-moderation, accept) -- what listgate decided
  before the whole chain, so ``chain - sender_rules`` is what the chain adds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from listgate import check as lgcheck  # noqa: E402
from listgate.app import build_engine  # noqa: E402
from listgate.backends.sqlite import SqliteStore  # noqa: E402
from listgate.chain import MAILMAN3_CHAIN, walk  # noqa: E402
from listgate.config import parse  # noqa: E402
from listgate.rules import Context  # noqa: E402

PLAIN, BODY = "plain@lists.test", "body@lists.test"
SENDER_RULES = ("no-senders", "banned-address", "emergency", "member-moderation",
                "nonmember-moderation", "truth")
SENDER_LINKS = tuple(link for link in MAILMAN3_CHAIN if link.rule in SENDER_RULES)


def message(sender: str, rcpt: str) -> bytes:
    return (f"From: Sender <{sender}>\r\nTo: {rcpt}\r\nSubject: benchmark post\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@bench.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            + "Hello list.\r\n" * 100).encode()


def _us(samples: list[float]) -> float:
    return round(1e6 * statistics.median(samples), 1)


def run(quick: bool = False) -> dict[str, Any]:
    """The table's numbers (see the module docstring)."""
    from passlib.hash import sha512_crypt

    n = 300 if quick else 3000
    tmp = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    store = SqliteStore(str(tmp / "chain.db"))
    store.init()
    for lst in (PLAIN, BODY):
        store.create_list(lst)
        store.add_members(lst, [f"m{i}@members.test" for i in range(100)])
    store.set_list_option(BODY, "approval_passwords", [sha512_crypt.hash("pw")])
    store.set_list_option(BODY, "header_matches", [
        {"header": "x-bench-accept", "pattern": "^yes$", "action": "accept"}])
    store.close()
    engine = build_engine(parse(f"[sqlite]\npath = {tmp / 'chain.db'}\n", "bench.cfg"))
    out: dict[str, Any] = {"posts": n, "unit": "microseconds per post (median of 5 runs)"}
    try:
        for lst in (PLAIN, BODY):
            for kind, sender in (("member", "m7@members.test"),
                                 ("nonmember", "stranger@strangers.test")):
                raw = message(sender, lst)

                def one(raw: bytes = raw, sender: str = sender, lst: str = lst) -> dict:
                    return lgcheck.transaction(
                        engine.session("bench"), client_name="localhost",
                        client_ip="127.0.0.1", helo="bench.test", mail_from=sender,
                        rcpts=[lst], auth=None, message=raw)

                first = one()  # warms the caches
                want = "accept" if kind == "member" else "reject"
                if first["action"] != want:
                    raise RuntimeError(f"{lst} {kind}: {first['action']}, expected {want}")
                runs = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    for _ in range(n // 5):
                        one()
                    runs.append((time.perf_counter() - t0) / (n // 5))
                # the walk alone, on the post and facts the engine built
                s = engine.session("bench")
                lgcheck.transaction(s, client_name="localhost", client_ip="127.0.0.1",
                                    helo="bench.test", mail_from=sender, rcpts=[lst],
                                    auth=None, message=raw)
                post = s.post(s._added_headers(), with_body=engine.list_needs_body(lst))
                facts = engine.lookups.list_facts(lst, post.unique_senders(),
                                                  s.primary_sender())
                ctx = Context(passwords=engine.passwords, dmarc=engine.dmarc)
                walks: dict[str, list[float]] = {"chain": [], "sender_rules": []}
                for name, links in (("chain", MAILMAN3_CHAIN), ("sender_rules", SENDER_LINKS)):
                    for _ in range(5):
                        t0 = time.perf_counter()
                        for _ in range(n // 5):
                            walk(links, post, facts, ctx)
                        walks[name].append((time.perf_counter() - t0) / (n // 5))
                out[f"{lst.split('@')[0]}/{kind}"] = {
                    "transaction_us": _us(runs), "chain_us": _us(walks["chain"]),
                    "sender_rules_us": _us(walks["sender_rules"]),
                    "reads_body": engine.list_needs_body(lst)}
    finally:
        engine.backend.close()
    return out


def report(res: dict[str, Any]) -> str:
    lines = [f"Part 6, the posting chain in-process ({res['unit']}, {res['posts']} posts)",
             f"{'list/post':<20}{'body':>6}{'transaction':>13}{'chain':>9}{'sender rules':>14}"]
    for k, v in res.items():
        if isinstance(v, dict):
            lines.append(f"{k:<20}{'yes' if v['reads_body'] else 'no':>6}"
                         f"{v['transaction_us']:>13}{v['chain_us']:>9}{v['sender_rules_us']:>14}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.quick)
    if args.json:
        print(json.dumps(res, indent=2))
    print(report(res), file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
