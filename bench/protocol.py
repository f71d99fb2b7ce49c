"""listgate benchmark, parts 2-4 of issue 5: protocol level, data scale, cost growth.

Run alone (as root: dnsmasq, and Mailman 3 from scripts/install-mailman3.sh)::

    .venv/bin/python bench/protocol.py            # ~5 minutes, writes bench/protocol.json
    .venv/bin/python bench/protocol.py --quick    # ~1 minute smoke run

or from ``bench/run.py``: ``protocol.add_arguments(parser)`` then
``protocol.run_all(args) -> {"protocol": ..., "scale": ...}``.

No MTA: :mod:`milterclient` (a lean MTA-side milter client, threads with blocking
sockets) talks to the daemon's unix socket directly, claiming client IP 192.0.2.x,
HELO ``mail.bench.test``.  listgate's ``internal_connect`` is 127.0.0.254/32, so the
client is EXTERNAL and SPF runs for real against a private dnsmasq (300 s TTLs,
``v=spf1 ip4:192.0.2.0/24 -all`` for every sender domain and the HELO name).

Traffic mix (``--mix``, default 60/20/20), every verdict checked on the wire (a
wrong answer aborts the run):

* ``member``: a list member posts to ``list@lists.test`` (envelope = From =
  ``mN@members.test``): accepted, with listgate's headers inserted.
* ``nonmember``: ``sN@strangers.test`` (never seen before) posts to the list:
  ``550 5.7.2 You are not permitted to post ...`` at end of message.
* ``nolist``: mail to ``someone@elsewhere.test``: accepted, no list verdict.

Part 2, ``protocol``: per concurrency N (``--concurrency``), N threads each running
one conversation (one milter connection, ``--per-connection`` messages, QUIT) after
another; per-stage latency p50/p99 (connect = socket + OPTNEG, mail, rcpt, eom =
headers + end of message -> verdict), verdicts/s in total and by kind, the daemon's
CPU ms per verdict (``/proc/PID/stat`` utime+stime) and the client's own CPU.  The
same client and mix against ``bench/minimal_milter.py`` (which accepts everything)
shows what is listgate's own cost.  listgate uses the 1e4-member SQLite list.

Part 3, ``scale``: for SQLite lists of 1e2, 1e4 and 1e6 members (databases built
with listgate's own store, ``SqliteStore.add_members``, and cached under
``/var/tmp/listgate-bench/`` keyed by schema version and size), the same lists on
PostgreSQL (``--postgresql-sizes``; a private cluster of Debian's postgresql on its
unix socket, tests/pgcluster.py, started for the run; each database filled with
``PostgresStore.add_members``), and 1e4 on a real
Mailman 3.3.10 (its SQLite DB cached the same way): start-up time (exec -> the
socket accepts a connection), then ONE connection at a time (latency, not
throughput): ``cold`` = each post from a member the daemon has not looked up yet
(a cache miss: a backend query; at 1e2 that is all 100 members), ``warm`` = posts
from 100 members already looked up (cache hits), three runs of ``--warm`` posts, the
median of their p50s and p99s; p50/p99 of the eom stage (the verdict); the daemon's
memory after the run (PSS of its processes) and the largest peak RSS (VmHWM).

Part 4, ``scale.growth``: ``--growth-messages`` (default 100000) through one fresh
daemon (1e4-member SQLite list, the mix with new nonmembers throughout), at
``--growth-concurrency``; per ``--growth-samples`` slice: verdicts/s and RSS.
Flat rate and flat RSS = no leak.

Also checked: the daemon's log has no ERROR/Traceback and it stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "tests" / "e2e", ROOT / "tests", ROOT / "bench", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import infra  # noqa: E402
from lgdaemon import ListgateDaemon  # noqa: E402
from milterclient import Conversation, Message, Reply  # noqa: E402

LIST = "list@lists.test"
LIST_ID = "list.lists.test"
SPF = "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all"
HELO = "mail.bench.test"
DNS_TXT = {"members.test": SPF, "strangers.test": SPF, "other.test": SPF, HELO: SPF}
LISTGATE_CONFIG = ("[network]\ninternal_connect = 127.0.0.254/32\n"
                   "[milter]\nlog_level = info\n")
CACHE_DIR = Path(os.environ.get("LISTGATE_BENCH_CACHE", "/var/tmp/listgate-bench"))
REJECT_TEXT = f"550 5.7.2 You are not permitted to post to {LIST}."
KINDS = ("member", "nonmember", "nolist")
#: "[3] B000000001A: ACCEPT: list=list@lists.test ..." -> (queue id, ACCEPT|REJECT)
VERDICT_LINE = re.compile(
    rf"\] (B[0-9A-F]{{10}}): (ACCEPT|REJECT|TEMPFAIL): list={re.escape(LIST)} ")
WARM_SET = 100
#: warm runs per list size; their median p99 is reported
WARM_REPS = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(RuntimeError):
    """A measurement could not be trusted (a wrong verdict, errors in a log...)."""


# --------------------------------------------------------------------------- /proc


def tree(pid: int) -> list[int]:
    """*pid* and its descendants: the listgate daemon is a main process and a worker."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* and its children (all threads), in seconds."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """Memory of the daemon's process tree, in MB (1e6 bytes): ``rss_mb`` = the sum of
    each process's PSS (shared pages counted once: the worker is a fork of the main
    process), ``hwm_mb`` = the largest peak RSS (VmHWM) of one of them."""
    pss = hwm = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss += sum(int(ln.split()[1]) for ln in f if ln.startswith("Pss:"))
            with open(f"/proc/{p}/status") as f:
                hwm = max([hwm] + [int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")])
        except OSError:
            continue
    return {"rss_mb": round(pss * 1024 / 1e6, 1), "hwm_mb": round(hwm * 1024 / 1e6, 1)}


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of *values* in ms, 3 decimals; None if empty."""
    if not values:
        return None
    s = sorted(values)
    return round(1000 * s[min(len(s) - 1, max(0, round(q * len(s)) - 1))], 3)


# --------------------------------------------------------------------------- traffic


class Traffic:
    """Builds the messages of the mix and knows the right answer for each."""

    def __init__(self, members: int, seed: int = 5) -> None:
        self.members = members
        self.rng = random.Random(seed)
        self.strangers = itertools.count(1)
        self.qids = itertools.count(1)

    def message(self, kind: str, member: int | None = None) -> Message:
        qid = f"B{next(self.qids):010X}"
        if kind == "member":
            i = self.rng.randrange(self.members) if member is None else member
            sender, rcpt = f"m{i}@members.test", LIST
        elif kind == "nonmember":
            sender, rcpt = f"s{next(self.strangers)}@strangers.test", LIST
        else:
            sender, rcpt = f"u{self.rng.randrange(1000)}@other.test", "someone@elsewhere.test"
        headers = [("From", f"Sender <{sender}>"), ("To", rcpt),
                   ("Subject", "benchmark post"), ("Date", "Mon, 1 Jan 2024 00:00:00 +0000"),
                   ("Message-ID", f"<{qid}@bench.test>"), ("MIME-Version", "1.0"),
                   ("Content-Type", "text/plain; charset=us-ascii")]
        return Message(sender, rcpt, headers, queue_id=qid)

    def mix(self, n: int, weights: tuple[float, float, float]) -> list[tuple[str, Message]]:
        kinds = self.rng.choices(KINDS, weights=weights, k=n)
        return [(k, self.message(k)) for k in kinds]


def check_listgate(kind: str, r: Reply) -> str | None:
    """None if *r* is listgate's right answer on the wire for *kind*, else what is wrong.

    A member post and a non-list message get the same answer on the wire (accept, with
    Authentication-Results and Received-SPF inserted); :meth:`Listgate.verify` tells
    them apart by the verdict line the daemon logs with the queue id."""
    names = {h for h, _ in r.headers}
    if kind == "nonmember":
        if r.stage == "eom" and r.text.startswith(REJECT_TEXT):
            return None
    elif r.stage == "eom" and r.smtp == "accept" and "Received-SPF" in names:
        return None
    return f"{kind}: got {r.stage} {r.smtp!r} headers={sorted(names)}"


def check_minimal(kind: str, r: Reply) -> str | None:
    """The minimal milter accepts everything and adds X-Bench-Minimal."""
    if r.stage == "eom" and r.smtp == "accept" and ("X-Bench-Minimal", "1") in r.headers:
        return None
    return f"{kind}: got {r.stage} {r.smtp!r} {r.headers}"


# --------------------------------------------------------------------------- load


def run_load(milter: Listgate | Minimal, jobs: list[tuple[str, Message]], concurrency: int,
             per_connection: int = 1) -> dict[str, Any]:
    """Send *jobs* over *concurrency* threads; timings, rates and CPU; raise on a wrong
    verdict (on the wire, then in the daemon's log)."""
    address, pid, check = milter.address, milter.pid, milter.check
    mark = milter.log_mark()
    timings = [{s: [] for s in ("connect", "mail", "rcpt", "eom")} for _ in range(concurrency)]
    batches = iter([jobs[i:i + per_connection] for i in range(0, len(jobs), per_connection)])
    lock = threading.Lock()
    errors: list[str] = []
    done = {k: 0 for k in KINDS}

    def worker(t: dict[str, list[float]]) -> None:
        mine = {k: 0 for k in KINDS}
        try:
            while not errors:
                with lock:
                    batch = next(batches, None)
                if batch is None:
                    break
                conv = Conversation(address, t)
                for kind, msg in batch:
                    problem = check(kind, conv.send(msg))
                    if problem:
                        errors.append(problem)
                    mine[kind] += 1
                conv.close()
        except Exception as e:  # noqa: BLE001 - reported below, the run fails
            errors.append(f"{type(e).__name__}: {e}")
        with lock:
            for k, v in mine.items():
                done[k] += v

    threads = [threading.Thread(target=worker, args=(t,)) for t in timings]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    if errors:
        raise BenchError(f"{len(errors)} wrong answers, e.g.:\n" + "\n".join(errors[:10]))
    n = sum(done.values())
    if n != len(jobs):
        raise BenchError(f"{n} verdicts for {len(jobs)} messages")
    milter.verify(jobs, mark)
    merged = {s: [x for t in timings for x in t[s]] for s in timings[0]}
    client = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "messages": n,
        "seconds": round(seconds, 3),
        "verdicts_per_s": round(n / seconds, 1),
        "by_kind_per_s": {k: round(v / seconds, 1) for k, v in done.items()},
        "stages": {s: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "n": len(v)}
                   for s, v in merged.items()},
        "daemon_cpu_ms_per_verdict": round(1000 * cpu / n, 3),
        "client_cpu_ms_per_verdict": round(1000 * client / n, 3),
        "_eom": merged["eom"],
    }


# --------------------------------------------------------------------------- daemons


def wait_accepting(path: str, proc: subprocess.Popen, t0: float, timeout: float = 60) -> float:
    """Seconds from *t0* until the unix socket *path* accepts a connection."""
    import socket

    while True:
        if proc.poll() is not None:
            raise BenchError(f"the milter exited with {proc.returncode} during start-up")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
            return time.perf_counter() - t0
        except OSError:
            pass
        if time.perf_counter() - t0 > timeout:
            raise BenchError(f"the milter did not accept on {path} within {timeout}s")
        time.sleep(0.002)


class Listgate:
    """The real daemon (``python -m listgate serve``) on a unix socket, timed start."""

    def __init__(self, dns: infra.DnsServer, extra: str) -> None:
        self.d = ListgateDaemon(transport="unix", nameservers=dns.nameservers,
                                config=LISTGATE_CONFIG + extra,
                                workdir=Path(tempfile.mkdtemp(prefix="bench-lg-",
                                                              dir=infra.E2E_ROOT)))
        os.chmod(self.d.dir, 0o755)
        self.address = self.d.socket
        self.d.stderr_path = self.d.dir / "stderr.log"
        with open(self.d.stderr_path, "ab") as err:
            t0 = time.perf_counter()
            self.d.proc = subprocess.Popen(
                [*__import__("lgdaemon").LISTGATE, "serve", "-c", str(self.d.cfg_path)],
                stdout=subprocess.DEVNULL, stderr=err)
        self.startup_s = round(wait_accepting(self.address[5:], self.d.proc, t0), 3)
        self.pid = self.d.proc.pid

    check = staticmethod(check_listgate)

    def log_mark(self) -> int:
        return self.d.log_size()

    def verify(self, jobs: list[tuple[str, Message]], mark: int) -> None:
        """Every message's verdict line, found by queue id: ACCEPT for a member, REJECT
        for a nonmember, none for mail to no list (the line may follow the reply)."""
        want = {m.queue_id: {"member": "ACCEPT", "nonmember": "REJECT"}.get(k)
                for k, m in jobs}
        deadline = time.monotonic() + 10
        while True:
            text = self.d.log_text(mark)
            got = dict(VERDICT_LINE.findall(text))
            wrong = [(q, w, got.get(q)) for q, w in want.items() if got.get(q) != w]
            if not wrong or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if wrong:
            raise BenchError(f"{len(wrong)} of {len(jobs)} verdicts wrong in the log "
                             f"(queue id, expected, logged): {wrong[:10]}")

    def check_log(self) -> None:
        bad = [ln for ln in self.d.log_text().splitlines()
               if " ERROR " in ln or "Traceback" in ln]
        stderr = self.d.stderr_path.read_text(errors="replace")
        if bad or "Traceback" in stderr:
            raise BenchError("listgate logged errors:\n" + "\n".join(bad[:20]) + stderr[-2000:])

    def close(self) -> None:
        try:
            self.check_log()
        finally:
            self.d.close()


class Minimal:
    """bench/minimal_milter.py (or another reference milter script) on a unix socket."""

    check = staticmethod(check_minimal)
    script = "minimal_milter.py"

    def log_mark(self) -> int:
        return 0

    def verify(self, jobs: list[tuple[str, Message]], mark: int) -> None:
        pass  # answers checked on the wire; it logs nothing

    def __init__(self, workdir: Path) -> None:
        path = workdir / f"{self.script}.sock"
        self.address = f"unix:{path}"
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / self.script),
                                      self.address], stdin=subprocess.DEVNULL)
        self.startup_s = round(wait_accepting(str(path), self.proc, t0), 3)
        self.pid = self.proc.pid

    def close(self) -> None:
        infra._terminate(self.proc)


