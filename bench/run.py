"""listgate benchmark (issue 5): ``make bench`` = ``.venv/bin/python bench/run.py``.

All figures come from ONE run on one machine and are reported as ratios against the
baselines of that run (absolute numbers drift on shared machines).  Run as root, on
loopback only (Postfix, smtp-sink, dnsmasq from ``scripts/install-debian-deps.sh
test``; Mailman 3 from ``scripts/install-mailman3.sh``; pyspf-milter from
``scripts/install-bench-peers.sh``)::

    make bench                                   # everything, about 16 minutes
    .venv/bin/python bench/run.py --reps 1 --sessions 10 --parts mta   # a quick look

**Part 1, through a real MTA** (``--parts mta``): :mod:`smtpload` (one thread,
asyncio; one message per SMTP session, no PIPELINING) -> a private Postfix on
127.0.0.1 (the e2e tests' ``PostfixInstance``) -> ``smtp-sink``, once per
configuration:

* ``no-milter``: Postfix alone (the floor).
* ``minimal-pymilter/unix|inet``: ``bench/minimal_milter.py``, a stock pymilter milter
  (connect, rcpt, end of message adding one header): the protocol and pymilter alone.
* ``callbacks-pymilter/unix``: ``bench/callbacks_milter.py``, listgate's callback
  set (connect, HELO, MAIL, RCPT, every header, end of message inserting the same two
  headers) doing nothing: the floor for any milter that must see what listgate sees.
* ``pyspf-milter/unix|inet``: PyPI spf-engine 3.1.0's pyspf-milter (the SPF milter
  an admin would otherwise run), stock config but for the DNS server and the
  internal-host list (127.0.0.254, as listgate's), see :class:`PyspfMilter`.
* ``listgate-sqlite/unix|inet``: the real daemon (``python -m listgate serve``),
  SQLite store with a 1e4-member list, default config (every check on), warm cache.
* ``listgate-postgresql/unix``: the same daemon on the store on PostgreSQL (a private
  cluster on its unix socket, see :mod:`protocol`), the same 1e4-member list.
* ``listgate-mailman3/unix|inet``: the same daemon on a real Mailman 3 (REST API) with
  the same 1e4-member list, warm cache.

listgate's ``internal_connect`` is 127.0.0.254/32, so the client 127.0.0.1 is an
EXTERNAL client: HELO and MAIL FROM SPF run for every message against a private
dnsmasq serving real-world 300 s TTLs.  The mix (``--mix``, default 60/20/20):
list posts by a member (accepted), by a nonmember (listgate answers 550 at end of
DATA; the other configurations deliver it) and mail to a non-list address; every
message is 2 KB.  Per point (configuration x concurrent sessions): messages/s =
messages / wall time of the load, and p99 = the 99th percentile of the time from
connecting to the reply to the end of DATA, over every message of the point.  Each
point is repeated ``--reps`` times, the configurations alternating, and the median
taken; the ratios between configurations (:data:`RATIOS`, ``ratios`` in the results)
are medians of the ratios within each repetition (:func:`paired_ratios`).  200
messages at one session, 2000 at 10 and 3000 at 50 (``--counts``): shorter points
moved the ratios at 10 and 50 sessions by 0.1 from run to run.  Checked at every
point (the run fails loudly otherwise): every reply is the expected one, the sink
receives exactly the delivered messages with the milter's header on them, and
listgate's log has one verdict line per message (member ACCEPT, nonmember REJECT,
non-list ACCEPT), each for an EXTERNAL client with SPF pass, and no ERROR or
Traceback.

**Parts 2-4** (``--parts protocol,scale,growth``): :mod:`protocol` -- a milter client
driving the daemon's socket directly (per-stage latency, verdicts/s, daemon CPU per
verdict, beside ``minimal_milter.py`` and ``callbacks_milter.py``), lists of 1e2, 1e4
and 1e6 members (and 1e4 on Mailman 3), and a 100k-message growth run.

Output: a table on the terminal and ``bench/results.json``::

    {"runs": {"no-milter" | "<config>/<unix|inet>": {"<sessions>":
        {"msgs_per_s": N, "p99_ms": N}}},
     "ratios": {"<config> / <baseline>": {"<sessions>": N}},
     "scale": {...}, "protocol": {...},
     "machine": "..."}

and the details (every repetition, CPU per message, settings) in
``bench/results.details.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "tests" / "e2e", ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import infra  # noqa: E402
import protocol  # noqa: E402
import smtpload  # noqa: E402
from lgdaemon import ListgateDaemon  # noqa: E402
from smtpload import Job  # noqa: E402

LIST = protocol.LIST
MEMBER = "m1@members.test"  # in protocol's 1e4-member list (SQLite and Mailman 3)
STRANGER = "stranger@strangers.test"
NOLIST_FROM, NOLIST_TO = "u1@other.test", "someone@elsewhere.test"
HELO = protocol.HELO
#: smtpload's 127.0.0.1 (part 1) and protocol's 192.0.2.x (parts 2-4) both pass
SPF = "v=spf1 ip4:127.0.0.0/8 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all"
MSG_SIZE = 2048
KINDS = ("member", "nonmember", "nolist")
CONFIGS = ["no-milter", "minimal-pymilter/unix", "minimal-pymilter/inet",
           "minimal-pymilter/inet-protocol3", "callbacks-pymilter/unix", "pyspf-milter/unix",
           "pyspf-milter/inet",
           "listgate-sqlite/unix", "listgate-sqlite/inet", "listgate-postgresql/unix",
           "listgate-mailman3/unix", "listgate-mailman3/inet"]
PEERS = Path(os.environ.get("LISTGATE_BENCH_PEERS", "/var/tmp/listgate-bench/peers"))
LISTGATE_REJECT = f"550 5.7.2 You are not permitted to post to {LIST}."


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(RuntimeError):
    """A measurement could not be trusted (wrong answer, wrong count, errors in a log)."""


# --------------------------------------------------------------------------- helpers


cpu_seconds = protocol.cpu_seconds


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pf = subprocess.run(["postconf", "-dh", "mail_version"], capture_output=True,
                        text=True).stdout.strip()
    return (f"nproc={os.cpu_count()}; cpu={cpu}; kernel={platform.release()}; "
            f"postfix={pf}; python={platform.python_version()}")


class Sink:
    """Counts the messages smtp-sink captured (files in its directory)."""

    def __init__(self) -> None:
        self.sink = infra.SmtpSink().start()

    def count(self) -> int:
        return sum(1 for _ in os.scandir(self.sink.directory))

    def wait_for(self, n: int, timeout: float) -> int:
        """Wait until *n* captures are complete (smtp-sink closed the files)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.count()
            if got >= n and not self.sink._open_files():
                return got
            if time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def clear(self) -> None:
        for entry in os.scandir(self.sink.directory):
            os.unlink(entry.path)

    def stop(self) -> None:
        self.sink.stop()


