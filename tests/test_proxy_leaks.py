"""Weeks of hostile peers in a minute: nothing the proxy holds outlives them.

A long-running app meets clients that reset mid-request or mid-response, stop reading, leave
connections idle, pipeline and go, and backends that reset, close early, send garbage or
stall. Each of those takes a path through the proxy that opens something: a client socket,
a pooled backend connection, a splice pipe, a poller entry, a task, a hold, a slot in the
body budget. A path that forgets to give one back leaks it, and a leak that costs one
descriptor per odd peer runs a desktop app out of them after a few weeks.

So a real proxy and real backends on loopback get rounds of a mixed hostile workload (a
seeded random mix, run by several client threads at once so that interleavings vary), and
after each round, once the peers are gone and the proxy is idle, everything must be back to
its baseline: the descriptors of the process by kind (every TCP socket told apart by its
ports: client connections, pooled backend connections, the backends' side of them), the
threads, and the proxy's own accounting (requests in flight, tasks, poller entries, holds,
buffered body bytes, idle pooled connections and pipes within their caps). The proxy must
then still answer; closed, it must leave nothing at all.

``PROXY_LEAKS_SEED`` and ``PROXY_LEAKS_ROUNDS`` change the mix and its length (the default
is deterministic).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import random
import select
import socket
import struct
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest

from trayupdater.proxy import Backend, ReverseProxy, poller, upstream, workers, zerocopy

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/fd and /proc/net"
)

SEED = int(os.environ.get("PROXY_LEAKS_SEED", "20240611"))
ROUNDS = int(os.environ.get("PROXY_LEAKS_ROUNDS", "2"))
CLIENTS = 6  # client threads at once: more than the requests the proxy serves at once
OPS_PER_ROUND = 14  # per client thread
WORKERS = 4
SETTLE_SECONDS = 15.0  # the longest a leftover may take to go: timeouts below, and lingering
CLIENT_TIMEOUT = 8.0  # far past every proxy timeout: a client waiting this long found a hang
BACKEND_IDLE = 120.0  # the backends' wait for a next request (close() ends it sooner)

# Short timeouts: a stalled peer costs a second, not a minute.
OPTIONS = {
    "workers": WORKERS,
    "backend_timeout": 1.0,
    "client_idle_timeout": 1.0,
    "header_timeout": 1.0,
    "body_timeout": 1.0,
    "hold_seconds": 1.0,
    "max_buffered_body": 64 * 1024,
    "max_header_bytes": 8192,
}

PATTERN = bytes(range(256)) * (8 * 1024 * 1024 // 256)  # every body is a prefix of it
BIG = 2_000_000  # past zerocopy.SPLICE_MIN: spliced
assert zerocopy.SPLICE_MIN < BIG <= len(PATTERN)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed or killed peer does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --- a backend that answers by path, well or badly ------------------------------------------


class HostileBackend:
    """A raw HTTP/1.1 backend on a loopback port, one thread per connection, answering by
    path: well (``/small``, ``/big``, ``/chunked``, ``/echo``, ``/until-close``, ``/ws``)
    or badly (``/refuse``, ``/vanish``, ``/reset``, ``/short``, ``/garbage``, ``/stall``,
    ``/stall-body``, ``/stall-chunked``). Sizes in the query: ``n`` bytes promised, ``sent``
    sent."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.backend = Backend("127.0.0.1", self.port, label)
        self._lock = threading.Lock()
        self._live: dict[socket.socket, threading.Thread] = {}
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name=f"{label}-accept", daemon=True)
        self._acceptor.start()

    def live(self) -> int:
        """Connections open on the backend's side."""
        with self._lock:
            return len(self._live)

    def threads(self) -> set[threading.Thread]:
        with self._lock:
            return {self._acceptor, *self._live.values()}

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
        self.listener.close()
        self._acceptor.join(CLIENT_TIMEOUT)
        with self._lock:
            live = dict(self._live)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in live.values():
            thread.join(CLIENT_TIMEOUT)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(
                target=self._serve, args=(conn,), name=f"{self.label}-conn", daemon=True
            )
            with self._lock:
                self._live[conn] = thread
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            # Long: a pooled connection the backend dropped while idle would stay in the
            # proxy's pool (checked when next taken) and spoil the count of the backend's side.
            conn.settimeout(BACKEND_IDLE)
            buf = bytearray()
            while not self._closed.is_set():
                head = _next_head(conn, buf)
                if head is None or not self._answer(conn, head, buf):
                    break
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                del self._live[conn]

    def _answer(self, conn: socket.socket, head: bytes, buf: bytearray) -> bool:
        """Answer one request; False: the connection is done."""
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        fields = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                fields[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        n, sent = int(query.get("n", 100)), int(query.get("sent", 0))
        route = url.path
        if route == "/refuse":  # answers before reading the body (413, as Go's MaxBytesReader)
            conn.sendall(
                b"HTTP/1.1 413 Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
            return False
        body = _read_exactly(conn, buf, int(fields.get("content-length", 0)))
        if route in ("/small", "/big"):
            conn.sendall(_length_head(n) + PATTERN[:n])
        elif route == "/echo":
            conn.sendall(_length_head(len(body)) + body)
        elif route == "/chunked":
            size, gap = int(query.get("size", 1000)), float(query.get("gap", 0))
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(n):
                conn.sendall(b"%x\r\n%s\r\n" % (size, PATTERN[:size]))
                if gap:
                    time.sleep(gap)
            conn.sendall(b"0\r\n\r\n")
        elif route == "/until-close":
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + PATTERN[:n])
            return False
        elif route == "/ws":
            then = query.get("then", "echo")
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\n\r\n"
            )
            while data := conn.recv(65536):
                conn.sendall(data.upper())
                if then == "reset":
                    _reset(conn)
                    return False
                if then == "close":
                    return False
            return False
        elif route == "/vanish":  # crashes before answering
            _reset(conn)
            return False
        elif route == "/reset":  # a backend that crashes mid-body
            conn.sendall(_length_head(n) + PATTERN[:sent])
            _reset(conn)
            return False
        elif route == "/short":  # closes cleanly before the end of a Content-Length body
            conn.sendall(_length_head(n) + PATTERN[:sent])
            return False
        elif route == "/garbage":
            conn.sendall(GARBAGE[query.get("kind", "noise")])
            _until_closed(conn)
            return False
        elif route == "/stall":  # never answers
            _until_closed(conn)
            return False
        elif route == "/stall-body":  # stops in the middle of a Content-Length body
            conn.sendall(_length_head(n) + PATTERN[:sent])
            _until_closed(conn)
            return False
        elif route == "/stall-chunked":  # stops in the middle of a chunked body
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            _until_closed(conn)
            return False
        else:
            conn.sendall(_length_head(0, b"404 Not Found"))
        return True


