"""``listgate report``: what listgate answered, per list, from its own log.

An admin rolling listgate out (``mode = observe``) or running it wants to know how
much it refuses, why, and to whom, without grepping.  The log is the record (every
verdict line carries its reasons and the reply), so the report reads it, rotated
and gzip'ed files included, and counts: accepted / rejected / deferred / tempfailed
(and, in observe mode, "observed": refusals only logged) per list and overall, the
top reasons by short name, and the top rejected senders and client networks.
"""

from __future__ import annotations

import argparse
import gzip
import ipaddress
import json
import os
import re
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from listgate.config import Config
from listgate.logparse import (
    ACCEPTED,
    DEFERRED,
    OBSERVED,
    OUTCOMES,
    REJECTED,
    TEMPFAILED,
    Event,
    Tracker,
    parse_line,
)

NO_LIST = "(no list)"
_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M",
            "%Y-%m-%d")


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A point in time: a date (``2026-11-22``, ``2026-11-22 05:00``) or a duration
    back from now (``90m``, ``24h``, ``7d``, ``2w``).  Local time, as the log's."""
    value = text.strip()
    m = _RELATIVE.fullmatch(value)
    if m:
        return (now or datetime.now()) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    for fmt in _FORMATS:
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            continue
    raise ValueError(f"{text!r} is neither a date (2026-11-22, '2026-11-22 05:00') nor a "
                     "duration back from now (24h, 7d)")


def rotated_files(log_file: str) -> list[str]:
    """The log and its rotations, oldest first: ``FILE.N[.gz]`` (highest N is oldest,
    as logrotate numbers them) and ``FILE-DATE[.gz]`` (dateext), then ``FILE``."""
    directory = os.path.dirname(log_file) or "."
    base = os.path.basename(log_file)
    numbered: list[tuple[int, str]] = []
    dated: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    pattern = re.compile(re.escape(base) + r"(?:\.(\d+)|-(\d{8,10}))(?:\.gz)?")
    for name in names:
        m = pattern.fullmatch(name)
        if m and m.group(1):
            numbered.append((int(m.group(1)), os.path.join(directory, name)))
        elif m:
            dated.append(os.path.join(directory, name))
    files = sorted(dated) + [p for _n, p in sorted(numbered, reverse=True)]
    if os.path.exists(log_file):
        files.append(log_file)
    return files


