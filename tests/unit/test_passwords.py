"""listgate.passwords: Mailman's moderator-password check, and the bounds around it.

The hashes below are real: made by Mailman 3.3.10's own ``PasswordContext`` (from
``mailman/config/passlib.cfg``, passlib 1.7.4, os_crypt backend) in the Mailman venv
of scripts/install-mailman3.sh, and checked there with ``PasswordContext.verify``.
The DES crypt string is glibc's crypt(3), the SHA-1 and MD5 digests are what Mailman
2.1 stores.  Bounds are tested with counters, an injected clock and verifiers that
block on events -- never by how long something took.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import pytest

from listgate import config
from listgate.passwords import (
    MAX_ROUNDS,
    Mailman2Secrets,
    PasswordChecker,
    PasswordStatus,
    parse_mailman3,
    verify_mailman2,
    verify_mailman2_digest,
    verify_mailman3,
)

# PasswordContext.encrypt("correct horse"): sha512_crypt, passlib's default 656000 rounds
MM3_DEFAULT = ("$6$rounds=656000$IqJ2wgrpR8QDVEST$2aJOf6SZJJWzoPnZFDagqWdUvnCun1mpuuhLqL6"
               "CQ9d4hpcR21q1cilv9sR/Zkjgti9yGl4hQNX.U/ZmEBaUX.")
# "s3cret-mod" at 5000 rounds (Mailman verifies them, and would re-hash on success)
MM3_512 = ("$6$MyIFPKBI9qStAgiY$ssqIQSPZ0tiGbc7Nh4uLAQWfHkqoNrsg4CIcH0uyywyow9bqfXujvBt."
           "bHmKllULOsEibYTpK5pD03nTrdFtS.")
MM3_256 = "$5$ghmSI8ykg6WF/MNM$PgQUSP3z27hzGqcCwuCDwig5ZyODXNqcNTZZ604z3SD"
# "pässwörd", 5000 rounds
MM3_UTF8 = ("$6$9COYO5E9q2GTMPug$Dt0Uw2TQ0rCVnQyRil/FgSLJHmo0ULAB47z0YYW0yA0hmuFKSSf8GbcRX"
            "9Rc278agm7Any1HRJqtnmgv5hwM6/")
# crypt("admin-pw", "Qx"): a Mailman 2.0 list admin password, still accepted by 2.1
DES_ADMIN = "Qxq28s1hSDWao"


def sha1(pw: str) -> str:
    return hashlib.sha1(pw.encode()).hexdigest()


# -- Mailman 3 ---------------------------------------------------------------------


def test_mailman3_default_rounds_hash_right_and_wrong() -> None:
    assert parse_mailman3(MM3_DEFAULT).rounds == 656000
    assert verify_mailman3("correct horse", MM3_DEFAULT) is True
    assert verify_mailman3("correct horse ", MM3_DEFAULT) is False


@pytest.mark.parametrize("stored", [MM3_512, MM3_256, MM3_512.encode()])
def test_mailman3_both_schemes_and_bytes(stored: str | bytes) -> None:
    assert verify_mailman3("s3cret-mod", stored) is True
    assert verify_mailman3("s3cret-moD", stored) is False
    assert verify_mailman3(b"s3cret-mod", stored) is True


def test_mailman3_non_ascii_password_is_utf8() -> None:
    assert verify_mailman3("pässwörd", MM3_UTF8) is True
    assert verify_mailman3("pässwörd".encode(), MM3_UTF8) is True
    assert verify_mailman3("pässwörd".encode("latin-1"), MM3_UTF8) is False


@pytest.mark.parametrize("stored", [
    sha1("s3cret-mod"),                      # a Mailman 2 digest, as import21 copies it
    "$1$abcdefgh$0123456789abcdefghijkl",    # md5_crypt: not among Mailman's schemes
    "$2b$12$" + "a" * 53,                    # bcrypt
    "$6$rounds=abc$salt$" + "a" * 86,        # sha512_crypt prefix, malformed
    "$6$",
    "s3cret-mod",                            # plaintext
    b"\xff\xfe",
])
def test_mailman3_unknown_hash_is_none_not_false(stored: str | bytes) -> None:
    assert parse_mailman3(stored) is None
    assert verify_mailman3("s3cret-mod", stored) is None


def test_mailman3_no_password_never_matches() -> None:
    assert verify_mailman3("x", None) is False
    assert verify_mailman3("x", b"") is False


def test_mailman3_password_passlib_refuses_is_none() -> None:
    assert verify_mailman3("s3cret\0mod", MM3_512) is None


# -- Mailman 2.1 ---------------------------------------------------------------------


def test_mailman2_sha1_hex() -> None:
    assert verify_mailman2_digest("mod-pw", sha1("mod-pw")) is True
    assert verify_mailman2_digest("mod-pw", sha1("mod-pw").upper()) is False  # plain ==
    assert verify_mailman2_digest("mod-pW", sha1("mod-pw")) is False
    assert verify_mailman2_digest("mod-pw", sha1("mod-pw").encode()) is True
    assert verify_mailman2_digest("", sha1("")) is False  # "Don't authenticate null passwords"
    assert verify_mailman2_digest("x", "") is False
    assert verify_mailman2_digest("x", None) is False


def test_mailman2_raw_bytes_and_non_ascii() -> None:
    raw = "Käse".encode("latin-1")
    assert verify_mailman2_digest(raw, hashlib.sha1(raw).hexdigest()) is True
    # a str that Python 3 decoded with surrogateescape goes back to the same bytes
    assert verify_mailman2_digest(raw.decode("utf-8", "surrogateescape"),
                                  hashlib.sha1(raw).hexdigest()) is True
    assert verify_mailman2_digest("Käse", hashlib.sha1("Käse".encode()).hexdigest()) is True


def test_mailman2_legacy_forms_only_for_the_admin_password() -> None:
    md5 = hashlib.md5(b"admin-pw").digest()
    # as listgate's Mailman 2 backend hands Python 2 strings over: latin-1 decoded
    md5_text = md5.decode("latin-1")
    for secret in (md5, md5_text, DES_ADMIN):
        assert verify_mailman2_digest("admin-pw", secret, admin=True) is True
        assert verify_mailman2_digest("admin-px", secret, admin=True) is False
        assert verify_mailman2_digest("admin-pw", secret) is False  # moderator: SHA-1 only
    # crypt(3) reads 8 characters, so does Mailman 2.1
    assert verify_mailman2_digest("admin-pwXYZ", DES_ADMIN, admin=True) is True
    assert verify_mailman2_digest("admin-p\0", DES_ADMIN, admin=True) is False


def test_mailman2_any_list_password_but_never_the_site_password() -> None:
    s = Mailman2Secrets(mod_password=sha1("mod"), password=sha1("admin"),
                        post_password=sha1("poster"))
    for pw in ("mod", "admin", "poster"):
        assert verify_mailman2(pw, s) is True
    assert verify_mailman2("site", s) is False
    assert verify_mailman2("admin", (sha1("mod"), sha1("admin"))) is True
    assert verify_mailman2("admin-pw", (None, DES_ADMIN)) is True
    assert verify_mailman2("admin-pw", (DES_ADMIN,)) is False  # first = mod_password
    assert verify_mailman2("mod", sha1("mod")) is True
    assert verify_mailman2("mod", None) is False
    assert verify_mailman2("mod", (sha1("a"), sha1("b"), sha1("c"), sha1("mod"))) is None
    assert verify_mailman2("mod", 42) is None  # type: ignore[arg-type]


# -- PasswordChecker ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """verify_mailman3, counted."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, password: str | bytes, stored: str) -> bool | None:
        with self._lock:
            self.calls += 1
        return verify_mailman3(password, stored)


