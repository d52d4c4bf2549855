"""Property: whatever a release source answers, only TrayUpdaterError ever comes out.

hypothesis generates random JSON and mutates verbatim GitHub answers (../shared/data): a
field replaced by any JSON value, removed, or a whole subtree swapped. Each answer goes
through the real path: the local feed serves it over HTTP, the GitHub source parses it,
the pipeline plans and, when it decides to, installs. Anything other than a
TrayUpdaterError (KeyError, OverflowError, RecursionError, ...) is a bug that would reach
the update worker's safety net instead of the user as a clear sentence.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import shared_data_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trayupdater.config import Config
from trayupdater.errors import TrayUpdaterError
from trayupdater.feed import ReleaseFeed
from trayupdater.pipeline import ReleasePipeline
from trayupdater.platforms import Platform
from trayupdater.sources.github import GitHubSource
from trayupdater.sources.github_json import MalformedRelease, release_from_github
from trayupdater.store import State, VersionStore

REPO = "acme/server"

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "..", "/", "v1.2.3", "sha256:" + "0" * 64, "sha256:xyz", "\x00"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _verbatim_releases() -> list[dict[str, Any]]:
    folder = shared_data_dir() / "releases"
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


VERBATIM = _verbatim_releases()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON document (dict keys and list indexes)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:6]):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_releases(draw: st.DrawFn) -> Any:
    if not VERBATIM:
        return draw(json_values)
    doc = json.loads(json.dumps(draw(st.sampled_from(VERBATIM))))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            doc = draw(json_values)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(json_values)
    return doc


answers = st.one_of(json_values, mutated_releases())


@settings(max_examples=400, deadline=None)
@given(answers)
def test_parsing_raises_only_malformed_release(data: Any) -> None:
    with contextlib.suppress(MalformedRelease):
        release_from_github(data)


def _encode(data: Any) -> bytes:
    # Python's encoder writes Infinity/NaN for such floats, as a hostile server could.
    return json.dumps(data).encode()


@pytest.fixture(scope="module")
def module_feed() -> Any:
    with ReleaseFeed() as feed:
        yield feed


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(answer=answers, as_list=st.booleans())
def test_source_and_pipeline_raise_only_trayupdater_errors(
    module_feed: ReleaseFeed, answer: Any, as_list: bool
) -> None:
    module_feed.publish_raw(REPO, _encode([answer] if as_list else answer))
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            repo=REPO,
            api_url=module_feed.url,
            data_dir=Path(tmp),
            channel="prerelease" if as_list else "stable",
            require_checksum=False,
        )
        source = GitHubSource(REPO, api_url=module_feed.url, retries=0, backoff_base=0.0)
        pipeline = ReleasePipeline(
            config, VersionStore(Path(tmp)), source=source, platform=Platform("linux", "x86_64")
        )
        try:
            plan = pipeline.plan(State())
            if plan.should_install:
                release, asset = pipeline.require_asset(plan)
                pipeline.install(release, asset)
        except TrayUpdaterError:
            pass
        finally:
            source.close()
