"""Backend death, warm fallback and held requests: no client sees an error when a child dies.

Backends are real servers: in this process (``RealBackend``, closed like a dead child) or
in a child process killed with SIGKILL (``ChildBackend``), whose exit a watcher thread
reports to ``proxy.backend_down()`` as the app's supervisor does. Load comes from several
keep-alive client threads, and every test that promises it asserts 0 failed requests.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from proxy_support import (
    TIMEOUT,
    ChildBackend,
    RealBackend,
    get,
    open_client,
    raw,
    read_all,
    wait_until,
)

from trayupdater.proxy import Backend, ReverseProxy


class Recorder:
    """An observer that keeps what it is told (thread-safe enough for lists)."""

    def __init__(self) -> None:
        self.done: list[tuple[int, str | None]] = []
        self.errors: list[str] = []
        self.retries: list[str] = []
        self.holds: list[tuple[float, bool]] = []

    def request_done(self, status: int, seconds: float, backend_label: str | None) -> None:
        self.done.append((status, backend_label))

    def upstream_error(self, kind: str) -> None:
        self.errors.append(kind)

    def retried(self, kind: str) -> None:
        self.retries.append(kind)

    def hold_finished(self, seconds: float, served: bool) -> None:
        self.holds.append((seconds, served))


@pytest.fixture
def cleanup() -> Iterator[list]:
    things: list = []
    yield things
    for thing in reversed(things):
        thing.close()


@pytest.fixture
def make_proxy(cleanup):
    def make(**options) -> ReverseProxy:
        proxy = ReverseProxy("127.0.0.1", 0, **options)
        proxy.start()
        cleanup.append(proxy)
        return proxy

    return make


@pytest.fixture
def make_backend(cleanup):
    def make(label: str) -> RealBackend:
        backend = RealBackend(label)
        cleanup.append(backend)
        return backend

    return make


@pytest.fixture
def make_child(cleanup):
    def make(label: str, proxy: ReverseProxy | None = None) -> ChildBackend:
        child = ChildBackend(label, on_exit=proxy.backend_down if proxy else None)
        cleanup.append(child)
        return child

    return make


class Load:
    """Keep-alive clients, each alternating GET /version and a POST with a small body."""

    def __init__(self, proxy: ReverseProxy, clients: int = 6) -> None:
        self.proxy = proxy
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.answers: list[tuple[float, str]] = []  # (monotonic time, X-Backend)
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, index: int) -> None:
        conn = open_client(self.proxy)
        body = f"client {index} says hello".encode()
        n = 0
        while not self.stop.is_set():
            n += 1
            post = n % 2 == 0
            try:
                if post:
                    conn.request("POST", "/echo", body=body)
                else:
                    conn.request("GET", "/version")
                response = conn.getresponse()
                data = response.read()
                label = response.getheader("X-Backend") or "?"
                if response.status != 200 or (post and data != body):
                    self.failures.append(f"{response.status} {data[:60]!r} from {label}")
                with self.lock:
                    self.answers.append((time.monotonic(), label))
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                conn.close()
                conn = open_client(self.proxy)
        conn.close()

    def served_by(self, label: str) -> int:
        with self.lock:
            return sum(1 for _, who in self.answers if who == label)

    def first_answer_by(self, label: str, after: float) -> float | None:
        with self.lock:
            times = [at for at, who in self.answers if who == label and at >= after]
        return min(times) if times else None

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT)


def _request(proxy: ReverseProxy, method: str, path: str, body: bytes | None = None):
    """One request on its own connection: (status, body, X-Backend, Retry-After, seconds)."""
    conn = open_client(proxy)
    started = time.monotonic()
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        data = response.read()
        return (
            response.status,
            data,
            response.getheader("X-Backend"),
            response.getheader("Retry-After"),
            time.monotonic() - started,
        )
    finally:
        conn.close()


def _in_threads(count: int, work) -> tuple[list, list[threading.Thread]]:
    results: list = []

    def run(i: int) -> None:
        results.append(work(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return results, threads


def _long_attempts(proxy: ReverseProxy, count: int, held: float = 0.1) -> bool:
    """Wait until ``count`` requests have been waiting for a backend's answer for ``held``
    seconds each (only slow requests do: the load's are answered in milliseconds)."""
    since: dict[int, float] = {}  # id of a request's slot -> when its attempt was first seen
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        now = time.monotonic()
        waiting = {
            id(slot)
            for slot in list(proxy._service.serving)
            if slot.attempt is not None and not slot.responding
        }
        since = {key: since.get(key, now) for key in waiting}
        if sum(now - first >= held for first in since.values()) >= count:
            return True
        time.sleep(0.005)
    return False


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(TIMEOUT + 5)
        assert not thread.is_alive()


# -- warm fallback -----------------------------------------------------------------------------


def test_backend_killed_between_requests_goes_to_the_fallback(make_proxy, make_child):
    """Pooled connections to the dead child are stale and its port refuses: the requests
    that come right after the kill (before or after the exit is reported) all succeed."""
    recorder = Recorder()
    proxy = make_proxy(observer=recorder)
    old = make_child("1.6.0")
    new = make_child("1.6.1", proxy)
    proxy.switch(new.backend, fallback=old.backend)
    clients = [open_client(proxy) for _ in range(4)]
    for conn in clients:  # each leaves a pooled upstream connection to 1.6.1
        conn.request("GET", "/version")
        assert conn.getresponse().read() == b"1.6.1"
    new.kill()
    labels = []
    for _ in range(3):
        for conn in clients:
            conn.request("POST", "/echo", body=b"after the kill")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"after the kill")
            labels.append(response.getheader("X-Backend"))
    assert labels[-4:] == ["1.6.0"] * 4
    assert wait_until(lambda: new.exited_at > 0)
    assert proxy.current == old.backend and proxy.fallback is None
    for conn in clients:
        conn.close()


