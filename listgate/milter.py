"""The thin pymilter layer: SMTP callbacks in, Session calls, milter answers out.

Every decision is made by :mod:`listgate.engine`; this module only translates.  It
negotiates away every callback listgate does not use (data, unknown, eoh, abort,
and the body unless a list requires authenticated senders, which needs DKIM) and
marks the ones that never refuse ``@Milter.noreply`` (connect, HELO -- their
refusals are delayed to MAIL FROM -- header and body), so the MTA waits for an
answer only at MAIL, RCPT and end of message.  No exception escapes into pymilter:
a bug answers 451 4.3.0 and is logged once with its traceback.
"""

from __future__ import annotations

import functools
import itertools
import logging
import socket
from collections.abc import Callable
from typing import Any

import Milter

from listgate.engine import ACCEPT, CONTINUE, REJECT, TEMPFAIL, Decision, Engine, Session
from listgate.reply import Reply

log = logging.getLogger("listgate")

_ids = itertools.count(1)
_ACTIONS = {CONTINUE: Milter.CONTINUE, ACCEPT: Milter.ACCEPT, REJECT: Milter.REJECT,
            TEMPFAIL: Milter.TEMPFAIL}
INTERNAL_ERROR = Reply("451", "4.3.0", "Internal error in the list filter; try again later")


def milter_text(text: str) -> str:
    """libmilter treats the reply text as a format string: a lone % must be doubled."""
    return text.replace("%", "%%")


def _guarded(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Catch every exception of a callback: log it, and answer 451 where we may answer."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(self: ListgateMilter, *args: Any) -> Any:
            try:
                return func(self, *args)
            except Exception:
                log.exception("[%s] internal error in %s", self.conn_id, stage)
                self.failed = True
                if stage in ("connect", "hello", "header", "body"):
                    return Milter.CONTINUE  # no-reply callbacks: refused at the next stage
                return self._answer(Decision(TEMPFAIL, INTERNAL_ERROR))

        return wrapper

    return wrap


#: the only modifications listgate makes: insert Received-SPF / X-Listgate-Verdict,
#: delete forged X-Listgate-* headers
ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS


class ListgateMilter(Milter.Base):
    """One instance per SMTP connection (libmilter runs each in its own thread)."""

    #: set by the daemon before runmilter
    engine: Engine

    def negotiate(self, opts: list[int]) -> int:
        """Ask only for the header actions we use; pymilter would keep all the MTA
        offers (body replacement, recipient changes...), which is more than we may do."""
        rc = super().negotiate(opts)
        if rc == Milter.CONTINUE:
            opts[0] = self._actions = opts[0] & ACTIONS
            if not self.engine.needs_body:
                # the body is read only for DKIM, when some list requires authenticated
                # senders: otherwise the MTA need not send it at all
                opts[1] = self._protocol = (opts[1] | Milter.P_NOBODY) & ~Milter.P_NR_BODY
        return rc

    def __init__(self) -> None:
        self.conn_id = str(next(_ids))
        self.session: Session | None = None
        self.failed = False

    def _answer(self, decision: Decision) -> int:
        if decision.reply is not None and decision.action in (REJECT, TEMPFAIL):
            r = decision.reply
            self.setreply(r.code, r.xcode, milter_text(r.text))
        return _ACTIONS[decision.action]

    def _internal_error(self) -> int:
        log.error("[%s] refusing after an earlier internal error", self.conn_id)
        return self._answer(Decision(TEMPFAIL, INTERNAL_ERROR))

    @Milter.noreply
    @_guarded("connect")
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        ip = hostaddr[0] if family in (socket.AF_INET, socket.AF_INET6) else None
        self.session = self.engine.session(self.conn_id)
        self.session.connect(hostname, ip, self.getsymval("j"))
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
        if self.session is not None:
            self.session.header(name, value)
        return Milter.CONTINUE

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