def check_callbacks(kind: str, r: Reply) -> str | None:
    """The callbacks milter continues everything and inserts listgate's two headers."""
    names = {h for h, _ in r.headers}
    if r.stage == "eom" and r.smtp == "accept" and {"Received-SPF",
                                                    "Authentication-Results"} <= names:
        return None
    return f"{kind}: got {r.stage} {r.smtp!r} {r.headers}"


class Callbacks(Minimal):
    """bench/callbacks_milter.py: listgate's callbacks and header insertions, no work."""

    check = staticmethod(check_callbacks)
    script = "callbacks_milter.py"


# --------------------------------------------------------------------------- data


def sqlite_db(members: int) -> tuple[Path, float | None]:
    """The cached SQLite store with LIST and *members* members; (path, build seconds or
    None when it came from the cache)."""
    from listgate.backends.sqlite import SCHEMA_VERSION, SqliteStore

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"sqlite-schema{SCHEMA_VERSION}-{members}.db"
    if path.exists():
        return path, None
    t0 = time.perf_counter()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    store = SqliteStore(str(tmp))
    store.init()
    store.create_list(LIST)
    store.add_members(LIST, (f"m{i}@members.test" for i in range(members)))
    store.close()
    os.replace(tmp, path)
    return path, round(time.perf_counter() - t0, 2)