def test_backend_killed_under_load_fails_no_request(make_proxy, make_child):
    """SIGKILL of the new child mid-load, requests in flight (a slow GET and a slow POST
    with a body among them): everything not yet answered is retried on the warm fallback."""
    recorder = Recorder()
    proxy = make_proxy(observer=recorder)
    old = make_child("1.6.0")
    new = make_child("1.6.1", proxy)
    proxy.switch(new.backend, fallback=old.backend)
    load = Load(proxy)
    try:
        assert wait_until(lambda: load.served_by("1.6.1") >= 200)
        slow, slow_threads = _in_threads(
            4,
            lambda i: _request(
                proxy, "POST" if i % 2 else "GET", "/sleep?s=0.5", b"slow body" if i % 2 else None
            ),
        )
        # The slow ones are waiting for the child's answer (the load's requests alone can
        # make 4 in flight for a moment; killing then retried nothing).
        assert _long_attempts(proxy, 4)
        killed = new.kill()
        assert wait_until(lambda: new.exited_at > 0)
        assert wait_until(lambda: load.served_by("1.6.0") >= 200)
        _join(slow_threads)
    finally:
        load.finish()
    assert load.failures == []
    assert (
        sorted((status, body, who) for status, body, who, _, _ in slow)
        == [(200, b"slept", "1.6.0")] * 4
    ), "the in-flight requests were retried on the fallback"
    assert recorder.retries, "requests were retried"
    exit_to_fallback = load.first_answer_by("1.6.0", new.exited_at)
    assert exit_to_fallback is not None
    print(
        f"\nSIGKILL -> exit seen {1000 * (new.exited_at - killed):.1f} ms; exit seen -> first "
        f"answer from the fallback {1000 * (exit_to_fallback - new.exited_at):.1f} ms; "
        f"retries {len(recorder.retries)} ({', '.join(sorted(set(recorder.retries)))})"
    )


def test_time_from_backend_down_to_the_fallback(make_proxy, make_backend):
    """The number the issue sets a target for (<= 50 ms): measured and printed, not asserted
    tightly, since the box is shared."""
    proxy = make_proxy()
    old, new = make_backend("old"), make_backend("new")
    proxy.switch(new.backend, fallback=old.backend)
    load = Load(proxy, clients=4)
    try:
        assert wait_until(lambda: load.served_by("new") >= 100)
        new.close()
        down = time.monotonic()
        assert proxy.backend_down(new.backend) is True
        assert wait_until(lambda: load.first_answer_by("old", down) is not None)
        assert wait_until(lambda: load.served_by("old") >= 100)
    finally:
        load.finish()
    assert load.failures == []
    first = load.first_answer_by("old", down)
    assert first is not None
    print(f"\nbackend_down() -> first answer from the fallback: {1000 * (first - down):.1f} ms")
    assert first - down < 2.0


