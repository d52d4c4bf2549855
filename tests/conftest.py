"""Shared fixtures: a real local release feed and the verbatim data in ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