_PG: list[Any] = []  # the run's PostgreSQL cluster, started on first use
_PG_DBS: dict[int, str] = {}


def pg_store(members: int) -> tuple[str, float | None]:
    """The conninfo of a PostgreSQL store with LIST and *members* members, built once per
    run with listgate's own store; (conninfo, build seconds or None if already built)."""
    if members in _PG_DBS:
        return _PG_DBS[members], None
    if not _PG:
        from pgcluster import PgCluster

        _PG.append(PgCluster())
    cluster = _PG[0]
    t0 = time.perf_counter()
    conninfo = cluster.conninfo(cluster.create_database())
    from listgate.backends.postgresql import PostgresStore

    with PostgresStore(conninfo, "bench") as store:
        store.init()
        store.create_list(LIST)
        for start in range(0, members, 100000):  # batches: bounded client memory
            store.add_members(LIST, (f"m{i}@members.test"
                                     for i in range(start, min(members, start + 100000))))
        store._connection().raw.execute("VACUUM ANALYZE")
    _PG_DBS[members] = conninfo
    return conninfo, round(time.perf_counter() - t0, 2)


def pg_config(conninfo: str) -> str:
    return f"[lists]\nbackend = postgresql\n[postgresql]\nconninfo = {conninfo}\n"


def stop_pg() -> None:
    """Stop the run's PostgreSQL cluster (if one was started)."""
    while _PG:
        _PG.pop().close()
    _PG_DBS.clear()


