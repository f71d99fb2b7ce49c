"""SMTP replies, and making untrusted text safe to put into one.

Anything listgate echoes to the client (a HELO name, a sender address, an SPF
explanation from DNS) is attacker-controlled.  CR/LF would let it inject reply lines,
control bytes confuse clients, and libmilter rejects long texts: :func:`clean` makes
any string a safe one-line ASCII fragment.  The ``%`` escaping libmilter needs is the
milter module's business, so the text here is what the client should finally read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: room for the longest text we compose around cleaned values (libmilter: ~980)
MAX_TEXT = 400
_UNSAFE = re.compile(r"[^\x20-\x7e]+")
_SPACES = re.compile(r" {2,}")


def clean(value: object, limit: int = 120) -> str:
    """One line of printable ASCII, at most ``limit`` characters, from any value."""
    text = str(value)
    if not (text.isascii() and text.isprintable() and "  " not in text):
        # the common case (already clean) skips the two substitutions
        text = _SPACES.sub(" ", _UNSAFE.sub("?", text))
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


#: RFC 5322 allows 998 characters per line; leave room for the header name
MAX_HEADER_VALUE = 900


def header_value(value: object) -> str:
    """A header value listgate adds, made one line of printable ASCII.

    pyspf copies the HELO name and envelope sender verbatim into Received-SPF: a
    CR/LF there would inject header lines below our removal of forged ones, and
    undecodable bytes (surrogate escapes) cannot even be handed to libmilter.
    """
    return clean(value, MAX_HEADER_VALUE)


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: ``550``, ``5.7.1``, and a one-line text."""

    code: str
    xcode: str
    text: str

    def __post_init__(self) -> None:
        # the text was built from cleaned parts, but a template may be long
        object.__setattr__(self, "text", clean(self.text, MAX_TEXT))

    def __str__(self) -> str:
        return f"{self.code} {self.xcode} {self.text}"

    @property
    def temporary(self) -> bool:
        return self.code.startswith("4")
