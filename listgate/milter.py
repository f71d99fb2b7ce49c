"""The thin pymilter layer: SMTP callbacks in, Session calls, milter answers out.

Every decision is made by :mod:`listgate.engine`; this module only translates.  It
negotiates away every callback listgate does not use (unknown, eoh, abort, data over
a unix socket, and the body unless DKIM or some list's chain rules need it) and
marks the ones that never refuse ``@Milter.noreply`` (connect, HELO -- their
refusals are delayed to MAIL FROM -- header and body), so the MTA waits for an
answer only at MAIL, RCPT and end of message.  No exception escapes into pymilter:
a bug answers 451 4.3.0 and is logged once with its traceback.

pymilter itself fails before any of this runs when it cannot make a ``str`` of a
header name, HELO name or client host name (it decodes them strictly as UTF-8).  It
then answers the command by its exception policy, and at a no-reply command (a header)
its default TEMPFAIL makes libmilter drop the transaction while the MTA, told nothing,
waits for an end-of-message answer that never comes.  So :func:`run_milter` sets the
policy to CONTINUE, registers callbacks that never raise, and catches what pymilter
reports (:func:`_pymilter_excepthook`): a header whose name is not UTF-8 is lost with
its value, and the engine judges the post without it (see ``Session.header_unreadable``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import Milter

from listgate.engine import ACCEPT, CONTINUE, REJECT, TEMPFAIL, Decision, Engine, Session
from listgate.reply import Reply

log = logging.getLogger("listgate")

_ids = itertools.count(1)
#: before each connection id: "" for the first worker, "N." for the N-th the main
#: process started (after a takeover two workers log to one file at once)
CONN_ID_PREFIX = ""
_ACTIONS = {CONTINUE: Milter.CONTINUE, ACCEPT: Milter.ACCEPT, REJECT: Milter.REJECT,
            TEMPFAIL: Milter.TEMPFAIL}
INTERNAL_ERROR = Reply("451", "4.3.0", "Internal error in the list filter; try again later")
#: the ListgateMilter whose callback runs now: pymilter gives each MTA connection a
#: Python thread state of its own (whichever libmilter worker runs the callback), and
#: a threading.local is per thread state.  Read where pymilter reports its own failures.
_current = threading.local()


def milter_text(text: str) -> str:
    """libmilter treats the reply text as a format string: a lone % must be doubled."""
    return text.replace("%", "%%")


class Busy:
    """The callbacks running right now, and since when (for :class:`Rescuer`).

    Called from libmilter's threads, three times per message: no lock of its own.
    ``next`` on a count, a dict store and a dict pop are each one step under the GIL,
    and the rescuer's reader copies the values in one step too, so none of them can
    see the dict half-changed; never raises."""

    def __init__(self) -> None:
        self._since: dict[int, float] = {}
        self._tokens = itertools.count(1)
        #: grows with every callback begun that the rescuer can see (negotiate, and the
        #: callbacks that may wait): a rise right after a poke means the poke freed a
        #: command that was left waiting for a worker
        self.begun = 0

    def began(self) -> None:
        """A callback that does not wait began (negotiate: a new connection served)."""
        self.begun = next(self._tokens)

    def enter(self) -> int:
        token = self.begun = next(self._tokens)
        self._since[token] = time.monotonic()
        return token

    def leave(self, token: int) -> None:
        self._since.pop(token, None)

    def longest(self) -> float:
        """Seconds the longest-running callback has been running (0 when none)."""
        for _ in range(10):
            try:
                started = tuple(self._since.values())
                break
            except RuntimeError:  # changed size while copied: cannot happen under the GIL
                continue
        else:
            return 0.0
        return time.monotonic() - min(started) if started else 0.0


#: the callbacks that may wait on the outside world (DNS, the backend, a hash)
_WAITING_STAGES = frozenset({"envfrom", "envrcpt", "eom"})


def _guarded(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Catch every exception of a callback: log it, and answer 451 where we may answer.

    The callbacks that may wait are also counted in :data:`ListgateMilter.busy`."""
    waits = stage in _WAITING_STAGES

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(self: ListgateMilter, *args: Any) -> Any:
            token = self.busy.enter() if waits else 0
            try:
                return func(self, *args)
            except Exception:
                log.exception("[%s] internal error in %s", self.conn_id, stage)
                self.failed = True
                if stage in ("connect", "hello", "header", "body"):
                    return Milter.CONTINUE  # no-reply callbacks: refused at the next stage
                return self._answer(Decision(TEMPFAIL, INTERNAL_ERROR))
            finally:
                if waits:
                    self.busy.leave(token)

        return wrapper

    return wrap


