"""What the proxy reports: the observer protocol (metrics hook) and the error kinds."""

from __future__ import annotations

import logging
import time
from typing import Protocol

log = logging.getLogger(__name__)

# Upstream error kinds reported to ProxyObserver.upstream_error.
ERR_NO_BACKEND = "no_backend"
ERR_CONNECT = "connect"
ERR_STALE = "stale_connection"  # a pooled connection was dead; the request was retried
ERR_CLOSED = "closed_before_response"
ERR_TIMEOUT = "timeout"
ERR_PROTOCOL = "bad_response"
ERR_BODY = "response_body"  # the backend failed in the middle of a response body


class ProxyObserver(Protocol):
    """Metrics hook. Called from worker threads; must be quick and must not raise."""

    def request_done(self, status: int, seconds: float, backend_label: str | None) -> None: ...

    def upstream_error(self, kind: str) -> None: ...


class NullObserver:
    """The default observer: records nothing."""

    def request_done(self, status: int, seconds: float, backend_label: str | None) -> None:
        pass

    def upstream_error(self, kind: str) -> None:
        pass


class Reporter:
    """Calls the observer so that a failing one never breaks a request."""

    __slots__ = ("_observer",)

    def __init__(self, observer: ProxyObserver) -> None:
        self._observer = observer

    def done(self, status: int, started: float, label: str | None) -> None:
        try:
            self._observer.request_done(status, time.monotonic() - started, label)
        except Exception:
            log.exception("proxy observer failed")

    def upstream_error(self, kind: str) -> None:
        try:
            self._observer.upstream_error(kind)
        except Exception:
            log.exception("proxy observer failed")
