"""The post as the list manager will see it: the facts every chain rule reads.

Mailman parses what its LMTP runner receives with ``email.message_from_bytes``
(the ``compat32`` policy) and its rules read that object: raw header values with
their folds (CRLF), bytes that are not ASCII turned into ``email.header.Header``
objects, RFC 2047 decoded only where a rule decodes.  A milter gets the same headers
one at a time (the value without the space after the colon, folds as LF, bytes
decoded as UTF-8 with surrogate escapes by pymilter).  :class:`Post` turns the
second form into the first, so that a rule ported from Mailman runs the same
standard-library code on the same values and gets the same answer -- including on
malformed input, where "the same answer" may be the exception Mailman would raise
(:class:`Unevaluable`).

The headers are those the list manager will receive from us: the ones listgate
inserts (Received-SPF, Authentication-Results on top, X-Listgate-Trusted at the end)
included, and the forged ``X-Listgate-*`` ones we delete left out.  What an MTA
behind us adds (its own Received line) cannot be known here.

Parsing the whole message costs ~0.1 ms, so it happens only when a rule needs the
body (:attr:`Post.message`); the sender rules use a per-header path with a fast lane
for the plain ASCII values almost every post has.
"""

from __future__ import annotations

import email
import email.message
import functools
from collections.abc import Sequence
from email.header import Header
from typing import Any

from listgate import addresses, mm2compat
from listgate.compat32 import NotRead, Unevaluable, header_block, mailman_value

#: Mailman 3's default ``[mailman] sender_headers``; ``from_`` is the envelope sender
SENDER_HEADERS = ("from", "from_", "reply-to", "sender")