def read_lines(path: str, warn: Any = None) -> Iterator[str]:
    """The lines of a log file, plain or gzip'ed (by its magic bytes, not its name).

    Undecodable bytes become U+FFFD; a truncated or corrupt gzip file yields what
    could be read and a warning.  Never raises for the file's content.
    """
    def complain(msg: str) -> None:
        if warn is not None:
            warn(f"{path}: {msg}")

    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        opener: Any = gzip.open if gz else open
        with opener(path, "rb") as f:
            for data in f:
                yield data.decode("utf-8", "replace").rstrip("\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        complain(f"truncated or corrupt compressed file ({e}); read what was there")
    except OSError as e:
        complain(f"cannot read: {e.strerror or e}")


def network_of(ip: str | None, v6_prefix: int = 64) -> str | None:
    """The client network a rejection is counted under: /24 for IPv4, /64 (or
    ``v6_prefix``) for IPv6 -- one sender usually owns that much."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def events(lines: Iterable[str], since: datetime | None = None,
           until: datetime | None = None, stats: dict[str, int] | None = None
           ) -> Iterator[Event]:
    """The verdict events of ``lines`` (one log stream, oldest first) in [since, until)."""
    tracker = Tracker()
    counts = stats if stats is not None else {}
    for text in lines:
        counts["lines"] = counts.get("lines", 0) + 1
        line = parse_line(text)
        if line is None:
            counts["unparsed"] = counts.get("unparsed", 0) + 1
            continue
        event = tracker.feed(line)
        if event is None:
            continue
        if (since and event.when < since) or (until and event.when >= until):
            continue
        yield event


class Report:
    """Counters over events; :meth:`as_json` is the ``--json`` output."""

    def __init__(self, top: int = 10, v6_prefix: int = 64) -> None:
        self.top = top
        self.v6_prefix = v6_prefix
        self.total: Counter[str] = Counter()
        self.lists: dict[str, Counter[str]] = {}
        self.reasons: Counter[tuple[str, str]] = Counter()
        self.list_reasons: dict[str, Counter[tuple[str, str]]] = {}
        self.senders: Counter[str] = Counter()
        self.networks: Counter[str] = Counter()
        self.first: datetime | None = None
        self.last: datetime | None = None
        #: rejections per hour and reason, for the chart (not the events: logs are big)
        self.hourly: dict[datetime, Counter[str]] = {}

    def add(self, e: Event) -> None:
        self.total[e.outcome] += 1
        self.first = e.when if self.first is None else min(self.first, e.when)
        self.last = e.when if self.last is None else max(self.last, e.when)
        self.reasons[(e.outcome, e.reason)] += 1
        for name in e.lists or (NO_LIST,):
            self.lists.setdefault(name, Counter())[e.outcome] += 1
            self.list_reasons.setdefault(name, Counter())[(e.outcome, e.reason)] += 1
        if e.outcome == REJECTED:
            self.senders[e.sender if e.sender else "<>"] += 1
            net = network_of(e.ip, self.v6_prefix)
            self.networks[net or "local"] += 1
            hour = e.when.replace(minute=0, second=0, microsecond=0)
            self.hourly.setdefault(hour, Counter())[e.reason] += 1

    def _counts(self, c: Counter[str]) -> dict[str, int]:
        return {o: c.get(o, 0) for o in OUTCOMES}

    def _top_reasons(self, c: Counter[tuple[str, str]], refusals_only: bool) -> list[dict]:
        items = [(k, n) for k, n in c.items() if not refusals_only or k[0] != ACCEPTED]
        items.sort(key=lambda kn: (-kn[1], kn[0]))
        return [{"outcome": o, "reason": r, "count": n} for (o, r), n in items[: self.top]]

    def as_json(self) -> dict[str, Any]:
        def top(c: Counter[str], key: str) -> list[dict[str, Any]]:
            return [{key: k, "count": n}
                    for k, n in sorted(c.items(), key=lambda kn: (-kn[1], kn[0]))[: self.top]]

        return {
            "first": self.first.isoformat(sep=" ") if self.first else None,
            "last": self.last.isoformat(sep=" ") if self.last else None,
            "total": self._counts(self.total),
            "reasons": self._top_reasons(self.reasons, refusals_only=False),
            "lists": {name: {**self._counts(c),
                             "reasons": self._top_reasons(self.list_reasons[name], False)}
                      for name, c in sorted(self.lists.items())},
            "top_rejected_senders": top(self.senders, "sender"),
            "top_rejected_networks": top(self.networks, "network"),
        }

    def as_text(self) -> str:
        out: list[str] = []
        head = ["accepted", "rejected", "deferred", "tempfail", "observed"]
        order = (ACCEPTED, REJECTED, DEFERRED, TEMPFAILED, OBSERVED)
        rows = [("TOTAL", self.total), *sorted(self.lists.items())]
        width = max([len(n) for n, _c in rows] + [4])
        out.append(f"{'list':<{width}}  " + "  ".join(f"{h:>8}" for h in head))
        for name, c in rows:
            out.append(f"{name:<{width}}  " + "  ".join(f"{c.get(o, 0):>8}" for o in order))
        sections = [("Top reasons", [(f"{o:<10} {r}", n) for (o, r), n in
                                     sorted(self.reasons.items(), key=lambda kn: -kn[1])]),
                    ("Top rejected senders", self.senders.most_common()),
                    ("Top rejected client networks", self.networks.most_common())]
        for title, items in sections:
            out.append("")
            out.append(f"{title}:")
            out.extend(f"  {n:>7}  {k}" for k, n in items[: self.top])
            if not items:
                out.append("        (none)")
        return "\n".join(out) + "\n"


def draw_chart(report: Report, path: str) -> None:
    """A PNG of rejections per hour, stacked by reason (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--chart needs matplotlib: pip install 'listgate[chart]' "
                           "(or Debian's python3-matplotlib)") from None
    hours = report.hourly
    reasons = [r for r, _n in Counter(
        {r: n for c in hours.values() for r, n in c.items()}).most_common()]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    try:
        xs = sorted(hours)
        bottom = [0] * len(xs)
        for reason in reasons:
            ys = [hours[h].get(reason, 0) for h in xs]
            ax.bar(xs, ys, width=1 / 24 * 0.9, bottom=bottom, label=reason, align="edge")
            bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
        ax.set_title("listgate: rejections per hour by reason")
        ax.set_ylabel("rejections")
        if reasons:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        else:
            ax.text(0.5, 0.5, "no rejections in this period", ha="center",
                    transform=ax.transAxes)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def build_report(files: list[str], since: datetime | None, until: datetime | None,
                 top: int = 10, v6_prefix: int = 64, warn: Any = None) -> tuple[Report, dict]:
    """Read ``files`` in order (one stream: connection ids carry across rotation)."""
    report = Report(top, v6_prefix)
    stats: dict[str, int] = {"lines": 0, "unparsed": 0}

    def all_lines() -> Iterator[str]:
        for path in files:
            yield from read_lines(path, warn)

    for e in events(all_lines(), since, until, stats):
        report.add(e)
    return report, stats


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "report", parents=[parent],
        help="count what listgate accepted and refused, per list, from its log",
        description="Read listgate's log (default: [milter] log_file and its rotations "
                    "FILE.1, FILE.2.gz..., oldest first) and print counts per list, top "
                    "reasons, top rejected senders and client networks.")
    p.add_argument("logfiles", nargs="*", metavar="LOGFILE",
                   help="log files to read, oldest first (plain or gzip'ed)")
    p.add_argument("--since", help="from this time: a date, '2026-11-22 05:00', or 24h, 7d...")
    p.add_argument("--until", help="up to (not including) this time; same forms as --since")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--top", type=int, default=10, help="entries in each top list (10)")
    p.add_argument("--v6-prefix", type=int, choices=(48, 56, 64), default=64,
                   help="IPv6 client networks are counted per /48, /56 or /64 (64)")
    p.add_argument("--chart", metavar="FILE.png",
                   help="also draw rejections per hour by reason (needs listgate[chart])")
    # with LOGFILEs given the config is not read (a copy of a log can be read anywhere)
    p.set_defaults(func=run, needs_config=lambda args: not args.logfiles)


