"""Proxy request counts and latencies kept per thread, folded only when /metrics is scraped.

prometheus_client's Counter and Histogram take a lock (and look up a label child) on every
observation; at tens of thousands of requests a second from many worker threads that is a
contended lock per request, and each contention is a GIL hand-off. Here each thread writes
only its own plain counters (no lock: nobody else writes them) and a scrape sums them. The
exposition is the same as a Counter ``trayupdater_proxy_requests{code}`` and a Histogram
``trayupdater_proxy_request_seconds`` would give, ``_created`` samples included.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString


class _Tally:
    """One thread's counts. Written by that thread only; read by a scrape."""

    __slots__ = ("buckets", "codes", "created", "sum")

    def __init__(self, buckets: int) -> None:
        self.codes: dict[int, int] = {}
        self.created: dict[int, float] = {}  # when this thread first saw each status
        self.buckets = [0] * buckets  # not cumulative; the last one is +Inf
        self.sum = 0.0


class RequestTally:
    """A prometheus_client collector: requests by status code and a latency histogram."""

    def __init__(
        self, counter: str, counter_doc: str, histogram: str, histogram_doc: str,
        buckets: Sequence[float],
    ) -> None:  # fmt: skip
        self._names = (counter, counter_doc, histogram, histogram_doc)
        self._bounds = tuple(float(b) for b in buckets)
        self._local = threading.local()
        self._tallies: list[_Tally] = []  # every thread's, kept after the thread ends
        self._lock = threading.Lock()  # only to add a thread's tally
        self._created = time.time()

    def observe(self, status: int, seconds: float) -> None:
        """Count one request. Lock-free: touches only the calling thread's tally."""
        try:
            tally: _Tally = self._local.tally
        except AttributeError:
            tally = self._local.tally = _Tally(len(self._bounds) + 1)
            with self._lock:
                self._tallies.append(tally)
        codes = tally.codes
        if status in codes:
            codes[status] += 1
        else:
            tally.created[status] = time.time()
            codes[status] = 1
        # Buckets are "less than or equal to" their bound: the first bound >= seconds.
        tally.buckets[bisect_left(self._bounds, seconds)] += 1
        tally.sum += seconds

    def _fold(self) -> tuple[dict[int, int], dict[int, float], list[int], float]:
        codes: dict[int, int] = {}
        created: dict[int, float] = {}
        buckets = [0] * (len(self._bounds) + 1)
        total = 0.0
        with self._lock:
            tallies = list(self._tallies)
        for tally in tallies:
            # list() copies in one C call: safe while the owner adds a key under the GIL.
            for code, count in list(tally.codes.items()):
                codes[code] = codes.get(code, 0) + count
            for code, when in list(tally.created.items()):
                created[code] = min(when, created.get(code, when))
            for i, count in enumerate(list(tally.buckets)):
                buckets[i] += count
            total += tally.sum
        return codes, created, buckets, total

    def collect(self) -> Iterator[Metric]:
        counter, counter_doc, histogram, histogram_doc = self._names
        codes, created, buckets, total = self._fold()
        requests = Metric(counter, counter_doc, "counter")
        order = sorted(codes, key=lambda code: created.get(code, 0.0))  # as first seen
        for code in order:
            requests.add_sample(f"{counter}_total", {"code": str(code)}, float(codes[code]))
        for code in order:
            when = created.get(code, self._created)
            requests.add_sample(f"{counter}_created", {"code": str(code)}, when)
        yield requests
        latency = Metric(histogram, histogram_doc, "histogram")
        running = 0
        for bound, count in zip((*self._bounds, float("inf")), buckets, strict=True):
            running += count
            latency.add_sample(f"{histogram}_bucket", {"le": floatToGoString(bound)}, running)
        latency.add_sample(f"{histogram}_count", {}, float(running))
        latency.add_sample(f"{histogram}_sum", {}, total)
        latency.add_sample(f"{histogram}_created", {}, self._created)
        yield latency
