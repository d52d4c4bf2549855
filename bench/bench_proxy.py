"""Benchmark the reverse proxy: throughput, latency, and failed requests during swaps.

Runs a fast backend (``backend_server.py``: Go if available, else Python), the proxy in its
own process (so the load generator's GIL does not slow it down), and a load generator (wrk if
installed, else a Python one, which is much slower and says so). Direct-to-backend and
through-proxy runs alternate in the same invocation so machine noise hits both alike.

    python bench/bench_proxy.py                  # full run, about 1.5 minutes
    python bench/bench_proxy.py --duration 2 --rounds 1 --swaps 10   # quick look

Scenarios: small responses and 1 MiB bodies, at 1 and 32 connections, and small chunked
responses (no length) at 32. Then a swap test:
32 keep-alive connections while the proxy switches N times to a freshly started backend,
drains the old generation and kills the old backend, counting every failed request.

``--mode app`` measures the same scenarios inside ``trayupdater run --headless`` (a real app
with its metrics, the backend as its child, see ``app_harness.py``), then its idle RSS and
CPU with and without 2,000 idle keep-alive clients, and real updates under load. ``--mode
both`` (the default) runs the two and prints the issue's table: ours / Go per scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import Result, pyload, wrk  # noqa: E402

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


# -- the benchmark ------------------------------------------------------------------------------


SCENARIOS = [
    ("small", "/", 1),
    ("small", "/", 32),
    ("1 MiB", "/big", 1),
    ("1 MiB", "/big", 32),
    ("chunked", "/chunked", 32),  # small, without a length: as many servers answer
]
Key = tuple[str, int]  # (scenario name, connections)


@dataclass
class Target:
    """One thing under load: ours (standalone proxy or the app), the same backend direct,
    and Go's httputil.ReverseProxy in front of that backend."""

    title: str
    ours: int  # port
    direct: int
    go: int | None
    cpu: Callable[[], float]  # CPU seconds of the process serving ``ours``
    results: dict[tuple[str, int, str], list[Result]] = field(default_factory=dict)
    cpu_per_request: dict[Key, list[float]] = field(default_factory=dict)

    def median(self, key: Key, what: str, attr: str) -> float:
        return _median([getattr(r, attr) for r in self.results.get((*key, what), [])])


def measure(target: Target, load: Callable[..., Result], args: argparse.Namespace) -> None:
    """Every scenario, ``args.rounds`` times, direct / ours / Go alternating."""
    load(target.ours, "/", 8, 1.0)  # warm up pools and caches
    for _ in range(args.rounds):
        for name, path, conns in args.scenarios:
            key = (name, conns)
            target.results.setdefault((*key, "direct"), []).append(
                load(target.direct, path, conns, args.duration)
            )
            before = target.cpu()
            result = load(target.ours, path, conns, args.duration)
            cpu = target.cpu() - before
            target.results.setdefault((*key, "ours"), []).append(result)
            if result.requests:
                target.cpu_per_request.setdefault(key, []).append(cpu / result.requests * 1e6)
            if target.go is not None:
                target.results.setdefault((*key, "go"), []).append(
                    load(target.go, path, conns, args.duration)
                )


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the trayupdater reverse proxy.")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run (4)")
    parser.add_argument("--rounds", type=int, default=2, help="direct/proxy alternations (2)")
    parser.add_argument("--swaps", type=int, default=20, help="backend swaps under load (20)")
    parser.add_argument("--updates", type=int, default=5, help="app updates under load (5)")
    parser.add_argument(
        "--mode",
        choices=("standalone", "app", "both"),
        default="both",
        help="the proxy alone, inside `trayupdater run --headless`, or both (both)",
    )
    parser.add_argument("--app-port", type=int, default=9180, help="the app's proxy port (9180)")
    parser.add_argument("--idle", type=int, default=2000, help="idle keep-alive clients (2000)")
    parser.add_argument("--backend", choices=("auto", "go", "python"), default="auto")
    parser.add_argument(
        "--workers",
        type=int,
        default=64,
        help="the standalone proxy's workers: requests in flight and threads (64)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME:CONNS",
        help="only these scenarios, e.g. small:32 or big:1 (repeatable; default: all five)",
    )
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--serve-proxy", nargs=3, metavar=("PORT", "LABEL", "WORKERS"))
    args = parser.parse_args()
    if args.serve_proxy:
        port, label, workers = args.serve_proxy
        serve_proxy(int(port), label, int(workers))
        return
    args.scenarios = _chosen(args.scenario)

    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    load = wrk if use_wrk else pyload
    print(f"load generator: {'wrk' if use_wrk else 'python (slow: GIL-bound)'}")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.duration:g} s runs")
    targets: list[Target] = []
    if args.mode in ("standalone", "both"):
        targets.append(standalone(load, args))
    if args.mode in ("app", "both"):
        targets.append(in_app(load, args))
    print()
    for target in targets:
        print_table(target)
    print_ratios(targets)
    print(f"load average at the end: {' '.join(f'{n:.2f}' for n in os.getloadavg())}")


