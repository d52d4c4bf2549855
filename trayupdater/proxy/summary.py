"""Repeated log events, summarised: one line per kind of event per second, not one per request.

When a backend dies, hundreds of requests can fail, be retried or held within a second; a
WARNING for each buries what happened. :class:`LogSummary` counts events by their message
and detail and writes one line when the second is over, such as::

    45 requests could not reach 1.6.1 in the last second (connection refused)

The owner calls :meth:`LogSummary.flush` at :attr:`LogSummary.due` (the proxy's selector
thread does); ``on_due`` tells it when an event made that time earlier, so an owner that
sleeps while idle wakes for it. The clock is injectable for tests.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Window:
    level: int
    started: float
    count: int = 0


class LogSummary:
    """Counts events per (message, detail) over ``period`` seconds, then logs each once.

    ``message`` is a format with ``{n}`` (the count) and ``{s}`` ("s" unless the count is
    one), e.g. ``"{n} request{s} could not reach 1.6.1"``; ``detail`` (a few words) is
    appended in brackets. Different details make different lines.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        period: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_due: Callable[[], None] | None = None,
    ) -> None:
        self._log = logger
        self._on_due = on_due
        self._period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._due = math.inf  # when the oldest open window ends

    @property
    def due(self) -> float:
        """When :meth:`flush` has a line to write (clock time; inf when nothing is counted)."""
        return self._due

    def add(self, level: int, message: str, detail: str = "") -> None:
        """Count one event (any thread; cheap: no formatting, no I/O)."""
        key = (message, detail)
        sooner = False
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                now = self._clock()
                window = self._windows[key] = _Window(level, now)
                sooner = now + self._period < self._due
                self._due = min(self._due, now + self._period)
            window.count += 1
            window.level = max(window.level, level)
        if sooner and self._on_due is not None:
            self._on_due()

    def flush(self, *, everything: bool = False) -> float:
        """Write the lines of the windows that are over (all of them with ``everything``);
        returns the new :attr:`due`."""
        now = self._clock()
        with self._lock:
            if not everything and now < self._due:
                return self._due
            ended = [
                (key, window)
                for key, window in self._windows.items()
                if everything or now >= window.started + self._period
            ]
            for key, _ in ended:
                del self._windows[key]
            self._due = min(
                (w.started + self._period for w in self._windows.values()), default=math.inf
            )
            due = self._due
        for (message, detail), window in sorted(ended, key=lambda item: item[1].started):
            self._log.log(window.level, _line(message, detail, window, now, self._period))
        return due


def _line(message: str, detail: str, window: _Window, now: float, period: float) -> str:
    text = message.format(n=window.count, s="" if window.count == 1 else "s")
    span = max(period, now - window.started)
    when = "in the last second" if span < 1.5 else f"in the last {span:.0f} seconds"
    return f"{text} {when}" + (f" ({detail})" if detail else "")
