"""Shared fixtures: a real local release feed, a real HTTP backend, the data in ../shared/data."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from proxy_support import RealBackend
from static_server import StaticServer
from tuf_support import Publisher

from trayupdater.app import App
from trayupdater.feed import ReleaseFeed

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("TRAYUPDATER_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")


@pytest.fixture
def shared_data() -> Path:
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(f"shared data not found at {folder} (set TRAYUPDATER_SHARED_DATA)")
    return folder


@pytest.fixture
def feed() -> Iterator[ReleaseFeed]:
    with ReleaseFeed() as server:
        yield server


@pytest.fixture
def app_factory(feed: ReleaseFeed, tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Start in-process apps on tmp_path/data against the feed (config: test_runtime's
    make_config plus the changes given); all stopped afterwards."""
    from test_runtime import make_config

    apps: list[App] = []

    def start(**changes: object) -> App:
        app = App(make_config(feed, tmp_path / "data", **changes))
        app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


@pytest.fixture
def backend() -> Iterator[RealBackend]:
    """A real HTTP backend in this process (proxy_support.RealBackend), labelled v1."""
    real = RealBackend("v1")
    yield real
    real.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (root only): a disk that fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here ({exc}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def app(feed: ReleaseFeed, tmp_path: Path) -> Iterator[App]:
    """An in-process app serving 1.0.0 from the feed (test_runtime's make_config)."""
    from support import wait_for
    from test_runtime import make_config, running

    from trayupdater.demo import publish_version

    publish_version(feed, "1.0.0")
    application = App(make_config(feed, tmp_path / "data"))
    application.start()
    wait_for(running(application, "1.0.0"), what="1.0.0 serving")
    yield application
    application.stop()


@pytest.fixture
def publisher(tmp_path: Path) -> Publisher:
    """A TUF repository made afresh in tmp_path (tuf_support), no version in it yet."""
    return Publisher(tmp_path).init()


@pytest.fixture
def server(tmp_path: Path, publisher: Publisher) -> Iterator[StaticServer]:
    """The publisher's repository on a real static web server (static_server)."""
    with StaticServer(publisher.dir, tmp_path / "server") as running:
        yield running