def _chosen(wanted: list[str] | None) -> list[tuple[str, str, int]]:
    if not wanted:
        return SCENARIOS
    names = {"small": "small", "big": "1 MiB", "1mib": "1 MiB", "chunked": "chunked"}
    chosen = []
    for item in wanted:
        name, _, conns = item.partition(":")
        key = (names.get(name.lower().replace(" ", ""), name), int(conns or 0))
        found = [s for s in SCENARIOS if (s[0], s[2]) == key]
        if not found:
            raise SystemExit(
                f"no scenario {item!r}: use small:1, small:32, big:1, big:32 or chunked:32"
            )
        chosen += found
    return chosen


def standalone(load: Callable[..., Result], args: argparse.Namespace) -> Target:
    backend, backend_port, impl = start_backend("v0", args.backend)
    proxy = ProxyProcess(backend_port, "v0", args.workers)
    go_proxy, go_port = start_go_proxy(backend_port)
    print(f"standalone: backend {impl}; Go httputil.ReverseProxy: {_go_note(go_proxy)}")
    target = Target("proxy alone (bench --serve-proxy)", proxy.port, backend_port, None, lambda: 0)
    target.go = go_port if go_proxy else None
    target.cpu = lambda: proxy.call("stats")["cpu"]
    try:
        measure(target, load, args)
        swap_test(proxy, load, args, backend)
    finally:
        proxy.close()
        if go_proxy is not None:
            stop(go_proxy)
    return target


def in_app(load: Callable[..., Result], args: argparse.Namespace) -> Target:
    from app_harness import App

    app = App(args.app_port, args.backend)
    fresh = app.rss_mib()
    go_proxy, go_port = start_go_proxy(app.child_port)
    print(f"in the app: child {app.impl} {app.version}; Go: {_go_note(go_proxy)}")
    target = Target("inside `trayupdater run --headless`", app.port, app.child_port, None, app.cpu)
    target.go = go_port if go_proxy else None
    try:
        measure(target, load, args)
        if go_proxy is not None:
            stop(go_proxy)
            go_proxy = None
        print(f"\napp RSS just after start: {fresh:.1f} MiB")
        idle_costs(app, args.idle)
        if args.updates:
            update_test(app, load, args)
    finally:
        if go_proxy is not None:
            stop(go_proxy)
        app.close()
    return target


def _go_note(go_proxy: subprocess.Popen | None) -> str:
    return "measured alongside" if go_proxy else "no Go: skipped"


def idle_costs(app, count: int) -> None:
    """Idle RSS and CPU of the app, then the same with ``count`` idle keep-alive clients."""
    from load import idle_connections

    # 20 s: /proc counts CPU in 10 ms ticks, so 5 s could not tell 0.2 % from 0.
    def idle_cpu(seconds: float = 20.0) -> float:
        before = app.cpu()
        time.sleep(seconds)
        return (app.cpu() - before) / seconds * 100

    time.sleep(1.0)
    print(f"idle app after the load: RSS {app.rss_mib():.1f} MiB, CPU {idle_cpu():.2f} %")
    socks = idle_connections(app.port, count)
    try:
        time.sleep(1.0)
        print(
            f"with {count} idle keep-alive clients: RSS {app.rss_mib():.1f} MiB,"
            f" CPU {idle_cpu():.2f} %"
        )
    finally:
        for sock in socks:
            sock.close()


