"""Prometheus metrics (``[metrics] listen``), off by default and free when off.

Nothing here is imported unless ``[metrics] listen`` is set: the daemon's one hook
is ``if cfg.metrics.listen: metrics.start(...)``, so the hot path pays nothing at all
when metrics are off.  When on, the counters come from where the facts already are:

- **verdicts** and **SPF results**: a filter on the ``listgate`` logger reads
  each record with :mod:`listgate.logparse` -- the same reading ``listgate report``
  does, so the two always agree, and the engine needs no second set of hooks.  A
  logger filter (not a handler) survives the daemon replacing its log handler.
- **backend latency**: the lookups' backend is wrapped in a timer; only cache misses
  reach it, which is exactly the latency that matters.
- **cache hits and misses**: read from the caches' own counters at scrape time.

Label cardinality is bounded: ``outcome`` (5 values) x ``reason`` (the short reason
names of :func:`listgate.logparse.normalize_reason` and the list rules: about 30,
with ``other`` for anything new), SPF ``result`` x ``identity`` (7 x 2).  The
optional ``list`` label (``[metrics] list_label = yes``) multiplies the verdict
series by the number of lists that saw traffic; lists come from the backend, never
from what a client typed, so a client cannot make new series.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from listgate import __version__
from listgate.config import Config, ConfigError
from listgate.engine import Engine
from listgate.logparse import parse_message, verdict

#: seconds; backend lookups are milliseconds (SQLite) to seconds (Mailman's REST API)
#: what a line must contain to be worth parsing (verdicts, internal errors); the SPF
#: result is read from the verdict line, whose suffix carries it
_INTERESTING = re.compile(r"ACCEPT: |REJECT: |TEMPFAIL: |DEFER: |OBSERVE: would |internal error")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError("[metrics] listen is set but prometheus_client is not installed: "
                          "pip install 'listgate[metrics]' (or Debian's "
                          "python3-prometheus-client)") from None
    return prometheus_client


class Metrics:
    """The metric objects, in a registry of their own (not the process-global one)."""

    def __init__(self, list_label: bool = False) -> None:
        pc = _import_prometheus()
        from prometheus_client.core import CounterMetricFamily

        self._family = CounterMetricFamily
        self.registry = pc.CollectorRegistry()
        self.list_label = list_label
        labels = ["outcome", "reason", *(["list"] if list_label else [])]
        self.verdicts = pc.Counter(
            "listgate_verdicts", "Answers given (outcome: accepted, rejected, tempfailed, "
            "deferred, observed = refusal logged in observe mode) by short reason",
            labels, registry=self.registry)
        self.spf = pc.Counter("listgate_spf_results", "SPF results (temperror = DNS trouble)",
                              ["result", "identity"], registry=self.registry)
        self.backend_seconds = pc.Histogram(
            "listgate_backend_seconds", "Backend lookups (cache misses) by operation and outcome",
            ["op", "outcome"], buckets=LATENCY_BUCKETS, registry=self.registry)
        info = pc.Info("listgate", "listgate build and configuration", registry=self.registry)
        info.info({"version": __version__})
        pc.ProcessCollector(registry=self.registry)
        self.engine: Engine | None = None
        #: list names the backend returned (see TimedBackend): the only list labels
        self.known_lists: set[str] = set()
        self.registry.register(self)  # the cache counters, read at scrape time

    # -- a custom collector: cache counters --------------------------------------------

    def describe(self) -> list[Any]:
        return []  # no fixed description: collect() only runs at scrape time

    def collect(self) -> Iterator[Any]:
        if self.engine is None:
            return
        hits = self._family("listgate_cache_hits", "Cache hits", labels=["cache"])
        misses = self._family("listgate_cache_misses", "Cache misses", labels=["cache"])
        lookups = self.engine.lookups
        caches = [("list", lookups.lists), ("facts", lookups.facts)]
        own = getattr(unwrap(lookups.backend), "_cache", None)
        if own is not None:  # the Mailman 3 backend caches its REST answers itself
            caches.append(("backend", own))
        for name, cache in caches:
            hits.add_metric([name], cache.hits)
            misses.add_metric([name], cache.misses)
        yield hits
        yield misses
        requests = getattr(unwrap(lookups.backend), "requests", None)
        if isinstance(requests, int):
            c = self._family("listgate_backend_requests", "Requests made to the backend "
                             "(Mailman 3 REST)", labels=[])
            c.add_metric([], requests)
            yield c

    # -- fed from the log --------------------------------------------------------------

    def observe_message(self, message: str, created: float, level: str) -> None:
        """Count what one verdict line says: the answer, and the SPF result."""
        if not _INTERESTING.search(message):
            return  # connect, hello, mail from, rcpt to...: most lines, skipped cheaply
        line = parse_message(message, datetime.fromtimestamp(created), level)
        if line.conn is None:
            return
        event = verdict(line)
        if event is None:
            return
        if event.spf and not event.text.startswith("rcpt to <"):
            # the verdict line carries the transaction's SPF result; a recipient's own
            # refusal (DEFER/REJECT/TEMPFAIL: rcpt to...) is not the transaction's end
            self.spf.labels(event.spf, event.spf_identity).inc()
        if self.list_label:
            for name in event.lists or ("",):
                # only names the backend itself returned: a client's text never
                # becomes a label value, whatever it smuggles into a log line
                label = name if name in self.known_lists else ""
                self.verdicts.labels(event.outcome, event.reason, label).inc()
        else:
            self.verdicts.labels(event.outcome, event.reason).inc()


class LogFilter(logging.Filter):
    """Feeds every ``listgate`` log record to :class:`Metrics`; never drops one."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self.metrics.observe_message(record.getMessage(), record.created,
                                         record.levelname)
        except Exception:  # noqa: BLE001 - counting must never cost a log line or a reply
            pass
        return True


