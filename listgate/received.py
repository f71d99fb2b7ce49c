"""The ``Received:`` chain: which server handed us this post, and may we believe it?

The "trusted submission path" rule (after the Mailman ``TrustedServerModerate``
handler): a post is trusted when it reached us from one of the organisation's
submission servers (which only take authenticated mail) through known relays only.
Every ``Received:`` header is text some server wrote, and any server can write any
text, so the chain is read from the one fact nobody can forge, the IP address of the
client connected to our MTA, and a header is only believed when a server we already
trust wrote it:

* the header on top was written by the connecting client; if that client is a known
  relay, the IP in that header's ``from`` clause is the relay's own client, which is
  the next hop; and so on down, one header per relay;
* the first hop that is not a relay must be a submission server; the header below it
  (written by the submission server) names who connected to it;
* that client is trusted as the author's own (the MUA) only when the submission server
  recorded an authenticated submission (RFC 3848 ``with ESMTPA``/``ESMTPSA``...), or
  when no older header has a ``from`` clause: otherwise another server handed the post
  to the submission server, which never authenticated its author (the write-up's
  second route, "MUA -> unknown server -> outgoing server", is refused);
* older headers are only looked at for that: whether one claims a ``from`` clause.
  What they say is never believed, since the MUA side could have written them.

Only the ``from`` clause's address is used: the part the receiving server fills in
from the TCP peer, never the HELO name the client chose.  Pure logic, no pymilter:
the engine passes in the collected header values and its configured networks.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: a header value is cut to this many characters before any parsing: the ``from``
#: clause is always at its start, and bounding the input bounds the work whatever a
#: client sends (libmilter may hand us up to 64 KiB per header)
MAX_PARSE_CHARS = 4096
#: RFC 3848 / RFC 6531 ``with`` protocols that say the client authenticated (SMTP AUTH)
AUTH_PROTOCOLS = frozenset({"ESMTPA", "ESMTPSA", "LMTPA", "LMTPSA",
                            "UTF8SMTPA", "UTF8SMTPSA", "UTF8LMTPA", "UTF8LMTPSA"})

_WS = re.compile(r"[ \t\r\n]+")
#: an address inside brackets: ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, ``[2001:db8::1]``,
#: ``[fe80::1%7]``.  Bounded repeats over a small charset: no catastrophic backtracking.
_IP = r"[0-9A-Fa-f:.]{2,45}(?:%[0-9A-Za-z_.-]{1,32})?"
#: ``skip`` marks a bracket that is a value the *client* supplied (Exim's ``helo=[..]``
#: and ``ident=[..]``, qmail-style ``HELO [..]``), not the address the server recorded
_BRACKETED = re.compile(r"(?P<skip>=|\bhelo\s+)?\[(?:ipv6:)?(?P<ip>" + _IP + r")\]",
                        re.IGNORECASE | re.ASCII)
_BRACKET_TOKEN = re.compile(r"\[(?:ipv6:)?(?P<ip>" + _IP + r")\](?::\d{1,5})?",
                            re.IGNORECASE | re.ASCII)
#: words that end the ``from`` clause at the top level (outside comments)
_CLAUSE_END = re.compile(r" (?:by|with|id|via|for)(?= |$)", re.IGNORECASE | re.ASCII)
_BY = re.compile(r"(?:^|\s)by\s+([^\s;]{1,255})", re.IGNORECASE | re.ASCII)
_WITH = re.compile(r"(?:^|\s)with\s+([A-Za-z0-9][A-Za-z0-9_.-]{0,39})", re.IGNORECASE | re.ASCII)
#: qmail-queue's line, which qmail writes just above qmail-smtpd's own for mail taken
#: from the network: on a submission server the line naming the client is the next one
_QMAIL_FROM_NETWORK = re.compile(r"\(qmail \d{1,10} invoked from network\)",
                                 re.IGNORECASE | re.ASCII)


@dataclass(frozen=True)
class ReceivedHop:
    """What one ``Received:`` header says about the connection it records."""

    #: the connecting client's IP as the receiving server recorded it (canonical form,
    #: IPv4-mapped IPv6 turned into IPv4, no zone index)
    ip: str
    #: the first word of the ``from`` clause: usually the HELO name, or Exim's verified
    #: host name or ``[IP]``; informative only, the client chose it
    from_name: str = ""
    #: the receiving server's name from the ``by`` clause, None when absent
    by_name: str | None = None
    #: the ``with`` protocol as written (``ESMTPSA``, ``esmtps``, ``Microsoft``...)
    protocol: str | None = None

    @property
    def authenticated(self) -> bool:
        """The receiving server says the client used SMTP AUTH (RFC 3848 ``ESMTPA``...)."""
        return (self.protocol or "").upper() in AUTH_PROTOCOLS


@dataclass(frozen=True)
class TrustResult:
    """The answer of :func:`trusted_path`, with a reason fit for the log."""

    trusted: bool
    #: the submission server the post came through, when trusted
    submission_ip: str | None
    reason: str
    #: the IPs walked, from the connecting client down (the MUA last, when known)
    hops: tuple[str, ...] = ()


@functools.lru_cache(maxsize=4096)
def normalize_ip(ip: str) -> str:
    """A canonical IP string: no ``[]``/``IPv6:``/zone index, IPv4-mapped made IPv4.

    The zone index (``fe80::1%7``, Exchange writes it) names an interface of the
    server that wrote it, which means nothing here and would defeat network tests.
    Raises ValueError on anything that is not an ASCII IP address (``ipaddress``
    alone would read some non-ASCII digits).
    """
    text = ip.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    text = text.split("%", 1)[0]
    if not text.isascii():
        raise ValueError(f"not an IP address: {ip!r}")
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return str(addr)


def _ip_or_none(text: str) -> str | None:
    try:
        return normalize_ip(text)
    except ValueError:
        return None


def in_nets(ip: str, nets: Sequence[Network]) -> bool:
    """``ip`` (canonical, see :func:`normalize_ip`) is in one of ``nets``."""
    addr = _address(ip)
    return any(addr.version == n.version and addr in n for n in nets)


@functools.lru_cache(maxsize=4096)
def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parsed once: a connection's address is tested against several network lists."""
    return ipaddress.ip_address(ip)