def test_backend_down_of_the_fallback_forgets_it(make_proxy, make_backend):
    proxy = make_proxy()
    a, b, c = make_backend("a"), make_backend("b"), make_backend("c")
    proxy.switch(a.backend, fallback=b.backend)
    assert proxy.fallback == b.backend
    assert proxy.backend_down(c.backend) is False, "not in use: nothing changes"
    assert proxy.backend_down(b.backend) is True
    assert (proxy.current, proxy.fallback) == (a.backend, None)
    assert proxy.backend_down(b.backend) is False, "idempotent"
    assert get(proxy, "/version")[:2] == (200, b"a")
    # Now the current one dies too, with no fallback left: requests are held, not failed.
    assert proxy.backend_down(a.backend) is True
    assert proxy.current is None
    assert proxy.backend_down(a.backend) is False
    results, threads = _in_threads(1, lambda i: _request(proxy, "GET", "/version"))
    assert wait_until(lambda: proxy.held_count == 1)
    proxy.switch(c.backend)
    _join(threads)
    assert results[0][:3] == (200, b"c", "c")


def test_backend_down_from_many_threads_at_once_switches_once(make_proxy, make_backend):
    proxy = make_proxy()
    a, b = make_backend("a"), make_backend("b")
    proxy.switch(a.backend, fallback=b.backend)
    results, threads = _in_threads(8, lambda i: proxy.backend_down(a.backend))
    _join(threads)
    assert results.count(True) == 1
    assert proxy.current == b.backend


def test_a_streamed_body_cut_by_a_dying_backend_gets_502_and_is_not_replayed(
    make_proxy, make_backend
):
    recorder = Recorder()
    proxy = make_proxy(max_buffered_body=1024, observer=recorder)
    new, old = make_backend("new"), make_backend("old")
    proxy.switch(new.backend, fallback=old.backend)
    sock = raw(proxy)
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"a" * 100_000
    )
    assert wait_until(lambda: new.requests == 1)  # the body is being streamed to `new`
    new.close()
    proxy.backend_down(new.backend)
    with contextlib.suppress(OSError):  # the proxy may stop reading once the upstream is gone
        sock.sendall(b"a" * 100_000)
    assert read_all(sock).startswith(b"HTTP/1.1 502 ")
    assert old.requests == 0, "half a streamed body is never sent anywhere else"


# -- holds -------------------------------------------------------------------------------------


def test_hold_then_switch_serves_every_waiting_request(make_proxy, make_backend):
    recorder = Recorder()
    proxy = make_proxy(observer=recorder)
    a, b = make_backend("a"), make_backend("b")
    proxy.switch(a.backend)
    old = proxy.hold()
    assert old.backend == a.backend and proxy.current is None
    count = 20

    def work(i: int):
        if i % 2:
            return _request(proxy, "POST", "/echo", f"body {i}".encode())
        return _request(proxy, "GET", "/version")

    results, threads = _in_threads(count, work)
    assert wait_until(lambda: proxy.held_count == count)
    assert proxy.held_bytes > 0
    time.sleep(0.5)  # the restart takes this long (a duration being tested, not a sync)
    proxy.switch(b.backend)
    _join(threads)
    assert len(results) == count
    for status, data, who, _, seconds in results:
        assert (status, who) == (200, "b"), data
        assert seconds >= 0.45, "it waited for the switch"
    assert proxy.held_count == 0 and proxy.held_bytes == 0
    assert wait_until(lambda: len(recorder.holds) == count)  # reported after the answer
    assert all(served and seconds >= 0.45 for seconds, served in recorder.holds)
    assert a.requests == 0


def test_hold_past_hold_seconds_gets_503_with_retry_after(make_proxy):
    recorder = Recorder()
    proxy = make_proxy(hold_seconds=0.3, observer=recorder)
    proxy.hold()
    status, _, _, retry_after, seconds = _request(proxy, "GET", "/")
    assert (status, retry_after) == (503, "1")
    assert 0.25 <= seconds < 5
    assert proxy.held_count == 0
    assert wait_until(lambda: len(recorder.holds) == 1)  # reported after the answer
    assert recorder.holds[0][1] is False
    head_status = _request(proxy, "HEAD", "/")[:2]
    assert head_status == (503, b"")