class TimedBackend:
    """A backend proxy that times find_list and list_facts into the histogram, and
    notes the list names find_list returns (``known``: bounded by the backend's lists)."""

    def __init__(self, backend: Any, histogram: Any, known: set[str] | None = None) -> None:
        self._backend = backend
        self._histogram = histogram
        self._known = known if known is not None else set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def _timed(self, op: str, func: Any, *args: Any) -> Any:
        start = time.perf_counter()
        outcome = "error"
        try:
            result = func(*args)
            outcome = "ok"
            return result
        finally:
            self._histogram.labels(op, outcome).observe(time.perf_counter() - start)

    def find_list(self, address: str) -> str | None:
        found = self._timed("find_list", self._backend.find_list, address)
        if found is not None:
            self._known.add(found)
        return found

    def list_facts(self, list_address: str, senders: Sequence[str], primary: str = "",
                   max_age: float | None = None) -> Any:
        return self._timed("list_facts", self._backend.list_facts, list_address, senders,
                           primary, max_age)


def unwrap(backend: Any) -> Any:
    """The real backend behind a :class:`TimedBackend`."""
    return backend._backend if isinstance(backend, TimedBackend) else backend


def install(cfg: Config, engine: Engine, log: logging.Logger) -> Metrics:
    """Attach the metrics to ``engine`` and ``log`` (no HTTP server: see :func:`start`)."""
    m = Metrics(list_label=cfg.metrics.list_label)
    log.addFilter(LogFilter(m))
    attach(m, engine, log)
    return m


def attach(m: Metrics, engine: Engine, log: logging.Logger) -> None:
    """Count ``engine``'s backend lookups and caches (again after a SIGHUP reload, which
    builds a new engine), and keep verdict records flowing to the filter."""
    m.engine = engine
    if not isinstance(engine.lookups.backend, TimedBackend):
        engine.lookups.backend = TimedBackend(engine.lookups.backend, m.backend_seconds,
                                              m.known_lists)
    keep_info(log)


def keep_info(log: logging.Logger) -> None:
    """Verdicts are logged at INFO: let them reach the filter even with ``log_level =
    warning``, keeping the log itself at its level by moving that level to the handlers
    (again after every ``setup_logging``, which sets the logger's level)."""
    if log.getEffectiveLevel() > logging.INFO:
        level = log.getEffectiveLevel()
        for h in log.handlers:
            h.setLevel(max(h.level, level))
        log.setLevel(logging.INFO)


def start(cfg: Config, engine: Engine, log: logging.Logger) -> Metrics | None:
    """Serve the metrics on ``[metrics] listen`` from a thread of its own.

    Call it after the daemon has blocked its signals (the server thread inherits the
    mask).  A port that cannot be bound is logged as an error and mail goes on: the
    daemon's job is the mail, not its statistics.
    """
    if cfg.metrics.listen is None:
        return None
    host, port = cfg.metrics.listen
    m = install(cfg, engine, log)
    pc = _import_prometheus()
    try:
        pc.start_http_server(port, addr=host, registry=m.registry)
    except OSError as e:
        log.error("metrics: cannot listen on %s:%d: %s; running without metrics", host, port,
                  e.strerror or e)
        return m
    log.info("metrics: serving http://%s/metrics",
             f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return m