def _split_from_clause(text: str) -> tuple[list[tuple[bool, str]], str] | None:
    """Cut ``text`` (what follows ``from``) into the ``from`` clause and the rest.

    The clause is returned as segments ``(is_comment, text)``, comments being the
    top-level parenthesised groups (nested ones stay inside).  The clause ends at the
    first ``by``/``with``/``id``/``via``/``for`` word or ``;`` outside comments, so an
    address in the ``by`` part (Exchange's ``by host (10.0.0.6)``) is never taken for
    the client's.  Unbalanced parentheses in the clause give None: no MTA writes that,
    and guessing where a comment ends could be steered by whoever wrote the text.
    One linear pass.
    """
    segments: list[tuple[bool, str]] = []
    depth = 0
    top_start = 0
    comment_start = 0
    end = len(text)
    for i, ch in enumerate(text):
        if ch == "(":
            if depth == 0:
                segments.append((False, text[top_start:i]))
                comment_start = i + 1
            depth += 1
        elif ch == ")":
            if depth == 0:
                return None
            depth -= 1
            if depth == 0:
                segments.append((True, text[comment_start:i]))
                top_start = i + 1
        elif depth == 0 and (ch == ";" or (ch == " " and _CLAUSE_END.match(text, i))):
            end = i
            break
    else:
        if depth:
            return None
    segments.append((False, text[top_start:end]))
    return segments, text[end:]


