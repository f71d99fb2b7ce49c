"""listgate benchmark, part 1 of issue 5: "Through a real MTA".

Run it (as root, on loopback only; Postfix 3.7, smtp-source/smtp-sink and dnsmasq
installed, see ``scripts/install-debian-deps.sh test``)::

    make bench                       # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --reps 1 --sessions 10   # a quick look

What it measures: ``smtp-source`` -> a private Postfix on 127.0.0.1 (the e2e tests'
``PostfixInstance``) -> ``smtp-sink``, once per configuration:

* ``no-milter``: Postfix alone (the floor).
* ``minimal-pymilter/unix|inet``: ``bench/minimal_milter.py``, a stock pymilter milter
  (connect, rcpt, end of message adding one header); the cost of the protocol and
  pymilter themselves.
* ``listgate-sqlite/unix|inet``: the real daemon (``python -m listgate serve``), SQLite
  backend, default config (all checks on, default ``cache_ttl``: the cache is warmed
  before measuring), SPF answered by a private dnsmasq on loopback.  listgate's
  ``internal_connect`` is narrowed to 127.0.0.254/32 so that smtp-source's 127.0.0.1
  is an EXTERNAL client: HELO and MAIL FROM SPF checks run for every message
  (``v=spf1 ip4:127.0.0.0/8 -all`` is published for the HELO name and sender domain).

Message mix (one kind only in this version): every message is a list post by a
member: envelope ``bounce@bench.test`` -> ``list@lists.test``, HELO
``mail.bench.test``, a prepared 2 KB message (``smtp-source -F``) whose From: is a
list member.  Each message uses a new SMTP session (smtp-source's default), so the
milter sees connect, HELO, MAIL, RCPT, headers and end of message every time.

Per point (config x concurrent sessions): wall time from starting smtp-source until
it exits (smtp-source measures SMTP acceptance only; Postfix relays to the sink in
the background, and the run waits for the queue to drain to the sink before the
next point, so delivery never overlaps the next measurement).  msgs/s = count /
seconds.  Each point is repeated ``--reps`` times with the configs alternating
(rep 1: all configs, rep 2: all configs, ...); the median is reported, and the
ratio against ``no-milter`` at the same session count from the same run.

Checked during the run (the run fails loudly otherwise): smtp-source exits 0 with
no error output; the sink receives exactly the number of messages sent; for listgate
points, its log shows one ``ACCEPT: list=list@lists.test`` per message, the client
classified EXTERNAL with an SPF pass, and no ERROR/Traceback.

Output: a table on the terminal and ``bench/results.json``::

    {"runs": {"no-milter" | "<config>/<unix|inet>": {"<sessions>":
        {"msgs_per_s": N, "p99_ms": null}}}, "scale": {}, "machine": "..."}

``p99_ms`` is null: smtp-source reports no per-message latency (not measured yet).
Not measured yet either: ``listgate-mailman3``, ``pyspf-milter``, the nonmember and
non-list parts of the mix, and parts 2-4 of the issue (protocol level, data scale,
cost growth).  Every repetition, the milter CPU time per message and the settings
used go to ``bench/results.details.json`` (results.json keeps exactly the shape above).
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
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import infra  # noqa: E402
from lgdaemon import ListgateDaemon  # noqa: E402

LIST = "list@lists.test"
MEMBER = "member@bench.test"
ENVELOPE_FROM = "bounce@bench.test"
HELO = "mail.bench.test"
SPF = "v=spf1 ip4:127.0.0.0/8 -all"
MSG_SIZE = 2048
NOT_MEASURED = ["listgate-mailman3/unix", "listgate-mailman3/inet",
                "pyspf-milter/unix", "pyspf-milter/inet"]
LISTGATE_CONFIG = ("[network]\ninternal_connect = 127.0.0.254/32\n"
                   "[milter]\nlog_level = info\n")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(RuntimeError):
    """A measurement could not be trusted (wrong count, errors in a log...)."""


# --------------------------------------------------------------------------- helpers


def make_message(path: Path, size: int = MSG_SIZE) -> None:
    """A list post by a member, exactly *size* bytes with CRLF line endings."""
    head = (f"From: Bench Member <{MEMBER}>\r\n"
            f"To: {LIST}\r\n"
            "Subject: benchmark post\r\n"
            "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            "Message-ID: <bench@bench.test>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n")
    line = "The quick brown fox jumps over the lazy dog, benchmark body line.\r\n"
    body = ""
    while len(head) + len(body) + len(line) <= size:
        body += line
    body += "x" * (size - len(head) - len(body) - 2) + "\r\n"
    data = (head + body).encode()
    assert len(data) == size, len(data)
    # smtp-source -F appends CRLF after each line it reads: give it LF lines
    path.write_bytes(data.replace(b"\r\n", b"\n"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


class MinimalMilter:
    """bench/minimal_milter.py as a child process."""

    def __init__(self, transport: str, workdir: Path) -> None:
        self.transport = transport
        if transport == "unix":
            path = workdir / f"minimal-{os.getpid()}.sock"
            self.spec = f"unix:{path}"
            self.postfix_milter = f"unix:{path}"
            self.path = path
        else:
            self.port = infra.free_port()
            self.spec = f"inet:{self.port}@127.0.0.1"
            self.postfix_milter = f"inet:127.0.0.1:{self.port}"
        self.errlog = workdir / f"minimal-{transport}.log"
        with open(self.errlog, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "minimal_milter.py"), self.spec],
                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"minimal milter exited: {self.errlog.read_text()}")
            if (transport == "unix" and self.path.exists()) or (
                    transport == "inet" and infra._tcp_listening("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise BenchError("minimal milter did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self, sent: int, mark: int) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"minimal milter died: {self.errlog.read_text()}")
        text = self.errlog.read_text(errors="replace")
        if "Traceback" in text or "ERROR" in text:
            raise BenchError(f"minimal milter reported errors:\n{text[-3000:]}")

    def log_mark(self) -> int:
        return 0

    def close(self) -> None:
        infra._terminate(self.proc)


class Listgate:
    """The real listgate daemon, SQLite backend, one list with one member."""

    def __init__(self, transport: str, dns: infra.DnsServer) -> None:
        self.transport = transport
        self.d = ListgateDaemon(transport=transport, nameservers=dns.nameservers,
                                config=LISTGATE_CONFIG)
        self.d.cli("lists", "create", LIST)
        self.d.cli("members", "add", LIST, MEMBER)
        self.d.start()
        self.postfix_milter = self.d.postfix_milter

    @property
    def pid(self) -> int:
        return self.d.proc.pid

    def log_mark(self) -> int:
        return self.d.log_size()

    def check(self, sent: int, mark: int) -> None:
        """The daemon's log for one point: one ACCEPT per message, no errors."""
        if self.d.proc.poll() is not None:
            raise BenchError(f"listgate died: {self.d.log_text()[-3000:]}")
        # the last ACCEPT line may be written just after Postfix got the answer
        deadline = time.monotonic() + 10
        while True:
            text = self.d.log_text(mark)
            accepts = len(re.findall(rf"ACCEPT: list={re.escape(LIST)} verdict=accept", text))
            if accepts >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        bad = [ln for ln in text.splitlines() if "ERROR" in ln or "Traceback" in ln]
        stderr = self.d.stderr_path.read_text(errors="replace")
        if bad or "Traceback" in stderr:
            raise BenchError("listgate logged errors:\n" + "\n".join(bad[:20]) + stderr[-2000:])
        if accepts != sent:
            raise BenchError(f"listgate logged {accepts} ACCEPT lines for {sent} messages:\n"
                             f"{text[-3000:]}")
        checked = len(re.findall(r" class=EXTERNAL\S* helo=<mail\.bench\.test> "
                                 r"from=<bounce@bench\.test> spf=pass$", text, re.M))
        if checked < sent:
            raise BenchError(f"expected {sent} verdicts for EXTERNAL clients with SPF pass, "
                             f"the log has {checked}:\n{text[-3000:]}")

    def close(self) -> None:
        self.d.close()