class Connections:
    """The MTA connections open right now, per engine.

    The daemon drains them on SIGTERM (:meth:`wait_idle`), and after a reload closes
    the replaced engine's backend only once the last connection using it has ended
    (:meth:`retire`).  Called from libmilter's connection threads: never raises.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open: dict[int, int] = {}  # id(engine) -> open connections
        self._retired: dict[int, Engine] = {}

    def opened(self, engine: Engine) -> None:
        with self._cond:
            self._open[id(engine)] = self._open.get(id(engine), 0) + 1

    def closed(self, engine: Engine) -> None:
        done = None
        with self._cond:
            left = self._open.get(id(engine), 1) - 1
            if left > 0:
                self._open[id(engine)] = left
            else:
                self._open.pop(id(engine), None)
                done = self._retired.pop(id(engine), None)
            self._cond.notify_all()
        if done is not None:
            _close_engine(done)

    def retire(self, engine: Engine) -> None:
        """``engine`` takes no new connections: close its backend when it is idle."""
        with self._cond:
            if self._open.get(id(engine)):
                self._retired[id(engine)] = engine
                return
        _close_engine(engine)

    def count(self) -> int:
        with self._cond:
            return sum(self._open.values())

    def wait_idle(self, timeout: float) -> int:
        """Wait until no connection is open (at most ``timeout`` s); the number left."""
        with self._cond:
            self._cond.wait_for(lambda: not self._open, timeout)
            return sum(self._open.values())


def _close_engine(engine: Engine) -> None:
    try:
        engine.close()
    except Exception:  # best effort, in a libmilter thread
        log.exception("closing the %s backend or hash workers of a replaced configuration failed",
                      engine.backend.name)


#: the only modifications listgate makes: insert Received-SPF / X-Listgate-Verdict,
#: delete forged X-Listgate-* headers
ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS


class ListgateMilter(Milter.Base):
    """One instance per SMTP connection (libmilter runs each in its own thread)."""

    #: set by the daemon before runmilter, replaced on reload (SIGHUP): each connection
    #: keeps the engine it started with
    engine: Engine
    #: the open connections, for draining on shutdown
    connections = Connections()
    #: the callbacks running now that may wait (see daemon.Rescuer)
    busy = Busy()
    #: False while the daemon drains on SIGTERM: new connections are refused
    accepting = True
    #: answer the DATA command (set by the daemon for inet sockets; see :meth:`data`)
    data_reply = False

    def negotiate(self, opts: list[int]) -> int:
        """Ask only for the header actions we use; pymilter would keep all the MTA
        offers (body replacement, recipient changes...), which is more than we may do.

        A failure here ends the connection as a shutdown does: with pymilter's
        exception policy CONTINUE an escaping exception would keep every option the MTA
        offered, including "send me nothing"."""
        self.busy.began()
        try:
            return self._negotiate(opts)
        except Exception:
            log.exception("[%s] internal error in negotiate", self.conn_id)
            return Milter.TEMPFAIL

    def _negotiate(self, opts: list[int]) -> int:
        if not self.accepting:
            # shutting down: ending the connection here makes the MTA apply its
            # milter_default_action, exactly as if the daemon were already gone
            return Milter.TEMPFAIL
        # pymilter's Base.negotiate, without its per-connection scan for @symlist
        # callbacks (listgate declares none): the protocol mask is computed once per class
        protocol = opts[1] & ~self.protocol_mask()
        self._reads_body = self.engine.wants_body()
        if not self._reads_body:
            # the body is read only for DKIM (a list requires authenticated senders) and
            # for lists whose rules read it: otherwise the MTA need not send it at all
            protocol = (protocol | Milter.P_NOBODY) & ~Milter.P_NR_BODY
        if not self.data_reply:
            protocol |= Milter.P_NODATA  # a unix socket has no delayed ACK to avoid
        opts[0] = self._actions = opts[0] & ACTIONS
        opts[1] = self._protocol = protocol
        opts[2] = opts[3] = 0
        return Milter.CONTINUE

    def __init__(self) -> None:
        self.conn_id = f"{CONN_ID_PREFIX}{next(_ids)}"
        self.session: Session | None = None
        self.failed = False
        self._protocol = 0
        _current.milter = self
        # pinned: a reload swaps the class attribute for new connections only
        self.engine = type(self).engine
        self._open = True
        #: negotiate (which runs first) sets it: does the MTA send bodies?
        self._reads_body = True
        self.connections.opened(self.engine)

    def close(self) -> int:
        """End of the MTA connection (libmilter calls it even after an abort)."""
        if self._open:
            self._open = False
            self.connections.closed(self.engine)
        return Milter.CONTINUE

    def _answer(self, decision: Decision) -> int:
        if decision.reply is not None and decision.action in (REJECT, TEMPFAIL):
            r = decision.reply
            self.setreply(r.code, r.xcode, milter_text(r.text))
        return _ACTIONS[decision.action]

    def _internal_error(self) -> int:
        log.error("[%s] refusing after an earlier internal error", self.conn_id)
        return self._answer(Decision(TEMPFAIL, INTERNAL_ERROR))

    def pymilter_error(self, exc: BaseException) -> None:
        """pymilter failed on a command of this connection before calling us.

        Every callback catches its own exceptions, so what pymilter reports is its own
        failure to build a callback's arguments: a ``str`` of a header name, HELO name
        or client host name that is not UTF-8 (``exc.object`` holds its bytes).  The
        command answered CONTINUE (our exception policy); which one it was follows from
        the protocol's order: headers come only after RCPT, HELO only outside a
        transaction (a HELO lost after an RSET that followed RCPT counts as a header of
        the aborted transaction, which the next MAIL forgets, and the earlier HELO name
        stays).  A lost header goes to the session, which still judges the post;
        a lost HELO is given as read (surrogate escapes, as header values are); anything
        else (a lost CONNECT: no session) is answered 451 at the next answer."""
        try:
            raw = exc.object if isinstance(exc, UnicodeDecodeError) else None
            s = self.session
            if isinstance(raw, bytes) and s is not None:
                if s.stage == "rcpt":
                    s.header_unreadable(raw)
                else:
                    self.hello(raw.decode("utf-8", "surrogateescape"))
                return
            log.error("[%s] pymilter could not call listgate: %s: %s", self.conn_id,
                      type(exc).__name__, exc)
        except Exception:
            log.exception("[%s] internal error after a pymilter error", self.conn_id)
        self.failed = True

    @Milter.noreply
    @_guarded("connect")
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        ip = hostaddr[0] if family in (socket.AF_INET, socket.AF_INET6) else None
        self.session = self.engine.session(self.conn_id, self._reads_body)
        self.session.connect(hostname, ip, self.getsymval("j"))
        return Milter.CONTINUE

    @_guarded("data")
    def data(self) -> int:
        """DATA: nothing to decide, but over TCP answering it saves ~40 ms per message.

        Postfix sends the DATA stage's macro packet even when the DATA event is
        negotiated away, and flushes it just before it hands the milter connection to
        its cleanup process.  With nothing to answer, our kernel delays the ACK of that
        packet, and cleanup's first small write (the headers) waits for it under Nagle
        on Postfix's side: a delayed ACK (~40 ms) per message.  A DATA event that gets a
        reply makes Postfix read that reply before the hand-off, and the reply carries
        the ACK.  Over a unix socket there is no such stall and the event stays
        negotiated away (P_NODATA), saving the round trip."""
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded("hello")
    def hello(self, name: str) -> int:
        if self.session is not None:
            self.session.helo(name)
        return Milter.CONTINUE

    @_guarded("envfrom")
    def envfrom(self, sender: str, *esmtp: str) -> int:
        if self.failed or self.session is None:
            return self._internal_error()
        auth = self.getsymval("{auth_authen}")
        return self._answer(self.session.mail(sender, auth, self.getsymval("i")))

    @_guarded("envrcpt")
    def envrcpt(self, recipient: str, *esmtp: str) -> int:
        if self.failed or self.session is None:
            return self._internal_error()
        return self._answer(self.session.rcpt(recipient))

    @Milter.noreply
    @_guarded("header")
    def header(self, name: str, value: str) -> int:
        """What pymilter's negotiation looks at (defined: headers wanted; @noreply: no
        reply to each); the calls themselves arrive at :meth:`header_bytes`."""
        if self.session is not None:
            self.session.header(name, value)
        return Milter.CONTINUE

    def header_bytes(self, fld: str, val: bytes) -> int:
        """What pymilter calls for each header: :meth:`header` without pymilter's
        per-header dispatch (an attribute lookup and two wrappers), for the callback the
        MTA makes most often.  Same decoding (UTF-8, surrogate escapes) and guard."""
        try:
            if self.session is not None:
                self.session.header(fld, val.decode("utf-8", "surrogateescape"))
        except Exception:
            log.exception("[%s] internal error in header", self.conn_id)
            self.failed = True
        return Milter.NOREPLY if self._protocol & Milter.P_NR_HDR else Milter.CONTINUE

    @Milter.noreply
    @_guarded("body")
    def body(self, chunk: bytes) -> int:
        if self.session is not None:
            self.session.body(chunk)
        return Milter.CONTINUE

    @_guarded("eom")
    def eom(self) -> int:
        if self.failed or self.session is None:
            return self._internal_error()
        s = self.session
        if s.queue_id is None:
            s.queue_id = self.getsymval("i") or None
        result = s.eom()
        if result.decision.action == CONTINUE:
            for name, occurrence in result.remove_headers:
                self.chgheader(name, occurrence, "")
            for name, value, index in result.add_headers:
                self.addheader(name, value, index)
        return self._answer(result.decision)


def _lost(ctx: Any) -> ListgateMilter:
    """The connection's ListgateMilter where pymilter never made one: after the MTA
    reused the milter connection (QUIT_NC) pymilter failed on its CONNECT (a host name
    not UTF-8).  It answers 451 at MAIL, as a lost CONNECT does on a first connection."""
    m = ListgateMilter()
    m._setctx(ctx)
    m.failed = True
    log.error("[%s] pymilter lost this connection's CONNECT: answering 451", m.conn_id)
    return m


def _negotiate(ctx: Any, opts: list[int]) -> int:
    m = ListgateMilter()
    m._setctx(ctx)
    return m.negotiate(opts)


def _connect(ctx: Any, hostname: str, family: int, hostaddr: Any) -> int:
    m = ctx.getpriv()
    if m is None:  # a reused milter connection (QUIT_NC): no negotiation this time
        m = ListgateMilter()
        m._setctx(ctx)
    return m.connect(hostname, family, hostaddr)


def _pymilter_excepthook(exc_type: type[BaseException], exc: BaseException,
                         tb: Any) -> None:
    """pymilter reports a failure with ``PyErr_Print``, which calls ``sys.excepthook`` in
    the thread state of the connection it failed on: tell that connection."""
    m = getattr(_current, "milter", None)
    if m is None:
        _previous_excepthook(exc_type, exc, tb)
    else:
        m.pymilter_error(exc)


_previous_excepthook = sys.excepthook


def run_milter(name: str, socket_spec: str, timeout: int) -> None:
    """``Milter.runmilter``, with callbacks of our own and pymilter's exception policy
    CONTINUE (see the module docstring): each callback finds its ListgateMilter (or
    makes one that refuses, see :func:`_lost`), so nothing raises in pymilter's glue
    and only pymilter's own argument failures reach the policy, where CONTINUE keeps
    libmilter in step with an MTA that expects no reply.  Blocks until libmilter stops.
    """
    global _previous_excepthook
    mod = Milter.milter
    if sys.excepthook is not _pymilter_excepthook:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _pymilter_excepthook
    mod.set_exception_policy(mod.CONTINUE)
    mod.set_connect_callback(_connect)
    mod.set_helo_callback(lambda ctx, host: (ctx.getpriv() or _lost(ctx)).hello(host))
    mod.set_envfrom_callback(lambda ctx, *b: (ctx.getpriv() or _lost(ctx)).envfrom_bytes(*b))
    mod.set_envrcpt_callback(lambda ctx, *b: (ctx.getpriv() or _lost(ctx)).envrcpt_bytes(*b))
    mod.set_header_callback(lambda ctx, f, v: (ctx.getpriv() or _lost(ctx)).header_bytes(f, v))
    mod.set_eoh_callback(lambda ctx: (ctx.getpriv() or _lost(ctx)).eoh())
    mod.set_body_callback(lambda ctx, chunk: (ctx.getpriv() or _lost(ctx)).body(chunk))
    mod.set_eom_callback(lambda ctx: (ctx.getpriv() or _lost(ctx)).eom())
    mod.set_abort_callback(lambda ctx: (ctx.getpriv() or _lost(ctx)).abort())
    mod.set_close_callback(Milter.close_callback)
    mod.setconn(socket_spec)
    if timeout > 0:
        mod.settimeout(timeout)
    mod.register(name, negotiate=_negotiate,
                 data=lambda ctx: (ctx.getpriv() or _lost(ctx)).data(),
                 unknown=lambda ctx, cmd: (ctx.getpriv() or _lost(ctx)).unknown(cmd))
    mod.opensocket(True)
    mod.main()
