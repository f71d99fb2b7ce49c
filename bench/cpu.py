"""CPU per verdict, by kind of post, robust on a shared and noisy machine.

Run alone (as root: dnsmasq)::

    .venv/bin/python bench/cpu.py                     # instructions (callgrind) + CPU ms
    .venv/bin/python bench/cpu.py --tool time -n 2000 # CPU ms only (/proc), faster
    .venv/bin/python bench/cpu.py --tool cprofile --milters listgate --kinds member

Why: ``bench/run.py``'s CPU per message is utime+stime, which on a machine shared
with other work moves by 20% and more from run to run (cache and scheduler
contention).  Instruction counts do not: each milter runs under ``valgrind
--tool=callgrind`` with instrumentation off until its warm-up is done, then on for
``-n`` messages of one kind at a time, one message per milter connection (what
Postfix does with one message per SMTP session) and one connection at a time;
instructions per verdict are the dump's total over ``-n``.  (No hardware counters on
this VM: ``perf stat -e instructions`` says "not supported".)

The posts are those of ``bench/run.py`` part 1, as Postfix hands them to a milter:
an EXTERNAL client (192.0.2.10, SPF pass from dnsmasq with 300 s TTLs), the same
senders again and again (``member``: m1@members.test to the 1e4-member SQLite list,
so warm facts; ``nonmember``: one stranger, refused 550 at end of message;
``nolist``: mail to a non-list address), Postfix's Received header on top.  listgate
runs as its worker does (``listgate.daemon.Worker``, default config but the
internal network and the DNS server, log_level info); beside it
``bench/minimal_milter.py`` and ``bench/callbacks_milter.py`` (listgate's callbacks
doing nothing), so that listgate - callbacks is listgate's own work and callbacks -
minimal what the extra callbacks cost in pymilter and libmilter.

``--tool cprofile``: listgate's callbacks under one cProfile (enabled only inside
them), top functions by own time printed per kind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "tests" / "e2e", ROOT / "bench", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

KINDS = ("member", "nonmember", "nolist")
MILTERS = ("listgate", "callbacks", "minimal")
LIST = "list@lists.test"
HELO = "mail.bench.test"
CLIENT_IP = "192.0.2.10"
SPF = "v=spf1 ip4:192.0.2.0/24 -all"
DNS_TXT = {"members.test": SPF, "strangers.test": SPF, "other.test": SPF, HELO: SPF}
ENVELOPES = {"member": ("m1@members.test", LIST),
             "nonmember": ("stranger@strangers.test", LIST),
             "nolist": ("u1@other.test", "someone@elsewhere.test")}
REJECT = f"550 5.7.2 You are not permitted to post to {LIST}."


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- serve


def serve(cfg_path: str, listen: str, profile_out: str | None) -> int:
    """listgate's worker in this process (what ``listgate serve`` execs), optionally
    with its callbacks under cProfile.  Stops on SIGTERM."""
    from listgate.config import load
    from listgate.daemon import Worker
    from listgate.milter import ListgateMilter

    prof = None
    if profile_out:
        import cProfile
        import functools
        import threading

        prof = cProfile.Profile()
        depth = threading.local()  # per pymilter thread state: on in the outermost call

        def profiled(func: Any) -> Any:
            @functools.wraps(func)
            def wrapper(*a: Any) -> Any:
                outer = not getattr(depth, "n", 0)
                depth.n = getattr(depth, "n", 0) + 1
                if outer:
                    prof.enable()
                try:
                    return func(*a)
                finally:
                    depth.n -= 1
                    if outer:
                        prof.disable()
            return wrapper

        # every method pymilter's glue (listgate.milter.run_milter) calls
        for name in ("negotiate", "__init__", "connect", "data", "hello", "envfrom",
                     "envfrom_bytes", "envrcpt", "envrcpt_bytes", "header_bytes", "eoh",
                     "body", "eom", "abort", "close"):
            if hasattr(ListgateMilter, name):
                setattr(ListgateMilter, name, profiled(getattr(ListgateMilter, name)))
    # the rescuer (daemon.Rescuer) connects to the socket while a callback has run for
    # over 50 ms, which under valgrind, on a loaded machine, one may: its connections
    # would be counted as the verdicts' work, by how slow the machine was
    from listgate.daemon import Rescuer

    Rescuer.after = 3600.0
    r, w = os.pipe()
    cfg = load(cfg_path)
    code = Worker(cfg, r, None, listen).run()
    if prof is not None:
        prof.dump_stats(profile_out)
    os.close(w)
    return code


# --------------------------------------------------------------------------- measure


def message(kind: str, n: int) -> Any:
    from milterclient import Message

    sender, rcpt = ENVELOPES[kind]
    qid = f"C{n:010X}"
    headers = [
        ("Received", f"from {HELO} (unknown [{CLIENT_IP}])\n\tby mx.bench.test (Postfix) "
                     f"with ESMTP id {qid}\n\tfor <{rcpt}>; Mon,  1 Jan 2024 00:00:00 +0000 (UTC)"),
        ("From", f"Sender <{sender}>"), ("To", rcpt), ("Subject", "benchmark post"),
        ("Date", "Mon, 1 Jan 2024 00:00:00 +0000"), ("Message-ID", f"<{qid}@bench.test>"),
        ("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=us-ascii")]
    return Message(sender, rcpt, headers, body=b"Hello list.\r\n" * 150, queue_id=qid)


def expected(milter: str, kind: str, reply: Any) -> bool:
    if milter == "listgate" and kind == "nonmember":
        return reply.stage == "eom" and reply.text.startswith(REJECT)
    names = {h for h, _ in reply.headers}
    want = {"listgate": "Received-SPF", "callbacks": "Received-SPF",
            "minimal": "X-Bench-Minimal"}[milter]
    return reply.stage == "eom" and reply.smtp == "accept" and want in names


_counter = iter(range(1, 10**9))


def drive(address: str, milter: str, kind: str, n: int) -> None:
    """*n* posts of *kind*, one per milter connection, one connection at a time."""
    from milterclient import Conversation

    timings: dict[str, list[float]] = {s: [] for s in ("connect", "mail", "rcpt", "eom")}
    for _ in range(n):
        conv = Conversation(address, timings, client_ip=CLIENT_IP, helo=HELO)
        r = conv.send(message(kind, next(_counter)))
        conv.close()
        if not expected(milter, kind, r):
            raise RuntimeError(f"{milter} {kind}: unexpected answer {r}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_socket(path: str, proc: subprocess.Popen, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the milter exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            return
        time.sleep(0.05)
    raise RuntimeError(f"no socket {path} after {timeout}s")


def callgrind_total(out: str) -> int:
    """The instruction total of a callgrind dump."""
    text = Path(out).read_text(errors="replace")
    m = re.search(r"^totals:\s+(\d+)", text, re.M)
    if not m:
        raise RuntimeError(f"no total in {out}")
    return int(m.group(1))


def run_milter(milter: str, tool: str, kinds: list[str], n: int, warmup: int,
               workdir: Path, cfg_path: Path) -> dict[str, dict[str, float]]:
    sock = workdir / f"{milter}.sock"
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    address = f"unix:{sock}"
    if milter == "listgate":
        argv = [sys.executable, __file__, "serve", str(cfg_path), address]
        if tool == "cprofile":
            argv += ["--profile", str(workdir / "listgate.prof")]
    else:
        argv = [sys.executable, str(ROOT / "bench" / f"{milter}_milter.py"), address]
    cg_out = workdir / f"{milter}.callgrind"
    if tool == "callgrind":
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={cg_out}", *argv]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(workdir / f"{milter}.stderr", "ab"))
    out: dict[str, dict[str, float]] = {}
    try:
        wait_socket(str(sock), proc, 300 if tool == "callgrind" else 60)
        for kind in kinds:
            drive(address, milter, kind, warmup)
            if tool == "callgrind":
                subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                               capture_output=True)
                subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                               capture_output=True)
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            drive(address, milter, kind, n)
            cpu, wall = cpu_seconds(proc.pid) - cpu0, time.perf_counter() - t0
            res = {"cpu_ms": round(1000 * cpu / n, 3), "wall_ms": round(1000 * wall / n, 3)}
            if tool == "callgrind":
                subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                               capture_output=True)
                for old in workdir.glob(f"{milter}.callgrind.*"):
                    old.unlink()
                subprocess.run(["callgrind_control", "-d", kind, str(proc.pid)], check=True,
                               capture_output=True)
                dumps = sorted(workdir.glob(f"{milter}.callgrind.*"))
                res["kinstr"] = round(sum(callgrind_total(str(d)) for d in dumps) / n / 1000, 1)
                for d in dumps:  # kept for callgrind_annotate
                    d.rename(workdir / f"{milter}-{kind}.callgrind")
            out[kind] = res
            log(f"{milter:<10} {kind:<10} {res}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60 if tool == "callgrind" else 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if tool == "cprofile":
        import pstats

        st = pstats.Stats(str(workdir / "listgate.prof"), stream=sys.stderr)
        st.sort_stats("tottime").print_stats(70)
        st.sort_stats("cumulative").print_stats(110)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        ap = argparse.ArgumentParser(prog="cpu.py serve")
        ap.add_argument("config")
        ap.add_argument("listen")
        ap.add_argument("--profile")
        a = ap.parse_args(argv[1:])
        return serve(a.config, a.listen, a.profile)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tool", choices=("callgrind", "time", "cprofile"), default="callgrind")
    ap.add_argument("-n", type=int, default=0, help="posts per kind (default 100 under "
                    "callgrind, 1000 otherwise)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--milters", default=",".join(MILTERS))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="change listgate's config (repeatable), e.g. milter.log_level=warning")
    ap.add_argument("--keep", action="store_true", help="keep the work directory "
                    "(callgrind dumps, logs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    n = args.n or (100 if args.tool == "callgrind" else 1000)
    import infra
    import protocol

    infra.E2E_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-cpu-", dir=infra.E2E_ROOT))
    os.chmod(workdir, 0o755)
    db, _ = protocol.sqlite_db(10000)
    results: dict[str, Any] = {"tool": args.tool, "posts_per_kind": n,
                               "load_before": os.getloadavg()[0]}
    with infra.DnsServer(txt=DNS_TXT, ttl=300) as dns:
        from lgdaemon import merge_ini

        cfg = workdir / "listgate.cfg"
        extra = ""
        for item in args.set:
            key, _, value = item.partition("=")
            section, _, option = key.partition(".")
            extra += f"[{section}]\n{option} = {value}\n"
        cfg.write_text(merge_ini(
            f"[milter]\nlog_file = {workdir / 'listgate.log'}\numask = 000\n"
            "log_level = info\nauthserv_id = mx.listgate.test\n"
            "[network]\ninternal_connect = 127.0.0.254/32\n"
            f"[sqlite]\npath = {db}\n[dns]\nnameservers = {dns.nameservers}\ntimeout = 2\n",
            extra))
        results["config"] = cfg.read_text()
        for milter in args.milters.split(","):
            results[milter] = run_milter(milter, args.tool, args.kinds.split(","), n,
                                         args.warmup, workdir, cfg)
    results["load_after"] = os.getloadavg()[0]
    if args.keep:
        log(f"kept {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        keys = [k for k in ("kinstr", "cpu_ms") if any(
            k in r for m in args.milters.split(",") for r in results[m].values())]
        print(f"{'milter':<11}{'kind':<11}" + "".join(f"{k:>10}" for k in keys))
        for m in args.milters.split(","):
            for kind, r in results[m].items():
                print(f"{m:<11}{kind:<11}" + "".join(f"{r.get(k, ''):>10}" for k in keys))
        print(f"load average {results['load_before']:.1f} -> {results['load_after']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