# --------------------------------------------------------------------------- milters


class Milter:
    """A reference milter script as a child process (unix or inet socket)."""

    #: the header its messages arrive with (checked on a delivered message)
    mark = ""
    name = ""

    def __init__(self, transport: str, workdir: Path) -> None:
        self.transport = transport
        if transport == "unix":
            self.path = workdir / f"{self.name}-{os.getpid()}.sock"
            self.spec = f"unix:{self.path}"
            self.postfix_milter = f"unix:{self.path}"
        else:
            self.port = infra.free_port()
            self.spec = f"inet:{self.port}@127.0.0.1"
            self.postfix_milter = f"inet:127.0.0.1:{self.port}"
            if transport == "inet-protocol3":
                # Postfix's per-milter protocol version 3 (no DATA macros to leave
                # unanswered): the README's advice for other milters on TCP
                self.postfix_milter = f"{{ inet:127.0.0.1:{self.port}, protocol=3 }}"
        self.errlog = workdir / f"{self.name}-{transport}.log"
        with open(self.errlog, "wb") as err:
            self.proc = subprocess.Popen(self.argv(workdir), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited: {self.errlog.read_text()}")
            if (transport == "unix" and self.path.exists()) or (
                    transport != "unix" and infra._tcp_listening("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not start: {self.errlog.read_text()}")

    def argv(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expected(self, kind: str) -> int:
        return 250

    def log_mark(self) -> int:
        return 0

    def check(self, counts: dict[str, int], mark: int) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} died: {self.errlog.read_text()[-3000:]}")
        text = self.errlog.read_text(errors="replace")
        if "Traceback" in text or "ERROR" in text:
            raise BenchError(f"{self.name} reported errors:\n{text[-3000:]}")

    def close(self) -> None:
        infra._terminate(self.proc)


class MinimalMilter(Milter):
    """bench/minimal_milter.py."""

    name = "minimal"
    mark = "X-Bench-Minimal: 1"

    def argv(self, workdir: Path) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "minimal_milter.py"), self.spec]


