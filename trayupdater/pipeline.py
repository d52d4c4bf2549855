"""From "a release exists" to "a verified executable of it sits in the version store".

``plan`` asks the source and decides (which release this installation takes under the
publisher's rollout and recall, :mod:`.rollout`; newer? blocked? which asset?) without
touching disk, except to keep the install id the first time a rollout needs it;
``install`` downloads, verifies, extracts and commits the version to the store. Nothing
here starts a process: that is the update worker's job once a version is installed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trayupdater.cancel import Interrupt
from trayupdater.config import Config
from trayupdater.disk_space import check_room
from trayupdater.download import Pace, ProgressCallback, remove_other_downloads, remove_parts
from trayupdater.errors import NoMatchingAssetError, StorageError, VerificationError
from trayupdater.extract import extract, find_executable
from trayupdater.platforms import Platform, pick_asset
from trayupdater.release_model import Asset, Release
from trayupdater.rollout import HeldBack, choose, install_id, kept_notice, recall_reason
from trayupdater.sources import Source, make_source
from trayupdater.store import InstalledVersion, State, VersionStore, version_key
from trayupdater.verify import ExpectedDigest, check_digest

log = logging.getLogger(__name__)

PAYLOAD_DIR = "files"  # extracted files live here, beside the store's manifest.json


@dataclass
class Plan:
    """The answer to "is there something to install?"."""

    current: str | None
    release: Release | None
    asset: Asset | None
    newer: bool = False
    blocked: bool = False
    not_modified: bool = False
    skipped_tags: list[str] = field(default_factory=list)
    newest: Release | None = None  # the newest published (not recalled), rollout or not
    held: HeldBack | None = None  # a newer version this installation's turn has not come for
    releases: tuple[Release, ...] = ()  # all the source knows (rollout and recall flags)
    recall_kept: bool = False  # the active version is recalled but nothing older is there

    @property
    def latest(self) -> str | None:
        newest = self.newest or self.release
        return newest.version_text if newest else None

    @property
    def active_recalled(self) -> bool:
        return self.current is not None and self.current in self.recalled

    @property
    def recalled(self) -> frozenset[str]:
        return frozenset(r.version_text for r in self.releases if r.recalled)

    @property
    def notice(self) -> str | None:
        """What the publisher's rollout and recall mean for this installation, if anything."""
        parts = []
        if self.active_recalled:
            version = self.current or ""
            parts.append(kept_notice(version) if self.recall_kept else recall_reason(version))
        if self.held is not None:
            parts.append(self.held.notice)
        return "; ".join(parts) or None

    @property
    def should_install(self) -> bool:
        return self.newer and not self.blocked and self.asset is not None

    def summary(self) -> str:
        notice = self.notice
        return f"{self._outcome()}; {notice}" if notice else self._outcome()

    def _outcome(self) -> str:
        if self.release is None and self.held is not None:
            return "nothing to install yet"
        if self.release is None:
            return "no release published"
        if self.asset is None:
            return f"{self.latest} has no asset for this platform"
        if self.blocked:
            return f"{self.latest} is blocked (it was rolled back)"
        if self.newer:
            return f"update available: {self.current or 'none'} -> {self.latest}"
        return f"up to date ({self.current})"


def download_pace(config: Config) -> Pace:
    return Pace(
        deadline=config.download_timeout,
        min_rate=config.download_min_rate,
        rate_window=config.download_rate_window,
    )