def _comment_ip(comment: str) -> str | None:
    """The address a server recorded in one comment of the ``from`` clause.

    Either a bracketed address that is not a client-supplied ``helo=``/``ident=``/
    ``HELO`` value (Postfix/sendmail/Courier/Gmail ``(name [IP])``, Exim
    ``([IP]:port helo=...)``), or a comment that is one bare address (Exchange and
    Office 365 ``(10.0.0.5)``/``(2603:10b6::16)``, qmail ``(192.0.2.1)`` or
    ``(ident@192.0.2.1)``, where the address qmail recorded comes after the last ``@``).
    """
    for m in _BRACKETED.finditer(comment):
        if m.group("skip"):
            continue
        ip = _ip_or_none(m.group("ip"))
        if ip is not None:
            return ip
    body = comment.strip()
    if body and " " not in body:
        return _ip_or_none(body.rsplit("@", 1)[-1])
    return None


def _by_and_with(rest: str) -> tuple[str | None, str | None]:
    """The ``by`` name and ``with`` protocol from what follows the ``from`` clause."""
    out: list[str] = []
    depth = 0
    for ch in rest:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif depth == 0:
            if ch == ";":
                break
            out.append(ch)
    plain = "".join(out)
    by = _BY.search(plain)
    proto = _WITH.search(plain)
    return (by.group(1) if by else None), (proto.group(1) if proto else None)


def parse_received(value: str) -> ReceivedHop | None:
    """Parse one ``Received:`` header value into the hop it records.

    ``value`` is the header value as a milter gets it (no name, maybe folded with
    ``\\n\\t`` or ``\\r\\n ``).  Returns None when there is no ``from`` clause with an
    address the receiving server recorded: local submissions (``by host (Postfix,
    from userid 0)``, Exim ``with local``, sendmail ``(from user@localhost)``, qmail
    ``(qmail 1 invoked ...)``), garbage, or an address only in the ``by`` part.

    Which address is believed, given that the client chose the HELO name:

    1. the first address in a comment of the ``from`` clause that the server recorded
       (see :func:`_comment_ip`): Postfix neuters ``()`` in HELO names and sendmail,
       Exim and qmail refuse or mask them, so a client cannot fake such a comment,
       while its HELO (``from 203.0.113.9 (...)``, ``from [10.0.0.1] (...)``, even
       Postfix's multi-word ``from a [10.0.0.5] b (...)``) stays outside comments;
    2. only when no comment records one: a leading ``[IP]`` (Exim's form for a client
       without a verified host name, ``from [192.0.2.1] (helo=foo)``);
    3. sendmail's HELO-less ``(from host [IP]) by ...``: the bracketed address inside.
    """
    text = _WS.sub(" ", value[:MAX_PARSE_CHARS]).strip()
    lower = text[:6].lower()
    if lower.startswith("(from "):
        return _parse_paren_from(text)
    if not lower.startswith("from "):
        return None
    split = _split_from_clause(text[5:])
    if split is None:
        return None
    segments, rest = split
    head = segments[0][1].strip()
    from_name = head.split(" ", 1)[0][:255]
    ip = next((found for is_comment, seg in segments if is_comment
               for found in [_comment_ip(seg)] if found is not None), None)
    if ip is None and (m := _BRACKET_TOKEN.fullmatch(from_name)):
        ip = _ip_or_none(m.group("ip"))
    if ip is None:
        return None
    by, proto = _by_and_with(rest)
    return ReceivedHop(ip, from_name, by, proto)


def _parse_paren_from(text: str) -> ReceivedHop | None:
    """sendmail without a HELO name: ``(from host.example [192.0.2.1]) by ...``."""
    close = text.find(")")
    if close < 0:
        return None
    inner = text[6:close].strip()
    ip = next((found for m in _BRACKETED.finditer(inner) if not m.group("skip")
               for found in [_ip_or_none(m.group("ip"))] if found is not None), None)
    if ip is None:
        return None
    by, proto = _by_and_with(text[close + 1:])
    return ReceivedHop(ip, inner.split(" ", 1)[0][:255], by, proto)


def _untrusted(reason: str, hops: list[str]) -> TrustResult:
    return TrustResult(False, None, "untrusted: " + reason, tuple(hops))


