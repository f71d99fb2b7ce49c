"""Benchmark of listgate.passwords: the Approved: password check, alone and under a flood.

Speed is measured here, never by the unit tests.  Two parts, in one process, with
whatever passlib backend is installed (libpass: builtin; passlib 1.7.4 on Python 3.11,
as Debian 12 ships it: os_crypt)::

    PYTHONPATH=. .venv/bin/python bench/passwords.py            # a table
    PYTHONPATH=. .venv/bin/python bench/passwords.py --json     # JSON on stdout, table on stderr
    PYTHONPATH=. /var/tmp/listgate-mailman3/venv/bin/python bench/passwords.py   # passlib 1.7.4

**speed**: ``--n`` verifications of a sha512_crypt hash at 656000 rounds (what Mailman
3 makes) through :func:`verify_mailman3`: wall and CPU seconds per check, checks per
second; then how much a busy bystander thread gets done while hashes run in another
thread, against alone (``gil_share``: os_crypt holds the GIL through crypt(3)).

**flood**: one shared :class:`PasswordChecker` (``[approved]`` defaults unless told
otherwise); ``--threads`` flood threads each present a new wrong password every
``--interval`` seconds for ``--seconds``, while a moderator thread presents the right
one every second and a bystander thread stands for the milter's other connections.
Reported: flood checks computed vs answered busy, CPU (in cores) spent hashing and by
the whole process but the bystander, the bystander's progress against alone, and the
moderator's answers (ok or busy; a "wrong" fails the run) and latencies.  Scenario
``remembered``: the moderator's password was checked once before the flood began, and
is remembered (the daemon's normal case within ``cache_ttl`` of a moderator's post).
Scenario ``uncached`` (``cache_ttl = 0``): every moderator check must win a hash
against the flood -- the worst case for a moderator whose password was not seen yet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from typing import Any

import passlib
import passlib.hash

from listgate.passwords import PasswordChecker, verify_mailman3

MOD_PW = "the moderators' password"


def _spin(stop: threading.Event, out: list[float]) -> None:
    """The bystander: small units of pure-Python work, counted; then its own CPU."""
    n, cpu = 0, time.thread_time()
    while not stop.is_set():
        sum(range(200))
        n += 1
    out.extend((n, time.thread_time() - cpu))


def bystander_rate(seconds: float) -> float:
    """Units per second of the bystander, running alone."""
    stop, out = threading.Event(), list[float]()
    t = threading.Thread(target=_spin, args=(stop, out))
    t.start()
    time.sleep(seconds)
    stop.set()
    t.join()
    return out[0] / seconds


def part_speed(n: int, rounds: int) -> dict[str, Any]:
    stored = passlib.hash.sha512_crypt.using(rounds=rounds).hash(MOD_PW)
    verify_mailman3("warm-up", stored)
    walls, cpus = [], []
    for i in range(n):
        w, c = time.perf_counter(), time.process_time()
        assert verify_mailman3(f"guess {i}", stored) is False
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    assert verify_mailman3(MOD_PW, stored) is True
    # the bystander next to a thread that hashes without pause, against alone
    alone = bystander_rate(2.0)
    stop = threading.Event()

    def hasher() -> None:
        while not stop.is_set():
            verify_mailman3("guess", stored)

    h = threading.Thread(target=hasher)
    h.start()
    time.sleep(0.1)
    beside = bystander_rate(2.0)
    stop.set()
    h.join()
    return {
        "scheme": "sha512_crypt", "rounds": rounds, "n": n,
        "wall_s_per_check": statistics.median(walls),
        "cpu_s_per_check": statistics.median(cpus),
        "checks_per_s": 1.0 / statistics.median(walls),
        "gil_share": beside / alone,
    }


def part_flood(args: argparse.Namespace, cache_ttl: float) -> dict[str, Any]:
    stored = passlib.hash.sha512_crypt.using(rounds=args.rounds).hash(MOD_PW)
    checker = PasswordChecker(max_concurrent=args.max_concurrent,
                              max_per_second=args.max_per_second, burst=args.burst,
                              wait=args.wait, cache_ttl=cache_ttl)
    if cache_ttl > 0:  # the moderator posted before the flood began: remembered
        assert checker.check(MOD_PW, stored).ok
    alone = bystander_rate(2.0)
    flood: list[str] = []
    mod: list[tuple[str, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def flooder(k: int) -> None:
        i = 0
        mine = []
        while not stop.is_set():
            mine.append(checker.check(f"guess {k}-{i}", stored).status.value)
            i += 1
            stop.wait(args.interval)
        with lock:
            flood.extend(mine)

    def moderator() -> None:
        tick = time.monotonic()
        while not stop.is_set():
            t0 = time.monotonic()
            r = checker.check(MOD_PW, stored)
            mod.append((r.status.value, time.monotonic() - t0))
            tick += 1.0
            stop.wait(max(0.0, tick - time.monotonic()))

    by_stop, by_out = threading.Event(), list[float]()
    threads = [threading.Thread(target=flooder, args=(k,)) for k in range(args.threads)]
    threads.append(threading.Thread(target=moderator))
    bystander = threading.Thread(target=_spin, args=(by_stop, by_out))
    cpu0, wall0 = time.process_time(), time.monotonic()
    bystander.start()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    by_stop.set()
    bystander.join()
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    c = checker.counters()
    lat = sorted(d for _, d in mod)
    statuses = [s for s, _ in mod]
    if "wrong" in statuses or "unknown" in statuses:
        raise SystemExit(f"the moderator's right password was answered {set(statuses)}")
    return {
        "cache_ttl": cache_ttl, "threads": args.threads, "interval_s": args.interval,
        "seconds": round(wall, 2),
        "flood_checks": len(flood),
        # every guess is new, so each "wrong" is a hash computed
        "flood_computed": flood.count("wrong"),
        "flood_busy": flood.count("busy"),
        "hashes_computed": int(c["computed"]),
        "hashes_per_s": c["computed"] / wall,
        "busy_rate": int(c["busy_rate"]), "busy_wait": int(c["busy_wait"]),
        "busy_joined": int(c["busy_joined"]),
        "hash_cpu_cores": c["cpu_seconds"] / wall,
        # the process's CPU but the bystander's own (it spins, a whole core by itself)
        "daemon_cpu_cores": (cpu - by_out[1]) / wall,
        "bystander_progress": (by_out[0] / wall) / alone,
        "moderator_checks": len(mod), "moderator_ok": statuses.count("ok"),
        "moderator_busy": statuses.count("busy"),
        "moderator_wrong": statuses.count("wrong"),
        "moderator_latency_p50_s": statistics.median(lat) if lat else None,
        "moderator_latency_max_s": lat[-1] if lat else None,
        "stats": checker.stats(),
    }


def table(res: dict[str, Any]) -> str:
    s = res["speed"]
    out = [f"{res['python']} passlib {res['passlib']} backend {res['backend']} "
           f"({res['machine']})",
           f"speed: sha512_crypt {s['rounds']} rounds: {s['checks_per_s']:.2f} checks/s, "
           f"wall {s['wall_s_per_check'] * 1000:.0f} ms, CPU {s['cpu_s_per_check'] * 1000:.0f}"
           f" ms per check (median of {s['n']}); a bystander thread gets "
           f"{s['gil_share']:.0%} of its work done beside a hashing thread",
           f"flood: {res['args']['threads']} threads x 1 new wrong password / "
           f"{res['args']['interval']} s, moderator every 1 s; max_concurrent "
           f"{res['args']['max_concurrent']}, max_per_second {res['args']['max_per_second']}, "
           f"burst {res['args']['burst']}, wait {res['args']['wait']} s",
           f"{'scenario':<11}{'flood':>7}{'computed':>9}{'busy':>7}{'hash/s':>8}"
           f"{'hashCPU':>8}{'CPU':>6}{'bystand':>8}{'mod ok':>7}{'busy':>5}{'wrong':>6}"
           f"{'p50 ms':>8}{'max ms':>8}"]
    for name, f in res["flood"].items():
        out.append(f"{name:<11}{f['flood_checks']:>7}{f['flood_computed']:>9}"
                   f"{f['flood_busy']:>7}{f['hashes_per_s']:>8.2f}"
                   f"{f['hash_cpu_cores']:>8.2f}{f['daemon_cpu_cores']:>6.2f}{f['bystander_progress']:>8.0%}"
                   f"{f['moderator_ok']:>7}{f['moderator_busy']:>5}{f['moderator_wrong']:>6}"
                   f"{f['moderator_latency_p50_s'] * 1000:>8.1f}"
                   f"{f['moderator_latency_max_s'] * 1000:>8.0f}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    ap.add_argument("--n", type=int, default=10, help="verifications timed (speed)")
    ap.add_argument("--rounds", type=int, default=656000)
    ap.add_argument("--threads", type=int, default=20, help="flood threads")
    ap.add_argument("--interval", type=float, default=0.05,
                    help="seconds between one flood thread's guesses")
    ap.add_argument("--seconds", type=float, default=20.0, help="per flood scenario")
    ap.add_argument("--max-concurrent", type=int, default=1)
    ap.add_argument("--max-per-second", type=float, default=1.0)
    ap.add_argument("--burst", type=int, default=4)
    ap.add_argument("--wait", type=float, default=2.0)
    args = ap.parse_args(argv)
    backend = passlib.hash.sha512_crypt.get_backend()
    res: dict[str, Any] = {
        "python": platform.python_version(), "passlib": passlib.__version__,
        "backend": backend, "machine": f"{platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} CPUs",
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "speed": part_speed(args.n, args.rounds),
        "flood": {"remembered": part_flood(args, 3600.0),
                  "uncached": part_flood(args, 0.0)},
    }
    text = table(res)
    if args.json:
        print(text, file=sys.stderr)
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