class Gate:
    """A verifier that blocks until released, recording how many run at once."""

    def __init__(self, answer: Callable[[bytes], bool] = lambda pw: pw == b"good") -> None:
        self.answer = answer
        self.release = threading.Event()
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, password: bytes, stored: str) -> bool | None:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            assert self.release.wait(30), "test gate never released"
            return self.answer(password)
        finally:
            with self._lock:
                self.active -= 1


def until(cond: Callable[[], bool], what: str) -> None:
    """Poll for a state the threads under test reach; the deadline is only for failure."""
    deadline = time.monotonic() + 30
    while not cond():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.005)


def in_threads(n: int, target: Callable[[int], object]) -> tuple[list[threading.Thread], dict]:
    results: dict[int, object] = {}

    def run(i: int) -> None:
        results[i] = target(i)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


def test_checker_right_wrong_and_remembered() -> None:
    v = Counting()
    pc = PasswordChecker(verify=v, clock=Clock())
    r = pc.check("s3cret-mod", MM3_512)
    assert r.status == "ok" and r.ok and not r.cached
    assert pc.check("s3cret-mod", MM3_512).cached
    assert pc.check("wrong", MM3_256).status is PasswordStatus.WRONG
    assert pc.check("wrong", MM3_256).status == "wrong"
    assert v.calls == 2
    c = pc.counters()
    assert (c["computed"], c["cache_hits"], c["ok"], c["wrong"]) == (2, 2, 2, 2)
    assert "computed=2" in pc.stats() and "cache_hits=2" in pc.stats()


