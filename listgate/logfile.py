"""The daemon's log file: one line per event, written cheaply from many milter threads.

Why not plain ``logging.handlers.WatchedFileHandler``?  Measured under load (10 SMTP
sessions through Postfix, ``bench/run.py``), the stock handler cost listgate ~0.35 ms
of CPU per message (a third of its whole cost): it ``stat()``s the file on every
record to notice logrotate, and logging builds every record with the caller's frame,
thread name and process name.  libmilter runs each connection in its own thread, so
the handler lock also becomes a convoy.  Here:

* the rotation check runs at most once per second (:data:`REOPEN_CHECK_SECONDS`): a
  line or two may still go to the old file just after logrotate moved it, which is
  where they belong anyway (``delaycompress`` keeps it writable);
* the date prefix is formatted once per second, not per record;
* :func:`lean_records` turns off the record fields listgate never prints.
"""

from __future__ import annotations

import logging
import logging.handlers
import time

#: how often the file is checked for having been moved away by logrotate
REOPEN_CHECK_SECONDS = 1.0

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def lean_records() -> None:
    """Skip the per-record work logging does for fields our format never shows.

    These are the switches the logging HOWTO's "Optimization" section documents:
    no caller frame lookup, no thread, process or multiprocessing names.
    """
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class FastFormatter(logging.Formatter):
    """``LOG_FORMAT`` with the local date and time formatted once per second."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            # computed under the handler lock, so the two fields stay consistent
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        msg = record.getMessage()
        line = f"{self._stamp},{int(record.msecs):03d} {record.levelname} {msg}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class LogFile(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler that checks for rotation at most once per second."""

    def __init__(self, filename: str) -> None:
        super().__init__(filename, encoding="utf-8", errors="backslashreplace")
        self._next_check = 0.0
        self.setFormatter(FastFormatter())

    def reopenIfNeeded(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + REOPEN_CHECK_SECONDS
            super().reopenIfNeeded()

    def emit(self, record: logging.LogRecord) -> None:
        """Write one line; never raise.

        The stdlib handler (re)opens the file outside its error handling: with the log
        directory gone or not writable any more, every log call would raise -- into a
        milter callback, or into the thread that stops the daemon.  Here the line is
        reported on stderr (``handleError``) and lost, like any other write error.
        """
        try:
            self.reopenIfNeeded()
            logging.FileHandler.emit(self, record)  # opens the file again if it must
        except OSError:
            self.handleError(record)
