"""A lean SMTP load client for the benchmark's part 1 (one thread, asyncio).

Why not only ``smtp-source``: it exits on the first rejected message ("fatal: end of
data rejected"), so it cannot send the nonmember posts listgate must refuse, and it
reports no per-message latency.  This client sends each message in a session of its
own (as smtp-source does by default: the milter sees connect, HELO, MAIL, RCPT,
headers and end of message every time), without PIPELINING, and records for every
message the time from connecting to the server's reply to the end of DATA -- what a
sending MTA waits for -- and that reply's code.

Its own CPU cost is measured (``client_cpu_ms_per_msg``) and shared by every
configuration of a run, so the ratios between configurations stay comparable.
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    """One message: its kind (for the expected answer), envelope and bytes (CRLF, dot-stuffed)."""

    kind: str
    sender: str
    rcpt: str
    data: bytes


@dataclass
class Result:
    kind: str
    code: int  #: the reply to the end of DATA, or the first non-2xx/3xx reply before it
    stage: str  #: where that reply came: "data" (end of DATA) or the command refused
    text: str
    seconds: float  #: connect -> that reply


class SmtpError(RuntimeError):
    """The conversation broke (not a refusal: a refusal is a Result)."""


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpError("connection closed by the server")
        lines.append(line.decode("ascii", "replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            break
    return int(lines[-1][:3]), "\n".join(lines)


async def one_message(host: str, port: int, helo: str, job: Job) -> Result:
    """Connect, EHLO, MAIL, RCPT, DATA, message, QUIT; the answer that decided it."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        code, text = await _reply(reader)
        if code != 220:
            return Result(job.kind, code, "banner", text, time.perf_counter() - t0)
        for stage, command, ok in (("ehlo", f"EHLO {helo}", 250),
                                   ("mail", f"MAIL FROM:<{job.sender}>", 250),
                                   ("rcpt", f"RCPT TO:<{job.rcpt}>", 250),
                                   ("data", "DATA", 354)):
            writer.write(command.encode() + b"\r\n")
            code, text = await _reply(reader)
            if code != ok:
                return Result(job.kind, code, stage, text, time.perf_counter() - t0)
        writer.write(job.data + b".\r\n")
        code, text = await _reply(reader)
        seconds = time.perf_counter() - t0
        writer.write(b"QUIT\r\n")
        await _reply(reader)
        return Result(job.kind, code, "data", text, seconds)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def _run(host: str, port: int, helo: str, jobs: list[Job],
               concurrency: int) -> list[Result]:
    it: Iterator[Job] = iter(jobs)
    results: list[Result] = []

    async def worker() -> None:
        for job in it:
            results.append(await one_message(host, port, helo, job))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def run(port: int, jobs: list[Job], concurrency: int, helo: str,
        host: str = "127.0.0.1") -> dict:
    """Send *jobs* over *concurrency* simultaneous sessions; wall time, the client's
    CPU, and every message's :class:`Result` (in completion order)."""
    cpu0 = _cpu()
    t0 = time.perf_counter()
    results = asyncio.run(_run(host, port, helo, jobs, concurrency))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "results": results,
            "client_cpu_ms_per_msg": 1000 * (_cpu() - cpu0) / max(1, len(jobs))}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def message(headers: list[tuple[str, str]], size: int) -> bytes:
    """A message of exactly *size* bytes (CRLF lines), ready to send after DATA."""
    head = "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    line = "The quick brown fox jumps over the lazy dog, benchmark body line.\r\n"
    body = ""
    while len(head) + len(body) + len(line) <= size:
        body += line
    body += "x" * (size - len(head) - len(body) - 2) + "\r\n"
    data = (head + body).encode()
    assert len(data) == size, len(data)
    return data


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of *values*, or None if there are none."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]
