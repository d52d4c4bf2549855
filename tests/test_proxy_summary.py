"""Proxy log lines a person can read: repeated events summarised once per second."""

from __future__ import annotations

import logging
import re
import threading

import pytest
from proxy_support import RealBackend, get, wait_until

from trayupdater.proxy import ReverseProxy
from trayupdater.proxy.summary import LogSummary


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def summary(caplog):
    caplog.set_level(logging.DEBUG, logger="test.summary")
    clock = Clock()
    return LogSummary(logging.getLogger("test.summary"), clock=clock), clock


def _lines(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "test.summary"]


def test_many_events_make_one_line_when_the_second_is_over(summary, caplog):
    log, clock = summary
    for _ in range(45):
        log.add(logging.WARNING, "{n} request{s} could not reach 1.6.1", "connection refused")
        clock.now += 0.01
    assert log.flush() == pytest.approx(101.0), "not over yet: nothing written"
    assert _lines(caplog) == []
    clock.now = 101.0
    assert log.flush() == float("inf")
    assert _lines(caplog) == [
        (
            logging.WARNING,
            "45 requests could not reach 1.6.1 in the last second (connection refused)",
        )
    ]
    assert log.flush() == float("inf")
    assert len(_lines(caplog)) == 1, "counted once"


def test_the_owner_is_told_when_a_line_becomes_due_sooner(caplog):
    """The proxy's selector thread sleeps while idle: it must learn of a new window."""
    clock = Clock()
    told: list[float] = []
    log = LogSummary(logging.getLogger("test.summary"), clock=clock, on_due=lambda: told.append(1))
    log.add(logging.WARNING, "{n} a", "x")
    assert len(told) == 1, "a first window: due went from never to in a second"
    clock.now += 0.2
    log.add(logging.WARNING, "{n} a", "x")
    log.add(logging.WARNING, "{n} b", "x")  # a second window ends later: due unchanged
    assert len(told) == 1
    clock.now = 102.0
    log.flush()  # both windows over: due is never again
    log.add(logging.WARNING, "{n} a", "x")
    assert len(told) == 2


def test_one_event_reads_as_singular_and_details_make_separate_lines(summary, caplog):
    log, clock = summary
    log.add(logging.INFO, "{n} request{s} held", "waiting for a backend")
    log.add(logging.INFO, "{n} request{s} held", "1.6.1 unreachable: connection refused")
    log.add(logging.INFO, "{n} request{s} held", "1.6.1 unreachable: connection refused")
    clock.now += 1.0
    log.flush()
    assert sorted(_lines(caplog)) == [
        (logging.INFO, "1 request held in the last second (waiting for a backend)"),
        (
            logging.INFO,
            "2 requests held in the last second (1.6.1 unreachable: connection refused)",
        ),
    ]


def test_windows_are_per_message_and_start_with_their_first_event(summary, caplog):
    log, clock = summary
    log.add(logging.WARNING, "{n} request{s} could not reach a")
    clock.now += 0.6
    log.add(logging.WARNING, "{n} request{s} could not reach b")
    assert log.due == pytest.approx(101.0)
    clock.now += 0.5  # a's second is over, b's is not
    assert log.flush() == pytest.approx(101.6)
    assert _lines(caplog) == [(logging.WARNING, "1 request could not reach a in the last second")]
    log.add(logging.WARNING, "{n} request{s} could not reach a")  # a new window for a
    clock.now += 3.0  # flushed late: the line says how long it covers
    log.flush()
    assert _lines(caplog)[1:] == [
        (logging.WARNING, "1 request could not reach b in the last 4 seconds"),
        (logging.WARNING, "1 request could not reach a in the last 3 seconds"),
    ]


def test_the_line_takes_the_highest_level_and_flush_everything(summary, caplog):
    log, _ = summary
    log.add(logging.INFO, "{n} thing{s}")
    log.add(logging.ERROR, "{n} thing{s}")
    log.flush(everything=True)
    assert _lines(caplog) == [(logging.ERROR, "2 things in the last second")]


def test_counting_from_many_threads_loses_nothing(summary, caplog):
    log, clock = summary

    def add() -> None:
        for _ in range(1000):
            log.add(logging.INFO, "{n} event{s}")

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    clock.now += 1
    log.flush()
    assert _lines(caplog) == [(logging.INFO, "8000 events in the last second")]


def test_the_proxy_logs_a_failing_backend_once_a_second_not_per_request(caplog):
    """20 requests to a backend that closes without answering: two summary lines (the
    retries and the failures), not 20 warnings."""
    caplog.set_level(logging.INFO, logger="trayupdater.proxy")
    backend = RealBackend("1.6.1")
    proxy = ReverseProxy("127.0.0.1", 0)
    proxy.start()
    try:
        proxy.switch(backend.backend)
        threads = [threading.Thread(target=lambda: get(proxy, "/close-early")) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        def summarised(pattern: str) -> int:
            counts = [
                int(m.group(1))
                for r in caplog.records
                if (m := re.fullmatch(pattern, r.getMessage()))
            ]
            return sum(counts) if counts else 0

        tail = r" in the last second \(closed without answering\)"
        reach = r"(\d+) requests? could not reach 1\.6\.1" + tail
        again = r"(\d+) requests? to 1\.6\.1 sent again" + tail
        assert wait_until(lambda: summarised(reach) == 20)
        assert wait_until(lambda: summarised(again) == 20)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert 1 <= len(warnings) <= 3, [r.getMessage() for r in warnings]
        assert get(proxy, "/version")[:2] == (200, b"1.6.1")
    finally:
        proxy.close()
        backend.close()
