"""Header values and messages as Mailman 2.1 reads them: Python 2 byte strings.

Mailman 2.1 runs on Python 2.7.  Its ``scripts/post`` reads the message the MTA pipes
to it (LF line ends) and its handlers work on ``email`` 4.0 values that are byte
strings: no RFC 2047 decoding unless a handler decodes (only SpamDetect's
``header_filter_rules`` do), ``lower()`` and ``split()`` that know ASCII only, and
regular expressions that match bytes.  Mailman 3 (:mod:`listgate.compat32`) reads the
same post differently, so the Mailman 2 rules use these values instead:

* :func:`py2_value`: a header value as Python 2's feedparser stores it;
* :func:`get_sender` / :func:`get_senders`: ``Mailman/Message.py``'s senders, parsed
  from the raw values (never decoded), ASCII-lowercased;
* :func:`decode_header` and :func:`decoded_headers`: Python 2.7's
  ``email.header.decode_header`` and SpamDetect's ``getDecodedHeaders``;
* :func:`mm2_message`: the message parsed from its LF form, and
  :func:`raw_payload` / :func:`body_lines`, the payloads as Python 2 sees them.

Bytes are Python ``bytes`` here; text from the milter (UTF-8 with surrogate escapes)
becomes bytes with ``encode("utf-8", "surrogateescape")``, which restores what the MTA
received.
"""

from __future__ import annotations

import binascii
import email
import email.message
import email.utils
import functools
import inspect
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence

from listgate.compat32 import Unevaluable

#: Python 2's ``str.strip()`` / ``lstrip()`` characters (C ``isspace``)
PY2_WS = b" \t\n\r\x0b\x0c"
PY2_WS_TEXT = PY2_WS.decode("ascii")

_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_LOWER_TEXT = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

#: ``Defaults.py`` SENDER_HEADERS; ``None`` is the envelope sender (the From_ line)
SENDER_HEADERS: tuple[str | None, ...] = ("from", None, "reply-to", "sender")


def to_bytes(text: str) -> bytes:
    """Milter or pickle text -> the bytes Python 2 held (UTF-8, surrogates restored)."""
    return text.encode("utf-8", "surrogateescape")


def to_text(raw: bytes) -> str:
    """Bytes -> listgate's text form (UTF-8, undecodable bytes as surrogates)."""
    return raw.decode("utf-8", "surrogateescape")


def ascii_lower(text: str) -> str:
    """Python 2 ``str.lower()`` on the bytes of ``text``: A-Z only."""
    return text.translate(_LOWER_TEXT)


def py2_value(raw: bytes) -> bytes:
    """What Python 2.7's feedparser stores for a header whose text after the colon is
    ``raw`` (folds as LF): the first line ``lstrip()``-ed of all white space (so a
    blank first line disappears with its newline), continuation lines kept as they
    are, trailing CR/LF removed.  Trailing blanks stay."""
    raw = raw.replace(b"\r\n", b"\n")
    first, nl, rest = raw.partition(b"\n")
    first = first.lstrip(PY2_WS)
    if nl:
        value = (first + b"\n" if first else b"") + rest
    else:
        value = first
    return value.rstrip(b"\r\n")


def header_items(headers: Iterable[tuple[str, str]]) -> list[tuple[str, bytes]]:
    """Milter (name, value) pairs -> Mailman 2's (name, raw value) pairs."""
    return [(name, py2_value(to_bytes(value))) for name, value in headers]


def get_all(items: Sequence[tuple[str, bytes]], name: str) -> list[bytes]:
    """``msg.get_all(name, [])`` on Mailman 2's values."""
    name = ascii_lower(name)
    return [v for n, v in items if ascii_lower(n) == name]