def listgate_postgresql(dns: infra.DnsServer, members: int) -> tuple[Listgate, float | None]:
    conninfo, built = pg_store(members)
    return Listgate(dns, pg_config(conninfo)), built


def listgate_sqlite(dns: infra.DnsServer, members: int) -> tuple[Listgate, float | None]:
    db, built = sqlite_db(members)
    return Listgate(dns, f"[sqlite]\npath = {db}\n"), built


#: the moderator password of the list in the "body" configuration, and its hash as
#: Mailman 3 makes it (sha512_crypt, 656000 rounds)
MOD_PASSWORD = "bench-moderator"
_MOD_HASH: list[str] = []


def listgate_sqlite_body(dns: infra.DnsServer, members: int, workdir: Path,
                         extra: str = "") -> Listgate:
    """listgate on a copy of the *members* store whose list needs the body: a moderator
    password (its first-line form) and a header rule, as a list that uses Approved:
    and header_matches is configured."""
    from passlib.hash import sha512_crypt

    from listgate.backends.sqlite import SqliteStore

    src, _ = sqlite_db(members)
    db = workdir / f"body-{members}.db"
    shutil.copyfile(src, db)
    if not _MOD_HASH:
        _MOD_HASH.append(sha512_crypt.hash(MOD_PASSWORD))
    store = SqliteStore(str(db))
    store.set_list_option(LIST, "approval_passwords", _MOD_HASH)
    store.set_list_option(LIST, "header_matches", [
        {"header": "x-bench-accept", "pattern": "^yes$", "action": "accept"}])
    store.close()
    return Listgate(dns, f"[sqlite]\npath = {db}\n" + extra)


# --------------------------------------------------------------------------- Mailman 3


def mailman3_listgate(dns: infra.DnsServer, members: int, stack: list) -> tuple[Listgate, dict]:
    """A real Mailman 3 with LIST and *members* members (DB cached), and listgate on it."""
    backend, info = mailman3_backend(members, stack)
    return Listgate(dns, backend), info