GARBAGE = {
    "noise": b"\x00\x01\x02 not http at all\r\n\r\n",
    "status": b"HTTP/1.1 abc Fine\r\nContent-Length: 2\r\n\r\nok",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "huge": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20_000,  # past max_header_bytes
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",  # unasked
}


def _length_head(n: int, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status, n)


def _next_head(conn: socket.socket, buf: bytearray) -> bytes | None:
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    head = bytes(buf[: end + 4])
    del buf[: end + 4]
    return head


def _read_exactly(conn: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = conn.recv(65536)
        if not data:
            raise ConnectionError("closed inside a request body")
        buf += data
    body = bytes(buf[:n])
    del buf[:n]
    return body


def _until_closed(conn: socket.socket) -> None:
    """Say nothing more until the proxy closes (bounded by the connection's timeout)."""
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


# --- what the process holds -------------------------------------------------------------------

_LISTEN = 0x0A


def _tcp_sockets() -> dict[int, tuple[int, int, int]]:
    """inode -> (local port, remote port, state) of this network namespace's TCP sockets."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote = parts[1].rsplit(":", 1)[1], parts[2].rsplit(":", 1)[1]
                table[int(parts[9])] = (int(local, 16), int(remote, 16), int(parts[3], 16))
    return table


def _descriptors() -> dict[int, str]:
    """fd -> what it is (readlink of /proc/self/fd), for this moment."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile (listdir's own, too)
            fds[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
    return fds


@dataclass
class Peers:
    """The ports that tell the proxy's sockets apart from the rest."""

    proxy: int = 0
    backends: set[int] = field(default_factory=set)


def _kind(target: str, tcp: dict[int, tuple[int, int, int]], peers: Peers) -> str:
    if target.startswith("socket:["):
        inode = int(target[len("socket:[") : -1])
        if inode not in tcp:
            return "socket not in /proc/net/tcp (reset, unconnected, or not TCP)"
        local, remote, state = tcp[inode]
        if state == _LISTEN:
            return "listening socket"
        if local == peers.proxy:
            return "client connection, proxy side"
        if remote == peers.proxy:
            return "client connection, client side"
        if remote in peers.backends:
            return "backend connection, proxy side"
        if local in peers.backends:
            return "backend connection, backend side"
        return "other TCP socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        return target[len("anon_inode:") :].strip("[]")  # eventpoll, eventfd, ...
    return "file"


def new_descriptors(baseline: dict[int, str], peers: Peers) -> collections.Counter[str]:
    """The descriptors opened since ``baseline`` and still open, by kind. (Keyed by number
    and target: one that was closed and its number reused counts as new; one that another
    test left and the garbage collector closed meanwhile does not count at all.)"""
    tcp = _tcp_sockets()
    now = _descriptors()
    return collections.Counter(
        _kind(target, tcp, peers) for fd, target in now.items() if baseline.get(fd) != target
    )


# --- the workload: one client's moves ----------------------------------------------------------


@dataclass
class World:
    proxy: ReverseProxy
    backends: list[HostileBackend]
    current: int = 0  # the backend the proxy routes to
    routing: threading.Lock = field(default_factory=threading.Lock)
    refusing: Backend | None = None  # a port that refuses connections: a backend gone
    holding: bool = False  # no backend to answer right now (op_hold, op_backend_gone)
    holds: int = 0  # such moments begun so far
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def connect(self, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        if rcvbuf:  # before connecting: the window advertised is what the proxy can send
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(CLIENT_TIMEOUT)
        try:
            sock.connect(self.proxy.address)
        except BaseException:
            sock.close()
            raise
        return sock


Op = Callable[[World, random.Random, list[socket.socket]], None]


def _request(path: str, method: str = "GET", body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}"
    if (body or method in ("POST", "PUT")) and "Content-Length" not in extra:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _drain(sock: socket.socket, limit: int = 1 << 62) -> bytes:
    """What arrives until EOF (or a reset: a proxy closing on unread bytes), up to ``limit``."""
    data = bytearray()
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        while len(data) < limit and (more := sock.recv(min(1 << 20, limit - len(data)))):
            data += more
    return bytes(data)


def _read_head(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str]]:
    while (end := buf.find(b"\r\n\r\n")) < 0:
        more = sock.recv(65536)
        assert more, f"closed before a response head: {bytes(buf[:200])!r}"
        buf += more
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), fields


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One whole final response from ``sock`` (``buf``: bytes read ahead)."""
    status, fields = _read_head(sock, buf)
    while 100 <= status < 200 and status != 101:  # interim answers
        status, fields = _read_head(sock, buf)

    def more() -> None:
        data = sock.recv(1 << 20)
        assert data, "closed inside a response body"
        buf.extend(data)

    if "content-length" in fields:
        n = int(fields["content-length"])
        while len(buf) < n:
            more()
        body = bytes(buf[:n])
        del buf[:n]
    elif fields.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            while (end := buf.find(b"\r\n")) < 0:
                more()
            size = int(bytes(buf[:end]).split(b";")[0], 16)
            del buf[: end + 2]
            if size == 0:
                while (end := buf.find(b"\r\n")) != 0:  # trailers, then the empty line
                    if end < 0:
                        more()
                    else:
                        del buf[: end + 2]
                del buf[:2]
                break
            while len(buf) < size + 2:
                more()
            parts.append(bytes(buf[:size]))
            del buf[: size + 2]
        body = b"".join(parts)
    else:
        body = bytes(buf) + _drain(sock)
        buf.clear()
    return status, fields, body


HELD = (502, 503)  # the answers to a request whose hold ran out (gone, or no backend)


def op_normal(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """One to three ordinary requests on one kept-alive connection, every byte checked."""
    holding_before, holds_before = world.holding, world.holds
    sock = world.connect()
    socks.append(sock)
    buf = bytearray()
    for _ in range(rng.randint(1, 3)):
        what = rng.choice(["small", "big", "chunked", "echo", "echo-big"])
        if what == "small":
            n = rng.randint(0, 60_000)
            request, expected = _request(f"/small?n={n}"), PATTERN[:n]
        elif what == "big":
            n = rng.randint(BIG // 2, BIG)
            request, expected = _request(f"/big?n={n}"), PATTERN[:n]
        elif what == "chunked":
            n, size = rng.randint(1, 40), rng.randint(1, 5000)
            request, expected = _request(f"/chunked?n={n}&size={size}"), PATTERN[:size] * n
        else:
            n = rng.randint(0, 30_000) if what == "echo" else rng.randint(100_000, 400_000)
            body = rng.randbytes(n)
            request, expected = _request("/echo", "PUT", body), body
        sock.sendall(request)
        status, fields, got = _read_response(sock, buf)
        # A hold that ran out while this request waited: 503 (502 if the backend was gone).
        held = holding_before or world.holding or world.holds != holds_before
        if status in HELD and held:
            return
        assert status == 200, f"{what}: {status} {got[:200]!r}"
        assert got == expected, f"{what}: {len(got)} bytes, expected {len(expected)}"
        if fields.get("connection", "").lower() == "close":
            return


def op_burst(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """Twice WORKERS slow streamed answers at once: between their chunks they do not count
    as in flight, so more backend connections are open (and then released) than the pool
    keeps; some clients go before the end."""
    holding_before, holds_before = world.holding, world.holds
    for _ in range(2 * WORKERS):
        sock = world.connect()
        socks.append(sock)
        sock.sendall(_request("/chunked?n=4&size=100&gap=0.05"))
    for sock in socks:
        if rng.random() < 0.2:
            _reset(sock)
            continue
        status, _, body = _read_response(sock, bytearray())
        held = holding_before or world.holding or world.holds != holds_before
        assert (status, body) == (200, PATTERN[:100] * 4) or (status in HELD and held), status


def op_reset_mid_head(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    sock = world.connect()
    socks.append(sock)
    request = _request("/small", extra="X-Padding: " + "p" * rng.randint(0, 3000) + "\r\n")
    sock.sendall(request[: rng.randint(1, len(request) - 1)])
    time.sleep(rng.choice([0, 0, 0.01, 0.05, 1.2]))  # 1.2: past header_timeout, a 408
    if rng.random() < 0.3:  # half-closed mid-head: the proxy closes it
        sock.shutdown(socket.SHUT_WR)
        _drain(sock)
    else:
        _reset(sock)


def op_reset_mid_body(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """A body the dispatcher receives (small), or one a worker streams upstream (large)."""
    sock = world.connect()
    socks.append(sock)
    n = rng.choice([rng.randint(10, 60_000), rng.randint(100_000, 600_000)])
    request = _request("/echo", rng.choice(["POST", "PUT"]), PATTERN[:n])
    head_end = request.index(b"\r\n\r\n") + 4
    sock.sendall(request[: rng.randint(head_end, len(request) - 1)])
    time.sleep(rng.choice([0, 0, 0.02, 0.1]))
    if rng.random() < 0.3:  # half-closed mid-body: 400 or a close, never a hang
        sock.shutdown(socket.SHUT_WR)
        _drain(sock)
    else:
        _reset(sock)


def op_bad_request(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """A request the proxy refuses (400, 431, 417): it answers, shuts its side and reads
    what still comes for a moment; the client goes at once, or keeps sending, or waits."""
    request = rng.choice(
        [
            b"GET / HTTP/1.1\nHost: x\n\n",  # bare LF
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",  # 431
            b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n",  # 417
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ]
    )
    sock = world.connect()
    socks.append(sock)
    sock.sendall(request)
    choice = rng.choice(["reset", "more", "read"])
    if choice == "reset":
        _reset(sock)
        return
    if choice == "more":  # still sending while the proxy lingers
        with contextlib.suppress(OSError):
            for _ in range(rng.randint(1, 5)):
                sock.sendall(b"junk" * 1000)
                time.sleep(0.05)
    data = _drain(sock)
    assert not data or data.startswith(b"HTTP/1.1 4"), data[:100]


def op_upload_refused(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """The backend answers a large upload before reading it, and closes."""
    sock = world.connect()
    socks.append(sock)
    n = rng.randint(200_000, 2_000_000)
    with contextlib.suppress(OSError):
        sock.sendall(_request("/refuse", "PUT", PATTERN[:n]))
    if rng.random() < 0.3:
        _reset(sock)
        return
    data = _drain(sock)
    assert not data or data.startswith(b"HTTP/1.1 "), data[:100]


def op_reset_mid_response(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    what = rng.choice(["small", "chunked", "big", "big", "until-close"])
    path = {
        "small": f"/small?n={rng.randint(1, 60_000)}",
        "chunked": f"/chunked?n=40&size=4000&gap={rng.choice([0, 0.005])}",
        "big": f"/big?n={rng.randint(BIG, len(PATTERN))}",
        "until-close": f"/until-close?n={rng.randint(1, 500_000)}",
    }[what]
    sock = world.connect(rcvbuf=rng.choice([None, 4096]))
    socks.append(sock)
    sock.sendall(_request(path))
    with contextlib.suppress(ConnectionResetError):
        _drain(sock, rng.choice([0, 1, 300, 70_000, 300_000]))
    _reset(sock)


def op_stop_reading(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """A large response the client stops reading, then it vanishes: before or after the
    proxy's wait for it ran out (client_idle_timeout)."""
    sock = world.connect(rcvbuf=4096)
    socks.append(sock)
    sock.sendall(_request(f"/big?n={len(PATTERN)}"))
    with contextlib.suppress(ConnectionResetError):
        _drain(sock, rng.choice([0, 10_000]))
    time.sleep(rng.choice([0.05, 0.3, 1.3]))
    if rng.random() < 0.5:
        _reset(sock)  # else an ordinary close, which unread bytes turn into an RST too


def op_pipelined(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """Several requests in one write; the client goes before (or after) some answers."""
    paths = ["/small?n=100", f"/big?n={BIG}", "/chunked?n=5&size=100", "/stall"]
    requests = [_request(rng.choice(paths)) for _ in range(rng.randint(2, 5))]
    if rng.random() < 0.3:
        requests.append(_request("/echo", "POST", PATTERN[:50_000]))
    sock = world.connect(rcvbuf=rng.choice([None, 4096]))
    socks.append(sock)
    sock.sendall(b"".join(requests))
    with contextlib.suppress(ConnectionResetError):
        _drain(sock, rng.choice([0, 100, 100_000]))
    if rng.random() < 0.5:
        _reset(sock)


def op_expect_abandoned(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """Expect: 100-continue, then no body (or half of it): gone, silent, or half-closed."""
    n = rng.choice([5_000, 500_000])  # buffered by the dispatcher, or streamed by a worker
    sock = world.connect()
    socks.append(sock)
    sock.sendall(
        _request("/echo", "POST", extra=f"Expect: 100-continue\r\nContent-Length: {n}\r\n")
    )
    if rng.random() < 0.7:
        buf = bytearray()
        with contextlib.suppress(OSError):
            status, _ = _read_head(sock, buf)
            assert status in (100, 408, *HELD), status
    choice = rng.choice(["reset", "half", "silent", "half-close"])
    if choice == "half":
        with contextlib.suppress(OSError):
            sock.sendall(PATTERN[: n // 2])
        _reset(sock)
    elif choice == "silent":  # until the body timeout: 408
        with contextlib.suppress(OSError):
            _drain(sock)
    elif choice == "half-close":
        sock.shutdown(socket.SHUT_WR)
        _drain(sock)
    else:
        _reset(sock)


def op_idle(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """Connected and silent, or kept alive after an answer; then closed, before or after the
    proxy's own timeout closed it."""
    sock = world.connect()
    socks.append(sock)
    if rng.random() < 0.5:
        sock.sendall(_request("/small?n=10"))
        status, _, _ = _read_response(sock, bytearray())
        assert status in (200, *HELD)
    time.sleep(rng.choice([0.01, 0.2, 1.2]))
    if rng.random() < 0.5:
        _reset(sock)


def op_upgrade(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """A tunnel (101) closed by the client or the backend, cleanly or with a reset."""
    then = rng.choice(["echo", "close", "reset"])
    sock = world.connect()
    socks.append(sock)
    sock.sendall(
        _request(f"/ws?then={then}", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n")
    )
    if rng.random() < 0.15:  # gone before the 101
        _reset(sock)
        return
    buf = bytearray()
    status, _ = _read_head(sock, buf)
    if status in HELD:  # a hold ran out meanwhile
        return
    assert status == 101, status
    message = b"hello %d" % rng.randint(0, 1000)
    sock.sendall(message)
    while message.upper() not in buf:
        more = b"" if then == "reset" else sock.recv(65536)
        if not more:  # a backend's reset may destroy its echo before the proxy read it
            assert then == "reset", f"tunnel closed before its echo: {bytes(buf)!r}"
            _drain(sock)
            return
        buf += more
    if then == "echo":  # the client ends it
        if rng.random() < 0.5:
            sock.shutdown(socket.SHUT_WR)
            _drain(sock)
        else:
            _reset(sock)
    else:  # the backend did
        _drain(sock)


def op_backend_misbehaves(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """The backend resets or closes mid-body, sends garbage, or stalls past the timeout."""
    path = rng.choice(
        [
            "/vanish",  # no answer at all: retried, then 502
            f"/reset?n={len(PATTERN)}&sent={rng.randint(0, 1_000_000)}",  # spliced when cut
            f"/reset?n=20000&sent={rng.randint(0, 19_999)}",  # read whole: 502
            f"/short?n={len(PATTERN)}&sent={rng.randint(0, 1_000_000)}",
            f"/short?n=1000&sent={rng.randint(0, 999)}",
            "/garbage?kind=" + rng.choice(sorted(GARBAGE)),
            "/stall",
            f"/stall-body?n={len(PATTERN)}&sent={rng.randint(0, 500_000)}",
            "/stall-chunked",
        ]
    )
    sock = world.connect()
    socks.append(sock)
    sock.sendall(_request(path))
    if rng.random() < 0.2:
        time.sleep(rng.choice([0, 0.05]))
        _reset(sock)
        return
    data = _drain(sock)
    assert not data or data.startswith(b"HTTP/1.1 "), data[:100]


def op_hold(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """No backend for a moment (a child restarting): a request held, its client gone or
    not, served when the backend is back or 503 when the hold runs out."""
    with world.routing:
        world.holding = True
        world.holds += 1
        world.proxy.hold()
        try:
            sock = world.connect()
            socks.append(sock)
            sock.sendall(_request("/small?n=10"))
            deadline = time.monotonic() + 2
            while world.proxy.held_count == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            gone = rng.random() < 0.4
            if gone:
                _reset(sock)
            time.sleep(rng.choice([0, 0.1, 1.2]))  # 1.2: past hold_seconds, a 503
        finally:
            world.proxy.switch(world.backends[world.current].backend)
            world.holding = False
    if not gone:
        status, _, _ = _read_response(sock, bytearray())
        assert status in (200, 503), status


def op_backend_gone(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """The backend is gone for a moment (connections refused) and nobody said so: requests
    are held and tried again, then served when it is back, or 502 when the hold runs out."""
    assert world.refusing is not None
    with world.routing:
        world.holding = True
        world.holds += 1
        world.proxy.switch(world.refusing)
        try:
            sock = world.connect()
            socks.append(sock)
            sock.sendall(_request("/small?n=10"))
            time.sleep(rng.choice([0.05, 0.3, 1.2]))  # 1.2: past hold_seconds, a 502
            if rng.random() < 0.3:
                _reset(sock)
                return
        finally:
            world.proxy.switch(world.backends[world.current].backend)
            world.holding = False
    status, _, _ = _read_response(sock, bytearray())
    assert status in (200, *HELD), status


def op_switch(world: World, rng: random.Random, socks: list[socket.socket]) -> None:
    """Another backend (an update): the old generation's pool closes once it is idle."""
    with world.routing:
        world.current = 1 - world.current
        world.proxy.switch(world.backends[world.current].backend)


OPS: list[tuple[Op, int]] = [
    (op_normal, 8),
    (op_burst, 1),
    (op_reset_mid_head, 3),
    (op_reset_mid_body, 4),
    (op_bad_request, 2),
    (op_upload_refused, 1),
    (op_reset_mid_response, 5),
    (op_stop_reading, 2),
    (op_pipelined, 3),
    (op_expect_abandoned, 3),
    (op_idle, 2),
    (op_upgrade, 3),
    (op_backend_misbehaves, 6),
    (op_hold, 1),
    (op_backend_gone, 1),
    (op_switch, 1),
]


def run_round(world: World, seed: int) -> None:
    """The round's moves (each at least once, the rest drawn by weight, shuffled) dealt to
    CLIENTS threads at once, each with its own seeded randomness; fails on what they met."""
    deal = random.Random(seed)
    ops, weights = zip(*OPS, strict=True)
    deck = [*ops, *deal.choices(ops, weights, k=CLIENTS * OPS_PER_ROUND - len(ops))]
    deal.shuffle(deck)
    errors: list[str] = []

    def client(index: int) -> None:
        rng = random.Random(f"{seed}/{index}")
        for op in deck[index::CLIENTS]:
            socks: list[socket.socket] = []
            try:
                op(world, rng, socks)
                world.counts[op.__name__] += 1
            except Exception:
                errors.append(f"client {index}, {op.__name__}:\n{traceback.format_exc()}")
            finally:
                for sock in socks:
                    sock.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not errors, "\n".join(errors[:5])


# --- the checks ----------------------------------------------------------------------------


def accounting(proxy: ReverseProxy) -> dict[str, object]:
    """What the proxy counts as live right now (all of it should be nothing when idle,
    but for idle pooled connections and pipes kept for reuse)."""
    dispatcher = proxy._dispatcher
    assert dispatcher is not None
    gen = proxy._router.generation
    pool = gen.pool
    return {
        "requests in flight": proxy._router.total_in_flight,
        "requests in flight (current generation)": gen.in_flight,
        "connections being served": len(proxy._service.serving),
        "parked connections": len(dispatcher._parked),
        "connections handed back": len(dispatcher._incoming),
        "connections waiting their turn": len(dispatcher._backlog),
        "tasks handed back": len(dispatcher._returned),
        "tasks woken": len(dispatcher._woken),
        "waiting tasks": len(dispatcher._waits),
        "paused tasks": dispatcher._waits.paused(),
        "held connections": len(dispatcher._held),
        "held requests": proxy.held_count,
        "held bytes": proxy.held_bytes,
        "buffered body bytes": proxy.buffered_body_bytes,
        "armed poller entries": dispatcher._poller.armed(),
        "not accepting (full)": dispatcher._full,
        "accepts paused": dispatcher._paused_until,
        "log summary windows": len(proxy._report.summary._windows),
        "connects under way": pool._connecting if pool else 0,
        "requests waiting to connect": len(pool._waiters) if pool else 0,
    }


def pooled(proxy: ReverseProxy) -> int:
    pool = proxy._router.generation.pool
    return len(pool._idle) if pool else 0


@dataclass
class Baseline:
    fds: dict[int, str]
    threads: set[threading.Thread]


def problems(proxy: ReverseProxy, backends: list[HostileBackend], base: Baseline) -> list[str]:
    """What is not back to its baseline yet (empty: everything is)."""
    found = []
    counts = accounting(proxy)
    found += [f"{name}: {value}" for name, value in counts.items() if value]
    idle_pooled = pooled(proxy)
    idle_pipes = proxy._forwarder.relay.pipes.idle()
    if idle_pooled > WORKERS:
        found.append(f"{idle_pooled} idle pooled backend connections, more than {WORKERS}")
    if idle_pipes > zerocopy.IDLE_PIPES:
        found.append(f"{idle_pipes} idle pipes, more than {zerocopy.IDLE_PIPES}")
    pool = proxy._router.generation.pool
    if pool is not None and any(sock.fileno() < 0 for sock, _ in pool._idle):
        found.append("a closed socket in the pool")
    peers = Peers(proxy.address[1], {b.port for b in backends})
    expected = collections.Counter(
        {
            "backend connection, proxy side": idle_pooled,
            "backend connection, backend side": idle_pooled,  # our backends: in this process
            "pipe": 2 * idle_pipes,
        }
    )
    fds = new_descriptors(base.fds, peers)
    if +fds != +expected:
        found.append(f"new descriptors {dict(+fds)}, expected {dict(+expected)}")
    new_threads = [t for t in threading.enumerate() if t not in base.threads]
    backend_threads = set().union(*(b.threads() for b in backends))
    stray = sorted(t.name for t in new_threads if t not in backend_threads)
    if stray:
        found.append(f"new threads {stray}")
    live = sum(b.live() for b in backends)
    if live != idle_pooled:  # one per connection on the backends' side
        found.append(f"{live} backend connection threads, expected {idle_pooled}")
    dead = [t.name for t in proxy._threads if not t.is_alive()]
    if dead:
        found.append(f"proxy threads died: {dead}")
    return found


def settle(what: Callable[[], list[str]], seconds: float = SETTLE_SECONDS) -> None:
    """Poll until ``what()`` finds nothing (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + seconds
    found = what()
    while found and time.monotonic() < deadline:
        time.sleep(0.05)
        found = what()
    assert not found, "not back to baseline:\n  " + "\n  ".join(found)


@contextlib.contextmanager
def unclosed_objects() -> Iterator[list[str]]:
    """Sockets (and files) left to the garbage collector to close: closed late, or only
    because nothing referred to them any more."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        found: list[str] = []
        yield found
        gc.collect()
        found += [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def check_still_serves(world: World) -> None:
    sock = world.connect()
    try:
        buf = bytearray()
        for path, n in (("/small?n=1000", 1000), (f"/big?n={BIG}", BIG)):
            sock.sendall(_request(path))
            status, _, body = _read_response(sock, buf)
            assert (status, body) == (200, PATTERN[:n])
    finally:
        sock.close()


@pytest.fixture
def make_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], World]]:
    # Two connects at once per backend (not 8): fewer than WORKERS, so requests also wait
    # for a turn to connect (a Wakeup).
    monkeypatch.setattr(upstream, "MAX_CONNECTING", 2)
    made: list[tuple[ReverseProxy, list[HostileBackend]]] = []

    def make(kind: str) -> World:
        monkeypatch.setattr(poller, "KIND", kind)
        backends = [HostileBackend("a"), HostileBackend("b")]
        proxy = ReverseProxy("127.0.0.1", 0, **OPTIONS)  # type: ignore[arg-type]
        made.append((proxy, backends))
        proxy.start()
        proxy.switch(backends[0].backend)
        refusing = Backend("127.0.0.1", refused.getsockname()[1], "gone")
        return World(proxy, backends, refusing=refusing)

    # Bound, never listening: its port refuses connections, and no other socket takes it.
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    yield make
    for proxy, backends in made:
        proxy.close()
        for backend in backends:
            backend.close()
    refused.close()


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["epoll", "selectors"])
def test_a_hostile_workload_leaves_nothing_behind(
    make_world: Callable[[str], World], kind: str
) -> None:
    before = Baseline(_descriptors(), set(threading.enumerate()))
    with unclosed_objects() as unclosed:
        world = make_world(kind)
        proxy, backends = world.proxy, world.backends
        base = Baseline(_descriptors(), set(threading.enumerate()))
        for round_ in range(ROUNDS):
            run_round(world, SEED * 1000 + round_ + (0 if kind == "epoll" else 500))
            settle(lambda: problems(proxy, backends, base))
            check_still_serves(world)
        proxy.close()
        for backend in backends:
            backend.close()
        # Closed: nothing of the proxy's (or the backends') is left at all.
        settle(lambda: _left_after_close(before))
    assert not unclosed, unclosed[:5]
    # The workload did run each of its moves (a move that always failed would not count).
    assert {op.__name__ for op, _ in OPS} <= set(world.counts), world.counts


def _left_after_close(before: Baseline) -> list[str]:
    found = []
    fds = new_descriptors(before.fds, Peers())
    if fds:
        found.append(f"descriptors left open: {dict(fds)}")
    threads = sorted(t.name for t in threading.enumerate() if t not in before.threads)
    if threads:
        found.append(f"threads left: {threads}")
    return found


# --- the leaks the workload found, one by one --------------------------------------------------


def test_a_backend_reset_met_while_a_worker_busy_polls_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker serving the only request in flight busy-polls the backend for its answer
    (sockets.spin_fill) before the request's own read. A reset met there was raised in the
    worker, outside the request's generator: the client was closed without an answer, and the
    generator was left suspended, its finally blocks never run while the worker idled. The
    backend connection stayed open and the request stayed in flight (a drain() waited for
    it in vain)."""
    real_spin_fill = workers.spin_fill

    def after_the_reset(conn, seconds):  # type: ignore[no-untyped-def]
        # The backend resets at once, but "at once" races the poll: wait for its RST first.
        waiter = select.poll()
        waiter.register(conn.sock, select.POLLERR | select.POLLHUP)
        waiter.poll(CLIENT_TIMEOUT * 1000)
        real_spin_fill(conn, seconds)

    monkeypatch.setattr(workers, "spin_fill", after_the_reset)
    # One worker, and a body past max_buffered_body: a worker streams it, alone.
    with (
        contextlib.closing(HostileBackend("a")) as backend,
        ReverseProxy("127.0.0.1", 0, workers=1, max_buffered_body=1024) as proxy,
    ):
        proxy.switch(backend.backend)
        base = _descriptors()
        sock = socket.create_connection(proxy.address, timeout=CLIENT_TIMEOUT)
        try:
            sock.sendall(_request("/vanish", "PUT", PATTERN[:100_000]))
            answer = _drain(sock)
        finally:
            sock.close()
        peers = Peers(proxy.address[1], {backend.port})
        settle(lambda: _leftovers(proxy, base, peers), seconds=3.0)
    assert answer.startswith(b"HTTP/1.1 502 "), answer  # not a close without a word


def test_a_worker_failing_outside_the_request_still_gives_back_what_it_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever fails in a worker between the steps of a request (a bug, say), the request's
    generator is closed: its backend connection is closed and it leaves the requests in
    flight, as when the dispatcher ends a task."""

    def broken(conn, seconds):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in the worker")

    monkeypatch.setattr(workers, "spin_fill", broken)
    with (
        contextlib.closing(HostileBackend("a")) as backend,
        ReverseProxy("127.0.0.1", 0, workers=1, max_buffered_body=1024) as proxy,
    ):
        proxy.switch(backend.backend)
        base = _descriptors()
        sock = socket.create_connection(proxy.address, timeout=CLIENT_TIMEOUT)
        try:
            sock.sendall(_request("/echo", "PUT", PATTERN[:100_000]))
            assert _drain(sock) == b""  # closed: the bug is logged
        finally:
            sock.close()
        peers = Peers(proxy.address[1], {backend.port})
        settle(lambda: _leftovers(proxy, base, peers), seconds=3.0)


def _leftovers(proxy: ReverseProxy, base: dict[int, str], peers: Peers) -> list[str]:
    found = []
    if proxy._router.total_in_flight:
        found.append(f"{proxy._router.total_in_flight} requests in flight")
    fds = new_descriptors(base, peers)
    del fds["pipe"]  # the proxy keeps pipes
    if +fds:
        found.append(f"new descriptors {dict(+fds)}")
    return found
