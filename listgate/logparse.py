"""Reading listgate's own log lines back: what ``listgate report`` and the metrics count.

The log (README "The log", written by :mod:`listgate.engine`) is the one record of
every verdict, so the report and the Prometheus counters are both derived from it
rather than from a second set of hooks in the hot path.  Everything here is
pure string work on one line at a time and never raises on garbage: a truncated,
foreign or undecodable line is simply "not an event".

A line is ``DATE TIME LEVEL [conn] QID: message`` (the queue id only once Postfix
assigned one).  The events that matter:

- ``ACCEPT: list=... verdict=... rule=... senders=...: reasons`` (or ``no list recipient``);
- ``REJECT: reasons (550 ...)``, ``TEMPFAIL: ... (451 ...)``, ``DEFER: ... (452 ...)``;
- ``OBSERVE: would REJECT ...`` (observe mode: logged, not done);
- ``listgate VERSION starting:``: connection ids start again at 1 after it.

Every verdict line ends with who was talking (:meth:`listgate.engine.Session.context`):
``; client=NAME[IP] class=EXTERNAL,DYN helo=<NAME> from=<SENDER> spf=RESULT``.  Logs
from before that suffix existed (and ``log_level = debug`` logs) also have
``connect from HOST at IP CLASS`` and ``mail from <ADDR>`` lines, remembered per
connection; ``SPF RESULT identity=...`` and ``DKIM RESULT d=...`` are debug lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

#: the outcomes counted; "observed" = a refusal observe mode only logged
ACCEPTED, REJECTED, TEMPFAILED, DEFERRED, OBSERVED = (
    "accepted", "rejected", "tempfailed", "deferred", "observed")
OUTCOMES = (ACCEPTED, REJECTED, TEMPFAILED, DEFERRED, OBSERVED)

_LINE = re.compile(
    r"(?P<date>\d{4}-\d\d-\d\d) (?P<time>\d\d:\d\d:\d\d)(?:[,.]\d+)? (?P<level>[A-Z]+) "
    r"(?P<msg>.*)")
_CONN = re.compile(r"\[(?P<conn>[^\]\s]+)\]"
                   r"(?: (?!(?:ACCEPT|REJECT|TEMPFAIL|DEFER|OBSERVE|trust):)"
                   r"(?P<qid>[0-9A-Za-z]+):)? (?P<rest>.*)")
_CONNECT = re.compile(r"connect from (?P<host>.*) at (?P<ip>\S+) (?P<cls>[A-Z ]+)$")
_MAIL = re.compile(r"mail from <(?P<addr>[^>]*)>")
_VERDICT = re.compile(r"(?P<tag>ACCEPT|REJECT|TEMPFAIL|DEFER): (?P<rest>.*)")
_OBSERVE = re.compile(r"OBSERVE: would (?P<action>REJECT|TEMPFAIL)(?: at (?P<stage>\w+))?: "
                      r"(?P<rest>.*)")
#: the reply given, in parentheses at the end (its text may itself hold parentheses)
_REPLY = re.compile(r" \((?P<reply>[245]\d\d [245]\.\d{1,3}\.\d{1,3} )")
#: where the engine writes a list name: at the start (``list=X ...``), after another
#: list's summary (``; list=X verdict=``), or after a recipient (greedy: the last
#: ``> list=``, as the recipient itself is the client's text)
_LIST_FIRST = re.compile(r"list=(?P<list>[^\s;:,]+)")
_LIST_MORE = re.compile(r"; list=(?P<list>[^\s;:,]+) verdict=")
_LIST_RCPT = re.compile(r"rcpt to <.*> list=(?P<list>[^\s;:,>]+)(?::|$)")
_SUMMARY = re.compile(r"list=(?P<list>\S+) verdict=(?P<verdict>\w+(?:\(\w+\))?) "
                      r"rule=(?P<rule>[\w.-]+) senders=(?P<senders>\S*?):")
_STARTING = re.compile(r"listgate \S+ starting:")
#: the verdict line's suffix: who was talking (engine.Session.context)
_CONTEXT = re.compile(r"; client=(?P<host>.*)\[(?P<ip>[^\]]*)\] class=(?P<cls>\S+) "
                      r"helo=<(?P<helo>.*)> from=<(?P<from>.*)>(?: auth=(?P<auth>.*))? "
                      r"spf=(?P<spf>[a-z]+|-)$")
_INTERNAL_ERROR = re.compile(r"internal error in (?P<stage>envfrom|envrcpt|eom)\b"
                             r"|refusing after an earlier internal error")

#: reason texts (engine.py) -> a short, bounded name.  Order matters: first match wins.
_REASONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), name) for p, name in (
        (r"^numeric hello name", "HELO is a bare IP"),
        (r"^spam from self", "HELO is ours"),
        (r"^no HELO before MAIL FROM", "no HELO"),
        (r"^PTR is .* from non-loopback IP", "bogus PTR"),
        (r"^hello SPF fail", "HELO SPF fail"),
        (r"^SPF (fail|softfail|neutral|none|permerror|temperror|pass)\b", r"SPF \1"),
        (r"^external client using internal domain", "forged internal domain"),
        (r"^internal client using foreign domain", "foreign domain from inside"),
        (r"accepts posts from INTERNAL clients", "internal-only list"),
        (r"internal-only, path not trusted", "internal-only list, untrusted path"),
        (r"backend error", "backend error"),
        (r"one list post per transaction", "one list per transaction"),
        (r"^internal error", "internal error"),
        (r"unchecked", "unchecked (backend error)"),
        (r"^no list recipient", "no list recipient"),
    ))
#: the list verdicts a summary can carry (verdict.py), used as the reason name
_VERDICT_NAMES = frozenset({"accept", "reject", "discard", "hold(member)", "hold(nonmember)",
                            "hold", "tempfail"})


def rule_name(rule: str) -> str:
    """The chain link that decided, as a bounded name: a header rule's link is named
    after the list or the site line it came from (``header-match-dev.lists.test-0``),
    which would make the name free text."""
    return "header-match" if rule.startswith("header-match") else rule
OTHER = "other"


def normalize_reason(text: str) -> str:
    """A short name for a verdict's reasons, from a small fixed set (so it can be a
    metrics label and a report key): ``hold(nonmember)``, ``SPF fail``, ``HELO is a
    bare IP``...  A list verdict is named by what the list would do with the post."""
    m = _SUMMARY.search(text)
    if m and m.group("verdict") in _VERDICT_NAMES:
        return m.group("verdict")
    for pattern, name in _REASONS:
        found = pattern.search(text)
        if found:
            return found.expand(name)
    return OTHER


@dataclass
class Line:
    """One parsed log line (``conn`` is None for daemon-wide lines)."""

    when: datetime
    level: str
    message: str
    conn: str | None = None
    qid: str | None = None
    rest: str = ""


def parse_line(text: str) -> Line | None:
    """The parts of one log line, or None for anything that is not one of ours."""
    m = _LINE.match(text)
    if not m:
        return None
    try:
        when = datetime.strptime(f"{m.group('date')} {m.group('time')}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return parse_message(m.group("msg"), when, m.group("level"))


def parse_message(msg: str, when: datetime, level: str = "INFO") -> Line:
    """A log record's message (without date and level) as a :class:`Line`."""
    line = Line(when, level, msg, rest=msg)
    c = _CONN.match(msg)
    if c:
        line.conn, line.qid, line.rest = c.group("conn"), c.group("qid"), c.group("rest")
    return line


