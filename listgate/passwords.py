"""Moderator passwords: the check of Mailman's ``approved`` rule, bounded against floods.

A post whose Approve/Approved/X-Approve/X-Approved header (or first body line) carries
the list's moderator password skips moderation, so predicting Mailman means checking
that password.  This module does the check exactly as Mailman does it, and nothing
else (finding the password in the message is the engine's job):

* **Mailman 3** (``mailman/rules/approved.py``) hands the password and the list's
  ``moderator_password`` to a passlib ``CryptContext`` built from
  ``mailman/config/passlib.cfg``: schemes sha512_crypt and sha256_crypt, new hashes
  sha512_crypt at passlib's default 656000 rounds.  :func:`verify_mailman3` uses that
  very context.  A stored value it cannot parse (a Mailman 2 SHA-1 digest carried
  over by ``mailman import21``, another scheme, garbage) is ``None``, "cannot
  evaluate" -- never a False that would refuse.  (Mailman itself answers such a hash
  with "not approved": ``PasswordContext.verify`` turns ``UnknownHashError`` into
  ``(False, ...)``; a malformed hash of a known scheme makes the rule raise.)
* **Mailman 2.1** (2.1.39: ``Mailman/Handlers/Approve.py`` and
  ``SecurityManager.Authenticate``) accepts the list's poster password
  (``post_password``), moderator password (``mod_password``) or admin password
  (``password``), never the site password ("we want to discourage the practice of
  sending the site admin password through email in the clear").  An empty response
  never matches.  Poster and moderator passwords must be the SHA-1 hex digest of the
  response; the admin password may also be a legacy raw MD5 digest or a traditional
  DES crypt(3) string (salt = its first two characters).  All comparisons are plain
  string equality (case-sensitive hex).  See :func:`verify_mailman2`.

Why the bounds.  sha512_crypt at 656000 rounds costs 0.25 s of CPU with passlib
1.7.4's os_crypt backend (Debian 12: Python 3.11's ``crypt``) and 0.35-0.6 s with the
pure-Python builtin backend (libpass, or any passlib on Python 3.13, where ``crypt``
is gone), and its cost grows with the password's length (4096 bytes: 8 s).  Anyone
can put an Approved: header on a message, so without bounds a flood of guesses is a
CPU denial of service -- and worse: os_crypt holds the GIL for the whole crypt(3) call,
so every other connection of the milter stops while it runs (a busy thread measured
3% of its normal progress next to it; next to the builtin backend, which releases the
GIL between rounds, 55%).  :class:`PasswordChecker` therefore

* remembers results, keyed by an HMAC (per-process random key) of the stored hash
  and the password: no plaintext is kept, and the same guess repeated costs one hash
  (concurrent identical checks wait for the one computation instead of repeating it);
* runs at most ``max_concurrent`` hashes at once, waiting at most ``wait`` seconds
  for a turn (more than one at once buys nothing on os_crypt, where they serialise
  on the GIL anyway);
* starts at most ``max_per_second`` new hashes per second (a token bucket with
  ``burst`` tokens);
* refuses to hash passwords longer than ``max_password_bytes`` and hashes with more
  than :data:`MAX_ROUNDS` rounds ("unknown");

and past a bound answers ``busy``: the engine defers the post (451 4.7.x), so a
moderator's message is retried, never refused (5xx) nor let through unchecked.
A password seen correct once is remembered apart from failures, so no flood of wrong
guesses can evict it, and it is then answered without touching any bound.

Mailman 2's digests cost microseconds: they are checked directly, without the bounds.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from passlib.context import CryptContext
from passlib.exc import PasswordValueError
from passlib.hash import des_crypt

from listgate.cache import TTLCache

#: Mailman 3.3's ``mailman/config/passlib.cfg``, verbatim but for its comments.  The
#: min_rounds settings only decide whether Mailman re-hashes on success; verifying is
#: the same with or without them.
MAILMAN3_PASSLIB_CFG = """\
[passlib]
schemes = sha512_crypt, sha256_crypt
default = sha512_crypt
sha256_crypt__min_rounds = 80000
sha512_crypt__min_rounds = 60000
admin__sha256_crypt__min_rounds = 160000
admin__sha512_crypt__min_rounds = 120000
"""

#: the context Mailman 3 verifies moderator passwords with
MAILMAN3_CONTEXT = CryptContext.from_string(MAILMAN3_PASSLIB_CFG)

#: hashes with more rounds than this are not computed ("unknown"): Mailman makes
#: 656000 (sha512_crypt) or 535000 (sha256_crypt); 5 million is 2-8 s of CPU.
MAX_ROUNDS = 5_000_000

SCHEMES = ("mailman3", "mailman2")


def _to_bytes(password: str | bytes) -> bytes:
    """The password as the bytes Mailman hashes.

    Mailman 2 (Python 2) digests the header's raw bytes: pass ``bytes`` when you have
    them.  A ``str`` is taken as UTF-8, with surrogate escapes turned back into the
    raw bytes they stand for (how Python 3 decodes undecodable header bytes).
    """
    if isinstance(password, bytes):
        return password
    return password.encode("utf-8", "surrogateescape")


# -- Mailman 3 ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mailman3Hash:
    """What :func:`parse_mailman3` learnt from a stored hash."""

    hash: str
    scheme: str
    rounds: int


def parse_mailman3(stored: str | bytes | None) -> Mailman3Hash | None:
    """The stored ``moderator_password`` parsed by Mailman's schemes; None if it is none.

    Mailman keeps the hash as bytes (a LargeBinary column) and decodes it as UTF-8
    before verifying; its REST API returns it as a string.  Both are accepted.
    """
    if isinstance(stored, bytes):
        try:
            stored = stored.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(stored, str) or not stored:
        return None
    scheme = MAILMAN3_CONTEXT.identify(stored, required=False)
    if scheme is None:
        return None
    try:
        parsed = MAILMAN3_CONTEXT.handler(scheme).from_string(stored)
    except ValueError:  # identify() only looks at the $6$ / $5$ prefix
        return None
    if not parsed.checksum:  # a "config string" (salt and rounds only) matches nothing
        return None
    return Mailman3Hash(stored, scheme, int(parsed.rounds))


def verify_mailman3(password: str | bytes, stored: str | bytes | None) -> bool | None:
    """Would Mailman 3's ``approved`` rule accept ``password`` for this list?

    True or False; False for a list without a moderator password (None or empty:
    Mailman's rule then never matches); None when ``stored`` is not a hash of Mailman's schemes, or
    passlib refuses the password (a NUL byte, more than 4096 bytes, or a str that is
    not UTF-8 encodable): Mailman's rule would raise rather than answer.  Costs one
    full hash computation: use :class:`PasswordChecker` in the daemon.
    """
    if stored is None or stored in (b"", ""):
        return False
    parsed = parse_mailman3(stored)
    if parsed is None:
        return None
    try:
        return bool(MAILMAN3_CONTEXT.verify(password, parsed.hash))
    except (PasswordValueError, UnicodeError):
        return None
    except ValueError:  # a hash passlib parsed but then would not compute
        return None


# -- Mailman 2.1 ---------------------------------------------------------------------


class Mailman2Secrets(NamedTuple):
    """A Mailman 2.1 list's passwords, as its ``config.pck`` stores them.

    A tuple, so ``(mod_password, password)`` or ``(mod_password, password,
    post_password)`` may be passed positionally.  None or empty = not set.  The site
    password (``data/adm.pw``) is deliberately absent: Mailman 2.1's Approve handler
    does not accept it.
    """

    mod_password: str | bytes | None = None
    password: str | bytes | None = None
    post_password: str | bytes | None = None


def _secret_bytes(secret: str | bytes) -> tuple[bytes, ...]:
    """The byte strings a stored secret may have been in Python 2.

    listgate's Mailman 2 backend decodes Python 2 strings as latin-1, and then as
    UTF-8 where they are valid UTF-8; a ``str`` could be either (only a binary MD5
    digest can tell the difference), so both are tried.
    """
    if isinstance(secret, bytes):
        return (secret,)
    out = [secret.encode("utf-8", "surrogateescape")]
    try:
        latin = secret.encode("latin-1")
    except UnicodeEncodeError:
        pass
    else:
        if latin != out[0]:
            out.append(latin)
    return tuple(out)


def verify_mailman2_digest(password: str | bytes, secret: str | bytes | None,
                           admin: bool = False) -> bool:
    """Mailman 2.1's check of one list password (``SecurityManager.Authenticate``).

    The SHA-1 hex digest of the response must equal ``secret``.  With ``admin`` (the
    list's ``password``) the legacy forms Mailman 2.1 still migrates from also match:
    the raw 16-byte MD5 digest, and a traditional DES crypt(3) string (through
    passlib's des_crypt, not the removed ``crypt`` module).  An empty response or
    secret never matches.
    """
    if not password or not secret:
        return False
    response = _to_bytes(password)
    candidates = _secret_bytes(secret)
    sha = hashlib.sha1(response).hexdigest().encode("ascii")
    if any(hmac.compare_digest(sha, c) for c in candidates):
        return True
    if not admin:
        return False
    md5 = hashlib.md5(response).digest()
    if any(hmac.compare_digest(md5, c) for c in candidates):
        return True
    for c in candidates:
        # crypt(response, secret[:2]) == secret; only a 13-character DES string can be
        # equal.  Python 2's crypt raised on a NUL byte, which Mailman treats as False.
        if len(c) == 13 and des_crypt.identify(c):
            try:
                if des_crypt.verify(response, c):
                    return True
            except ValueError:
                pass
    return False


def _mailman2_secrets(stored: Any) -> Mailman2Secrets | None:
    if stored is None:
        return Mailman2Secrets()
    if isinstance(stored, Mailman2Secrets):
        return stored
    if isinstance(stored, str | bytes):
        return Mailman2Secrets(mod_password=stored)
    if isinstance(stored, Sequence) and len(stored) <= 3 and all(
            s is None or isinstance(s, str | bytes) for s in stored):
        return Mailman2Secrets(*stored)
    return None


def verify_mailman2(password: str | bytes,
                    stored: Mailman2Secrets | Sequence[str | bytes | None] | str | bytes | None,
                    ) -> bool | None:
    """Would Mailman 2.1's Approve handler accept ``password`` for this list?

    ``stored`` is a :class:`Mailman2Secrets`, a sequence taken positionally as one
    (``mod_password, password, post_password``), or one string: a moderator password
    digest.  True if any of the list's passwords matches, as Mailman tries them;
    None only when ``stored`` is none of these shapes.
    """
    secrets = _mailman2_secrets(stored)
    if secrets is None:
        return None
    return (verify_mailman2_digest(password, secrets.post_password)
            or verify_mailman2_digest(password, secrets.mod_password)
            or verify_mailman2_digest(password, secrets.password, admin=True))


#: how listgate stores a Mailman 2 SHA-1 digest among a list's approval passwords
SHA1_PREFIX = "{sha1}"


def _is_stored_form(stored: Any) -> bool:
    """A sequence of ``$N$...`` hashes and/or ``{sha1}HEX`` digests (listgate's form)."""
    return (isinstance(stored, list | tuple) and not isinstance(stored, Mailman2Secrets)
            and bool(stored) and all(isinstance(e, str) and e.startswith(("$", SHA1_PREFIX))
                                     for e in stored))


# -- the bounded checker ---------------------------------------------------------------


class PasswordStatus(StrEnum):
    """What :meth:`PasswordChecker.check` found; compares equal to its string."""

    OK = "ok"            # Mailman would accept the password: the post is approved
    WRONG = "wrong"      # Mailman would not (wrong password, or the list has none)
    BUSY = "busy"        # a bound was reached: defer (451 4.7.x), never refuse
    UNKNOWN = "unknown"  # cannot evaluate: unknown hash format, or not computed


@dataclass(frozen=True, slots=True)
class PasswordResult:
    """The answer, with a short reason for the log (never the password)."""

    status: PasswordStatus
    reason: str
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status is PasswordStatus.OK

    @property
    def busy(self) -> bool:
        return self.status is PasswordStatus.BUSY


class _TokenBucket:
    """At most ``rate`` takes per second on average, ``burst`` at once; rate 0 = off."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def give_back(self) -> None:
        """Return a token that bought no computation (no slot came free in time)."""
        if self.rate <= 0:
            return
        with self._lock:
            self._refill()
            self._tokens = min(self.burst, self._tokens + 1.0)

    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens


class _Flight:
    """One computation in progress, which identical checks wait for."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: PasswordResult | None = None


#: the counters :meth:`PasswordChecker.counters` reports
COUNTERS = ("checks", "computed", "cache_hits", "joined", "busy_rate", "busy_source",
            "busy_wait", "busy_joined", "unknown", "cheap", "ok", "wrong")
#: per-client buckets remembered (least recently used ones are forgotten)
SOURCES_KEPT = 4096


def _timed_verify(secret: bytes, stored: str) -> tuple[bool | None, float]:
    """:func:`verify_mailman3` and the CPU seconds it took (run in a worker process)."""
    cpu = time.process_time()
    verdict = verify_mailman3(secret, stored)
    return verdict, time.process_time() - cpu


class HashWorkers:
    """sha512_crypt in worker processes, away from the milter's threads.

    A 656,000-round hash is 0.2-0.5 s of CPU, and passlib's C backend holds Python's
    GIL for all of it: computed in a milter thread, every other connection stands
    still meanwhile (measured: a member's p99 at end of message went from 2 ms to 90 ms
    under a flood of wrong passwords).  Spawned processes (not forked: the daemon runs
    libmilter's threads) keep the GIL free.  A worker that dies is replaced on the
    next check; that check is computed in the calling thread instead, so an answer is
    never lost to the pool.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._pool is None:
                import concurrent.futures
                import multiprocessing

                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_exit_with_parent, initargs=(os.getpid(),))
            return self._pool

    def verify(self, secret: bytes, stored: str) -> tuple[bool | None, float]:
        try:
            return self._get().submit(_timed_verify, secret, stored).result()
        except Exception:  # noqa: BLE001 - a broken pool (a worker killed): in-thread
            with self._lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            return _timed_verify(secret, stored)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _exit_with_parent(parent: int) -> None:
    """In a hashing process: exit once the daemon's worker that started it is gone
    (killed with -9, say, and replaced by the main process), instead of lingering."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class PasswordChecker:
    """Checks moderator passwords for every connection, within bounds on the work.

    One instance is shared by all of the milter's threads; every method is
    thread-safe.  ``verify`` is the Mailman 3 verifier (tests inject counting or
    blocking ones); ``clock`` drives the cache TTLs and the token bucket.
    """

    def __init__(self, max_concurrent: int = 1, max_per_second: float = 1.0, burst: int = 4,
                 wait: float = 2.0, cache_ttl: float = 3600.0, cache_size: int = 1000,
                 max_password_bytes: int = 128,
                 clock: Callable[[], float] = time.monotonic,
                 verify: Callable[[str | bytes, str], bool | None] | None = None,
                 ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if max_per_second < 0 or wait < 0 or cache_ttl < 0 or cache_size < 0:
            raise ValueError("max_per_second, wait, cache_ttl and cache_size must not be "
                             "negative")
        if max_per_second > 0 and burst < 1:
            raise ValueError("burst must be at least 1")
        self.max_concurrent = max_concurrent
        self.max_per_second = max_per_second
        self.burst = burst
        self.wait = wait
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.max_password_bytes = max_password_bytes
        #: where hashes are computed: by default a worker process of its own (see
        #: :class:`HashWorkers`); tests inject counting or blocking verifiers
        self._workers = HashWorkers(max_concurrent) if verify is None else None
        self._verify = verify
        self._key = os.urandom(32)
        # successes apart: wrong guesses, however many, cannot evict them
        self._ok: TTLCache = TTLCache(cache_size, clock)
        self._wrong: TTLCache = TTLCache(cache_size, clock)
        self._bucket = _TokenBucket(max_per_second, burst, clock)
        # one client (network) may use at most half the rate: a single flooding source
        # cannot take every hash from a moderator posting from elsewhere
        self._clock = clock
        self._sources: OrderedDict[str, _TokenBucket] = OrderedDict()
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._inflight: dict[bytes, _Flight] = {}
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._cpu = 0.0
        self.running = 0
        self.waiting = 0

    @classmethod
    def from_config(cls, cfg: Any) -> PasswordChecker:
        """The checker for a :class:`listgate.config.Config` (its ``[approved]`` section)."""
        a = cfg.approved
        return cls(max_concurrent=a.max_concurrent, max_per_second=a.max_per_second,
                   burst=a.burst, wait=a.wait, cache_ttl=a.cache_ttl,
                   cache_size=a.cache_size, max_password_bytes=a.max_password_bytes)

    # -- the check

    def check(self, password: str | bytes, stored: Any,
              scheme: str = "mailman3", source: str | None = None) -> PasswordResult:
        """Is ``password`` the list's moderator password, as ``scheme`` would decide?

        ``scheme`` "mailman3": ``stored`` is the list's ``moderator_password`` hash
        (str or bytes; None = the list has none).  "mailman2": see
        :func:`verify_mailman2` (a :class:`Mailman2Secrets`, a sequence of
        ``mod_password, password, post_password``, or one digest); ok if any matches.
        ``source`` (the client's network) gets its own bucket at half the rate, so one
        flooding client cannot use up every hash.

        Either scheme also takes the form listgate's store and backends keep a list's
        approval passwords in (``ListPolicy.approval_passwords``): a sequence of
        passlib hashes (``$6$...``) and/or Mailman 2 digests (``{sha1}HEX``); ok if any
        matches.  Never raises for what a message or a list can contain.
        """
        if _is_stored_form(stored):
            return self._check_stored(password, stored, source)
        self._count("checks")
        if scheme == "mailman2":
            return self._check_mailman2(password, stored)
        if scheme != "mailman3":
            raise ValueError(f"unknown password scheme {scheme!r}; expected one of {SCHEMES}")
        if stored is None or stored in (b"", ""):
            return self._answer(PasswordStatus.WRONG, "the list has no moderator password")
        parsed = parse_mailman3(stored)
        if parsed is None:
            return self._answer(PasswordStatus.UNKNOWN,
                                "moderator_password is not a sha512_crypt or sha256_crypt "
                                "hash (Mailman 3 would not approve)")
        if parsed.rounds > MAX_ROUNDS:
            return self._answer(PasswordStatus.UNKNOWN,
                                f"{parsed.scheme} with {parsed.rounds} rounds, more than "
                                f"{MAX_ROUNDS}: not computed")
        try:
            secret = _to_bytes(password)
        except UnicodeError:
            return self._answer(PasswordStatus.UNKNOWN, "password not encodable")
        if len(secret) > self.max_password_bytes:
            return self._answer(PasswordStatus.UNKNOWN,
                                f"password of {len(secret)} bytes, longer than "
                                f"max_password_bytes {self.max_password_bytes}: not computed")
        key = self.cache_key("mailman3", parsed.hash, secret)

        with self._lock:
            hit = self._cached(key)
            if hit is not None:
                self._counts["cache_hits"] += 1
                self._counts[hit.status.value] += 1
                return hit
            flight = self._inflight.get(key)
            leader = flight is None
            if flight is None:
                flight = self._inflight[key] = _Flight()
            else:
                self._counts["joined"] += 1
        if not leader:
            return self._follow(flight)
        result: PasswordResult | None = None
        try:
            result = self._compute(key, secret, parsed, source)
            return result
        finally:
            flight.result = result or PasswordResult(PasswordStatus.BUSY, "check failed")
            with self._lock:
                self._inflight.pop(key, None)
            flight.done.set()

    def close(self) -> None:
        """Stop the hash worker processes (a new check starts them again)."""
        if self._workers is not None:
            self._workers.close()

    def cache_key(self, scheme: str, stored: str, secret: bytes) -> bytes:
        """The keyed digest a result is remembered under: no plaintext is kept.

        HMAC-SHA256 under a random per-process key, over length-prefixed parts so no
        two (scheme, hash, password) triples share one.
        """
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (scheme.encode(), stored.encode("utf-8", "surrogateescape"), secret):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    def _cached(self, key: Hashable) -> PasswordResult | None:
        for cache, status in ((self._ok, PasswordStatus.OK), (self._wrong, PasswordStatus.WRONG)):
            if not TTLCache.missing(cache.get(key)):
                return PasswordResult(status, f"{status.value} (remembered)", cached=True)
        return None

    def _follow(self, flight: _Flight) -> PasswordResult:
        """Wait (at most ``wait``) for the identical check already running."""
        if flight.done.wait(self.wait) and flight.result is not None:
            r = flight.result
            if r.status in (PasswordStatus.OK, PasswordStatus.WRONG):
                self._count(r.status.value)
                return PasswordResult(r.status, f"{r.status.value} (same check in flight)",
                                      cached=True)
            return self._answer(r.status, r.reason,
                                counter="busy_joined" if r.busy else None)
        return self._answer(PasswordStatus.BUSY,
                            f"an identical check still running after {self.wait:g} s",
                            counter="busy_joined")

    def _source_bucket(self, source: str | None) -> _TokenBucket | None:
        if source is None or self.max_per_second <= 0:
            return None
        with self._lock:
            bucket = self._sources.get(source)
            if bucket is None:
                bucket = self._sources[source] = _TokenBucket(
                    self.max_per_second / 2, max(1, self.burst // 2), self._clock)
                while len(self._sources) > SOURCES_KEPT:
                    self._sources.popitem(last=False)
            self._sources.move_to_end(source)
            return bucket

    def _compute(self, key: bytes, secret: bytes, parsed: Mailman3Hash,
                 source: str | None = None) -> PasswordResult:
        mine = self._source_bucket(source)
        if mine is not None and not mine.take():
            return self._answer(PasswordStatus.BUSY,
                                f"this client's share of the password hashes is used up "
                                f"({self.max_per_second / 2:g} per second)",
                                counter="busy_source")
        if not self._bucket.take():
            if mine is not None:
                mine.give_back()
            return self._answer(PasswordStatus.BUSY,
                                f"more than {self.max_per_second:g} password hashes per "
                                f"second (burst {self.burst})", counter="busy_rate")
        with self._lock:
            self.waiting += 1
        try:
            got = self._slots.acquire(timeout=self.wait)
        finally:
            with self._lock:
                self.waiting -= 1
        if not got:
            self._bucket.give_back()
            if mine is not None:
                mine.give_back()
            return self._answer(PasswordStatus.BUSY,
                                f"no hash slot free within {self.wait:g} s "
                                f"(max_concurrent {self.max_concurrent})", counter="busy_wait")
        try:
            with self._lock:
                self.running += 1
            if self._workers is not None:
                verdict, cpu = self._workers.verify(secret, parsed.hash)
            else:
                cpu = time.thread_time()
                verdict = self._verify(secret, parsed.hash)  # type: ignore[misc]
                cpu = time.thread_time() - cpu
        finally:
            with self._lock:
                self.running -= 1
            self._slots.release()
        with self._lock:
            self._counts["computed"] += 1
            self._cpu += cpu
        if verdict is None:
            return self._answer(PasswordStatus.UNKNOWN,
                                f"{parsed.scheme} refused the password (Mailman would raise)")
        if verdict:
            self._ok.put(key, True, self.cache_ttl)
            return self._answer(PasswordStatus.OK, f"{parsed.scheme} matches")
        self._wrong.put(key, False, self.cache_ttl)
        return self._answer(PasswordStatus.WRONG, f"{parsed.scheme} does not match")

    def _check_stored(self, password: str | bytes, entries: Sequence[str],
                      source: str | None = None) -> PasswordResult:
        """Each stored password in turn: ``{sha1}HEX`` digests directly (Mailman 2's
        SHA-1, microseconds), the hashes through the bounded Mailman 3 check."""
        digests = [e[len(SHA1_PREFIX):] for e in entries if e.startswith(SHA1_PREFIX)]
        if digests:
            first = self._check_mailman2(password, Mailman2Secrets(mod_password=digests[0]))
            for d in digests[1:]:
                if first.ok:
                    break
                first = self._check_mailman2(password, Mailman2Secrets(mod_password=d))
            if first.ok:
                return first
        answers = [self.check(password, e, "mailman3", source) for e in entries
                   if not e.startswith(SHA1_PREFIX)]
        for status in (PasswordStatus.OK, PasswordStatus.BUSY, PasswordStatus.UNKNOWN):
            found = next((a for a in answers if a.status is status), None)
            if found is not None:
                return found
        return PasswordResult(PasswordStatus.WRONG, "no list password matches")

    def _check_mailman2(self, password: str | bytes, stored: Any) -> PasswordResult:
        """SHA-1/MD5/DES cost microseconds: checked directly, no cache, no bounds."""
        self._count("cheap")
        try:
            verdict = verify_mailman2(password, stored)
        except UnicodeError:
            verdict = None
        if verdict is None:
            return self._answer(PasswordStatus.UNKNOWN, "not a Mailman 2 list's passwords")
        if verdict:
            return self._answer(PasswordStatus.OK, "Mailman 2 password matches")
        return self._answer(PasswordStatus.WRONG, "no Mailman 2 list password matches")

    def _answer(self, status: PasswordStatus, reason: str,
                counter: str | None = None) -> PasswordResult:
        self._count(counter or status.value)
        return PasswordResult(status, reason)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    # -- reporting

    def counters(self) -> dict[str, float]:
        """Every counter (see :data:`COUNTERS`), plus ``cpu_seconds`` spent hashing and
        the current ``running``, ``waiting``, ``tokens`` and cache sizes."""
        with self._lock:
            out: dict[str, float] = dict(self._counts)
            out["cpu_seconds"] = self._cpu
            out["running"] = self.running
            out["waiting"] = self.waiting
        out["tokens"] = self._bucket.tokens() if self.max_per_second > 0 else float("inf")
        out["cached_ok"] = len(self._ok)
        out["cached_wrong"] = len(self._wrong)
        return out

    def stats(self) -> str:
        """One line for the log."""
        c = self.counters()
        busy = int(c["busy_rate"] + c["busy_source"] + c["busy_wait"] + c["busy_joined"])
        return (f"passwords: checks={int(c['checks'])} computed={int(c['computed'])} "
                f"cpu={c['cpu_seconds']:.2f}s cache_hits={int(c['cache_hits'])} "
                f"joined={int(c['joined'])} busy={busy} (rate={int(c['busy_rate'])} "
                f"client={int(c['busy_source'])} "
                f"wait={int(c['busy_wait'])} joined={int(c['busy_joined'])}) "
                f"ok={int(c['ok'])} wrong={int(c['wrong'])} unknown={int(c['unknown'])} "
                f"mailman2={int(c['cheap'])}")
