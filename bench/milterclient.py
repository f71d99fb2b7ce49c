"""A lean milter client (the MTA side of milter protocol v6) for load generation.

Why not ``miltertest``: the load client shares two cores with the daemon it
measures, so every microsecond it spends is taken from the daemon.  This client
pre-encodes each command with ``struct``, sends the no-reply stages of a
conversation in one ``sendall`` where the negotiated ``SMFIP_NR_*`` flags allow,
and reads replies through a buffered file.  ``tests/e2e/test_bench_client.py``
checks it against the real daemon.

One :class:`Conversation` is what Postfix does for one SMTP session: open a milter
connection, OPTNEG, CONNECT (+ macros), HELO, then per message MAIL (+ macros),
RCPT, headers, EOH/BODY only if the milter did not negotiate them away, end of
message; finally QUIT.  Each stage that waits for a reply is timed:

* ``connect``: socket connect + OPTNEG round trip (CONNECT and HELO are sent
  without waiting when the milter asked for ``NR_CONN``/``NR_HELO``, which is
  Postfix's behaviour too; their cost shows up in the next answered stage);
* ``mail``, ``rcpt``: command sent -> reply read;
* ``eom``: first header sent -> final disposition read (the list verdict).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# commands (MTA -> milter)
OPTNEG, CONNECT, HELO, MACRO, MAIL, RCPT = b"O", b"C", b"H", b"D", b"M", b"R"
HEADER, EOH, BODY, BODYEOB, QUIT, ABORT = b"L", b"N", b"B", b"E", b"Q", b"A"
# replies (milter -> MTA)
R_ACCEPT, R_CONTINUE, R_DISCARD, R_REJECT, R_TEMPFAIL = b"a", b"c", b"d", b"r", b"t"
R_REPLYCODE, R_PROGRESS, R_ADDHEADER, R_INSHEADER, R_CHGHEADER = b"y", b"p", b"h", b"i", b"m"
DISPOSITIONS = frozenset((R_ACCEPT, R_CONTINUE, R_DISCARD, R_REJECT, R_TEMPFAIL,
                          R_REPLYCODE, b"4", b"f"))

VERSION = 6
ACTIONS_ALL = 0x1FF  # SMFI_V6_ACTS
PROTOCOL_ALL = 0x1FFFFF  # SMFI_V6_PROT (every NO*/NR_* bit offered, like Postfix)
P_NOCONNECT, P_NOHELO, P_NOMAIL, P_NORCPT = 0x1, 0x2, 0x4, 0x8
P_NOBODY, P_NOHDRS, P_NOEOH, P_NR_HDR = 0x10, 0x20, 0x40, 0x80
P_NR_CONN, P_NR_HELO, P_NR_MAIL, P_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
P_NR_EOH, P_NR_BODY = 0x40000, 0x80000

STAGES = ("connect", "mail", "rcpt", "eom")


class MilterProtocolError(RuntimeError):
    """The milter answered something a correct milter never answers here."""


def packet(cmd: bytes, payload: bytes = b"") -> bytes:
    """One milter message: 4-byte big-endian length (command + payload), command, payload."""
    return struct.pack("!Ic", len(payload) + 1, cmd) + payload


def cstr(*parts: str) -> bytes:
    """NUL-terminated strings, concatenated (the protocol's string encoding)."""
    return b"".join(p.encode() + b"\0" for p in parts)


def macros(stage: bytes, values: dict[str, str]) -> bytes:
    """SMFIC_MACRO for *stage* (the command letter the macros belong to)."""
    return packet(MACRO, stage + cstr(*(x for kv in values.items() for x in kv)))


@dataclass
class Message:
    """One SMTP transaction: envelope, headers, body and the macros Postfix would send."""

    sender: str
    recipient: str
    headers: list[tuple[str, str]]
    body: bytes = b"Hello.\r\n"
    queue_id: str = "BENCH0001"


@dataclass
class Reply:
    """What the milter answered at end of message (or earlier, if it refused early)."""

    stage: str  # where the conversation's answer came from: "mail", "rcpt" or "eom"
    code: bytes  # the disposition command (b"a", b"c", b"y", ...)
    text: str = ""  # SMFIR_REPLYCODE text, e.g. "550 5.7.1 You are not ..."
    headers: list[tuple[str, str]] = field(default_factory=list)  # added/inserted

    @property
    def smtp(self) -> str:
        """The answer as the SMTP client would see it: ``accept`` or ``550 ...``."""
        if self.code == R_REPLYCODE:
            return self.text
        return {R_ACCEPT: "accept", R_CONTINUE: "accept", R_REJECT: "reject",
                R_TEMPFAIL: "tempfail", R_DISCARD: "discard"}.get(self.code, repr(self.code))


class Conversation:
    """One milter connection (one SMTP session): open, any number of messages, close.

    *address* is ``"unix:/path"`` or ``"inet:PORT@HOST"`` (libmilter's spelling).
    *timings* (stage -> list of seconds) is appended to, so one dict can collect a
    whole thread's samples without per-call allocation.
    """

    def __init__(self, address: str, timings: dict[str, list[float]], *,
                 client_ip: str = "192.0.2.10", helo: str = "mail.bench.test",
                 timeout: float = 30.0) -> None:
        self.timings = timings
        t0 = time.perf_counter()
        if address.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(address[5:])
        else:
            port, _, host = address[5:].partition("@")
            s = socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.rfile = s.makefile("rb", buffering=65536)
        s.sendall(packet(OPTNEG, struct.pack("!III", VERSION, ACTIONS_ALL, PROTOCOL_ALL)))
        cmd, data = self._read()
        if cmd != OPTNEG or len(data) < 12:
            raise MilterProtocolError(f"bad OPTNEG reply {cmd!r} {data[:40]!r}")
        _version, self.actions, self.protocol = struct.unpack("!III", data[:12])
        if self.actions & ~ACTIONS_ALL or self.protocol & ~PROTOCOL_ALL:
            raise MilterProtocolError(
                f"milter asked for what we did not offer: {self.actions:#x}/{self.protocol:#x}")
        p = self.protocol
        out = b""
        if not p & P_NOCONNECT:
            out += macros(CONNECT, {"j": "mx.bench.test", "{daemon_name}": "bench",
                                    "v": "Postfix 3.7"})
            out += packet(CONNECT, cstr(helo) + b"4" + struct.pack("!H", 40000)
                          + cstr(client_ip))
            if not p & P_NR_CONN:
                s.sendall(out)
                out = b""
                self._expect_continue("connect")
        timings["connect"].append(time.perf_counter() - t0)
        if not p & P_NOHELO:
            out += packet(HELO, cstr(helo))
            if not p & P_NR_HELO:
                s.sendall(out)
                out = b""
                self._expect_continue("helo")
        self._pending = out  # sent with the first MAIL: no wait for no-reply stages

    # ------------------------------------------------------------------ wire

    def _read(self) -> tuple[bytes, bytes]:
        head = self.rfile.read(5)
        if len(head) < 5:
            raise MilterProtocolError("the milter closed the connection")
        (length,) = struct.unpack("!I", head[:4])
        data = self.rfile.read(length - 1) if length > 1 else b""
        return head[4:5], data

    def _reply(self) -> tuple[bytes, bytes]:
        while True:
            cmd, data = self._read()
            if cmd != R_PROGRESS:
                return cmd, data

    def _expect_continue(self, stage: str) -> None:
        cmd, data = self._reply()
        if cmd != R_CONTINUE:
            raise MilterProtocolError(f"{stage}: expected continue, got {cmd!r} {data!r}")

    @staticmethod
    def _disposition(stage: str, cmd: bytes, data: bytes,
                     headers: list[tuple[str, str]] | None = None) -> Reply:
        text = data.rstrip(b"\0").decode("utf-8", "replace") if cmd == R_REPLYCODE else ""
        return Reply(stage, cmd, text, headers or [])

    # ------------------------------------------------------------------ message

    def send(self, m: Message) -> Reply:
        """One transaction; returns the final answer (an early refusal ends it)."""
        p, s, t = self.protocol, self.sock, self.timings
        out = self._pending
        self._pending = b""
        if not p & P_NOMAIL:
            out += macros(MAIL, {"i": m.queue_id, "{mail_addr}": m.sender})
            out += packet(MAIL, cstr(f"<{m.sender}>"))
            t0 = time.perf_counter()
            s.sendall(out)
            out = b""
            if not p & P_NR_MAIL:
                cmd, data = self._reply()
                t["mail"].append(time.perf_counter() - t0)
                if cmd != R_CONTINUE:
                    self._pending = packet(ABORT)  # the MTA ends the transaction
                    return self._disposition("mail", cmd, data)
        if not p & P_NORCPT:
            out += macros(RCPT, {"{rcpt_addr}": m.recipient})
            out += packet(RCPT, cstr(f"<{m.recipient}>"))
            t0 = time.perf_counter()
            s.sendall(out)
            out = b""
            if not p & P_NR_RCPT:
                cmd, data = self._reply()
                t["rcpt"].append(time.perf_counter() - t0)
                if cmd != R_CONTINUE:
                    self._pending = packet(ABORT)
                    return self._disposition("rcpt", cmd, data)
        t0 = time.perf_counter()
        if not p & P_NOHDRS:
            for name, value in m.headers:
                out += packet(HEADER, cstr(name, value))
                if not p & P_NR_HDR:
                    s.sendall(out)
                    out = b""
                    self._expect_continue("header")
        if not p & P_NOEOH:
            out += packet(EOH)
            if not p & P_NR_EOH:
                s.sendall(out)
                out = b""
                self._expect_continue("eoh")
        if not p & P_NOBODY:
            out += packet(BODY, m.body)
            if not p & P_NR_BODY:
                s.sendall(out)
                out = b""
                self._expect_continue("body")
        out += macros(BODYEOB, {"i": m.queue_id})
        out += packet(BODYEOB)
        s.sendall(out)
        added: list[tuple[str, str]] = []
        while True:
            cmd, data = self._reply()
            if cmd in DISPOSITIONS:
                t["eom"].append(time.perf_counter() - t0)
                return self._disposition("eom", cmd, data, added)
            if cmd == R_ADDHEADER:
                name, value = data.split(b"\0")[:2]
                added.append((name.decode(), value.decode("utf-8", "replace")))
            elif cmd in (R_INSHEADER, R_CHGHEADER):
                name, value = data[4:].split(b"\0")[:2]
                if cmd == R_INSHEADER or value:
                    added.append((name.decode(), value.decode("utf-8", "replace")))
            else:
                raise MilterProtocolError(f"eom: unexpected reply {cmd!r} {data[:80]!r}")

    def close(self) -> None:
        """SMFIC_QUIT and close, as the MTA does at the end of the SMTP session."""
        try:
            self.sock.sendall(self._pending + packet(QUIT))
        except OSError:
            pass
        self.rfile.close()
        self.sock.close()
