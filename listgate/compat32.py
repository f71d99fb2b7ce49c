"""Header values as Mailman reads them: its LMTP runner's ``compat32`` parse.

Mailman parses what its LMTP server receives with ``email.message_from_bytes`` and
its rules read ``msg.get()`` values: raw text after the colon (leading blanks
removed, folds kept as CRLF), with bytes that are not ASCII turned into
``email.header.Header`` objects.  A milter gets the same header with folds as LF and
bytes decoded as UTF-8 with surrogate escapes (pymilter).  :func:`mailman_value`
turns the second into the first, so that the standard-library calls Mailman makes
on them (``decode_header``, ``getaddresses``) give the same results here -- on
malformed input too, where the same result may be an exception (:class:`Unevaluable`).
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Iterable
from email.header import Header, decode_header, make_header
from email.policy import compat32


class Unevaluable(Exception):
    """A rule cannot be evaluated on this post: the list manager would crash on it
    (Mailman raises on a header it cannot decode), or listgate lacks the data (the
    body was not read, or was cut at ``max_body_bytes``).  Never a reason to refuse."""


class MailmanFails(Unevaluable):
    """Mailman itself would raise on this post (an undecodable header, a value its rule
    cannot handle): its runner shunts the post, for the site admin.  Whatever the link,
    the verdict is then undecided and the post goes on to the list manager."""


class Unseen(Unevaluable):
    """The rule reads a header an MTA adds after listgate saw the message (the MTA's own
    Received line): it can be judged only where what we see already decides."""


class NotRead(Unevaluable):
    """The rule needs the body, which was not read because no list's settings needed
    it: the usual case, not worth a note in the log."""


def mailman_value(name: str, value: str) -> str | Header:
    """A milter header value as Mailman's ``msg.get(name)`` returns it (compat32).

    Folds become CRLF (the LMTP content Mailman parses has CRLF line ends), bytes are
    re-read as ASCII with surrogate escapes as ``BytesParser`` reads them, and a value
    with non-ASCII bytes becomes a ``Header`` with the ``unknown-8bit`` charset, as
    compat32's ``header_fetch_parse`` makes it.
    """
    if value.isascii():
        if "\n" not in value:
            return value.lstrip(" \t")
        text = value
    else:
        text = value.encode("utf-8", "surrogateescape").decode("ascii", "surrogateescape")
    text = text.replace("\r\n", "\n").replace("\n", "\r\n").lstrip(" \t").rstrip("\r\n")
    return compat32.header_fetch_parse(name, text)


def decoded(value: str | Header) -> str:
    """``str(make_header(decode_header(value)))``: the RFC 2047 decoding Mailman applies
    to sender headers and header_matches.  Raises :class:`Unevaluable` where Mailman
    would raise (an unknown charset, say)."""
    if isinstance(value, str) and "=?" not in value:
        return value  # the same string, measured on fuzzed input: skip the machinery
    try:
        return str(make_header(decode_header(value)))
    except Exception as e:  # noqa: BLE001 - whatever the email package raises, Mailman would too
        raise MailmanFails(f"undecodable header {str(value)[:60]!r}: "
                           f"{type(e).__name__}: {e}") from None


@functools.lru_cache(maxsize=4096)
def header_addresses(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses of sender header ``name`` as ``Message.senders`` finds them: each
    value (milter form) RFC 2047 decoded, CR/LF dropped, ``getaddresses``, lowercased.

    Cached: the same From/Reply-To values come back with every post of a sender."""
    out: list[str] = []
    for raw in values:
        text = decoded(mailman_value(name, raw))
        if "\r" in text or "\n" in text:
            text = text.replace("\r", "").replace("\n", "")
        try:
            pairs = email.utils.getaddresses([text])
        except Exception as e:  # noqa: BLE001 - Mailman's property would raise the same
            raise MailmanFails(f"unparsable {name} header: {type(e).__name__}: {e}") from None
        out.extend(a.lower() for _n, a in pairs)
    return tuple(out)


#: header values longer than this (all of one call together) are parsed every time:
#: a cache entry stays small whatever a message holds
_CACHED_CHARS = 2000


def getaddresses(values: list[str | Header]) -> tuple[tuple[str, str], ...]:
    """``email.utils.getaddresses(values)``, as Mailman's rules call it on ``To``/``Cc``.

    Remembered for short plain values: the posts to a list carry the same To (the
    list's address) again and again, and the parse was a sixth of a member's verdict.
    ``Header`` values (non-ASCII bytes) and long values are parsed every time."""
    if sum(len(v) if type(v) is str else _CACHED_CHARS + 1 for v in values) <= _CACHED_CHARS:
        return _getaddresses(tuple(values))  # type: ignore[arg-type]
    return tuple(email.utils.getaddresses(values))


@functools.lru_cache(maxsize=4096)
def _getaddresses(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(email.utils.getaddresses(values))


def header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    """Milter (name, value) pairs as the header section an MTA hands on: ``Name: value``
    with CRLF line ends, folds kept, the bytes pymilter decoded restored."""
    out = []
    for name, value in headers:
        raw = f"{name}: {value}".encode("utf-8", "surrogateescape")
        out.append(re.sub(rb"\r?\n", b"\r\n", raw) + b"\r\n")
    return b"".join(out)