@dataclass
class Event:
    """One verdict: what was answered, why, and to whom."""

    when: datetime
    outcome: str  #: one of OUTCOMES
    reason: str  #: normalize_reason() of the reasons
    lists: tuple[str, ...] = ()
    sender: str | None = None  #: the first of the list's senders, else the envelope sender
    ip: str | None = None
    reply: str | None = None
    text: str = ""  #: the full reasons, for a reader who wants the detail
    spf: str | None = None  #: the transaction's SPF result (None: not checked or not known)
    spf_identity: str = "mailfrom"  #: "helo" for a null sender


@dataclass
class _Conn:
    ip: str | None = None
    mail_from: str | None = None


@dataclass
class Tracker:
    """Turns a stream of lines into events, remembering each connection's client and
    sender (connection ids restart with the daemon, so a ``starting:`` line forgets)."""

    conns: dict[str, _Conn] = field(default_factory=dict)
    max_conns: int = 100000

    def feed(self, line: Line) -> Event | None:
        if line.conn is None:
            if _STARTING.match(line.message):
                self.conns.clear()
            return None
        rest = line.rest
        conn = self.conns.get(line.conn)
        if rest.startswith("connect from "):
            m = _CONNECT.match(rest)
            if len(self.conns) >= self.max_conns:
                self.conns.clear()  # a bound against logs that never restart
            ip = m.group("ip") if m else None
            self.conns[line.conn] = _Conn(ip=None if ip == "local" else ip)
            return None
        if conn is None:
            conn = self.conns[line.conn] = _Conn()
        if rest.startswith("mail from <"):
            m = _MAIL.match(rest)
            if m:
                conn.mail_from = m.group("addr")
            return None
        return verdict(line, conn.ip, conn.mail_from)