def has_from_clause(value: str) -> bool:
    """This ``Received:`` value claims that a server took the message from another host.

    This is the test for "older lines show it came from another server", so it errs
    towards yes: a value counts when :func:`parse_received` reads a client address in
    it, and also when it merely starts with ``from`` and its address cannot be read
    (an unknown format, a damaged line), since guessing "no" there would trust a post
    on the strength of a line we could not read.  Local submissions do not count, so a
    laptop's own MTA lines under its submission leave it trusted: Postfix pickup
    ``by host (Postfix, from userid 1000)``, sendmail ``(from bob@localhost) by ...``,
    qmail ``(qmail 1 invoked by uid 1000)`` (none start with ``from``), and Exim's
    ``from bob by host with local`` (any ``with local...`` protocol).
    """
    if parse_received(value) is not None:
        return True
    text = _WS.sub(" ", value[:MAX_PARSE_CHARS]).strip()
    if text[:5].lower() != "from ":
        return False
    split = _split_from_clause(text[5:])
    _by, proto = _by_and_with(split[1] if split is not None else text)
    return not (proto or "").lower().startswith("local")


def _older_from_clause(headers: Sequence[str], start: int) -> int | None:
    """The index of the first header from ``start`` on that has a ``from`` clause."""
    return next((i for i in range(start, len(headers)) if has_from_clause(headers[i])), None)


def _at_submission(headers: Sequence[str], index: int, server: str, path: list[str],
                   hops: list[str], submission: Sequence[Network]) -> TrustResult:
    """The path reached submission server ``server``; ``headers[index]`` is its line.

    Trusted when that line records an authenticated submission (the server checked
    the author, whatever came before), or when no older header has a ``from`` clause
    (the client connected straight to it, so it is the MUA).  Otherwise another server
    handed the post over and nobody authenticated its author: untrusted.

    The submission server's own steps are followed first, since the line below one of
    them is the server's too: a client on loopback (a content filter re-injecting,
    amavis, or local webmail over SMTP), another of our submission servers, and qmail's
    ``(qmail N invoked from network)`` line that sits above qmail-smtpd's.  A line with
    no client at all (a local submission on the server, or garbage) names no MUA, and
    is trusted only with nothing older claiming a ``from`` clause either.
    """
    first = server
    while index < len(headers):
        value = headers[index]
        if _QMAIL_FROM_NETWORK.match(_WS.sub(" ", value[:64]).strip()):
            index += 1
            continue
        line = parse_received(value)
        if line is None:
            older = _older_from_clause(headers, index + 1)
            if older is None:
                break
            return _untrusted(f"Received header {index + 1}, written by submission server "
                              f"{server}, names no client, and older Received header "
                              f"{older + 1} shows it came from another server", hops)
        hops.append(line.ip)
        proto = f"with {line.protocol}" if line.protocol else "no 'with' protocol"
        if line.authenticated:
            path[-1] += f", MUA {line.ip} (authenticated: {proto})"
            break
        if _address(line.ip).is_loopback or in_nets(line.ip, submission):
            if in_nets(line.ip, submission):
                server = line.ip
                path.append(f"submission {line.ip}")
            else:
                path.append(f"loopback {line.ip}")
            index += 1
            continue
        older = _older_from_clause(headers, index + 1)
        if older is None:
            path[-1] += f", MUA {line.ip} ({proto}, no older Received from another server)"
            break
        return _untrusted(f"submission server {server} received it from {line.ip} without "
                          f"authentication ({proto}), and older Received header {older + 1} "
                          "shows it came from another server", hops)
    return TrustResult(True, first, "path trusted: " + " -> ".join(path), tuple(hops))


