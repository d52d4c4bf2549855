"""The one interface every release source offers the pipeline.

A source answers "what is the newest release on this channel?" and hands over a
release's asset bytes together with what they must hash to. The pipeline (pick the asset,
verify, extract, store) is the same for every kind; only this part differs:

- ``github`` (:mod:`.github`): the GitHub REST API (github.com or Enterprise); digests from
  the asset's ``digest``, a checksums file or sidecars; minisign signatures when a key is set.
- ``tuf`` (:mod:`.tuf_source`): a TUF repository on any static host, verified by python-tuf's
  ngclient; digests from the signed targets metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from trayupdater.download import DownloadResult, Pace, ProgressCallback
from trayupdater.release_model import Asset, Release
from trayupdater.verify import ExpectedDigest


@dataclass
class CheckResult:
    release: Release | None  # None: the source has no usable release
    not_modified: bool = False  # nothing new since the last check (HTTP 304 or equivalent)
    skipped_tags: list[str] = field(default_factory=list)  # tags that are not versions
    # Every release the source knows, both channels and recalled ones included, newest
    # first (a TUF repository lists them all); empty: ``release`` is all there is.
    releases: tuple[Release, ...] = ()


class Source(Protocol):
    label: str  # for messages: "jischr/simple-server"

    @property
    def etag(self) -> str | None:
        """A validator of the last answer, kept in state.json (None when there is none)."""

    def check(self, *, include_prereleases: bool) -> CheckResult:
        """The newest release; raises SourceError / RateLimitedError."""

    def expected_digest(self, release: Release, asset: Asset) -> ExpectedDigest | None:
        """What ``asset`` must hash to, or None when the source publishes nothing."""

    def fetch(
        self,
        release: Release,
        asset: Asset,
        dest: Path,
        *,
        max_bytes: int,
        pace: Pace,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Download ``asset`` into ``dest`` (resuming a ``.part``); raises DownloadError."""

    def verify_signature(
        self, release: Release, asset: Asset, path: Path, public_key: str | None
    ) -> None:
        """Check a publisher signature beyond the digest; raises VerificationError."""

    def close(self) -> None: ...
