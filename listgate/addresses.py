"""Who "the sender" is, exactly as Mailman 3 computes it.

Mailman 3 (``email/message.py`` ``Message.senders``) walks ``sender_headers``
(``from from_ reply-to sender``), RFC 2047 decodes every occurrence of each header,
parses it with ``email.utils.getaddresses``, lowercases, and drops addresses its validator
(``email/validate.py``) refuses.  listgate must pick the same addresses or its
prediction of the list's decision would be wrong, so this module copies those rules
rather than using a "better" parser.  There is deliberately no ``+tag`` folding.
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Iterable, Mapping, Sequence

from listgate import mm2compat
from listgate.compat32 import header_addresses as header_addresses_decoded

#: Mailman's default ``[mailman] sender_headers``; ``from_`` is the envelope sender.
SENDER_HEADERS = ("from", "from_", "reply-to", "sender")

_VALID_LOCAL = re.compile(r"[-0-9a-z!#$%&'*+./=?@_`{}~]", re.IGNORECASE)
_VALID_DOMAIN = re.compile(r"[-a-z0-9]", re.IGNORECASE)


#: addresses longer than this are checked every time (a cache entry stays small)
_CACHED_CHARS = 320


def is_valid(address: str) -> bool:
    """Mailman 3's ``Validator.is_valid``: the addresses Mailman would consider at all.

    Remembered for addresses of usual length: each post's senders and recipient are
    checked again (two regular expressions per part), mostly the same few addresses."""
    if len(address) <= _CACHED_CHARS:
        return _is_valid_cached(address)
    return _is_valid(address)


@functools.lru_cache(maxsize=4096)
def _is_valid_cached(address: str) -> bool:
    return _is_valid(address)


def _is_valid(address: str) -> bool:
    if not address or " " in address:
        return False
    local, at, domain = address.partition("@")
    if not at:
        return False
    parts = domain.split(".")
    if len(parts) < 2:
        return False
    if _VALID_LOCAL.sub("", local):
        return False
    return all(p and p[0] != "-" and not _VALID_DOMAIN.sub("", p) for p in parts)


def strip_brackets(address: str) -> str:
    """``<a@b>`` (as the MTA passes MAIL FROM / RCPT TO) -> ``a@b``; ``<>`` -> ``''``."""
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    # a source route (<@relay:user@dom>) is obsolete but legal: keep the mailbox
    if a.startswith("@") and ":" in a:
        a = a.split(":", 1)[1]
    return a.strip()


def header_addresses(values: Iterable[str]) -> list[str]:
    """Every address in the given header values, lowercased, in order (may be invalid),
    parsed as they stand (Mailman 2's ``get_sender``; Mailman 3 decodes first: see
    :func:`senders`)."""
    vals = tuple(v for v in values if v)
    return list(_parse(vals)) if vals else []


@functools.lru_cache(maxsize=4096)
def _parse(values: tuple[str, ...]) -> tuple[str, ...]:
    """``email.utils.getaddresses`` over the values together."""
    try:
        pairs = email.utils.getaddresses(list(values))
    except Exception:  # noqa: BLE001 - a malformed header is "no address", never a crash
        return ()
    return tuple(addr.lower() for _name, addr in pairs if addr)


def senders(headers: Mapping[str, Sequence[str]], envelope_sender: str,
            sender_headers: Sequence[str] = SENDER_HEADERS) -> list[str]:
    """The senders of a message in Mailman 3's order, duplicates kept, invalid ones dropped.

    ``headers`` maps lowercased header names to all their values in order, as a milter
    gets them.  Each value is RFC 2047 decoded first, as ``Message.senders`` does, so
    an encoded word that decodes to a member's address is that member.  Raises
    :class:`~listgate.compat32.Unevaluable` where Mailman's own property raises (an
    encoded word in an unknown charset): Mailman cannot process that post at all.
    """
    out: list[str] = []
    for h in sender_headers:
        if h == "from_":
            if envelope_sender:
                out.append(envelope_sender.lower())
        else:
            values = headers.get(h)
            if values:
                out.extend(header_addresses_decoded(h, tuple(values)))
    return [s for s in out if is_valid(s)]


def mailman2_sender(headers: Mapping[str, Sequence[str]], envelope_sender: str) -> str:
    """Mailman 2's ``get_sender()``: the ONE address it moderates nonmembers by.

    The first address of the first From header, else of the first Sender header (a
    header whose first address is empty does not count), else the envelope sender;
    parsed from the raw value -- Mailman 2 does not decode RFC 2047 here -- and
    lowercased as Python 2 lowercases bytes (A-Z only), not validated
    (:func:`listgate.mm2compat.get_sender`)."""
    items = [(h, mm2compat.py2_value(mm2compat.to_bytes(v)))
             for h in ("from", "sender") for v in headers.get(h, ())[:1]]
    return mm2compat.get_sender(items, envelope_sender)


def unique(addresses: Iterable[str]) -> tuple[str, ...]:
    """Addresses without repeats, first occurrence kept (order matters to Mailman)."""
    return tuple(dict.fromkeys(addresses))


def domain_of(address: str) -> str:
    """The lowercased domain of an address, '' if it has none."""
    return address.rpartition("@")[2].lower() if "@" in address else ""
