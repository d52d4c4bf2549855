"""Prometheus metrics for the app: updates, failures by reason, proxy traffic, downloads.

One ``CollectorRegistry`` per app instance (not the global default), so tests can run
several apps in one process and each endpoint shows only its own numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from trayupdater.events import Events
from trayupdater.tally import RequestTally

if TYPE_CHECKING:
    from trayupdater.proxy import ReverseProxy

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
HOLD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics(Events):
    """Update-worker events and proxy observations, as Prometheus metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.checks = Counter(
            "trayupdater_checks", "Release checks by outcome", ["outcome"], registry=r
        )
        self.updates = Counter("trayupdater_updates", "Successful updates", registry=r)
        self.rollbacks = Counter("trayupdater_rollbacks", "Rollbacks", ["kind"], registry=r)
        self.failures = Counter(
            "trayupdater_failures", "Failures by reason", ["reason"], registry=r
        )
        self.active = Info("trayupdater_active", "The version serving traffic", registry=r)
        self.downloaded = Counter("trayupdater_download_bytes", "Bytes downloaded", registry=r)
        # Per request: per-thread counters folded at scrape time, not a lock per request.
        self.proxy_requests = RequestTally(
            "trayupdater_proxy_requests",
            "Proxied requests by status",
            "trayupdater_proxy_request_seconds",
            "Proxy request latency",
            LATENCY_BUCKETS,
        )
        r.register(self.proxy_requests)
        self.upstream_errors = Counter(
            "trayupdater_proxy_upstream_errors",
            "Backend errors seen by the proxy",
            ["kind"],
            registry=r,
        )
        self.retries = Counter(
            "trayupdater_proxy_retries",
            "Requests sent again after a backend failed before answering, by error kind",
            ["kind"],
            registry=r,
        )
        self.hold_time = Histogram(
            "trayupdater_proxy_hold_seconds",
            "How long requests were held waiting for a backend",
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.held_requests = Gauge(
            "trayupdater_proxy_held_requests", "Requests held right now", registry=r
        )
        self.held_bytes = Gauge(
            "trayupdater_proxy_held_bytes", "Bytes kept by the held requests", registry=r
        )

    def watch_proxy(self, proxy: ReverseProxy) -> None:
        """Read the held-request gauges from ``proxy`` at each scrape."""
        self.held_requests.set_function(lambda: proxy.held_count)
        self.held_bytes.set_function(lambda: proxy.held_bytes)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # --- update worker events ---

    def check_done(self, outcome: str) -> None:
        self.checks.labels(outcome).inc()

    def updated(self, old: str | None, new: str) -> None:
        self.updates.inc()

    def rolled_back(self, old: str, new: str, automatic: bool, reason: str) -> None:
        self.rollbacks.labels("automatic" if automatic else "manual").inc()

    def set_active(self, version: str | None) -> None:
        self.active.info({"version": version or ""})

    def failed(self, reason: str, message: str) -> None:
        self.failures.labels(reason).inc()

    def download_bytes(self, count: int) -> None:
        self.downloaded.inc(count)

    # --- proxy observer ---

    def request_done(self, status: int, seconds: float, backend_label: str | None) -> None:
        self.proxy_requests.observe(status, seconds)

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors.labels(kind).inc()

    def retried(self, kind: str) -> None:
        self.retries.labels(kind).inc()

    def hold_finished(self, seconds: float, served: bool) -> None:
        self.hold_time.observe(seconds)
