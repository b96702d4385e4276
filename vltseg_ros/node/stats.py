"""Rates, latency percentiles and counters for the node's /diagnostics (diagnostic_updater is not a wheel)."""
from __future__ import annotations

import collections
import threading
from typing import Iterable

import numpy as np


class RateWindow:
    """Events per second over a sliding time window (node-clock seconds, so sim time works)."""

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
    """Thread-safe named counters."""

    def __init__(self):
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, name: str, amount: int = 1) -> None:
        """Increase ``name`` by ``amount``."""
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        """A copy of all counts."""
        with self._lock:
            return dict(self._counts)
