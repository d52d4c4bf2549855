"""Proxy request metrics kept per thread: exact totals across threads, same exposition."""

from __future__ import annotations

import re
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from trayupdater.metrics import LATENCY_BUCKETS, Metrics
from trayupdater.tally import RequestTally

SECONDS = (0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.02, 0.3, 1.0, 7.0, 42.0)
STATUSES = (200, 200, 200, 404, 502)


def _without_created(text: str) -> list[str]:
    # Created timestamps differ between two collectors; everything else must match.
    return [line for line in text.splitlines() if not re.match(r"\w+_created[{ ]", line)]


def test_counts_from_many_threads_add_up_exactly() -> None:
    metrics = Metrics()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for i in range(5000):
            metrics.request_done(STATUSES[i % 5], SECONDS[i % 10], "1.0.0")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = metrics.render()[0].decode()
    assert 'trayupdater_proxy_requests_total{code="200"} 24000.0' in text
    assert 'trayupdater_proxy_requests_total{code="404"} 8000.0' in text
    assert 'trayupdater_proxy_requests_total{code="502"} 8000.0' in text
    assert "trayupdater_proxy_request_seconds_count 40000.0" in text
    # 0.0005 is on a bucket's bound: it counts in that bucket ("less than or equal").
    assert 'trayupdater_proxy_request_seconds_bucket{le="0.0005"} 8000.0' in text
    assert 'trayupdater_proxy_request_seconds_bucket{le="0.001"} 16000.0' in text
    assert 'trayupdater_proxy_request_seconds_bucket{le="10.0"} 36000.0' in text
    assert 'trayupdater_proxy_request_seconds_bucket{le="+Inf"} 40000.0' in text
    total = float(re.search(r"trayupdater_proxy_request_seconds_sum (\S+)", text).group(1))
    assert abs(total - 4000 * sum(SECONDS)) < 1e-6


def test_exposition_is_what_prometheus_client_gives() -> None:
    ours = CollectorRegistry()
    tally = RequestTally("t_requests", "Requests", "t_seconds", "Latency", LATENCY_BUCKETS)
    ours.register(tally)
    theirs = CollectorRegistry()
    counter = Counter("t_requests", "Requests", ["code"], registry=theirs)
    histogram = Histogram("t_seconds", "Latency", buckets=LATENCY_BUCKETS, registry=theirs)
    assert _without_created(generate_latest(ours).decode()) == _without_created(
        generate_latest(theirs).decode()
    )
    for i, seconds in enumerate(SECONDS * 3):
        status = STATUSES[i % 5]
        tally.observe(status, seconds)
        counter.labels(str(status)).inc()
        histogram.observe(seconds)
    mine, reference = generate_latest(ours).decode(), generate_latest(theirs).decode()
    assert _without_created(mine) == _without_created(reference)
    assert mine.count("_created") == reference.count("_created")