def test_hold_limits_answer_503_at_once(make_proxy, make_backend):
    proxy = make_proxy(max_held=3, max_held_bytes=4000)
    proxy.hold()
    results, threads = _in_threads(3, lambda i: _request(proxy, "GET", "/version"))
    assert wait_until(lambda: proxy.held_count == 3)
    status, _, _, retry_after, seconds = _request(proxy, "GET", "/version")
    assert (status, retry_after) == (503, "1") and seconds < 1.0, "over max_held"
    backend = make_backend("b")
    proxy.switch(backend.backend)
    _join(threads)
    assert [r[:2] for r in results] == [(200, b"b")] * 3
    proxy.hold()
    status, _, _, retry_after, seconds = _request(proxy, "POST", "/echo", b"x" * 5000)
    assert (status, retry_after) == (503, "1") and seconds < 1.0, "over max_held_bytes"


def test_held_requests_hold_no_worker(make_proxy, make_backend):
    """50 held requests on a 4-worker proxy: workers stay free meanwhile, and after the
    switch the held requests and a parked keep-alive connection are all served."""
    proxy = make_proxy(workers=4)
    a, b = make_backend("a"), make_backend("b")
    proxy.switch(a.backend)
    keep_alive = open_client(proxy)
    keep_alive.request("GET", "/version")
    assert keep_alive.getresponse().read() == b"a"
    proxy.hold()
    results, threads = _in_threads(50, lambda i: _request(proxy, "GET", "/version"))
    assert wait_until(lambda: proxy.held_count == 50)
    sock = raw(proxy)
    started = time.monotonic()
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no Host: refused by a (free) worker
    assert read_all(sock).startswith(b"HTTP/1.1 400 ")
    assert time.monotonic() - started < 1.0
    proxy.switch(b.backend)
    _join(threads)
    assert sorted(r[:2] for r in results) == [(200, b"b")] * 50
    keep_alive.request("GET", "/version")
    assert keep_alive.getresponse().read() == b"b"
    keep_alive.close()


