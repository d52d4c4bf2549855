"""Load generators for the proxy benchmark: wrk when installed, else a Python keep-alive loop.

Both return a :class:`Result`: requests, seconds, p50/p99 latency and failed requests
(non-2xx answers plus socket errors, as wrk counts them).
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    failed: int = 0  # non-2xx responses plus socket errors
    notes: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(port: int, path: str, connections: int, duration: float) -> Result:
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = Result()
    match = re.search(r"(\d+) requests in ([\d.]+)(ms|s)", out)
    if match:
        result.requests = int(match.group(1))
        result.seconds = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        found = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if found:
            setattr(result, attr, _ms(found.group(1)))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result.failed = int(non2xx.group(1)) if non2xx else 0
    if errors:
        result.failed += sum(int(n) for n in errors.groups())
        result.notes.append(errors.group(0))
    return result


def pyload(port: int, path: str, connections: int, duration: float) -> Result:
    """Keep-alive GET loop in threads: the fallback when wrk is not installed."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    failed = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def loop() -> None:
        mine: list[float] = []
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        buf = b""
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                sock.sendall(request)
                while b"\r\n\r\n" not in buf:
                    buf += sock.recv(65536)
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                while len(buf) < length:
                    buf += sock.recv(1 << 20)
                buf = buf[length:]
                mine.append(time.perf_counter() - started)
                if not head.startswith(b"HTTP/1.1 2"):
                    with lock:
                        failed[0] += 1
        except (OSError, AttributeError):
            with lock:
                failed[0] += 1
        finally:
            sock.close()
            with lock:
                latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = Result(requests=len(latencies), seconds=time.monotonic() - started, failed=failed[0])
    if latencies:
        latencies.sort()
        result.p50_ms = latencies[len(latencies) // 2] * 1000
        result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return result


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` keep-alive connections that each made one request and now sit idle."""
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        socks.append(sock)
    for sock in socks:  # read each answer (small: one recv is enough on loopback)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("an idle connection was closed before its answer")
            data += chunk
    return socks
