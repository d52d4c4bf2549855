"""The GitHub source against a real local server speaking the API, with injected faults."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from trayupdater.errors import RateLimitedError, SourceError
from trayupdater.feed import ReleaseFeed
from trayupdater.sources.github import GitHubSource

REPO = "acme/server"


def source(feed: ReleaseFeed, **kw: object) -> GitHubSource:
    kw.setdefault("backoff_base", 0.01)
    return GitHubSource(REPO, api_url=feed.url, **kw)  # type: ignore[arg-type]


def test_latest_stable_ignores_prereleases_and_drafts(feed: ReleaseFeed) -> None:
    feed.publish(REPO, "v1.0.0", {"a": b"1"})
    feed.publish(REPO, "v1.1.0", {"a": b"2"})
    feed.publish(REPO, "v1.2.0-rc.1", {"a": b"3"}, prerelease=True)
    feed.publish(REPO, "v2.0.0", {"a": b"4"}, draft=True)
    result = source(feed).check()
    assert result.release is not None
    assert result.release.version_text == "1.1.0"
    assert result.release.tag == "v1.1.0"


def test_prerelease_channel_takes_the_highest_version(feed: ReleaseFeed) -> None:
    feed.publish(REPO, "v1.1.0", {"a": b"2"})
    feed.publish(REPO, "1.2.0-rc.1", {"a": b"3"}, prerelease=True)
    feed.publish(REPO, "v1.0.9", {"a": b"late"})  # published last, but older
    result = source(feed).check(include_prereleases=True)
    assert result.release is not None and str(result.release.version) == "1.2.0rc1"


def test_no_release_is_not_an_error(feed: ReleaseFeed) -> None:
    assert source(feed).check().release is None


def test_non_version_tag_is_skipped_and_reported(feed: ReleaseFeed) -> None:
    feed.publish(REPO, "v1.0.0", {"a": b"1"})
    feed.publish(REPO, "nightly", {"a": b"2"})
    result = source(feed).check()
    assert result.skipped_tags == ["nightly"]
    assert result.release is not None and result.release.version_text == "1.0.0"


def test_etag_304_reuses_the_parsed_release(feed: ReleaseFeed) -> None:
    feed.publish(REPO, "v1.0.0", {"a": b"1"})
    src = source(feed)
    first = src.check()
    second = src.check()
    assert not first.not_modified and second.not_modified
    assert second.release == first.release
    assert feed.stats.not_modified == 1
    feed.publish(REPO, "v1.1.0", {"a": b"2"})
    third = src.check()
    assert not third.not_modified and third.release.version_text == "1.1.0"  # type: ignore[union-attr]


def test_token_is_sent_as_bearer(feed: ReleaseFeed) -> None:
    feed.publish(REPO, "v1.0.0", {"a": b"1"})
    source(feed, token="t0ken").check()
    assert feed.stats.auth_headers[-1] == "Bearer t0ken"


@pytest.mark.parametrize("fault", ["500", "hang"])
def test_transient_faults_are_retried(feed: ReleaseFeed, fault: str) -> None:
    feed.publish(REPO, "v1.0.0", {"a": b"1"})
    feed.hang_seconds = 3
    feed.inject(fault, "/releases")
    result = source(feed, timeout=(1.0, 0.5)).check()
    assert result.release is not None and result.release.version_text == "1.0.0"


def test_persistent_500_gives_a_clear_error(feed: ReleaseFeed) -> None:
    feed.inject("500", "/releases", times=5)
    with pytest.raises(SourceError, match="HTTP 500"):
        source(feed, retries=2).check()


def test_hang_times_out(feed: ReleaseFeed) -> None:
    feed.hang_seconds = 3
    feed.inject("hang", "/releases", times=3)
    started = time.monotonic()
    with pytest.raises(SourceError, match="timed out"):
        source(feed, timeout=(1.0, 0.3), retries=1).check()
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(
    ("fault", "message"), [("html", "not JSON"), ("truncated", "invalid JSON")]
)
def test_garbage_answers_are_reported(feed: ReleaseFeed, fault: str, message: str) -> None:
    feed.publish(REPO, "v1.0.0", {"a": b"1"})
    feed.inject(fault, "/releases")
    with pytest.raises(SourceError, match=message):
        source(feed).check()


def test_rate_limit_blocks_until_reset_without_asking(feed: ReleaseFeed) -> None:
    feed.publish(REPO, "v1.0.0", {"a": b"1"})
    feed.inject("ratelimit", "/releases")
    src = source(feed)
    with pytest.raises(RateLimitedError) as info:
        src.check()
    assert info.value.retry_at > time.time() + 30
    asked = feed.stats.api_requests
    with pytest.raises(RateLimitedError):
        src.check()
    assert feed.stats.api_requests == asked  # honoured locally: nothing was sent


def test_retry_after_is_honoured(feed: ReleaseFeed) -> None:
    feed.inject("retry_after", "/releases")
    now = [1000.0]
    src = source(feed, clock=lambda: now[0])
    with pytest.raises(RateLimitedError):
        src.check()
    assert src.blocked_until == pytest.approx(1030.0)
    now[0] = 1031.0
    assert src.check().release is None  # allowed again after Retry-After


def test_unreachable_api(tmp_path: Path) -> None:
    src = GitHubSource(REPO, api_url="http://127.0.0.1:9", retries=1, backoff_base=0.01)
    with pytest.raises(SourceError, match="cannot reach"):
        src.check()


@pytest.mark.parametrize(
    ("name", "tag", "count"),
    [
        ("release-gitleaks-gitleaks-v8.30.0.json", "v8.30.0", 12),
        ("release-jpillora-serve-latest.json", "v1.9.8", 29),
        ("release-zyedidia-micro-latest.json", "v2.0.14", 56),
    ],
)
def test_verbatim_github_bodies(
    feed: ReleaseFeed, shared_data: Path, name: str, tag: str, count: int
) -> None:
    feed.publish_raw(REPO, json.loads((shared_data / "releases" / name).read_text()))
    release = source(feed).check().release
    assert release is not None and release.tag == tag and len(release.assets) == count
    with_digest = [a for a in release.assets if a.sha256]
    if name.startswith("release-gitleaks"):
        assert len(with_digest) == count  # new uploads carry GitHub's sha256 digest
    else:
        assert with_digest == []


def test_release_notes_and_page_are_read_with_type_checks():
    from trayupdater.sources.github_json import MAX_NOTES, release_from_github

    base = {"tag_name": "v1.2.0", "assets": []}
    release = release_from_github(
        {
            **base,
            "body": "## What's Changed\n* **Faster** start by [@a](https://x)",
            "html_url": "https://github.com/o/r/releases/tag/v1.2.0",
        }
    )
    assert release is not None
    assert release.notes_headline == "Faster start by @a"
    assert release.page == "https://github.com/o/r/releases/tag/v1.2.0"
    for hostile in ({"body": 12345}, {"body": ["x"]}, {"body": None}):
        assert release_from_github({**base, **hostile}).notes == ""
    huge = release_from_github({**base, "body": "x" * (MAX_NOTES * 4)})
    assert len(huge.notes) == MAX_NOTES
    # Only a web page is ever handed to the desktop's opener for "What's new".
    for bad_url in ("javascript:alert(1)", "file:///etc/passwd", "https://a b", ""):
        assert release_from_github({**base, "html_url": bad_url}).page is None
    control = release_from_github({**base, "body": "\x1b[31mred\x07 text"})
    assert control.notes_headline == "[31mred text"  # no terminal/markup control characters