class Post:
    """One message, as the list manager will receive it (see the module docstring).

    ``headers`` are (name, milter value) pairs in order; ``body`` is what the MTA
    passed to the milter (CRLF line ends), None if it was not read; ``body_size`` the
    body's full length in octets even where ``body`` was cut (None if unknown).
    """

    def __init__(self, headers: Sequence[tuple[str, str]], envelope_sender: str,
                 body: bytes | None = None, body_size: int | None = None,
                 sender_headers: Sequence[str] = SENDER_HEADERS,
                 headers_complete: bool = True) -> None:
        self.raw_headers = tuple(headers)
        self.envelope_sender = envelope_sender
        self.body = body
        self.body_size = body_size if body_size is not None else (
            len(body) if body is not None else None)
        self.sender_headers = (SENDER_HEADERS if sender_headers is SENDER_HEADERS
                               else tuple(h.lower() for h in sender_headers))
        #: False when the MTA passed more headers than listgate keeps: a header rule
        #: cannot then be judged (the header it looks for may be among the rest)
        self.headers_complete = headers_complete
        #: lowercased name -> the (name, milter value) pairs, in order
        self._raw_by_name: dict[str, list[tuple[str, str]]] | None = None
        #: lowercased name -> the values as Mailman reads them, made on first use
        self._by_name: dict[str, list[str | Header]] = {}
        self._message: email.message.Message | None = None
        self._mm2_message: email.message.Message | None = None

    # -- headers ------------------------------------------------------------------------

    @property
    def body_complete(self) -> bool:
        """The whole body is here (read, and not cut at max_body_bytes)."""
        return self.body is not None and len(self.body) == self.body_size

    def _raw_index(self) -> dict[str, list[tuple[str, str]]]:
        if self._raw_by_name is None:
            index: dict[str, list[tuple[str, str]]] = {}
            for name, value in self.raw_headers:
                index.setdefault(name.lower(), []).append((name, value))
            self._raw_by_name = index
        return self._raw_by_name

    def _values(self, lname: str) -> list[str | Header] | None:
        """The values of one header (lowercased name) in Mailman's form, None if absent.

        Converted per header name on first use, as compat32 parses a header only
        when ``msg.get`` asks for it: the rules read a few headers, not all of them."""
        values = self._by_name.get(lname)
        if values is None:
            raw = self._raw_index().get(lname)
            if raw is None:
                return None
            values = self._by_name[lname] = [mailman_value(n, v) for n, v in raw]
        return values

    def get_all(self, name: str) -> list[str | Header]:
        """Every value of header ``name`` (any case), in order, as ``msg.get_all``."""
        values = self._values(name.lower())
        return [] if values is None else values

    def get(self, name: str, default: Any = None) -> Any:
        """The first value of header ``name``, as ``msg.get(name, default)``."""
        values = self._values(name.lower())
        return values[0] if values else default

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._raw_index()

    def without(self, names: Sequence[str]) -> Post:
        """The same post with every occurrence of these headers removed (as a rule that
        ``del msg[name]``s them leaves it to the rules after it)."""
        drop = {n.lower() for n in names}
        return Post([(n, v) for n, v in self.raw_headers if n.lower() not in drop],
                    self.envelope_sender, self.body, self.body_size, self.sender_headers,
                    self.headers_complete)

    def with_sender_headers(self, sender_headers: Sequence[str]) -> Post:
        """The same post judged with the site's own ``[mailman] sender_headers``."""
        return Post(self.raw_headers, self.envelope_sender, self.body, self.body_size,
                    sender_headers, self.headers_complete)

    # -- who sent it ---------------------------------------------------------------------

    @functools.cached_property
    def senders(self) -> tuple[str, ...]:
        """Mailman 3's ``msg.senders`` (:func:`listgate.addresses.senders`): From,
        envelope, Reply-To, Sender, RFC 2047 decoded, lowercased, invalid ones dropped,
        repeats kept.  Raises :class:`Unevaluable` where Mailman's property raises."""
        by_name = {h: [v for _n, v in pairs] for h, pairs in self._raw_index().items()
                   if h in self.sender_headers}
        return tuple(addresses.senders(by_name, self.envelope_sender, self.sender_headers))

    @property
    def sender(self) -> str:
        """Mailman's ``msg.sender``: the first sender, '' if none."""
        return self.senders[0] if self.senders else ""

    def unique_senders(self) -> tuple[str, ...]:
        return addresses.unique(self.senders)

    # -- the whole message -----------------------------------------------------------------

    def header_bytes(self) -> bytes:
        """The header section as the list manager receives it (CRLF, folds kept)."""
        return header_block(self.raw_headers)

    @property
    def size(self) -> int | None:
        """Octets the list manager's LMTP server receives, at least (what an MTA behind
        us adds is not counted); None when the body's size is unknown."""
        if self.body_size is None:
            return None
        return len(self.header_bytes()) + 2 + self.body_size

    @property
    def message(self) -> email.message.Message:
        """The message parsed as Mailman parses it (``email.message_from_bytes``).

        Raises :class:`Unevaluable` without the whole body: a rule reading parts must
        not guess what a cut-off part held."""
        if self._message is None:
            if self.body is None:
                raise NotRead("the body was not read")
            if not self.body_complete:
                raise Unevaluable(f"the body was cut at {len(self.body)} octets "
                                  "(max_body_bytes)")
            self._message = email.message_from_bytes(
                self.header_bytes() + b"\r\n" + (self.body or b""))
        return self._message

    def may_have_parts(self) -> bool:
        """The top-level Content-Type is multipart/* or message/*: Mailman's
        ``msg.walk()`` then reaches headers inside the body."""
        ctype = self.get("content-type")
        if ctype is None:
            return False
        maintype = str(ctype).split("/", 1)[0].strip().lower()
        return maintype in ("multipart", "message")

    def walk_get_all(self, name: str) -> list[str | Header]:
        """``[v for p in msg.walk() for v in p.get_all(name, [])]``: every part's values.

        Reads the body only when the message can have parts at all; a single-part
        message is its own only part."""
        if not self.may_have_parts():
            return self.get_all(name)
        out: list[Any] = []
        for part in self.message.walk():
            out.extend(part.get_all(name, []))
        return out


    # -- Mailman 2.1's view: Python 2 byte strings (listgate.mm2compat) -------------------

    @functools.cached_property
    def mailman2_items(self) -> list[tuple[str, bytes]]:
        """The top-level headers as Mailman 2's ``msg.items()`` holds them: raw bytes,
        never decoded, folds kept as LF."""
        return mm2compat.header_items(self.raw_headers)

    def mailman2_senders(self) -> tuple[str, ...]:
        """Mailman 2's ``msg.get_senders()`` (From, envelope, Reply-To, Sender; raw,
        not RFC 2047 decoded, ASCII-lowercased), without repeats."""
        return addresses.unique(mm2compat.get_senders(self.mailman2_items,
                                                      self.envelope_sender))

    def mailman2_sender(self) -> str:
        """Mailman 2's ``msg.get_sender()``: the one address nonmembers are judged by."""
        return mm2compat.get_sender(self.mailman2_items, self.envelope_sender)

    @property
    def mailman2_message(self) -> email.message.Message:
        """The message as Mailman 2 parses what the MTA pipes to it (LF line ends).
        Raises like :attr:`message` without the whole body."""
        if self._mm2_message is None:
            if self.body is None:
                raise NotRead("the body was not read")
            if not self.body_complete:
                raise Unevaluable(f"the body was cut at {len(self.body)} octets "
                                  "(max_body_bytes)")
            try:
                msg = mm2compat.mm2_message(self.raw_headers, self.body)
                for _part in msg.walk():  # nested too deep for the rules' walks?
                    pass
            except Exception as e:  # noqa: BLE001 - Mailman 2 cannot parse it either
                raise Unevaluable(f"the message cannot be parsed: {type(e).__name__}: "
                                  f"{str(e)[:80]}") from None
            self._mm2_message = msg
        return self._mm2_message

    def mailman2_walk_items(self) -> list[list[tuple[str, bytes]]]:
        """The headers of every part, as ``for p in msg.walk(): p.items()`` gives them
        to Mailman 2 (the top level first).  Reads the body only when the message can
        have parts."""
        out = [self.mailman2_items]
        if self.may_have_parts():
            parts = list(self.mailman2_message.walk())
            out.extend(mm2compat.part_items(p) for p in parts[1:])
        return out
