"""A small thread-safe TTL cache, bounded in size.

The daemon asks the backend the same questions for every post from the same sender
to the same list; caching the answers keeps the hot path to a dict lookup, and the
TTL bounds how long a membership change takes to be seen without a restart.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

_MISSING = object()


class TTLCache:
    """Least-recently-used cache whose entries also expire after their TTL."""

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self._clock = clock
        self._data: OrderedDict[Hashable, tuple[float, float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, default: Any = _MISSING, max_age: float | None = None) -> Any:
        """The cached value, or ``default`` (a private sentinel if not given).

        ``max_age``: only a value stored at most that many seconds ago counts (a
        refusal is only given on a fresh answer); an older one is a miss but is kept.
        """
        now = self._clock()
        with self._lock:
            item = self._data.get(key)
            if item is not None and item[0] > now:
                if max_age is not None and now - item[1] > max_age:
                    self.misses += 1
                    return default
                self._data.move_to_end(key)
                self.hits += 1
                return item[2]
            if item is not None:
                del self._data[key]
            self.misses += 1
            return default

    def put(self, key: Hashable, value: Any, ttl: float) -> None:
        if ttl <= 0 or self.maxsize <= 0:
            return
        with self._lock:
            now = self._clock()
            self._data[key] = (now + ttl, now, value)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def missing(value: Any) -> bool:
        """True if ``get`` found nothing."""
        return value is _MISSING
