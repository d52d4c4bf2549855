"""A failed check is retried soon (back-off from ~30 s up to check_interval), not an hour later."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import Instance, wait_for

from trayupdater.children import free_port
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.schedule import retry_delay


def test_back_off_doubles_from_the_first_retry_up_to_the_interval():
    for failures, base in [(1, 30), (2, 60), (3, 120), (5, 480), (7, 1920), (8, 3600), (50, 3600)]:
        delay = retry_delay(failures, 3600, 30)
        assert base * 0.9 <= delay <= base * 1.1, (failures, delay)
    assert retry_delay(10_000, 3600, 30) <= 3600 * 1.1  # no overflow for a long outage
    assert retry_delay(0, 3600, 30) == 3600


class _Offline:
    """Where the feed will be: a loopback port on which nothing listens yet."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals for the cleanup")
def test_an_app_started_offline_serves_soon_after_the_network_returns(tmp_path: Path) -> None:
    offline = _Offline()
    inst = Instance(offline, tmp_path / "data", free_port(), TRAYUPDATER_FIRST_RETRY="1")
    inst.start()
    try:

        def status() -> dict:
            result = inst.cli("status", "--json")
            return json.loads(result.stdout) if result.stdout.strip() else {}

        wait_for(lambda: "cannot reach" in (status().get("error") or ""), what="a failed check")
        # The network comes back: a real feed on the port that refused connections.
        with ReleaseFeed(port=offline.port) as feed:
            publish_version(feed, "1.0.0")
            # check_interval is an hour: only the retry back-off can bring 1.0.0 in time.
            wait_for(lambda: inst.version() == "1.0.0", timeout=60, what="1.0.0 served")
            assert feed.stats.api_requests >= 1
            assert status()["error"] is None
    finally:
        inst.kill()