def mailman3_backend(members: int, stack: list) -> tuple[str, dict]:
    """Start a real Mailman 3 with LIST and *members* members (``mN@members.test``; the
    database is built once and cached); listgate's config for it, and timings."""
    from mailman3 import MAILMAN_VERSION, Mailman3

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cached = CACHE_DIR / f"mailman{MAILMAN_VERSION}-{members}.db"

    class Seeded(Mailman3):
        def _prepare(self) -> None:
            super()._prepare()
            if cached.exists():
                (self.var_dir / "data").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cached, self.var_dir / "data" / "mailman.db")

    info: dict[str, Any] = {"db_cached": cached.exists()}
    mm = Seeded()
    stack.append(mm)
    t0 = time.perf_counter()
    mm.start()
    info["mailman_start_s"] = round(time.perf_counter() - t0, 1)
    if not info["db_cached"]:
        t0 = time.perf_counter()
        mm.create_list(LIST, probe_member=False)
        f = mm.workdir / "members.txt"
        f.write_text("".join(f"m{i}@members.test\n" for i in range(members)))
        r = subprocess.run([str(mm.mailman_bin.parent / "python"),
                            str(ROOT / "bench" / "mm3_bulk_subscribe.py"), LIST, str(f)],
                           env=mm._env(), capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise BenchError(f"bulk subscribe failed: {r.stdout}{r.stderr[-3000:]}")
        info["build_s"] = round(time.perf_counter() - t0, 1)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        src = sqlite3.connect(mm.var_dir / "data" / "mailman.db")
        dst = sqlite3.connect(tmp)
        src.backup(dst)
        dst.close()
        src.close()
        os.replace(tmp, cached)
    count = mm.rest("GET", f"lists/{LIST_ID}")[1]["member_count"]
    if count != members:
        raise BenchError(f"Mailman 3 list has {count} members, expected {members}")
    pw = mm.workdir / "rest.pass"
    pw.write_text(mm.admin_pass + "\n")
    os.chmod(pw, 0o600)
    return (f"[lists]\nbackend = mailman3\n[mailman3]\nurl = {mm.rest_url}\n"
            f"user = {mm.admin_user}\npassword_file = {pw}\n"), info


# --------------------------------------------------------------------------- parts


def part_protocol(args: argparse.Namespace, dns: infra.DnsServer, workdir: Path) -> dict:
    """Part 2: the same client and mix against listgate and the minimal milter."""
    out: dict[str, Any] = {"mix": dict(zip(KINDS, args.mix_weights, strict=True)),
                           "per_connection": args.per_connection, "socket": "unix",
                           "members": 10000, "results": {}}
    for name in ("listgate-sqlite", "listgate-sqlite-body", "callbacks-pymilter",
                 "minimal-pymilter"):
        milter: Listgate | Minimal
        if name == "listgate-sqlite":
            milter, _ = listgate_sqlite(dns, 10000)
        elif name == "listgate-sqlite-body":
            milter = listgate_sqlite_body(dns, 10000, workdir)
        elif name == "callbacks-pymilter":
            milter = Callbacks(workdir)
        else:
            milter = Minimal(workdir)
        try:
            traffic = Traffic(10000, seed=2)
            run_load(milter, traffic.mix(args.warmup, args.mix_weights), 10,
                     args.per_connection)
            res = {}
            for n in args.concurrency:
                r = run_load(milter, traffic.mix(args.protocol_messages, args.mix_weights),
                             n, args.per_connection)
                r.pop("_eom")
                res[str(n)] = r
                st = r["stages"]
                log(f"protocol {name:<17} N={n:<3} {r['verdicts_per_s']:7.1f} verdicts/s  "
                    + "  ".join(f"{s} {st[s]['p50_ms']}/{st[s]['p99_ms']}" for s in st)
                    + f" ms  daemon {r['daemon_cpu_ms_per_verdict']:.2f} "
                    f"client {r['client_cpu_ms_per_verdict']:.2f} ms CPU/verdict")
            res["startup_s"] = milter.startup_s
            out["results"][name] = res
        finally:
            milter.close()
    return out


#: what a flood guess may get: refused once its hash said "wrong", or deferred past the
#: [approved] bounds
_WRONG = REJECT_TEXT
_BUSY = "451 4.3.0 Temporary failure checking the post to"


def part_approval(args: argparse.Namespace, dns: infra.DnsServer, workdir: Path) -> dict:
    """Part 5: the bounded moderator-password check under a flood of wrong passwords.

    listgate on the 1e4 list with a moderator password (sha512_crypt, 656000 rounds)
    and the [approved] defaults.  ``--approval-flood`` conversations from 192.0.2.x
    send nonmember posts with a new wrong ``Approved:`` password each, as fast as they
    are answered, for ``--approval-seconds``; meanwhile a moderator (a nonmember address
    at 198.51.100.7) posts with the right password every second, and one member keeps
    posting.  Reported: flood answers (550 after a hash, 451 past a bound), the
    moderator's answers (accepted or 451, never 550) and latency, the member's latency
    before and during the flood, the daemon's CPU, and its password counters.
    """
    milter = listgate_sqlite_body(dns, 10000, workdir)
    traffic = Traffic(10000, seed=7)
    stop = threading.Event()
    lock = threading.Lock()
    flood = {"sent": 0, "wrong_550": 0, "busy_451": 0, "other": []}
    moderator = {"sent": 0, "accepted": 0, "busy_451": 0, "other": [], "ms": []}
    member_ms: dict[str, list[float]] = {"before": [], "during": []}
    guesses = itertools.count(1)

    def post(m: Message, client_ip: str) -> tuple[Reply, float]:
        t: dict[str, list[float]] = {s: [] for s in ("connect", "mail", "rcpt", "eom")}
        t0 = time.perf_counter()
        conv = Conversation(milter.address, t, client_ip=client_ip)
        r = conv.send(m)
        conv.close()
        return r, time.perf_counter() - t0

    def with_approved(m: Message, password: str) -> Message:
        m.headers.append(("Approved", password))
        return m

    def flooder() -> None:
        while not stop.is_set():
            m = with_approved(traffic.message("nonmember"), f"guess-{next(guesses)}")
            r, _ = post(m, "192.0.2.66")
            with lock:
                flood["sent"] += 1
                if r.smtp.startswith(_WRONG):
                    flood["wrong_550"] += 1
                elif r.smtp.startswith(_BUSY):
                    flood["busy_451"] += 1
                else:
                    flood["other"].append(r.smtp)

    def moderate() -> None:
        while not stop.wait(1.0):
            m = traffic.message("nonmember")
            m.headers[0] = ("From", "Moderator <announce@strangers.test>")
            r, sec = post(with_approved(m, MOD_PASSWORD), "198.51.100.7")
            with lock:
                moderator["sent"] += 1
                moderator["ms"].append(sec)
                if r.smtp == "accept":
                    moderator["accepted"] += 1
                elif r.smtp.startswith(_BUSY):
                    moderator["busy_451"] += 1
                else:
                    moderator["other"].append(r.smtp)

    def member(phase: str, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r, sec = post(traffic.message("member"), "192.0.2.10")
            if r.smtp != "accept":
                raise BenchError(f"a member post got {r.smtp!r} during the flood")
            member_ms[phase].append(sec)

    try:
        member("before", 3.0)
        cpu0, t0 = cpu_seconds(milter.pid), time.perf_counter()
        threads = [threading.Thread(target=flooder) for _ in range(args.approval_flood)]
        threads.append(threading.Thread(target=moderate))
        for th in threads:
            th.start()
        try:
            member("during", args.approval_seconds)
        finally:
            stop.set()
            for th in threads:
                th.join()
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds(milter.pid) - cpu0
        mark = milter.log_mark()
        os.kill(milter.pid, signal.SIGUSR1)
        stats = ""
        deadline = time.monotonic() + 10
        while "passwords:" not in stats and time.monotonic() < deadline:
            time.sleep(0.1)
            stats = milter.d.log_text(mark)
    finally:
        milter.close()
    if flood["other"] or moderator["other"]:
        raise BenchError(f"unexpected answers: flood {flood['other'][:3]}, "
                         f"moderator {moderator['other'][:3]}")
    counters = dict(re.findall(r"\b(computed|cache_hits|busy|ok|wrong)=(\d+)",
                               stats.partition("passwords:")[2]))
    out = {
        "seconds": round(seconds, 1), "flood_conversations": args.approval_flood,
        "flood": {k: v for k, v in flood.items() if k != "other"},
        "flood_per_s": round(flood["sent"] / seconds, 1),
        "moderator": {"sent": moderator["sent"], "accepted": moderator["accepted"],
                      "busy_451": moderator["busy_451"],
                      "p50_ms": pct(moderator["ms"], 0.5), "max_ms": pct(moderator["ms"], 1.0)},
        "member_p50_ms": {k: pct(v, 0.5) for k, v in member_ms.items()},
        "member_p99_ms": {k: pct(v, 0.99) for k, v in member_ms.items()},
        "member_posts": {k: len(v) for k, v in member_ms.items()},
        "daemon_cpu_cores": round(cpu / seconds, 2),
        "password_counters": {k: int(v) for k, v in counters.items()},
    }
    log(f"approval flood: {out['flood_per_s']} guesses/s, {flood['wrong_550']} hashed (550), "
        f"{flood['busy_451']} deferred (451); moderator {moderator['accepted']}/"
        f"{moderator['sent']} accepted, {moderator['busy_451']} deferred; member p99 "
        f"{out['member_p99_ms']} ms; daemon {out['daemon_cpu_cores']} cores")
    return out


def scale_point(milter: Listgate, members: int, args: argparse.Namespace) -> dict:
    """Cold then warm verdict latency, one connection at a time; RSS after."""
    traffic = Traffic(members, seed=3)
    rng = random.Random(members)
    order = rng.sample(range(members), min(members, args.cold))
    cold = [("member", traffic.message("member", i)) for i in order]
    r_cold = run_load(milter, cold, 1)
    warm_set = order[:WARM_SET]
    # the warm p99 is the median of WARM_REPS runs: one run's p99 (20 samples of
    # 2,000) is at the mercy of whatever else the machine does in that second
    warm_runs = []
    for _ in range(WARM_REPS):
        warm = [("member", traffic.message("member", rng.choice(warm_set)))
                for _ in range(args.warm)]
        warm_runs.append(run_load(milter, warm, 1))
    r_warm = warm_runs[0]
    mem = memory_mb(milter.pid)
    return {"members": members, "startup_s": milter.startup_s, **mem,
            "cold_n": len(cold), "cold_p50_ms": pct(r_cold["_eom"], 0.5),
            "cold_p99_ms": pct(r_cold["_eom"], 0.99),
            "warm_n": len(warm), "warm_reps": WARM_REPS,
            "warm_p50_ms": statistics.median(pct(r["_eom"], 0.5) for r in warm_runs),
            "warm_p99_ms": statistics.median(pct(r["_eom"], 0.99) for r in warm_runs),
            "warm_p99_ms_each": [pct(r["_eom"], 0.99) for r in warm_runs],
            "warm_total_p50_ms": round(sum(r_warm["stages"][s]["p50_ms"] for s in
                                           ("connect", "mail", "rcpt", "eom")), 3),
            "daemon_cpu_ms_per_verdict_warm": r_warm["daemon_cpu_ms_per_verdict"]}


def part_scale(args: argparse.Namespace, dns: infra.DnsServer) -> dict:
    out: dict[str, Any] = {"sqlite": {}, "postgresql": {}, "mailman3": {},
                           "method": "one connection at a time; latency = eom stage (headers"
                                     " + end of message -> verdict); cold = members not yet"
                                     " looked up by this daemon, warm = 100 members already"
                                     " looked up; rss after the run, hwm = peak"}
    for engine, sizes, start in (("sqlite", args.sizes, listgate_sqlite),
                                 ("postgresql", args.postgresql_sizes, listgate_postgresql)):
        for members in sizes:
            milter, built = start(dns, members)
            try:
                p = scale_point(milter, members, args)
            finally:
                milter.close()
            p["db_build_s"] = built
            out[engine][str(members)] = p
            log(f"scale {engine} {members:>8}: start {p['startup_s']:.3f}s  cold "
                f"{p['cold_p50_ms']}/{p['cold_p99_ms']} ms  warm {p['warm_p50_ms']}/"
                f"{p['warm_p99_ms']} ms  RSS {p['rss_mb']} MB (peak {p['hwm_mb']})"
                + (f"  (DB built in {built}s)" if built else ""))
    if args.mailman3:
        stack: list = []
        try:
            milter, info = mailman3_listgate(dns, args.mailman3, stack)
            try:
                p = scale_point(milter, args.mailman3, args)
            finally:
                milter.close()
            p.update(info)
            out["mailman3"][str(args.mailman3)] = p
            log(f"scale mailman3 {args.mailman3:>6}: start {p['startup_s']:.3f}s  cold "
                f"{p['cold_p50_ms']}/{p['cold_p99_ms']} ms  warm {p['warm_p50_ms']}/"
                f"{p['warm_p99_ms']} ms  RSS {p['rss_mb']} MB  {info}")
        finally:
            for mm in stack:
                mm.stop()
    return out


def part_growth(args: argparse.Namespace, dns: infra.DnsServer) -> dict:
    """Part 4: verdicts/s and RSS per slice of one long run."""
    total, slices = args.growth_messages, args.growth_samples
    size = max(1, total // slices)
    milter, _ = listgate_sqlite(dns, 10000)
    samples = []
    try:
        traffic = Traffic(10000, seed=4)
        sent = 0
        rss0 = memory_mb(milter.pid)["rss_mb"]
        while sent < total:
            n = min(size, total - sent)
            r = run_load(milter, traffic.mix(n, args.mix_weights),
                         args.growth_concurrency, args.per_connection)
            sent += n
            mem = memory_mb(milter.pid)
            samples.append({"messages": sent, "verdicts_per_s": r["verdicts_per_s"],
                            "rss_mb": mem["rss_mb"],
                            "daemon_cpu_ms_per_verdict": r["daemon_cpu_ms_per_verdict"],
                            "eom_p99_ms": r["stages"]["eom"]["p99_ms"]})
            log(f"growth {sent:>7} msgs  {r['verdicts_per_s']:7.1f} verdicts/s  "
                f"RSS {mem['rss_mb']} MB  daemon {r['daemon_cpu_ms_per_verdict']:.2f} ms/verdict")
    finally:
        milter.close()
    return {"messages": total, "concurrency": args.growth_concurrency, "members": 10000,
            "rss_mb_at_start": rss0, "samples": samples}


# --------------------------------------------------------------------------- driver


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of parts 2-4 (bench/run.py adds them to its own parser)."""
    g = ap.add_argument_group("protocol/scale/growth (bench/protocol.py)")
    g.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    g.add_argument("--concurrency", default="1,10,50", help="part 2: concurrent conversations")
    g.add_argument("--protocol-messages", type=int, default=3000,
                   help="part 2: messages per point (default %(default)s)")
    g.add_argument("--per-connection", type=int, default=1,
                   help="messages per milter connection (default %(default)s, like "
                        "smtp-source/Postfix: one per SMTP session)")
    g.add_argument("--mix", default="60,20,20", help="member,nonmember,nolist weights")
    g.add_argument("--sizes", default="100,10000,1000000", help="part 3: SQLite list sizes")
    g.add_argument("--postgresql-sizes", default="100,10000,1000000",
                   help="part 3: PostgreSQL list sizes ('' = skip)")
    g.add_argument("--mailman3", type=int, default=10000,
                   help="part 3: Mailman 3 list size (0 = skip)")
    g.add_argument("--cold", type=int, default=1000, help="part 3: cold lookups per size")
    g.add_argument("--warm", type=int, default=2000, help="part 3: warm lookups per size")
    g.add_argument("--growth-messages", type=int, default=100000, help="part 4 (0 = skip)")
    g.add_argument("--growth-samples", type=int, default=20, help="part 4: slices")
    g.add_argument("--growth-concurrency", type=int, default=10)
    g.add_argument("--approval-seconds", type=float, default=20.0,
                   help="part 5: length of the flood of wrong Approved: passwords")
    g.add_argument("--approval-flood", type=int, default=10,
                   help="part 5: conversations sending wrong passwords")
    g.add_argument("--parts", default="protocol,scale,growth,approval,chain")


def _finish_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.concurrency, args.protocol_messages = "1,10", 300
        args.sizes, args.cold, args.warm = "100,10000", 200, 300
        args.postgresql_sizes = "100,10000"
        args.growth_messages, args.growth_samples = 2000, 4
        args.approval_seconds = 5.0
    args.concurrency = [int(x) for x in str(args.concurrency).split(",") if x]
    args.sizes = [int(x) for x in str(args.sizes).split(",") if x]
    args.postgresql_sizes = [int(x) for x in str(args.postgresql_sizes).split(",") if x]
    args.mix_weights = tuple(float(x) for x in args.mix.split(","))
    args.warmup = 300
    args.parts = set(args.parts.split(","))
    return args


def run_all(args: argparse.Namespace, dns: infra.DnsServer | None = None) -> dict:
    """Parts 2-4; returns ``{"protocol": ..., "scale": {...}}`` for results.json."""
    args = _finish_args(args)
    started = time.monotonic()
    infra.E2E_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-proto-", dir=infra.E2E_ROOT))
    own_dns = dns is None
    if own_dns:
        dns = infra.DnsServer(txt=DNS_TXT, ttl=300).start()
    else:
        missing = set(DNS_TXT) - set(dns.txt)
        if missing:
            raise BenchError(f"the DNS server lacks the SPF records for {sorted(missing)}")
    out: dict[str, Any] = {"protocol": None, "scale": {}}
    timing = {}
    try:
        if "protocol" in args.parts:
            t0 = time.monotonic()
            out["protocol"] = part_protocol(args, dns, workdir)
            timing["protocol_s"] = round(time.monotonic() - t0, 1)
        if "scale" in args.parts:
            t0 = time.monotonic()
            out["scale"] = part_scale(args, dns)
            timing["scale_s"] = round(time.monotonic() - t0, 1)
        if "growth" in args.parts and args.growth_messages:
            t0 = time.monotonic()
            out["scale"]["growth"] = part_growth(args, dns)
            timing["growth_s"] = round(time.monotonic() - t0, 1)
        if "approval" in args.parts:
            t0 = time.monotonic()
            out["approval"] = part_approval(args, dns, workdir)
            timing["approval_s"] = round(time.monotonic() - t0, 1)
        if "chain" in args.parts:
            import chain as chain_bench

            t0 = time.monotonic()
            out["chain"] = chain_bench.run(quick=args.quick)
            timing["chain_s"] = round(time.monotonic() - t0, 1)
    finally:
        if own_dns:
            dns.stop()
        stop_pg()
        shutil.rmtree(workdir, ignore_errors=True)
    timing["total_s"] = round(time.monotonic() - started, 1)
    out["scale"]["seconds"] = timing
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def report(out: dict) -> None:
    """A readable terminal table of :func:`run_all`'s result."""
    p = out.get("protocol")
    if p:
        print(f"\nPart 2, protocol level (unix socket, mix {p['mix']}, "
              f"{p['per_connection']} msg/connection): p50/p99 ms per stage")
        hdr = (f"{'milter':<18}{'N':>4}{'verdicts/s':>11}{'connect':>14}{'mail':>14}"
               f"{'rcpt':>14}{'eom':>14}{'CPU ms/v':>9}{'client':>7}")
        print(hdr)
        print("-" * len(hdr))
        for name, res in p["results"].items():
            for n, r in res.items():
                if n == "startup_s":
                    continue
                st = r["stages"]
                cells = "".join(f"{_ms(st[s]['p50_ms']):>6}/{_ms(st[s]['p99_ms']):<7}"
                                for s in ("connect", "mail", "rcpt", "eom"))
                print(f"{name:<18}{n:>4}{r['verdicts_per_s']:>11.1f}  {cells}"
                      f"{r['daemon_cpu_ms_per_verdict']:>8.2f}{r['client_cpu_ms_per_verdict']:>7.2f}")
    s = out.get("scale") or {}
    rows = [("sqlite", k, v) for k, v in s.get("sqlite", {}).items()]
    rows += [("postgresql", k, v) for k, v in s.get("postgresql", {}).items()]
    rows += [("mailman3", k, v) for k, v in s.get("mailman3", {}).items()]
    if rows:
        print("\nPart 3, data scale (one connection at a time; verdict = eom stage)")
        hdr = (f"{'backend':<11}{'members':>9}{'start s':>9}{'cold p50/p99 ms':>18}"
               f"{'warm p50/p99 ms':>18}{'RSS MB':>8}{'peak':>7}")
        print(hdr)
        print("-" * len(hdr))
        for b, k, v in rows:
            print(f"{b:<11}{k:>9}{v['startup_s']:>9.3f}"
                  f"{v['cold_p50_ms']:>9.2f}/{v['cold_p99_ms']:<8.2f}"
                  f"{v['warm_p50_ms']:>9.2f}/{v['warm_p99_ms']:<8.2f}"
                  f"{v['rss_mb']:>8.1f}{v['hwm_mb']:>7.1f}")
        sq = s.get("sqlite", {})
        if "100" in sq and "1000000" in sq:
            ratio = sq["1000000"]["warm_p99_ms"] / sq["100"]["warm_p99_ms"]
            print(f"target: warm p99 at 1e6 within 1.5x of 1e2: {ratio:.2f}x "
                  f"({'met' if ratio <= 1.5 else 'NOT met'}); RSS at 1e6 under 100 MB: "
                  f"{sq['1000000']['rss_mb']} MB "
                  f"({'met' if sq['1000000']['rss_mb'] < 100 else 'NOT met'})")
    g = s.get("growth")
    if g:
        print(f"\nPart 4, cost growth ({g['messages']} messages, N={g['concurrency']}; "
              f"RSS at start {g['rss_mb_at_start']} MB)")
        print(f"{'messages':>9}{'verdicts/s':>12}{'RSS MB':>8}{'CPU ms/v':>10}")
        for x in g["samples"]:
            print(f"{x['messages']:>9}{x['verdicts_per_s']:>12.1f}{x['rss_mb']:>8.1f}"
                  f"{x['daemon_cpu_ms_per_verdict']:>10.2f}")
    a = out.get("approval")
    if a:
        f, m = a["flood"], a["moderator"]
        print(f"\nPart 5, a flood of wrong Approved: passwords ({a['flood_conversations']} "
              f"conversations, {a['seconds']} s, sha512_crypt 656000 rounds, [approved] "
              "defaults)")
        print(f"flood: {a['flood_per_s']} guesses/s, {f['wrong_550']} hashed -> 550, "
              f"{f['busy_451']} past the bound -> 451; daemon {a['daemon_cpu_cores']} cores")
        print(f"moderator (right password, every second): {m['accepted']}/{m['sent']} "
              f"accepted, {m['busy_451']} deferred (451), p50 {m['p50_ms']} ms, max "
              f"{m['max_ms']} ms")
        print(f"a member meanwhile: p50/p99 {a['member_p50_ms']['before']}/"
              f"{a['member_p99_ms']['before']} ms before, {a['member_p50_ms']['during']}/"
              f"{a['member_p99_ms']['during']} ms during; counters {a['password_counters']}")
    c = out.get("chain")
    if c:
        import chain as chain_bench

        print("\n" + chain_bench.report(c))
    if "seconds" in s:
        print(f"\ntime: {s['seconds']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--out", default=str(ROOT / "bench" / "protocol.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/protocol.py must run as root (dnsmasq, Mailman 3)", file=sys.stderr)
        return 2
    out = run_all(args)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    report(out)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