def trusted_path(received_values: Sequence[str], client_ip: str | None,
                 submission: Sequence[Network], relays: Sequence[Network]) -> TrustResult:
    """Did this post come from a submission server through known relays only?

    ``received_values`` are the message's ``Received:`` values in header order (top,
    i.e. newest, first); ``client_ip`` is the address connected to our MTA.  The hops
    are the client, then the ``from`` address of each header in turn:

    * a hop in ``relays`` is skipped, and the next header is the one that relay wrote:
      it **must** parse (see below); a relay that wrote no header at all also fails;
    * the first hop that is not a relay must be in ``submission``, else the path is
      untrusted: that hop could have written everything below it.  A hop listed in
      both is taken as a relay (as the original handler did), so list a submission
      server that also relays only under ``submission`` if its clients may be MUAs;
    * the submission server's own line (the next header) must record an authenticated
      submission (``with ESMTPA``/``ESMTPSA``/``LMTPA``/``LMTPSA``, RFC 3848, or the
      RFC 6531 ``UTF8`` forms), or be the oldest header with a ``from`` clause (see
      :func:`has_from_clause`): then the client it names is the MUA, which may be
      anything.  An unauthenticated line with an older ``from`` line below it means
      another server handed the post over and nobody authenticated its author (the
      write-up's second route): untrusted.  See :func:`_at_submission` for the
      server's own steps (content filter on loopback, qmail) that are followed first;
    * a client that is neither relay nor submission server: untrusted, whatever the
      headers say, since it wrote them all.  No client IP (a local, unix-socket
      submission): untrusted, "no client IP"; the engine treats such clients as
      INTERNAL on its own.

    Unparsable headers: a header directly below a relay hop is the one that relay
    wrote, and a relay we trust writes a well-formed ``from ... [IP]`` clause for a
    client that connected over the network.  So an unparsable header there means
    either a local injection on that relay (``sendmail`` command, Exim ``with local``,
    which is no authenticated submission) or text the relay did not write; both make
    the path untrusted instead of being skipped, because skipping would let the next
    (possibly forged) header speak for the relay.  Headers older than the submission
    server's line are only tested for a ``from`` clause, never believed.  Local steps
    a relay takes through a content filter (amavis re-injecting from ``[127.0.0.1]``)
    parse fine and need loopback in ``relays``; loopback only ever comes from a header
    a trusted relay wrote, so it is that relay's own loopback.  (On the submission
    server, its loopback steps are followed without any configuration.)

    The MTA's own header: sendmail hands milters the ``Received:`` line it adds for
    this connection, Postfix does not.  When the topmost header's ``from`` address is
    the client's own, it is taken for that line and not counted as a second hop.
    (Were it really the client's header recording a connection from itself, reading
    it as a hop would lead to the same answer: same IP, same class.)  Only the topmost
    header is considered: the MTA prepends its line, nothing comes above it.
    """
    if not client_ip:
        return TrustResult(False, None, "no client IP")
    try:
        hop = normalize_ip(client_ip)
    except ValueError:
        return _untrusted(f"client address {client_ip[:64]!r} is not an IP address", [])
    headers = list(received_values)
    index = 0
    if headers:
        top = parse_received(headers[0])
        if top is not None and top.ip == hop:
            index = 1
    hops = [hop]
    path = [f"client {hop}"]
    previous: str | None = None
    while True:
        if in_nets(hop, relays):
            if index >= len(headers):
                return _untrusted(f"relay {hop} added no Received header naming its client",
                                  hops)
            written = parse_received(headers[index])
            index += 1
            if written is None:
                return _untrusted(f"Received header {index}, written by relay {hop}, "
                                  "has no parsable 'from ... [IP]' clause", hops)
            path[-1] += " relay"
            previous, hop = hop, written.ip
            hops.append(hop)
            path.append(hop)
            continue
        if in_nets(hop, submission):
            path[-1] = ("client " if previous is None else "submission ") + hop
            if previous is None:
                path[-1] += " is a submission server"
            return _at_submission(headers, index, hop, path, hops, submission)
        if previous is None:
            return _untrusted(f"client {hop} is neither a known relay nor a submission server; "
                              "the Received headers it sent could be forged", hops)
        return _untrusted(f"hop {hop} (client of relay {previous}) is neither a known relay "
                          "nor a submission server", hops)
