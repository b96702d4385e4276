"""Rates, latency percentiles and counters for the node's /diagnostics (diagnostic_updater is not a wheel)."""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Iterable

import numpy as np


class ValueWindow:
    """Values observed over a sliding time window (seconds of the caller's clock), e.g. recent frame scores."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._items: collections.deque[tuple[float, float]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, now: float, value: float) -> None:
        """Record ``value`` at ``now``."""
        with self._lock:
            self._items.append((now, value))
            self._trim(now)

    def values(self, now: float) -> list[float]:
        """The values of the window ending at ``now``, oldest first."""
        with self._lock:
            self._trim(now)
            return [v for _, v in self._items]

    def _trim(self, now: float) -> None:
        while self._items and now - self._items[0][0] > self.window_s:
            self._items.popleft()


class RateWindow:
    """Events per second over a sliding time window (seconds of the caller's clock)."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        """Record one event at ``now``."""
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float) -> float:
        """Events per second over the window ending at ``now``."""
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], 1e-9)
            return (len(self._times) - 1) / span if span < self.window_s else len(self._times) / self.window_s

    def count(self, now: float) -> int:
        """Events in the window ending at ``now``."""
        with self._lock:
            self._trim(now)
            return len(self._times)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class Percentiles:
    """Keeps the last ``size`` samples and reports percentiles of them."""

    def __init__(self, size: int = 500):
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        """Record one sample."""
        with self._lock:
            self._values.append(value)

    def get(self, quantiles: Iterable[float]) -> list[float]:
        """The requested percentiles (0-100) of the recent samples; NaN when empty."""
        with self._lock:
            values = np.array(self._values, dtype=np.float64)
        if values.size == 0:
            return [float("nan") for _ in quantiles]
        return [float(v) for v in np.percentile(values, list(quantiles))]


class Counters:
    """Thread-safe named counters: totals since start, and the counts of the last ``window_s`` seconds (for a
    diagnostics level that follows what happens now, not what happened once)."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._counts: collections.Counter[str] = collections.Counter()
        self._events: collections.deque[tuple[float, str, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, name: str, amount: int = 1) -> None:
        """Increase ``name`` by ``amount``."""
        now = self._clock()
        with self._lock:
            self._counts[name] += amount
            self._events.append((now, name, amount))
            self._trim(now)

    def snapshot(self) -> dict[str, int]:
        """A copy of all counts since start."""
        with self._lock:
            return dict(self._counts)

    def recent(self) -> dict[str, int]:
        """Counts of the last ``window_s`` seconds."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            counts: collections.Counter[str] = collections.Counter()
            for _, name, amount in self._events:
                counts[name] += amount
            return dict(counts)

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()