def test_checker_real_default_rounds_hash() -> None:
    pc = PasswordChecker()
    assert pc.check("correct horse", MM3_DEFAULT).status == "ok"
    assert pc.check("correct horse", MM3_DEFAULT.encode()).cached  # same hash, as bytes
    assert pc.counters()["cpu_seconds"] > 0


def test_checker_cache_ttl_and_key_includes_the_hash() -> None:
    v, clock = Counting(), Clock()
    pc = PasswordChecker(verify=v, clock=clock, cache_ttl=60, max_per_second=0)
    pc.check("s3cret-mod", MM3_512)
    pc.check("s3cret-mod", MM3_256)  # another list (another hash): computed again
    assert v.calls == 2
    clock.now += 59
    pc.check("s3cret-mod", MM3_512)
    assert v.calls == 2
    clock.now += 2
    assert pc.check("s3cret-mod", MM3_512).status == "ok"
    assert v.calls == 3


def test_wrong_guesses_cannot_evict_a_right_password() -> None:
    gate = Gate()
    gate.release.set()
    pc = PasswordChecker(verify=gate, cache_size=3, max_per_second=0, clock=Clock())
    assert pc.check("good", MM3_512).ok
    for i in range(10):
        assert pc.check(f"guess{i}", MM3_512).status == "wrong"
    assert pc.check("good", MM3_512).cached
    assert gate.calls == 11
    assert pc.counters()["cached_wrong"] == 3


def test_cache_keys_hold_no_plaintext() -> None:
    pw = "s3cret-mod"
    pc, other = PasswordChecker(clock=Clock()), PasswordChecker(clock=Clock())
    pc.check(pw, MM3_512)
    pc.check("another-guess", MM3_512)
    keys = list(pc._ok._data) + list(pc._wrong._data)
    assert len(keys) == 2
    for k in keys:
        assert isinstance(k, bytes) and len(k) == 32
        assert pw.encode() not in k and b"another" not in k
    assert pw not in repr(pc.__dict__) and "another-guess" not in repr(pc.__dict__)
    # keyed: another process (checker) derives another key from the same input
    assert pc.cache_key("mailman3", MM3_512, pw.encode()) != \
        other.cache_key("mailman3", MM3_512, pw.encode())
    # the parts are length-prefixed: shifting bytes between them changes the key
    assert pc.cache_key("mailman3", "ab", b"c") != pc.cache_key("mailman3", "a", b"bc")


def test_unknown_hash_costs_nothing_and_is_unknown() -> None:
    v = Counting()
    pc = PasswordChecker(verify=v)
    for stored in (sha1("x"), "$1$abcdefgh$0123456789abcdefghijkl", "$6$rounds=x$s$h"):
        r = pc.check("x", stored)
        assert r.status == "unknown", stored
        assert "would not approve" in r.reason
    assert pc.check("x", None).status == "wrong"
    assert v.calls == 0
    assert pc.counters()["unknown"] == 3


def test_unknown_for_what_would_cost_too_much() -> None:
    v = Counting()
    pc = PasswordChecker(verify=v, max_password_bytes=16)
    r = pc.check("x" * 17, MM3_512)
    assert r.status == "unknown" and "17 bytes" in r.reason and "x" * 17 not in r.reason
    huge = f"$6$rounds={MAX_ROUNDS + 1}$saltsalt$" + "a" * 86
    assert parse_mailman3(huge) is not None
    assert pc.check("x", huge).status == "unknown"
    assert pc.check("\0", MM3_512).status == "unknown"  # passlib refuses it
    assert v.calls == 1


def test_mailman2_through_the_checker_is_not_bounded() -> None:
    gate = Gate()
    pc = PasswordChecker(verify=gate, max_per_second=1, burst=1, clock=Clock())
    s = Mailman2Secrets(mod_password=sha1("mod"), password=DES_ADMIN)
    for _ in range(5):
        assert pc.check("mod", s, scheme="mailman2").status == "ok"
        assert pc.check("admin-pw", s, scheme="mailman2").status == "ok"
        assert pc.check("nope", s, scheme="mailman2").status == "wrong"
    assert pc.check("mod", object(), scheme="mailman2").status == "unknown"
    assert gate.calls == 0 and pc.counters()["cheap"] == 16
    with pytest.raises(ValueError, match="scheme"):
        pc.check("mod", s, scheme="mailman4")