def test_a_client_gone_while_held_is_forgotten(make_proxy):
    """A reset: the client is gone for sure, its held request is forgotten at once. (A plain
    close looks like a half-close, whose client still waits: that one is kept, see
    test_proxy_edges, at most until the hold ends.)"""
    recorder = Recorder()
    proxy = make_proxy(observer=recorder, hold_seconds=60)
    proxy.hold()
    sock = raw(proxy)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_until(lambda: proxy.held_count == 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # with SO_LINGER 0: an RST
    assert wait_until(lambda: proxy.held_count == 0, timeout=5)
    assert wait_until(lambda: len(recorder.holds) == 1)
    assert recorder.holds[0][1] is False


def test_a_client_that_closed_while_held_is_kept_until_the_hold_ends(make_proxy):
    recorder = Recorder()
    proxy = make_proxy(observer=recorder, hold_seconds=1.5)
    proxy.hold()
    sock = raw(proxy)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_until(lambda: proxy.held_count == 1)
    sock.close()
    time.sleep(0.5)
    assert proxy.held_count == 1  # it may have only half-closed
    assert wait_until(lambda: proxy.held_count == 0, timeout=5)  # but no longer than the hold
    assert wait_until(lambda: len(recorder.holds) == 1)
    assert recorder.holds[0][1] is False


def test_switch_to_none_answers_held_requests_503(make_proxy):
    proxy = make_proxy()
    proxy.hold()
    results, threads = _in_threads(3, lambda i: _request(proxy, "GET", "/"))
    assert wait_until(lambda: proxy.held_count == 3)
    proxy.switch(None)
    _join(threads)
    assert [(r[0], r[3]) for r in results] == [(503, "1")] * 3
    assert all(r[4] < 5 for r in results)


def test_close_answers_held_requests(make_backend):
    proxy = ReverseProxy("127.0.0.1", 0)
    proxy.start()
    try:
        proxy.hold()
        results, threads = _in_threads(2, lambda i: _request(proxy, "GET", "/"))
        assert wait_until(lambda: proxy.held_count == 2)
    finally:
        proxy.close()
    _join(threads)
    assert [r[0] for r in results] == [503, 503]


def test_a_dead_backend_nobody_reported_is_held_until_the_routing_changes(make_proxy, make_backend):
    """A refused connect is not a 502 yet: the child may have just died. The request
    waits (held, with a back-off retry) and is served when the next backend is switched in."""
    proxy = make_proxy()
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy.switch(Backend("127.0.0.1", port, "dead"))
    results, threads = _in_threads(
        2,
        lambda i: (
            _request(proxy, "POST", "/echo", b"posted") if i else _request(proxy, "GET", "/version")
        ),
    )
    assert wait_until(lambda: proxy.held_count == 2)
    backend = make_backend("restarted")
    proxy.switch(backend.backend)
    _join(threads)
    assert sorted(r[:3] for r in results) == [
        (200, b"posted", "restarted"),
        (200, b"restarted", "restarted"),
    ]


def test_child_killed_without_fallback_is_held_until_it_restarts(make_proxy, make_child):
    """SIGKILL outside probation: no fallback, so requests are held until the supervisor
    has started the child again and switched to it (about half a second here)."""
    recorder = Recorder()
    proxy = make_proxy(observer=recorder)
    child = make_child("1.6.1", proxy)
    proxy.switch(child.backend)
    load = Load(proxy)
    try:
        assert wait_until(lambda: load.served_by("1.6.1") >= 100)
        child.kill()
        assert wait_until(lambda: child.exited_at > 0)
        assert wait_until(lambda: proxy.current is None)  # holding, via backend_down()
        restarted = make_child("1.6.1-restarted", proxy)
        proxy.switch(restarted.backend)
        assert wait_until(lambda: load.served_by("1.6.1-restarted") >= 100)
    finally:
        load.finish()
    assert load.failures == []
    held = [seconds for seconds, served in recorder.holds]
    assert held and all(served for _, served in recorder.holds)
    print(f"\n{len(held)} requests held, longest {1000 * max(held):.0f} ms")


def test_close_before_response_on_a_live_backend_is_not_held(make_proxy, make_backend):
    """A backend that is up but closes without answering is not dead: 502, quickly."""
    proxy = make_proxy()
    backend = make_backend("v1")
    proxy.switch(backend.backend)
    status, _, _, _, seconds = _request(proxy, "GET", "/close-early")
    assert status == 502 and seconds < 2.0
    status, _, _, _, seconds = _request(proxy, "POST", "/close-early", b"once")
    assert status == 502 and seconds < 2.0
    assert proxy.held_count == 0


def test_metrics_show_held_requests_hold_time_and_retries(make_proxy, make_backend):
    from trayupdater.metrics import Metrics

    metrics = Metrics()
    proxy = make_proxy(observer=metrics)
    metrics.watch_proxy(proxy)

    def scrape() -> str:
        return metrics.render()[0].decode()

    a, b = make_backend("a"), make_backend("b")
    proxy.hold()
    results, threads = _in_threads(2, lambda i: _request(proxy, "POST", "/echo", b"12345"))
    assert wait_until(lambda: proxy.held_count == 2)
    text = scrape()
    assert "trayupdater_proxy_held_requests 2.0" in text
    assert f"trayupdater_proxy_held_bytes {float(proxy.held_bytes)}" in text
    proxy.switch(a.backend, fallback=b.backend)
    _join(threads)
    assert wait_until(lambda: "trayupdater_proxy_hold_seconds_count 2.0" in scrape())
    assert "trayupdater_proxy_held_requests 0.0" in scrape()
    assert get(proxy, "/version")[1] == b"a"  # leaves a pooled connection to `a`
    a.close()  # dies; the news comes later
    results, threads = _in_threads(1, lambda i: _request(proxy, "GET", "/version"))
    assert wait_until(lambda: proxy.held_count == 1)  # `a` is unreachable
    proxy.backend_down(a.backend)
    _join(threads)
    assert results[0][:3] == (200, b"b", "b")
    text = scrape()
    # The pooled connection to `a` is found closed before anything is sent on it (every
    # reuse checks): no request is lost on it, so the one retry is the failed connect.
    assert 'trayupdater_proxy_retries_total{kind="stale_connection"}' not in text
    assert 'trayupdater_proxy_retries_total{kind="connect"} 1.0' in text
