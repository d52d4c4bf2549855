"""Verified TUF targets -> :class:`Release` objects, so the pipeline cannot tell the kinds apart.

Targets are grouped by the version in their custom metadata (:mod:`trayupdater.tuf_format`):
one ``Release`` per version, its files as assets (named by file name, which is what the asset
picker chooses among), each with the signed SHA-256 as its digest, and the version's signed
rollout and recall. A target that does not follow the format is skipped and reported, never
guessed at; so is a version whose targets disagree on their rollout (any one of them saying
"recalled" is enough, though: pulling back errs on the safe side).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

from packaging.version import Version
from tuf.api.metadata import TargetFile

from trayupdater.release_model import Asset, Release
from trayupdater.tuf_format import HASH, TargetEntry, TargetFormatError, parse_target

log = logging.getLogger(__name__)

MAX_TARGETS = 10_000  # bounds the work one answer can cause; a release has a handful
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class TargetIndex:
    """What one check found: releases by version, and each asset's signed target."""

    releases: dict[Version, Release] = field(default_factory=dict)
    targets: dict[tuple[str, str], TargetFile] = field(default_factory=dict)  # (tag, name)
    skipped: list[str] = field(default_factory=list)  # folders that were left out

    def newest(self, *, include_prereleases: bool) -> Release | None:
        """The newest release on the channel that is not recalled."""
        usable = [
            r
            for r in self.releases.values()
            if (include_prereleases or not r.prerelease) and not r.recalled
        ]
        return max(usable, key=lambda r: r.version, default=None)

    def newest_first(self) -> tuple[Release, ...]:
        return tuple(sorted(self.releases.values(), key=lambda r: r.version, reverse=True))

    def target(self, release: Release, asset: Asset) -> TargetFile | None:
        return self.targets.get((release.tag, asset.name))


def target_url(targets_url: str, path: str) -> str:
    """Where a target's bytes are: ``targets_url`` (ending in ``/``) + the quoted path."""
    return targets_url + "/".join(quote(part, safe="") for part in path.split("/"))


def index_targets(infos: Iterable[TargetFile], targets_url: str) -> TargetIndex:
    """Group verified targets into releases; the format's rules decide what is skipped."""
    index = TargetIndex()
    groups: dict[Version, list[tuple[TargetEntry, TargetFile]]] = {}
    bad_versions: set[Version] = set()
    for count, info in enumerate(infos):
        if count >= MAX_TARGETS:
            log.warning("more than %d targets; the rest are ignored", MAX_TARGETS)
            break
        try:
            entry = parse_target(info.path, info.custom)
            digest = info.hashes.get(HASH)
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise TargetFormatError(f"target {info.path[:120]!r} lists no {HASH} hash")
            # ngclient checks every listed hash; one it cannot compute fails the download
            # after the fact, as if the mirror had tampered with it, at every check.
            unknown = next((a for a in info.hashes if not _computable(a)), None)
            if unknown is not None:
                raise TargetFormatError(
                    f"target {info.path[:120]!r} lists a hash this client cannot compute "
                    f"({unknown[:40]!r})"
                )
            # tuf checks only "length < 0": true passed as a size of 1.
            if type(info.length) is not int:
                raise TargetFormatError(
                    f"target {info.path[:120]!r} has a length that is not a whole number"
                )
        except TargetFormatError as exc:
            log.warning("TUF target skipped: %s", exc)
            index.skipped.append(info.path.split("/", 1)[0][:100])
            continue
        group = groups.setdefault(entry.version, [])
        if group and (
            group[0][0].folder != entry.folder
            or _names(group) & {entry.name}
            or group[0][0].rollout != entry.rollout
        ):
            # Two folders for one version, one name twice, two rollouts: which one is meant
            # is unknowable.
            bad_versions.add(entry.version)
        group.append((entry, info))
    for version, group in groups.items():
        folder = group[0][0].folder
        if version in bad_versions:
            log.warning("TUF version %s skipped: its targets are ambiguous", version)
            index.skipped.append(folder)
            continue
        assets = []
        for entry, info in group:
            assets.append(
                Asset(
                    name=entry.name,
                    api_url="",
                    download_url=target_url(targets_url, info.path),
                    size=info.length,
                    digest=f"sha256:{info.hashes[HASH]}",
                )
            )
            index.targets[(folder, entry.name)] = info
        index.releases[version] = Release(
            tag=folder,
            version=version,
            prerelease=version.is_prerelease,
            assets=tuple(sorted(assets, key=lambda a: a.name)),
            published_at=max(entry.published for entry, _ in group),
            rollout=group[0][0].rollout,
            recalled=any(entry.recalled for entry, _ in group),
        )
    return index


def _computable(algorithm: str) -> bool:
    """Whether ngclient can check a hash named ``algorithm`` (as tuf's ``_get_digest`` makes
    it: hashlib, plus its own "blake2b-256"); a SHAKE has no fixed-length hexdigest."""
    try:
        digest = (
            hashlib.blake2b(digest_size=32)
            if algorithm == "blake2b-256"
            else hashlib.new(algorithm)
        )
        digest.hexdigest()
    except (ValueError, TypeError):
        return False
    return True


def _names(group: list[tuple[TargetEntry, TargetFile]]) -> set[str]:
    return {entry.name for entry, _ in group}
