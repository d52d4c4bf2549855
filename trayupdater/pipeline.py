"""From "a release exists" to "a verified executable of it sits in the version store".

``plan`` asks the source and decides (newer? blocked? which asset?) without touching disk;
``install`` downloads, verifies, extracts and commits the version to the store. Nothing
here starts a process: that is the update worker's job once a version is installed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trayupdater.cancel import Interrupt
from trayupdater.config import Config
from trayupdater.download import Pace, ProgressCallback, part_path
from trayupdater.errors import NoMatchingAssetError, StorageError, VerificationError
from trayupdater.extract import extract, find_executable
from trayupdater.platforms import Platform, pick_asset
from trayupdater.release_model import Asset, Release
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

    @property
    def latest(self) -> str | None:
        return self.release.version_text if self.release else None

    @property
    def should_install(self) -> bool:
        return self.newer and not self.blocked and self.asset is not None

    def summary(self) -> str:
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
    ) -> None:
        self.config = config
        self.store = store
        self.source = source or make_source(config, interrupt=interrupt)
        self.platform = platform or Platform.current()
        self.progress = progress

    def plan(self, state: State) -> Plan:
        result = self.source.check(include_prereleases=self.config.channel == "prerelease")
        release = result.release
        plan = Plan(
            current=state.active,
            release=release,
            asset=None,
            not_modified=result.not_modified,
            skipped_tags=result.skipped_tags,
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

        expected = self.source.expected_digest(release, asset)
        if expected is None and self.config.require_checksum:
            raise VerificationError(
                f"{release.tag}: no checksum for {asset.name} (no GitHub digest, no checksums "
                "file, no .sha256 sidecar); refusing to run an unverified download. Set "
                "[security] require_checksum = false to accept it anyway."
            )
        dest = self.store.download_path(asset.name)
        try:
            return self._download_and_commit(release, asset, expected, dest)
        except OSError as exc:
            # Disk full or not writable: free what this attempt used, keep what is installed.
            part_path(dest).unlink(missing_ok=True)
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