def run(args: argparse.Namespace, cfg: Config | None) -> int:
    def warn(msg: str) -> None:
        print(f"listgate report: {msg}", file=sys.stderr)

    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except ValueError as e:
        warn(str(e))
        return 2
    files = list(args.logfiles)
    if not files:
        if cfg is None:
            warn("no LOGFILE given and no config to find [milter] log_file in")
            return 2
        if cfg.milter.log_file == "-":
            warn(f"{cfg.path}: [milter] log_file is - (stderr); name the log files to read")
            return 2
        files = rotated_files(cfg.milter.log_file)
        if not files:
            warn(f"{cfg.milter.log_file}: no such file (nor rotations of it)")
            return 1
    report, stats = build_report(files, since, until, args.top, args.v6_prefix, warn)
    if args.chart:
        try:
            draw_chart(report, args.chart)
        except RuntimeError as e:
            warn(str(e))
            return 2
        except OSError as e:
            warn(f"{args.chart}: {e.strerror or e}")
            return 1
    if args.json:
        out = {"files": files, "since": since.isoformat(sep=" ") if since else None,
               "until": until.isoformat(sep=" ") if until else None, **stats,
               **report.as_json()}
        json.dump(out, sys.stdout, ensure_ascii=True)
        sys.stdout.write("\n")
    else:
        period = (f"{report.first:%Y-%m-%d %H:%M:%S} .. {report.last:%Y-%m-%d %H:%M:%S}"
                  if report.first and report.last else "no verdicts")
        sys.stdout.write(f"{len(files)} file(s), {stats['lines']} lines "
                         f"({stats['unparsed']} not listgate's); {period}\n\n")
        sys.stdout.write(report.as_text())
    return 0
