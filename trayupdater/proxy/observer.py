"""What the proxy reports: the observer protocol (metrics hook) and the error kinds."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from trayupdater.proxy.summary import LogSummary

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
    """Metrics hook. Called from the proxy's threads; must be quick and must not raise.

    ``retried``: a request is sent again after an attempt failed with error ``kind`` before
    any response byte. ``hold_finished``: a held request left the hold for good after
    ``seconds`` held in all, ``served`` by a backend or not (expired, client gone, refused).
    An observer written before these two may lack them.
    """

    def request_done(self, status: int, seconds: float, backend_label: str | None) -> None: ...

    def upstream_error(self, kind: str) -> None: ...

    def retried(self, kind: str) -> None: ...

    def hold_finished(self, seconds: float, served: bool) -> None: ...


class NullObserver:
    """The default observer: records nothing."""

    def request_done(self, status: int, seconds: float, backend_label: str | None) -> None:
        pass

    def upstream_error(self, kind: str) -> None:
        pass

    def retried(self, kind: str) -> None:
        pass

    def hold_finished(self, seconds: float, served: bool) -> None:
        pass


def _nothing(*args: object) -> None:
    pass


class Reporter:
    """What the proxy reports: to the observer (so that a failing one never breaks a
    request) and to the log, where repeated events are summarised once per second."""

    __slots__ = ("_hold_finished", "_observer", "_retried", "summary")

    def __init__(self, observer: ProxyObserver, summary: LogSummary) -> None:
        self._observer = observer
        self._retried = getattr(observer, "retried", _nothing)
        self._hold_finished = getattr(observer, "hold_finished", _nothing)
        self.summary = summary

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

    def retried(self, kind: str, label: str, detail: str) -> None:
        self.summary.add(logging.INFO, f"{{n}} request{{s}} to {label} sent again", detail)
        try:
            self._retried(kind)
        except Exception:
            log.exception("proxy observer failed")

    # -- log lines, summarised -------------------------------------------------------------

    def could_not_reach(self, label: str, detail: str) -> None:
        self.summary.add(logging.WARNING, f"{{n}} request{{s}} could not reach {label}", detail)

    def held(self, reason: str) -> None:
        self.summary.add(logging.INFO, "{n} request{s} held", reason)

    def hold_refused(self, reason: str) -> None:
        self.summary.add(logging.WARNING, "{n} request{s} not held: answered 503", reason)

    def hold_abandoned(self) -> None:
        self.summary.add(logging.INFO, "{n} held request{s} abandoned by the client")

    def hold_expired(self, status: int, reason: str) -> None:
        self.summary.add(logging.WARNING, f"{{n}} held request{{s}} answered {status}", reason)

    def cut_short(self, label: str, detail: str) -> None:
        self.summary.add(logging.WARNING, f"{{n}} response{{s}} from {label} cut short", detail)

    def bad_response(self, label: str, detail: str) -> None:
        self.summary.add(logging.WARNING, f"{{n}} bad response{{s}} from {label}", detail)

    def hold_finished(self, seconds: float, served: bool) -> None:
        try:
            self._hold_finished(seconds, served)
        except Exception:
            log.exception("proxy observer failed")