# --------------------------------------------------------------------------- runner


class Config:
    def __init__(self, name: str, milter, postfix: infra.PostfixInstance) -> None:
        self.name = name
        self.milter = milter
        self.postfix = postfix


def run_point(cfg: Config, sink: Sink, msgfile: Path, sessions: int, count: int) -> dict:
    """One smtp-source run; returns seconds, msgs/s and the milter's CPU per message."""
    sink.clear()
    mark = cfg.milter.log_mark() if cfg.milter else 0
    cpu0 = cpu_seconds(cfg.milter.pid) if cfg.milter else 0.0
    argv = [infra.find_tool("smtp-source"), "-s", str(sessions), "-m", str(count),
            "-F", str(msgfile), "-M", HELO, "-f", ENVELOPE_FROM, "-t", LIST,
            f"127.0.0.1:{cfg.postfix.port}"]
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    cpu = (cpu_seconds(cfg.milter.pid) - cpu0) if cfg.milter else 0.0
    if res.returncode != 0 or res.stderr.strip() or res.stdout.strip():
        raise BenchError(f"{cfg.name}: smtp-source exit {res.returncode}: "
                         f"{res.stdout[-2000:]}{res.stderr[-2000:]}\n"
                         f"postfix log:\n{cfg.postfix.log_text()[-3000:]}")
    got = sink.wait_for(count, timeout=120)
    if got != count:
        raise BenchError(f"{cfg.name}: the sink got {got} of {count} messages\n"
                         f"queue: {cfg.postfix.queue_listing()[-2000:]}\n"
                         f"postfix log:\n{cfg.postfix.log_text()[-3000:]}")
    if cfg.milter:
        cfg.milter.check(count, mark)
    return {"seconds": round(seconds, 4), "msgs_per_s": round(count / seconds, 2),
            "milter_cpu_ms_per_msg": round(1000 * cpu / count, 3) if cfg.milter else None}