def update_test(app, load: Callable[..., Result], args: argparse.Namespace) -> None:
    """Real updates (publish, `trayupdater check`, ...) under 32 keep-alive connections."""
    duration = max(args.duration * 2, args.updates * 3.0 + 3)
    result: list[Result] = []
    runner = threading.Thread(target=lambda: result.append(load(app.port, "/", 32, duration)))
    runner.start()
    time.sleep(1.0)
    took = []
    major, minor, _ = (int(n) for n in app.version.split("."))
    for n in range(1, args.updates + 1):
        if not runner.is_alive():
            break
        took.append(app.update(f"{major}.{minor + 1}.{n}"))
    runner.join()
    res = result[0]
    print(
        f"update test: {len(took)} updates (publish, `trayupdater check`: download, verify,"
        f" start, soak, switch, drain, probation) under 32 keep-alive connections,"
        f" {res.seconds:.0f} s"
    )
    print(
        f"  {res.requests} requests, {res.rps:.0f} req/s, failed requests: {res.failed}"
        f" {' '.join(res.notes)}; each update took median {_median(took):.1f} s"
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def print_table(target: Target) -> None:
    header = (
        f"{'scenario':<14}{'direct rps':>11}{'ours rps':>10}{'ours p50/p99 ms':>17}"
        f"{'CPU/req':>10}{'failed':>8}{'go rps':>9}{'go p50/p99 ms':>16}"
    )
    print(target.title)
    print(header)
    print("-" * len(header))
    for name, _, conns in SCENARIOS:
        key = (name, conns)
        if (*key, "ours") not in target.results:
            continue  # not chosen (--scenario)
        runs = [r for what in ("direct", "ours") for r in target.results.get((*key, what), [])]
        failed = sum(r.failed for r in runs)
        cpu = _median(target.cpu_per_request.get(key, []))
        go = "-", "-"
        if target.go is not None:
            go = f"{target.median(key, 'go', 'rps'):.0f}", _lat(target, key, "go")
        print(
            f"{f'{name} c={conns}':<14}{target.median(key, 'direct', 'rps'):>11.0f}"
            f"{target.median(key, 'ours', 'rps'):>10.0f}{_lat(target, key, 'ours'):>17}"
            f"{cpu:>7.0f} us{failed:>8}{go[0]:>9}{go[1]:>16}"
        )
    print("(medians over rounds; CPU/req = CPU time of the process serving ours per request)")
    print()


def _lat(target: Target, key: Key, what: str) -> str:
    return f"{target.median(key, what, 'p50_ms'):.3f}/{target.median(key, what, 'p99_ms'):.2f}"


def print_ratios(targets: list[Target]) -> None:
    """The issue's table: ours / Go requests/s per scenario, one column per mode."""
    columns = [t for t in targets if t.go is not None]
    if not columns:
        return
    print("| scenario | " + " | ".join(f"{t.title} ours / Go" for t in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, _, conns in SCENARIOS:
        key = (name, conns)
        if all((*key, "ours") not in t.results for t in columns):
            continue
        cells = []
        for t in columns:
            ours, go = t.median(key, "ours", "rps"), t.median(key, "go", "rps")
            ratio = ours / go if go else 0.0
            cell = f"{ours:,.0f} / {go:,.0f} = {ratio:.2f}"
            rounds = _round_ratios(t, key)
            if len(rounds) > 1:  # this VM's noise, in plain sight
                cell += f" [rounds {min(rounds):.2f}-{max(rounds):.2f}]"
            p99 = t.median(key, "ours", "p99_ms"), t.median(key, "go", "p99_ms")
            cell += f" (p99 {p99[0]:.1f} vs {p99[1]:.1f} ms"
            cell += f", {_median(t.cpu_per_request.get(key, [])):.0f} us CPU/req)"
            cells.append(cell)
        print(f"| {name}, {conns} conn | " + " | ".join(cells) + " |")


def _round_ratios(target: Target, key: Key) -> list[float]:
    """Ours / Go of each round (the two were measured back to back in it)."""
    ours = target.results.get((*key, "ours"), [])
    go = target.results.get((*key, "go"), [])
    return [o.rps / g.rps for o, g in zip(ours, go, strict=False) if g.rps]


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