def verdict(line: Line, ip: str | None = None, mail_from: str | None = None) -> Event | None:
    """The verdict a connection's line records, or None if it records none."""
    rest = line.rest
    m = _VERDICT.match(rest)
    if m:
        tag, body = m.group("tag"), m.group("rest")
        outcome = {"ACCEPT": ACCEPTED, "REJECT": REJECTED, "TEMPFAIL": TEMPFAILED,
                   "DEFER": DEFERRED}[tag]
    else:
        m = _OBSERVE.match(rest)
        if m:
            outcome, body = OBSERVED, m.group("rest")
        elif _INTERNAL_ERROR.match(rest):
            return Event(line.when, TEMPFAILED, "internal error", ip=ip, sender=mail_from,
                         reply="451 4.3.0", text=rest)
        else:
            return None
    spf = None
    ctx = _CONTEXT.search(body)
    if ctx:
        body = body[: ctx.start()]
        ip = None if ctx.group("ip") == "local" else ctx.group("ip")
        mail_from = ctx.group("from")
        spf = None if ctx.group("spf") == "-" else ctx.group("spf")
    reply = None
    starts = list(_REPLY.finditer(body)) if body.endswith(")") else []
    if starts:
        r = starts[-1]
        reply, body = body[r.start() + 2: -1], body[: r.start()]
    summary = _SUMMARY.search(body)
    if outcome == ACCEPTED and summary:
        # an accept is named by the rule that let it through (member-moderation...)
        reason = rule_name(summary.group("rule"))
    else:
        reason = normalize_reason(body)
    lists = _lists(body)
    sender = mail_from
    if summary and summary.group("senders") not in ("", "-"):
        sender = summary.group("senders").split(",")[0]
    return Event(line.when, outcome, reason, lists=lists, sender=sender, ip=ip, reply=reply,
                 text=body, spf=spf, spf_identity="mailfrom" if mail_from else "helo")


def _lists(body: str) -> tuple[str, ...]:
    """The lists a verdict's text names, read only where the engine writes them."""
    m = _LIST_RCPT.match(body)
    if m:
        return (m.group("list"),)
    m = _LIST_FIRST.match(body)
    if not m:
        return ()
    more = (x.group("list") for x in _LIST_MORE.finditer(body))
    return tuple(dict.fromkeys((m.group("list"), *more)))