def test_rate_bound_answers_busy_then_refills() -> None:
    gate, clock = Gate(), Clock()
    gate.release.set()
    pc = PasswordChecker(verify=gate, max_concurrent=4, max_per_second=2, burst=3, clock=clock)
    assert [pc.check(f"g{i}", MM3_512).status for i in range(3)] == ["wrong"] * 3
    r = pc.check("g3", MM3_512)
    assert r.status == "busy" and r.busy and "per second" in r.reason
    assert pc.check("g0", MM3_512).cached  # remembered answers need no token
    clock.now += 0.5  # one token
    assert pc.check("g3", MM3_512).status == "wrong"
    assert pc.check("g4", MM3_512).status == "busy"
    clock.now += 100  # refills to burst, no further
    assert [pc.check(f"h{i}", MM3_512).status for i in range(4)] == ["wrong"] * 3 + ["busy"]
    assert gate.calls == 7
    c = pc.counters()
    assert (c["busy_rate"], c["computed"]) == (3, 7)


def test_concurrency_bound() -> None:
    gate = Gate()
    pc = PasswordChecker(verify=gate, max_concurrent=2, max_per_second=0, wait=30)
    threads, results = in_threads(6, lambda i: pc.check(f"g{i}", MM3_512))
    until(lambda: gate.active == 2 and pc.waiting == 4, "2 hashing, 4 waiting")
    assert pc.counters()["running"] == 2
    gate.release.set()
    for t in threads:
        t.join(30)
    assert gate.max_active == 2 and gate.calls == 6
    assert sorted(r.status for r in results.values()) == ["wrong"] * 6
    assert pc.counters()["running"] == 0 and pc.waiting == 0


def test_wait_bound_answers_busy_and_returns_the_token() -> None:
    gate, clock = Gate(), Clock()
    pc = PasswordChecker(verify=gate, max_concurrent=1, max_per_second=1, burst=2,
                         wait=0.2, clock=clock)
    threads, results = in_threads(1, lambda i: pc.check("good", MM3_512))
    until(lambda: gate.active == 1, "the first check hashing")
    assert pc._bucket.tokens() == 1
    started = time.monotonic()
    r = pc.check("other", MM3_512)
    elapsed = time.monotonic() - started
    assert r.status == "busy" and "within 0.2 s" in r.reason
    assert 0.2 <= elapsed < 0.2 + 10  # waited for its slot, then gave up (loose bound)
    assert pc._bucket.tokens() == 1  # the token bought nothing: given back
    gate.release.set()
    threads[0].join(30)
    assert results[0].status == "ok"
    c = pc.counters()
    assert (c["busy_wait"], c["computed"]) == (1, 1)


def test_slot_wait_is_exactly_wait() -> None:
    """The slot is asked for with timeout=wait (a stand-in records it)."""
    seen = []

    class Slots:
        def acquire(self, timeout: float) -> bool:
            seen.append(timeout)
            return False

        def release(self) -> None:
            raise AssertionError("never acquired")

    pc = PasswordChecker(wait=1.5, clock=Clock())
    pc._slots = Slots()  # type: ignore[assignment]
    assert pc.check("x", MM3_512).status == "busy"
    assert seen == [1.5]


def test_same_password_at_once_costs_one_hash() -> None:
    gate = Gate()
    pc = PasswordChecker(verify=gate, max_concurrent=4, max_per_second=0, wait=30)
    threads, results = in_threads(10, lambda i: pc.check("same guess", MM3_512))
    until(lambda: pc.counters()["joined"] == 9, "9 checks joined the first")
    gate.release.set()
    for t in threads:
        t.join(30)
    assert gate.calls == 1
    assert [r.status for r in results.values()] == ["wrong"] * 10
    assert sum(r.cached for r in results.values()) == 9


def test_joined_check_waits_at_most_wait() -> None:
    gate = Gate()
    pc = PasswordChecker(verify=gate, max_per_second=0, wait=0.1)
    threads, _ = in_threads(1, lambda i: pc.check("same", MM3_512))
    until(lambda: gate.active == 1, "the first check hashing")
    r = pc.check("same", MM3_512)
    assert r.status == "busy" and "identical check" in r.reason
    gate.release.set()
    threads[0].join(30)
    assert pc.counters()["busy_joined"] == 1


def test_constructor_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        PasswordChecker(max_concurrent=0)
    with pytest.raises(ValueError):
        PasswordChecker(max_per_second=1, burst=0)
    with pytest.raises(ValueError):
        PasswordChecker(wait=-1)