class ReleasePipeline:
    def __init__(
        self,
        config: Config,
        store: VersionStore,
        *,
        source: Source | None = None,
        platform: Platform | None = None,
        progress: ProgressCallback | None = None,
        interrupt: Interrupt | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.source = source or make_source(config, interrupt=interrupt)
        self.platform = platform or Platform.current()
        self.progress = progress
        self.clock = clock  # what a rollout schedule is measured against

    def plan(self, state: State, *, manual: bool = False) -> Plan:
        """What to do now; ``manual``: the user asked (a rollout may be bypassed, if the
        config says so), not the timer."""
        prereleases = self.config.channel == "prerelease"
        result = self.source.check(include_prereleases=prereleases)
        known = result.releases or ((result.release,) if result.release else ())
        channel = [r for r in known if prereleases or not r.prerelease]
        choice = choose(
            channel,
            install_id=self._install_id,
            now=self.clock(),
            bypass=manual and self.config.manual_check_bypasses_rollout,
        )
        release = choice.release
        newest = next((r for r in channel if not r.recalled), None) if result.releases else None
        held = choice.held
        if (
            held is not None
            and state.active
            and version_key(held.release.version_text) <= version_key(state.active)
        ):
            held = None  # it runs that version already (a user took it early): no news
        plan = Plan(
            current=state.active,
            release=release,
            asset=None,
            not_modified=result.not_modified,
            skipped_tags=result.skipped_tags,
            newest=newest,
            held=held,
            releases=tuple(known),
        )
        if release is None:
            return plan
        name = pick_asset(
            [a.name for a in release.assets],
            self.platform,
            repo=self.config.repo,
            pattern=self.config.asset_pattern,
            version=release.version_text,
        )
        plan.asset = release.asset(name) if name else None
        plan.newer = state.active is None or version_key(release.version_text) > version_key(
            state.active
        )
        plan.blocked = release.version_text in state.blocked
        return plan

    def _install_id(self) -> str:
        try:
            return install_id(self.store.data_dir)
        except OSError as exc:
            raise StorageError(
                f"cannot keep the install id in {self.store.data_dir} (a phased rollout needs "
                f"it): {exc.strerror or exc}"
            ) from None

    def require_asset(self, plan: Plan) -> tuple[Release, Asset]:
        if plan.release is None:
            raise NoMatchingAssetError(f"{self.config.repo} has no published release")
        if plan.asset is None:
            names = ", ".join(a.name for a in plan.release.assets) or "none"
            raise NoMatchingAssetError(
                f"{self.config.repo} {plan.release.tag} has no asset for {self.platform} "
                f"(assets: {names})"
                + (
                    f"; asset_pattern is {self.config.asset_pattern!r}"
                    if self.config.asset_pattern
                    else ""
                )
            )
        return plan.release, plan.asset

    def install(self, release: Release, asset: Asset) -> InstalledVersion:
        """Download, verify and commit ``release`` to the store (a no-op if already there)."""
        version = release.version_text
        existing = self.store.get(version)
        if existing is not None:
            return existing
        dest = self.store.download_path(asset.name)
        # What earlier releases left (a cut download of an asset named after its version is
        # never resumed) goes first: it must neither pile up nor count against the room.
        remove_other_downloads(dest)
        # Before any download, the checksums file included.
        limit = self.config.max_download_bytes
        check_room(self.store.data_dir, asset.size, asset.name, max_bytes=limit)

        expected = self.source.expected_digest(release, asset)
        if expected is None and self.config.require_checksum:
            raise VerificationError(
                f"{release.tag}: no checksum for {asset.name} (no GitHub digest, no checksums "
                "file, no .sha256 sidecar); refusing to run an unverified download. Set "
                "[security] require_checksum = false to accept it anyway."
            )
        try:
            return self._download_and_commit(release, asset, expected, dest)
        except OSError as exc:
            # Disk full or not writable: free what this attempt used, keep what is installed.
            remove_parts(dest)
            dest.unlink(missing_ok=True)
            raise StorageError(
                f"cannot store {asset.name} in {self.store.data_dir}: "
                f"{exc.strerror or exc} — the current version keeps running"
            ) from None

    def _download_and_commit(
        self, release: Release, asset: Asset, expected: ExpectedDigest | None, dest: Path
    ) -> InstalledVersion:
        version = release.version_text
        result = self.source.fetch(
            release,
            asset,
            dest,
            max_bytes=self.config.max_download_bytes,
            pace=download_pace(self.config),
            progress=self.progress,
        )
        try:
            if expected is not None:
                check_digest(result.sha256, expected, asset.name)
            else:
                log.warning("%s: installed WITHOUT checksum verification (configured)", asset.name)
            self.source.verify_signature(release, asset, result.path, self.config.public_key)
            installed = self.store.install(
                version,
                lambda folder: self._unpack(result.path, folder / PAYLOAD_DIR, asset.name),
                sha256=result.sha256,
                asset=asset.name,
            )
        finally:
            # Verified or not, the download has served its purpose; a bad one must not be
            # resumed from (its bytes are wrong), so it goes either way.
            result.path.unlink(missing_ok=True)
        log.info("installed %s from %s (sha256 %s)", version, asset.name, result.sha256[:12])
        return installed

    def _unpack(self, archive: Path, folder: Path, asset_name: str) -> Path:
        folder.mkdir(parents=True)
        limit = self.config.extract_limit(archive.stat().st_size)
        extract(archive, folder, asset_name=asset_name, max_total_bytes=limit)
        return find_executable(
            folder,
            exe_name=self.config.exe_name,
            repo_name=self.config.repo_name,
            os_name=self.platform.os,
        )
