"""What grew without bound over a long run (found by soaking the app; the test fails on the
code before its fix).

A cut download of a release whose asset name carries its version (goreleaser's default,
``simple-server_1.2.3_Linux_x86_64.tar.gz``) was never resumed once a newer release came out,
and nothing removed its ``.part``: one partial download per such release, forever, counted
against the free-space check too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from support import wait_for
from test_runtime import running

from trayupdater.app import App
from trayupdater.demo import DEMO_REPO, child_archive
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Command


def _publish_versioned(feed: ReleaseFeed, version: str) -> str:
    """Publish ``version`` under a goreleaser default name (the version in it)."""
    name, data = child_archive(version)
    name = name.replace("simple-server_", f"simple-server_{version}_", 1)
    feed.publish(DEMO_REPO, f"v{version}", {name: data})
    return name


def test_cut_downloads_of_superseded_releases_do_not_pile_up(
    feed: ReleaseFeed, app_factory: Callable[..., App], tmp_path: Path
) -> None:
    _publish_versioned(feed, "1.0.0")
    app = app_factory(first_retry=3600)
    wait_for(running(app, "1.0.0"), what="1.0.0 serving")
    downloads = tmp_path / "data" / "downloads"
    for i in range(1, 5):
        # Each release's download is cut half-way; the next check finds a newer release.
        name = _publish_versioned(feed, f"1.0.{i}")
        feed.inject("cut", f"/{name}")
        status = app.updater.request(Command.CHECK)
        assert status.active == "1.0.0" and status.error, status
    _publish_versioned(feed, "1.0.5")
    status = app.updater.request(Command.CHECK)
    assert status.active == "1.0.5", status
    left = sorted(os.listdir(downloads))
    assert left == [], f"partial downloads of superseded releases left behind: {left}"