def get(items: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    """``msg.get(name)``: the first value, or None."""
    values = get_all(items, name)
    return values[0] if values else None


@functools.lru_cache(maxsize=1)
def _lenient() -> dict[str, bool]:
    """``getaddresses`` keyword that turns off the strict parsing newer Pythons (and
    Debian's patched 3.11) added: Python 2.7 parses the lenient way."""
    return {"strict": False} if "strict" in inspect.signature(email.utils.getaddresses
                                                               ).parameters else {}


def getaddresses(values: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """Python 2's ``email.Utils.getaddresses`` on byte values: (name, address) pairs."""
    text = [v.decode("latin-1") for v in values]
    try:
        pairs = email.utils.getaddresses(text, **_lenient())
    except Exception as e:  # noqa: BLE001 - Python 2's would fail (and Mailman shunt) too
        raise Unevaluable(f"unparsable address header: {type(e).__name__}: {e}") from None
    return [(n.encode("latin-1", "replace"), a.encode("latin-1", "replace")) for n, a in pairs]


def _one_line(value: bytes) -> bytes:
    """``''.join(fieldval.splitlines())`` (the ``get_sender`` workaround for folded
    values): byte-string line breaks are LF, CR and CRLF only."""
    return b"".join(value.splitlines())


def get_sender(items: Sequence[tuple[str, bytes]], envelope_sender: str) -> str:
    """``Message.get_sender()`` with ``USE_ENVELOPE_SENDER = No``: the first address
    of the first From header, else of the first Sender header (a header whose first
    address is empty is skipped), else the envelope sender; ASCII-lowercased."""
    for h in ("from", "sender"):
        value = get(items, h)
        if not value:
            continue
        pairs = getaddresses([_one_line(value)])
        if not pairs:
            continue
        address = pairs[0][1]
        if address:
            return ascii_lower(to_text(address))
    return ascii_lower(envelope_sender)


def get_senders(items: Sequence[tuple[str, bytes]], envelope_sender: str) -> list[str]:
    """``Message.get_senders()`` with the default SENDER_HEADERS: every address of
    every From, the envelope sender, every Reply-To, every Sender, in that order --
    parsed from the raw values (Mailman 2 does not decode RFC 2047), ASCII-lowercased,
    not validated.  Empty addresses are left out (they are nobody's)."""
    out: list[str] = []
    for h in SENDER_HEADERS:
        if h is None:
            if envelope_sender:
                out.append(ascii_lower(envelope_sender))
            continue
        values = get_all(items, h)
        if values:
            for _name, address in getaddresses([_one_line(v) for v in values]):
                if address:
                    out.append(ascii_lower(to_text(address)))
    return out


# -- SpamDetect's decoded header text ------------------------------------------------------

#: Python 2.7 ``email.header.ecre`` (the encoded word must end at white space or EOL)
_ECRE = re.compile(rb"""
  =\?                   # literal =?
  (?P<charset>[^?]*?)   # non-greedy up to the next ? is the charset
  \?                    # literal ?
  (?P<encoding>[qb])    # either a "q" or a "b", case insensitive
  \?                    # literal ?
  (?P<encoded>.*?)      # non-greedy up to the next ?= is the encoded string
  \?=                   # literal ?=
  (?=[ \t]|$)           # whitespace or the end of the string
  """, re.VERBOSE | re.IGNORECASE | re.MULTILINE)
_QP = re.compile(rb"=[a-fA-F0-9]{2}")


class HeaderParseError(Exception):
    """Python 2's ``email.Errors.HeaderParseError`` (bad base64 in an encoded word)."""


def decode_header(header: bytes) -> list[tuple[bytes, str | None]]:
    """Python 2.7's ``email.header.decode_header``: unencoded runs are stripped and
    joined with one space, adjacent encoded words of one charset are concatenated,
    and nothing separates an encoded word from the text around it."""
    if not _ECRE.search(header):
        return [(header, None)]
    decoded: list[tuple[bytes, str | None]] = []
    for line in header.splitlines():
        if not _ECRE.search(line):
            decoded.append((line, None))
            continue
        parts = _ECRE.split(line)
        while parts:
            unenc = parts.pop(0).strip(PY2_WS)
            if unenc:
                if decoded and decoded[-1][1] is None:
                    decoded[-1] = (decoded[-1][0] + b" " + unenc, None)
                else:
                    decoded.append((unenc, None))
            if parts:
                charset = parts[0].lower().decode("latin-1")
                encoding = parts[1].lower()
                encoded = parts[2]
                dec: bytes | None = None
                if encoding == b"q":
                    dec = _QP.sub(lambda m: bytes([int(m.group(0)[1:], 16)]),
                                  encoded.replace(b"_", b" "))
                elif encoding == b"b":
                    pad = len(encoded) % 4  # Postel's law: add missing padding
                    if pad:
                        encoded += b"==="[:4 - pad]
                    try:
                        dec = binascii.a2b_base64(encoded) if encoded else encoded
                    except binascii.Error:
                        raise HeaderParseError from None
                if dec is None:
                    dec = encoded
                if decoded and decoded[-1][1] == charset:
                    decoded[-1] = (decoded[-1][0] + dec, charset)
                else:
                    decoded.append((dec, charset))
            del parts[0:3]
    return decoded


def _unicode(frag: bytes, charset: str) -> str:
    """``unicode(frag, cs, 'replace')``, iso-8859-1 for a charset Python does not know.
    A codec that fails otherwise (idna takes no 'replace') fails Mailman 2 too."""
    try:
        return frag.decode(charset, "replace")
    except LookupError:
        return frag.decode("iso-8859-1", "replace")
    except (UnicodeError, ValueError, TypeError) as e:
        raise Unevaluable(f"Mailman 2 fails decoding a header from {charset[:30]!r}: "
                          f"{e}") from None


_FOLD = re.compile(rb"\n\s")


def decoded_headers(items: Iterable[tuple[str, bytes]], form: str = "NFKC") -> str:
    """``SpamDetect.getDecodedHeaders``: ``Name: value`` lines, each value unfolded
    (a newline and the blank after it become one space), RFC 2047 decoded the Python 2
    way (a value with bad base64 is taken whole as us-ascii) and normalised to
    ``form`` (``NORMALIZE_FORM``).  A header name that is not ASCII makes Mailman 2
    fail (it mixes it into a unicode string): :class:`Unevaluable`."""
    out = []
    for name, value in items:
        try:
            parts = decode_header(_FOLD.sub(b" ", value))
        except HeaderParseError:
            parts = [(value, "us-ascii")]
        text = "".join(_unicode(frag, cs or "us-ascii") for frag, cs in parts)
        if not name.isascii():
            raise Unevaluable(f"Mailman 2 fails on the non-ASCII header name {name[:40]!r}")
        out.append(f"{name}: {unicodedata.normalize(form, text)}\n")
    return "".join(out)


def xml_to_unicode(pattern: str) -> str:
    """``Utils.xml_to_unicode`` for an ASCII pattern: ``&#NNN;`` character references
    and textual ``\\uXXXX`` escapes become the characters they name (U+FFFD when out
    of range)."""

    def invert(mo: re.Match[str]) -> str:
        ref = mo.group(1)
        try:
            return chr(int(ref[1:])) if ref[:1] == "#" else chr(int(ref[1:], 16))
        except (ValueError, OverflowError):
            return "\ufffd"

    pattern = re.sub(r"&(#[0-9]+);", invert, pattern)
    return re.sub(r"(?i)\\(u[a-f0-9]{4})", invert, pattern)


# -- the message and its payloads ---------------------------------------------------------


def mm2_message(headers: Iterable[tuple[str, str]], body: bytes) -> email.message.Message:
    """The message as Mailman 2 parses it from what the MTA pipes to it: LF line ends
    (the local delivery agent's form), parsed with the compat32 parser, the Python 3
    counterpart of Python 2.7's feedparser (same boundaries, preambles, epilogues)."""
    head = b"".join(to_bytes(f"{name}: {value}").replace(b"\r\n", b"\n") + b"\n"
                    for name, value in headers)
    return email.message_from_bytes(head + b"\n" + body.replace(b"\r\n", b"\n"))


def raw_payload(part: email.message.Message) -> bytes | None:
    """A part's payload as Python 2's ``get_payload()`` returns it: the bytes as
    received (Python 3 would decode a payload with 8-bit bytes by its charset), or
    None for a multipart part."""
    payload = part._payload  # get_payload() would re-decode an 8-bit payload
    if isinstance(payload, str):
        return payload.encode("ascii", "surrogateescape")
    return None


def body_lines(msg: email.message.Message) -> Iterator[bytes]:
    """``email.Iterators.body_line_iterator(msg)``: every leaf part's payload, line by
    line as ``StringIO`` iterates (each line keeps its LF)."""
    for part in msg.walk():
        payload = raw_payload(part)
        if payload is None:
            continue
        start = 0
        while start < len(payload):
            end = payload.find(b"\n", start)
            end = len(payload) if end < 0 else end + 1
            yield payload[start:end]
            start = end


def part_items(part: email.message.Message) -> list[tuple[str, bytes]]:
    """A parsed part's headers as Python 2 stores them (see :func:`py2_value`)."""
    return [(name, py2_value(value.encode("ascii", "surrogateescape")))
            for name, value in part.raw_items()]
