"""An old child finishing its requests after a switch: a long response (a download, an event
stream, a WebSocket) is drained off the update worker, so commands and Quit are not held
meanwhile; a request it has not answered yet (a long poll) is answered by it, not cut."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable

from support import alive, wait_for
from test_runtime import running

from trayupdater.app import App
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Command

HELD = 12  # seconds the response takes; the drain waits up to 30


class Stream:
    """One GET /stream?seconds=N (or another path) through the proxy, on a thread: its
    answer or its error."""

    def __init__(self, app: App, seconds: int, path: str = "/stream") -> None:
        self.answer: tuple[int, str] | None = None
        self.error: BaseException | None = None
        host, port = app.proxy.address
        self._conn = http.client.HTTPConnection(host, port, timeout=60)
        self._conn.request("GET", f"{path}?seconds={seconds}")  # sent before we go on
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            response = self._conn.getresponse()
            self.answer = (response.status, response.read().decode())
        except (OSError, http.client.HTTPException) as exc:
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _child_pid(app: App, version: str) -> int:
    for running_child in (app.updater.serving.active, app.updater.serving.warm):
        if running_child is not None and running_child.child.version == version:
            assert running_child.child.pid is not None
            return running_child.child.pid
    raise AssertionError(f"no child of {version} runs")


def _on_probation_with_a_stream(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> tuple[App, Stream, int]:
    """1.1.0 on a 1 s probation, 1.0.0 warm with a stream in flight: the app, the stream
    and 1.0.0's pid. The probation ends while the stream is held."""
    publish_version(feed, "1.0.0")
    app = app_factory(probation_seconds=1.0)
    wait_for(running(app, "1.0.0"))
    stream = Stream(app, HELD)
    time.sleep(0.5)  # in 1.0.0's hands now
    old_pid = _child_pid(app, "1.0.0")
    publish_version(feed, "1.1.0")
    assert app.updater.request(Command.CHECK).active == "1.1.0"
    assert app.proxy.fallback is not None and app.proxy.fallback.label == "1.0.0"
    # The probation's end lets go of the fallback first, then drains 1.0.0.
    wait_for(lambda: app.proxy.fallback is None, what="the probation's end")
    time.sleep(0.2)
    return app, stream, old_pid


def test_commands_are_not_held_while_an_old_child_finishes_a_long_request(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    app, stream, old_pid = _on_probation_with_a_stream(feed, app_factory)
    started = time.monotonic()
    status = app.updater.request(Command.CHECK)
    took = time.monotonic() - started
    assert status.active == "1.1.0" and status.error is None
    assert took < HELD / 2, f"a check waited {took:.1f} s for the old child's drain"
    assert alive(old_pid)  # still finishing the stream
    stream.join(HELD + 10)
    assert stream.error is None and stream.answer == (200, "." * HELD + "1.0.0")  # not cut
    wait_for(lambda: not alive(old_pid), 15, what="1.0.0 stopped once drained")


def test_quit_while_an_old_child_drains_is_prompt_and_stops_it(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    app, stream, old_pid = _on_probation_with_a_stream(feed, app_factory)
    started = time.monotonic()
    app.stop()
    took = time.monotonic() - started
    assert took < HELD / 2, f"Quit took {took:.1f} s"
    assert not alive(old_pid), "the draining child outlived the app"
    stream.join(10)


def test_a_request_the_warm_child_has_not_answered_yet_is_answered_by_it(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    """A long poll taken by 1.0.0 before the switch, still unanswered when 1.1.0's probation
    ends: 1.0.0, healthy, answers it. Before, the proxy cut it and sent it again to 1.1.0,
    so the client waited twice as long, and a request with effects ran twice."""
    publish_version(feed, "1.0.0")
    app = app_factory(probation_seconds=1.0)
    wait_for(running(app, "1.0.0"))
    poll = Stream(app, 6, path="/slow")
    time.sleep(0.5)  # in 1.0.0's hands now
    publish_version(feed, "1.1.0")
    assert app.updater.request(Command.CHECK).active == "1.1.0"
    wait_for(lambda: app.proxy.fallback is None, what="the probation's end")
    poll.join(30)
    assert poll.error is None and poll.answer == (200, "1.0.0")