def test_from_config() -> None:
    pc = PasswordChecker.from_config(config.defaults())
    assert (pc.max_concurrent, pc.max_per_second, pc.burst, pc.wait, pc.cache_ttl,
            pc.cache_size, pc.max_password_bytes) == (1, 1.0, 4, 2.0, 3600.0, 1000, 128)
    cfg = config.parse("[approved]\nmax_concurrent = 2\nmax_per_second = 0.5\nburst = 1\n"
                       "wait = 0\ncache_ttl = 0\n")
    pc = PasswordChecker.from_config(cfg)
    assert (pc.max_concurrent, pc.max_per_second, pc.burst, pc.wait, pc.cache_ttl) == \
        (2, 0.5, 1, 0.0, 0.0)


@pytest.mark.parametrize(("key", "value", "error"), [
    ("max_concurrent", "0", "at least 1"),
    ("burst", "0", "at least 1"),
    ("max_per_second", "-1", "not negative"),
    ("max_per_second", "nan", "finite"),
    ("wait", "61", "at most 60"),
    ("max_password_bytes", "0", "at least 1"),
])
def test_config_refuses(key: str, value: str, error: str) -> None:
    with pytest.raises(config.ConfigError, match=rf"\[approved\] {key}: .*{error}"):
        config.parse(f"[approved]\n{key} = {value}\n")


def test_the_stored_form_of_listgates_store_and_backends():
    """``ListPolicy.approval_passwords``: passlib hashes and/or ``{sha1}HEX`` digests, as
    the chain rules pass them; ok if any matches."""
    import hashlib

    checker = PasswordChecker(max_per_second=0)
    sha1 = "{sha1}" + hashlib.sha1(b"mod").hexdigest()
    other = "{sha1}" + hashlib.sha1(b"admin").hexdigest()
    assert checker.check("admin", (sha1, other), "mailman2").status == "ok"
    assert checker.check("mod", (sha1,), "mailman3").status == "ok"
    assert checker.check("nope", (sha1, other), "mailman2").status == "wrong"
    assert checker.check("s3cret-mod", (MM3_512,), "mailman3").status == "ok"
    assert checker.check("s3cret-mod", (sha1, MM3_512), "mailman3").status == "ok"
    assert checker.check("wrong", (MM3_512,), "mailman3").status == "wrong"


def test_one_flooding_client_cannot_take_every_hash():
    """Each client network gets half the rate: a flood from one source leaves hashes
    for a moderator posting from another."""
    checker = PasswordChecker(max_per_second=2, burst=4, verify=lambda p, h: p in ("ok", b"ok"),
                              clock=Clock())
    flood = [checker.check(f"guess{i}", MM3_512, "mailman3", source="203.0.113.0/24")
             for i in range(10)]
    assert [r.status for r in flood].count("busy") == 8  # its share: burst 4 // 2
    assert "this client's share" in flood[-1].reason
    moderator = checker.check("ok", MM3_512, "mailman3", source="198.51.100.0/24")
    assert moderator.status == "ok"


def test_hashes_run_in_a_worker_process_and_a_dead_worker_is_replaced():
    """The default checker computes sha512_crypt in a spawned process (the GIL stays
    free for the milter's threads); a killed worker costs no answer."""
    import os
    import signal

    checker = PasswordChecker(max_per_second=0)
    try:
        assert checker.check("s3cret-mod", MM3_512).status == "ok"
        pool = checker._workers._pool
        pids = list(pool._processes)
        assert pids and os.getpid() not in pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert checker.check("wrong", MM3_512).status == "wrong"  # answered anyway
        assert checker.check("other", MM3_512).status == "wrong"  # on a new worker
        assert checker.counters()["cpu_seconds"] > 0
    finally:
        checker.close()


def test_hashing_processes_exit_when_the_worker_that_started_them_is_killed(tmp_path):
    """kill -9 of a daemon worker (the main process then starts a new one) must not
    leave its sha512_crypt processes behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/status") as f:
                return "State:\tZ" not in f.read()
        except FileNotFoundError:
            return False

    script = tmp_path / "pool.py"
    script.write_text(
        "import os, time\n"
        "from listgate.passwords import HashWorkers\n"
        "if __name__ == '__main__':\n"
        "    w = HashWorkers(1)\n"
        "    w.verify(b'x', '$6$rounds=1000$abc$' + 'x' * 86)\n"
        "    print(w._pool.submit(os.getpid).result(), flush=True)\n"
        "    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    hasher = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    end = time.monotonic() + 10
    while alive(hasher):
        if time.monotonic() > end:
            os.kill(hasher, signal.SIGKILL)
            raise AssertionError("the hashing process outlived its worker")
        time.sleep(0.1)
