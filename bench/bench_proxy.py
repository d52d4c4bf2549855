"""Benchmark the reverse proxy: throughput, latency, and failed requests during swaps.

Runs a fast backend (``backend_server.py``: Go if available, else Python), the proxy in its
own process (so the load generator's GIL does not slow it down), and a load generator (wrk if
installed, else a Python one, which is much slower and says so). Direct-to-backend and
through-proxy runs alternate in the same invocation so machine noise hits both alike.

    python bench/bench_proxy.py                  # full run, about 1.5 minutes
    python bench/bench_proxy.py --duration 2 --rounds 1 --swaps 10   # quick look

Scenarios: small responses and 1 MiB bodies, at 1 and 32 connections. Then a swap test:
32 keep-alive connections while the proxy switches N times to a freshly started backend,
drains the old generation and kills the old backend, counting every failed request.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BACKEND = HERE / "backend_server.py"


# -- processes ----------------------------------------------------------------------------------


def start_backend(label: str, impl: str) -> tuple[subprocess.Popen, int, str]:
    proc = subprocess.Popen(
        [sys.executable, str(BACKEND), "--port", "0", "--label", label, "--impl", impl],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split() if proc.stdout else []
    if len(line) != 3 or line[0] != "LISTENING":
        proc.kill()
        raise SystemExit(f"backend did not start: {line}")
    return proc, int(line[1]), line[2]


def start_go_proxy(backend_port: int) -> tuple[subprocess.Popen | None, int]:
    """Go's httputil.ReverseProxy in front of the same backend, if Go is installed."""
    sys.path.insert(0, str(BACKEND.parent))
    from backend_server import GO_PROXY_SOURCE, go_binary

    exe = go_binary(GO_PROXY_SOURCE, "goproxy")
    if exe is None:
        return None, 0
    # stderr: Go logs "context canceled" whenever wrk hangs up at the end of a run.
    proc = subprocess.Popen(
        [str(exe), "0", str(backend_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline().split() if proc.stdout else []
    if len(line) != 3 or line[0] != "LISTENING":
        proc.kill()
        return None, 0
    return proc, int(line[1])


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


class ProxyProcess:
    """The proxy under test in a child process, driven over stdin/stdout."""

    def __init__(self, backend_port: int, label: str, workers: int) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-proxy",
                str(backend_port),
                label,
                str(workers),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.port = int(self._read()["port"])

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("proxy process died")
        return json.loads(line)

    def call(self, *command: object) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(map(str, command)) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.call("quit")
        self.proc.wait(10)


def serve_proxy(backend_port: int, label: str, workers: int) -> None:
    """The --serve-proxy mode: run the proxy; answer commands on stdin with JSON lines."""
    from trayupdater.proxy import Backend, ReverseProxy

    counts: dict[str, int] = {}
    lock = threading.Lock()

    class Observer:
        def request_done(self, status: int, seconds: float, backend_label: str | None) -> None:
            key = f"{status // 100}xx"
            with lock:
                counts[key] = counts.get(key, 0) + 1

        def upstream_error(self, kind: str) -> None:
            with lock:
                counts[kind] = counts.get(kind, 0) + 1

    proxy = ReverseProxy("127.0.0.1", 0, workers=workers, observer=Observer())
    proxy.start()
    proxy.switch(Backend("127.0.0.1", backend_port, label))

    def reply(data: dict) -> None:
        print(json.dumps(data), flush=True)

    reply({"port": proxy.address[1]})
    for line in sys.stdin:
        command, *args = line.split()
        if command == "switch":
            old = proxy.switch(Backend("127.0.0.1", int(args[0]), args[1]))
            started = time.monotonic()
            drained = proxy.drain(old, timeout=10.0)
            reply({"drained": drained, "drain_seconds": time.monotonic() - started})
        elif command == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            with lock:
                reply({"cpu": usage.ru_utime + usage.ru_stime, "counts": dict(counts)})
        elif command == "quit":
            proxy.close()
            reply({})
            return


# -- load generation --------------------------------------------------------------------------


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


# -- the benchmark ------------------------------------------------------------------------------


SCENARIOS = [
    ("small", "/", 1),
    ("small", "/", 32),
    ("1 MiB", "/big", 1),
    ("1 MiB", "/big", 32),
]


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the trayupdater reverse proxy.")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run (4)")
    parser.add_argument("--rounds", type=int, default=2, help="direct/proxy alternations (2)")
    parser.add_argument("--swaps", type=int, default=20, help="backend swaps under load (20)")
    parser.add_argument("--backend", choices=("auto", "go", "python"), default="auto")
    parser.add_argument("--workers", type=int, default=64, help="proxy worker threads (64)")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--serve-proxy", nargs=3, metavar=("PORT", "LABEL", "WORKERS"))
    args = parser.parse_args()
    if args.serve_proxy:
        serve_proxy(int(args.serve_proxy[0]), args.serve_proxy[1], int(args.serve_proxy[2]))
        return

    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    load = wrk if use_wrk else pyload
    backend, backend_port, impl = start_backend("v0", args.backend)
    proxy = ProxyProcess(backend_port, "v0", args.workers)
    go_proxy, go_port = start_go_proxy(backend_port)
    print(f"backend: {impl}; load generator: {'wrk' if use_wrk else 'python (slow: GIL-bound)'}")
    print("Go httputil.ReverseProxy: " + ("measured alongside" if go_proxy else "no Go: skipped"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.duration:g} s runs")
    results: dict[tuple[str, int, str], list[Result]] = {}
    cpu_per_request: dict[tuple[str, int], list[float]] = {}
    try:
        load(proxy.port, "/", 8, 1.0)  # warm up pools and caches
        for _ in range(args.rounds):
            for name, path, conns in SCENARIOS:
                key = (name, conns)
                results.setdefault((*key, "direct"), []).append(
                    load(backend_port, path, conns, args.duration)
                )
                before = proxy.call("stats")["cpu"]
                result = load(proxy.port, path, conns, args.duration)
                cpu = proxy.call("stats")["cpu"] - before
                results.setdefault((*key, "proxy"), []).append(result)
                if result.requests:
                    cpu_per_request.setdefault(key, []).append(cpu / result.requests * 1e6)
                if go_proxy is not None:
                    results.setdefault((*key, "go"), []).append(
                        load(go_port, path, conns, args.duration)
                    )
        print_table(results, cpu_per_request)
        swap_test(proxy, load, args, backend)
    finally:
        proxy.close()
        if go_proxy is not None:
            stop(go_proxy)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def print_table(results: dict, cpu_per_request: dict) -> None:
    header = (
        f"{'scenario':<14}{'direct rps':>11}{'proxy rps':>11}{'ratio':>7}"
        f"{'direct p50/p99 ms':>19}{'proxy p50/p99 ms':>18}{'proxy CPU/req':>15}{'failed':>8}"
        f"{'go-httputil rps':>17}{'go p50/p99 ms':>16}"
    )
    print()
    print(header)
    print("-" * len(header))
    for name, _, conns in SCENARIOS:
        direct = results[(name, conns, "direct")]
        proxied = results[(name, conns, "proxy")]
        d_rps = _median([r.rps for r in direct])
        p_rps = _median([r.rps for r in proxied])
        d_lat = (
            f"{_median([r.p50_ms for r in direct]):.3f}/{_median([r.p99_ms for r in direct]):.2f}"
        )
        p_lat = (
            f"{_median([r.p50_ms for r in proxied]):.3f}/{_median([r.p99_ms for r in proxied]):.2f}"
        )
        cpu = _median(cpu_per_request.get((name, conns), []))
        failed = sum(r.failed for r in direct + proxied)
        ratio = p_rps / d_rps if d_rps else 0.0
        go = results.get((name, conns, "go"), [])
        go_rps = f"{_median([r.rps for r in go]):.0f}" if go else "-"
        go_lat = (
            f"{_median([r.p50_ms for r in go]):.3f}/{_median([r.p99_ms for r in go]):.2f}"
            if go
            else "-"
        )
        print(
            f"{f'{name} c={conns}':<14}{d_rps:>11.0f}{p_rps:>11.0f}{ratio:>7.2f}"
            f"{d_lat:>19}{p_lat:>18}{cpu:>12.0f} us{failed:>8}{go_rps:>17}{go_lat:>16}"
        )
    print("(medians over rounds; rps = requests/s; CPU/req = proxy process CPU time per request)")


def swap_test(proxy: ProxyProcess, load, args: argparse.Namespace, backend) -> None:
    duration = max(args.duration * 3, args.swaps * 0.5 + 2)
    result: list[Result] = []
    runner = threading.Thread(target=lambda: result.append(load(proxy.port, "/", 32, duration)))
    before = proxy.call("stats")["counts"]
    runner.start()
    time.sleep(1.0)
    gap = max(0.05, (duration - 2.0) / max(1, args.swaps))
    drains: list[float] = []
    undrained = 0
    current = backend
    for n in range(1, args.swaps + 1):
        new, port, _ = start_backend(f"v{n}", args.backend)
        answer = proxy.call("switch", port, f"v{n}")
        drains.append(answer["drain_seconds"] * 1000)
        undrained += not answer["drained"]
        stop(current)  # the old child goes away right after its generation drained
        current = new
        time.sleep(gap)
    runner.join()
    stop(current)
    after = proxy.call("stats")["counts"]
    delta = {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
    res = result[0]
    print()
    print(
        f"swap test: {args.swaps} swaps (start new backend, switch, drain, kill old) under "
        f"32 keep-alive connections for {res.seconds:.0f} s"
    )
    print(
        f"  {res.requests} requests, {res.rps:.0f} req/s, failed requests: {res.failed}"
        f" {' '.join(res.notes)}"
    )
    print(
        f"  drain took median {_median(drains):.2f} ms, max {max(drains, default=0):.2f} ms;"
        f" generations not drained in 10 s: {undrained}"
    )
    print(f"  proxy-side counts during the test: {delta}")


if __name__ == "__main__":
    main()
