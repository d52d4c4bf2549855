"""What one update check costs with each source kind: requests, bytes, milliseconds.

    python bench/bench_sources.py [--checks 50] [--versions 20]

``github``: GitHubSource against the local GitHub-API feed (``trayupdater.feed``).
``tuf``: TufSource against nginx (``http.server`` without it) serving a repository made with
``trayupdater repo``. For each: the first check (empty cache), unchanged checks (ETag /
304), and the check right after a new version is published. Bytes are response bodies as
the static server logged them (TUF only; the feed does not log sizes). Prints a table; not
a test. Medians over ``--checks``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from static_server import StaticServer  # shared with the tests
from tuf_support import Publisher, tuf_source

from trayupdater.demo import DEMO_REPO, publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.sources.github import GitHubSource


def timed(check: Callable[[], object]) -> float:
    started = time.perf_counter()
    check()
    return (time.perf_counter() - started) * 1000


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(None):
        yield


def bench_github(checks: int, versions: int) -> dict[str, str]:
    with ReleaseFeed() as feed:
        for n in range(versions):
            publish_version(feed, f"1.{n}.0")
        source = GitHubSource(DEMO_REPO, api_url=feed.url)
        before = feed.stats.api_requests
        cold = timed(lambda: source.check())
        cold_requests = feed.stats.api_requests - before
        before = feed.stats.api_requests
        warm = statistics.median(timed(lambda: source.check()) for _ in range(checks))
        warm_requests = (feed.stats.api_requests - before) / checks
        publish_version(feed, f"1.{versions}.0")
        before = feed.stats.api_requests
        new = timed(lambda: source.check())
        new_requests = feed.stats.api_requests - before
    return {
        "first check": f"{cold:.1f} ms, {cold_requests} req",
        "unchanged": f"{warm:.1f} ms, {warm_requests:.0f} req (304)",
        "new version": f"{new:.1f} ms, {new_requests} req",
    }


def bench_tuf(checks: int, versions: int, base: Path) -> tuple[str, dict[str, str]]:
    publisher = Publisher(base)
    with quiet():
        publisher.init()
        for n in range(versions):
            publisher.add(f"1.{n}.0")
    publisher.age(60)  # published a minute ago: validators are trusted (see tuf_fetcher)
    with StaticServer(publisher.dir, base / "server") as server:
        source = tuf_source(server.url, publisher, base / "cache")

        def measure(runs: int) -> tuple[float, float, float]:
            seen = len(server.hits())
            times = [timed(lambda: source.check()) for _ in range(runs)]
            hits = server.hits()[seen:]
            return (
                statistics.median(times),
                len(hits) / runs,
                sum(h.bytes for h in hits) / runs,
            )

        cold = measure(1)
        warm = measure(checks)
        with quiet():
            publisher.add(f"1.{versions}.0")
        publisher.age(60)
        new = measure(1)
    row = {
        label: f"{ms:.1f} ms, {req:.0f} req, {size / 1024:.1f} KiB"
        for label, (ms, req, size) in (
            ("first check", cold),
            ("unchanged", warm),
            ("new version", new),
        )
    }
    return server.kind, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=50)
    parser.add_argument("--versions", type=int, default=20, help="versions already published")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server_kind, tuf = bench_tuf(args.checks, args.versions, Path(folder))
    github = bench_github(args.checks, args.versions)
    print(f"one check, {args.versions} versions published (tuf served by {server_kind})")
    print(f"{'':14}{'github (API feed)':34}{'tuf (static files)'}")
    for label in ("first check", "unchanged", "new version"):
        print(f"{label:14}{github[label]:34}{tuf[label]}")


if __name__ == "__main__":
    main()