class CallbacksMilter(Milter):
    """bench/callbacks_milter.py: listgate's callback set and its two headers, no work.

    Over a unix socket only: it is the floor listgate stands on through Postfix (what
    Postfix and the milter protocol charge for HELO, MAIL FROM and every header, which
    a list gate must see), not a milter anyone would run."""

    name = "callbacks"
    mark = "Received-SPF: Pass"

    def argv(self, workdir: Path) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "callbacks_milter.py"), self.spec]


class PyspfMilter(Milter):
    """PyPI spf-engine's pyspf-milter, through bench/pyspf_milter.py (DNS server only).

    Its config: the socket, a pid file, ``UserID nobody:nogroup`` (it drops root itself), and
    ``skip_addresses`` / ``InternalHosts`` narrowed to 127.0.0.254 exactly as
    listgate's ``internal_connect``, so that 127.0.0.1 is checked, not skipped.
    Everything else is spf-engine's default (reject HELO and MAIL FROM fail, an
    Authentication-Results header).
    """

    name = "pyspf-milter"
    mark = "spf=pass"

    def argv(self, workdir: Path) -> list[str]:
        python = PEERS / "pyspf-venv" / "bin" / "python"
        if not python.exists():
            raise BenchError(f"{python} missing: run scripts/install-bench-peers.sh")
        os.chmod(workdir, 0o777)  # it creates its unix socket after dropping to nobody
        cfg = workdir / f"pyspf-milter-{self.transport}.conf"
        cfg.write_text(f"Socket = {self.spec}\nPidFile = {workdir}/pyspf-{self.transport}.pid\n"
                       "UserID = nobody:nogroup\nskip_addresses = 127.0.0.254/32\n"
                       "InternalHosts = 127.0.0.254\nAuthserv_Id = mx.bench.test\nUMask = 0\n"
                       "debugLevel = 0\n")
        return [str(python), str(ROOT / "bench" / "pyspf_milter.py"), str(cfg),
                self.dns.nameservers]