def parse_counts(text: str) -> dict[int, int]:
    out = {}
    for part in text.split(","):
        s, _, n = part.partition(":")
        out[int(s)] = int(n)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions per point (median)")
    ap.add_argument("--counts", default="1:300,10:1000,50:1000",
                    help="SESSIONS:MESSAGES,... per point (default %(default)s)")
    ap.add_argument("--sessions", default="", help="only these session counts, e.g. 10,50")
    ap.add_argument("--configs", default="",
                    help="only these configs (comma separated; no-milter always runs)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py must run as root (it starts a private Postfix)", file=sys.stderr)
        return 2
    counts = parse_counts(args.counts)
    if args.sessions:
        counts = {s: counts.get(s, 1000) for s in map(int, args.sessions.split(","))}
    wanted = ["no-milter", "minimal-pymilter/unix", "minimal-pymilter/inet",
              "listgate-sqlite/unix", "listgate-sqlite/inet"]
    if args.configs:
        keep = set(args.configs.split(",")) | {"no-milter"}
        wanted = [c for c in wanted if c in keep]

    started = time.monotonic()
    infra.E2E_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=infra.E2E_ROOT))
    os.chmod(workdir, 0o755)
    msgfile = workdir / "message.eml"
    make_message(msgfile)
    # real SPF records live for minutes to hours; listgate's resolver caches them
    dns = infra.DnsServer(txt={"bench.test": SPF, HELO: SPF}, ttl=300).start()
    sink = Sink()
    configs: list[Config] = []
    milters: list = []
    try:
        # Postfix must not make the client wait for anything but the milter
        pf_extra = {"default_process_limit": "200",
                    "smtpd_client_connection_count_limit": "0",
                    "smtpd_client_message_rate_limit": "0",
                    "smtpd_client_recipient_rate_limit": "0",
                    "smtp_destination_concurrency_limit": "20"}
        for name in wanted:
            milter = None
            if name.startswith("minimal-pymilter/"):
                milter = MinimalMilter(name.split("/")[1], workdir)
            elif name.startswith("listgate-sqlite/"):
                milter = Listgate(name.split("/")[1], dns)
            if milter:
                milters.append(milter)
            pf = infra.PostfixInstance(["lists.test"], sink.sink.port,
                                       milters=milter.postfix_milter if milter else None,
                                       extra=pf_extra).start()
            configs.append(Config(name, milter, pf))
        log(f"machine: {machine()}")
        log(f"configs: {', '.join(c.name for c in configs)}; points: "
            + ", ".join(f"{s} sessions x {n} msgs" for s, n in counts.items())
            + f"; {args.reps} reps")
        # warm-up: Postfix's smtpd processes, the milters, listgate's caches (SPF, lists)
        for cfg in configs:
            run_point(cfg, sink, msgfile, 10, 100)
        log("warm-up done (100 messages per config, checked)")

        results: dict[str, dict[int, list[dict]]] = {c.name: {s: [] for s in counts}
                                                    for c in configs}
        for rep in range(args.reps):
            for sessions, count in counts.items():
                for cfg in configs:
                    r = run_point(cfg, sink, msgfile, sessions, count)
                    results[cfg.name][sessions].append(r)
                    cpu = r["milter_cpu_ms_per_msg"]
                    log(f"rep {rep + 1} {cfg.name:<22} s={sessions:<3} {count} msgs "
                        f"{r['seconds']:7.2f}s {r['msgs_per_s']:8.1f} msg/s"
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
        sink.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started

    # ---- report
    runs: dict[str, dict[str, dict]] = {}
    details: dict[str, dict[str, dict]] = {}
    for name, per in results.items():
        for sessions, reps in per.items():
            med = statistics.median(r["msgs_per_s"] for r in reps)
            cpus = [r["milter_cpu_ms_per_msg"] for r in reps if r["milter_cpu_ms_per_msg"]]
            runs.setdefault(name, {})[str(sessions)] = {"msgs_per_s": round(med, 1),
                                                        "p99_ms": None}
            details.setdefault(name, {})[str(sessions)] = {
                "messages": counts[sessions], "reps": reps,
                "milter_cpu_ms_per_msg_median": statistics.median(cpus) if cpus else None}
    out = {
        "runs": runs,
        "scale": {},
        "machine": machine(),
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    extra = {
        "per_point": details,
        "mix": "100% list posts by a member (From: member, To: list), one message per "
               "SMTP session, 2048-byte message sent with smtp-source -F",
        "p99_ms": "not measured: smtp-source reports no per-message latency",
        "not_measured": NOT_MEASURED,
        "listgate_tcp_nodelay_logged": nodelay,
        "reps": args.reps,
        "total_seconds": round(elapsed, 1),
        "command": "make bench (.venv/bin/python bench/run.py)",
    }
    Path(args.out).with_suffix(".details.json").write_text(json.dumps(extra, indent=2) + "\n")

    sess = list(counts)
    base = runs["no-milter"]
    print()
    print(f"msgs/s (median of {args.reps}) and ratio to no-milter of this run; "
          "mix: 100% member list posts, 2 KB, 1 message per session")
    header = f"{'config':<24}" + "".join(f"{f'{s} sess':>20}" for s in sess)
    print(header)
    print("-" * len(header))
    for name in runs:
        cells = []
        for s in sess:
            v = runs[name][str(s)]["msgs_per_s"]
            ratio = v / base[str(s)]["msgs_per_s"]
            cells.append(f"{v:>10.1f} ({ratio:4.2f}x)")
        print(f"{name:<24}" + "".join(f"{c:>20}" for c in cells))
    for name in NOT_MEASURED:
        print(f"{name:<24}{'not measured':>20}")
    print("p99_ms: not measured (smtp-source gives no per-message latency)")
    cpu_line = ", ".join(
        f"{n} {details[n][str(s)]['milter_cpu_ms_per_msg_median']:.2f}"
        for n in runs if n != "no-milter" for s in sess[-1:])
    print(f"milter CPU ms/msg at {sess[-1]} sessions: {cpu_line}")
    print(f"listgate logged TCP_NODELAY: {nodelay}")
    print(f"total run time {elapsed:.0f} s; results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