class Listgate:
    """The real listgate daemon on a store or a Mailman 3 (``backend`` config)."""

    mark = "Received-SPF: Pass"

    def __init__(self, transport: str, dns: infra.DnsServer, backend: str) -> None:
        self.transport = transport
        self.d = ListgateDaemon(transport=transport, nameservers=dns.nameservers,
                                config=protocol.LISTGATE_CONFIG + backend)
        self.d.start()
        self.postfix_milter = self.d.postfix_milter

    @property
    def pid(self) -> int:
        return self.d.proc.pid

    def expected(self, kind: str) -> int:
        return 550 if kind == "nonmember" else 250

    def log_mark(self) -> int:
        return self.d.log_size()

    def check(self, counts: dict[str, int], mark: int) -> None:
        """One verdict line per message, of the right kind, for an EXTERNAL client with
        SPF pass; no errors."""
        if self.d.proc.poll() is not None:
            raise BenchError(f"listgate died: {self.d.log_text()[-3000:]}")
        patterns = {
            "member": rf"ACCEPT: list={re.escape(LIST)} verdict=accept ",
            "nonmember": rf"REJECT: list={re.escape(LIST)} verdict=hold\(nonmember\) ",
            "nolist": r"ACCEPT: no list recipient",
        }
        tail = (r".*; client=\S+ class=EXTERNAL\S* helo=<mail\.bench\.test> "
                r"from=<[^>]+> spf=pass$")
        deadline = time.monotonic() + 10  # a verdict line may follow the reply
        while True:
            text = self.d.log_text(mark)
            got = {k: len(re.findall(p + tail, text, re.M)) for k, p in patterns.items()}
            if all(got[k] >= n for k, n in counts.items()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        bad = [ln for ln in text.splitlines() if " ERROR " in ln or "Traceback" in ln]
        stderr = self.d.stderr_path.read_text(errors="replace")
        if bad or "Traceback" in stderr:
            raise BenchError("listgate logged errors:\n" + "\n".join(bad[:20]) + stderr[-2000:])
        if got != counts:
            raise BenchError(f"listgate's verdict lines {got} do not match the messages "
                             f"{counts}:\n{text[-3000:]}")

    def close(self) -> None:
        self.d.close()


# --------------------------------------------------------------------------- runner


class Config:
    def __init__(self, name: str, milter, postfix: infra.PostfixInstance) -> None:
        self.name = name
        self.milter = milter
        self.postfix = postfix


def make_jobs(n: int, mix: tuple[float, ...], messages: dict[str, bytes]) -> list[Job]:
    """*n* messages in the mix's proportions, interleaved (every kind all along)."""
    envelope = {"member": (MEMBER, LIST), "nonmember": (STRANGER, LIST),
                "nolist": (NOLIST_FROM, NOLIST_TO)}
    total = sum(mix)
    counts = [int(n * w / total) for w in mix]
    counts[0] += n - sum(counts)
    order = sorted(((i + 0.5) / c, k) for k, c in zip(KINDS, counts, strict=True)
                   for i in range(c))
    return [Job(k, *envelope[k], messages[k]) for _pos, k in order]


def run_point(cfg: Config, sink: Sink, jobs: list[Job], sessions: int) -> dict:
    """One load run; messages/s, p99 and the milter's CPU per message."""
    sink.clear()
    mark = cfg.milter.log_mark() if cfg.milter else 0
    cpu0 = cpu_seconds(cfg.milter.pid) if cfg.milter else 0.0
    out = smtpload.run(cfg.postfix.port, jobs, sessions, HELO)
    cpu = (cpu_seconds(cfg.milter.pid) - cpu0) if cfg.milter else 0.0
    results = out["results"]
    wrong = []
    counts = dict.fromkeys(KINDS, 0)
    delivered = 0
    for r in results:
        counts[r.kind] += 1
        want = cfg.milter.expected(r.kind) if cfg.milter else 250
        if r.code != want or r.stage != "data" or (
                want == 550 and not r.text.startswith(LISTGATE_REJECT)):
            wrong.append(r)
        delivered += r.code == 250
    if wrong:
        raise BenchError(f"{cfg.name}: {len(wrong)} of {len(results)} wrong answers, e.g. "
                         f"{wrong[:3]}\npostfix log:\n{cfg.postfix.log_text()[-3000:]}")
    got = sink.wait_for(delivered, timeout=120)
    if got != delivered:
        raise BenchError(f"{cfg.name}: the sink got {got} of {delivered} messages\n"
                         f"queue: {cfg.postfix.queue_listing()[-2000:]}\n"
                         f"postfix log:\n{cfg.postfix.log_text()[-3000:]}")
    if cfg.milter:
        first = next(os.scandir(sink.sink.directory)).path
        if cfg.milter.mark not in Path(first).read_text(errors="replace"):
            raise BenchError(f"{cfg.name}: a delivered message lacks {cfg.milter.mark!r}")
        cfg.milter.check({k: n for k, n in counts.items() if n}, mark)
    latencies = [r.seconds for r in results]
    n = len(results)
    return {"seconds": round(out["seconds"], 4), "msgs_per_s": round(n / out["seconds"], 2),
            "p50_ms": round(1000 * smtpload.percentile(latencies, 0.5), 2),
            "p99_ms": round(1000 * smtpload.percentile(latencies, 0.99), 2),
            "messages": counts, "delivered": delivered,
            "milter_cpu_ms_per_msg": round(1000 * cpu / n, 3) if cfg.milter else None,
            "client_cpu_ms_per_msg": round(out["client_cpu_ms_per_msg"], 3)}


def parse_counts(text: str) -> dict[int, int]:
    out = {}
    for part in text.split(","):
        s, _, n = part.partition(":")
        out[int(s)] = int(n)
    return out


def part_mta(args: argparse.Namespace, dns: infra.DnsServer, workdir: Path) -> dict:
    """Part 1: every configuration through Postfix; {"runs": ..., "details": ...}."""
    counts = parse_counts(args.counts)
    if args.sessions:
        counts = {s: counts.get(s, 1000) for s in map(int, args.sessions.split(","))}
    wanted = CONFIGS
    if args.configs:
        keep = set(args.configs.split(",")) | {"no-milter"}
        wanted = [c for c in CONFIGS if c in keep]
    mix = tuple(float(x) for x in args.mix.split(","))
    messages = {kind: smtpload.message([("From", frm), ("To", to), *COMMON_HEADERS], MSG_SIZE)
                for kind, frm, to in (("member", f"Bench Member <{MEMBER}>", LIST),
                                      ("nonmember", f"A Stranger <{STRANGER}>", LIST),
                                      ("nolist", f"Someone <{NOLIST_FROM}>", NOLIST_TO))}
    sink = Sink()
    configs: list[Config] = []
    milters: list = []
    stack: list = []  # Mailman 3
    mm3_info: dict = {}
    try:
        # Postfix must not make the client wait for anything but the milter
        pf_extra = {"default_process_limit": "200",
                    "smtpd_client_connection_count_limit": "0",
                    "smtpd_client_message_rate_limit": "0",
                    "smtpd_client_recipient_rate_limit": "0",
                    "smtp_destination_concurrency_limit": "20"}
        sqlite_db, _built = protocol.sqlite_db(10000)
        mm3_backend = None
        for name in wanted:
            kind, _, transport = name.partition("/")
            milter = None
            if kind == "minimal-pymilter":
                milter = MinimalMilter(transport, workdir)
            elif kind == "callbacks-pymilter":
                milter = CallbacksMilter(transport, workdir)
            elif kind == "pyspf-milter":
                PyspfMilter.dns = dns
                milter = PyspfMilter(transport, workdir)
            elif kind == "listgate-sqlite":
                milter = Listgate(transport, dns, f"[sqlite]\npath = {sqlite_db}\n")
            elif kind == "listgate-postgresql":
                milter = Listgate(transport, dns, protocol.pg_config(protocol.pg_store(10000)[0]))
            elif kind == "listgate-mailman3":
                if mm3_backend is None:
                    mm3_backend, mm3_info = protocol.mailman3_backend(10000, stack)
                milter = Listgate(transport, dns, mm3_backend)
            if milter:
                milters.append(milter)
            pf = infra.PostfixInstance(["lists.test", "elsewhere.test"], sink.sink.port,
                                       milters=milter.postfix_milter if milter else None,
                                       extra=pf_extra).start()
            configs.append(Config(name, milter, pf))
        log(f"part 1 configs: {', '.join(c.name for c in configs)}; points: "
            + ", ".join(f"{s} sessions x {n} msgs" for s, n in counts.items())
            + f"; mix {args.mix} (member,nonmember,nolist); {args.reps} reps")
        # warm-up: Postfix's smtpd processes, the milters, listgate's caches (SPF, lists)
        for cfg in configs:
            run_point(cfg, sink, make_jobs(100, mix, messages), 10)
        log("warm-up done (100 messages per config, checked)")
        results: dict[str, dict[int, list[dict]]] = {c.name: {s: [] for s in counts}
                                                    for c in configs}
        for rep in range(args.reps):
            for sessions, count in counts.items():
                jobs = make_jobs(count, mix, messages)
                for cfg in configs:
                    r = run_point(cfg, sink, jobs, sessions)
                    results[cfg.name][sessions].append(r)
                    cpu = r["milter_cpu_ms_per_msg"]
                    log(f"rep {rep + 1} {cfg.name:<24} s={sessions:<3} {count} msgs "
                        f"{r['seconds']:6.2f}s {r['msgs_per_s']:7.1f} msg/s "
                        f"p99 {r['p99_ms']:6.1f} ms"
                        + (f"  milter CPU {cpu:.2f} ms/msg" if cpu is not None else ""))
        nodelay = {m.transport: "TCP_NODELAY set on the milter socket" in m.d.log_text()
                   for m in milters if isinstance(m, Listgate)}
    finally:
        for cfg in configs:
            try:
                cfg.postfix.request_stop()
            except Exception:  # noqa: BLE001 - stop() below retries
                pass
        for cfg in configs:
            cfg.postfix.stop()
        for m in milters:
            m.close()
        for mm in stack:
            mm.stop()
        sink.stop()
        protocol.stop_pg()
    runs: dict[str, dict[str, dict]] = {}
    details: dict[str, dict[str, dict]] = {}
    for name, per in results.items():
        for sessions, reps in per.items():
            med = statistics.median(r["msgs_per_s"] for r in reps)
            p99 = statistics.median(r["p99_ms"] for r in reps)
            cpus = [r["milter_cpu_ms_per_msg"] for r in reps if r["milter_cpu_ms_per_msg"]]
            runs.setdefault(name, {})[str(sessions)] = {"msgs_per_s": round(med, 1),
                                                        "p99_ms": round(p99, 1)}
            details.setdefault(name, {})[str(sessions)] = {
                "messages": counts[sessions], "reps": reps,
                "milter_cpu_ms_per_msg_median": statistics.median(cpus) if cpus else None}
    ratios = {f"{a} / {b}": per for (a, b), per in paired_ratios(
        details, [str(n) for n in counts]).items()}
    return {"runs": runs, "details": details, "ratios": ratios, "counts": counts,
            "nodelay": nodelay, "mailman3": mm3_info}


COMMON_HEADERS = [("Subject", "benchmark post"), ("Date", "Mon, 1 Jan 2024 00:00:00 +0000"),
                  ("Message-ID", "<bench@bench.test>"), ("MIME-Version", "1.0"),
                  ("Content-Type", "text/plain; charset=us-ascii")]


#: the ratios the README and issue 12 quote, as (config, baseline)
RATIOS = [("listgate-sqlite/unix", "no-milter"), ("listgate-sqlite/unix", "minimal-pymilter/unix"),
          ("listgate-sqlite/inet", "minimal-pymilter/inet"),
          ("listgate-sqlite/unix", "pyspf-milter/unix"),
          # the floor: what Postfix and the protocol charge for the events a gate must see
          ("callbacks-pymilter/unix", "minimal-pymilter/unix"),
          ("listgate-sqlite/unix", "callbacks-pymilter/unix"),
          ("listgate-sqlite/inet", "listgate-sqlite/unix"),
          ("minimal-pymilter/inet", "minimal-pymilter/unix"),
          ("listgate-postgresql/unix", "listgate-sqlite/unix"),
          ("listgate-mailman3/unix", "listgate-sqlite/unix"),
          ("listgate-mailman3/inet", "listgate-mailman3/unix")]


def paired_ratios(details: dict, sessions: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    """Each of :data:`RATIOS` present in this run: per session count, the median over
    the repetitions of (config / baseline) within the same repetition.

    The configurations of one repetition run one after the other, seconds apart; the
    repetitions are minutes apart, and a shared machine's speed drifts between them
    by more than the differences measured (seen: a whole repetition 20% faster than
    the next for every configuration).  A ratio of medians mixes repetitions; the
    median of paired ratios does not."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for a, b in RATIOS:
        if a not in details or b not in details:
            continue
        out[(a, b)] = {
            s: round(statistics.median(
                x["msgs_per_s"] / y["msgs_per_s"]
                for x, y in zip(details[a][s]["reps"], details[b][s]["reps"], strict=True)), 2)
            for s in sessions}
    return out


def print_mta_table(mta: dict, reps: int) -> None:
    runs, details = mta["runs"], mta["details"]
    sess = [str(s) for s in mta["counts"]]
    base = runs["no-milter"]
    print()
    print(f"Part 1, through Postfix: msgs/s (ratio to no-milter of this run) and p99 ms; "
          f"median of {reps}; 2 KB messages, 1 per SMTP session")
    header = f"{'config':<32}" + "".join(f"{f'{s} sessions':>28}" for s in sess) + \
        f"{'CPU ms/msg':>12}"
    print(header)
    print("-" * len(header))
    for name in runs:
        cells = []
        for s in sess:
            v = runs[name][s]
            ratio = v["msgs_per_s"] / base[s]["msgs_per_s"]
            cells.append(f"{v['msgs_per_s']:>7.1f} ({ratio:4.2f}x) {v['p99_ms']:>6.1f} ms")
        cpu = details[name][sess[-1]]["milter_cpu_ms_per_msg_median"]
        print(f"{name:<32}" + "".join(f"{c:>28}" for c in cells)
              + (f"{cpu:>12.2f}" if cpu else f"{'':>12}"))
    for pair, per in mta["ratios"].items():
        print(f"  {pair}: " + ", ".join(f"s={n} {r:.2f}x" for n, r in per.items()))
    print(f"listgate logged TCP_NODELAY: {mta['nodelay']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions per point (median)")
    ap.add_argument("--counts", default="1:200,10:2000,50:3000",
                    help="part 1: SESSIONS:MESSAGES,... per point (default %(default)s)")
    ap.add_argument("--sessions", default="", help="part 1: only these session counts")
    ap.add_argument("--configs", default="",
                    help="part 1: only these configs (comma separated; no-milter always runs)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    protocol.add_arguments(ap)
    ap.set_defaults(parts="mta,protocol,scale,growth,approval,chain")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py must run as root (it starts private servers)", file=sys.stderr)
        return 2
    parts = set(args.parts.split(","))
    started = time.monotonic()
    infra.E2E_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=infra.E2E_ROOT))
    os.chmod(workdir, 0o755)
    # real SPF records live for minutes to hours; listgate's resolver caches them
    dns = infra.DnsServer(txt={**dict.fromkeys(protocol.DNS_TXT, SPF)}, ttl=300).start()
    log(f"machine: {machine()}")
    mta: dict = {}
    other: dict = {"protocol": None, "scale": {}}
    timing: dict = {}
    try:
        if "mta" in parts:
            t0 = time.monotonic()
            mta = part_mta(args, dns, workdir)
            timing["mta_s"] = round(time.monotonic() - t0, 1)
        if parts - {"mta"}:
            args.parts = ",".join(sorted(parts - {"mta"}))
            other = protocol.run_all(args, dns)
    finally:
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    out = {"runs": mta.get("runs", {}), "ratios": mta.get("ratios", {}),
           "scale": other.get("scale") or {},
           "protocol": other.get("protocol"), "approval": other.get("approval"),
           "chain": other.get("chain"), "machine": machine()}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    extra = {
        "part1_per_point": mta.get("details"),
        "part1_mix": {"weights member,nonmember,nolist": args.mix,
                      "member": f"{MEMBER} -> {LIST}", "nonmember": f"{STRANGER} -> {LIST}",
                      "nolist": f"{NOLIST_FROM} -> {NOLIST_TO}", "size": MSG_SIZE,
                      "per_session": 1, "client": "bench/smtpload.py (asyncio, no PIPELINING)"},
        "p99_ms": "99th percentile of connect -> reply to end of DATA, over every message "
                  "of a point; median over the repetitions",
        "listgate_tcp_nodelay_logged": mta.get("nodelay"),
        "mailman3": mta.get("mailman3"),
        "reps": args.reps,
        "seconds": {**timing, **(other.get("scale") or {}).get("seconds", {}),
                    "total_s": round(elapsed, 1)},
        "command": "make bench (.venv/bin/python bench/run.py)",
    }
    Path(args.out).with_suffix(".details.json").write_text(json.dumps(extra, indent=2) + "\n")
    if mta:
        print_mta_table(mta, args.reps)
    if other.get("protocol") or other.get("scale") or other.get("approval"):
        protocol.report(other)
    print(f"total run time {elapsed:.0f} s; results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
