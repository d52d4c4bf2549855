"""The shape of a trayupdater TUF repository: what ``trayupdater repo`` writes, the client reads.

A repository is a folder uploaded as it is to any static host::

    metadata/1.root.json … N.root.json   every root version: clients follow the chain
    metadata/root.json                   the newest root (the one to ship with a new build)
    metadata/N.snapshot.json             consistent snapshots: fetched by version, so an
    metadata/N.targets.json              upload in progress never mixes two releases
    metadata/timestamp.json              the only file that changes in place
    targets/<version>/<file>             a version's folder never changes once published

TUF features used: the four top-level roles, one ed25519 key per role, threshold 1, and
consistent snapshots for metadata. Not used: delegations, multi-key thresholds, hash-prefixed
target file names (a version's folder is immutable instead, which keeps the targets usable as
GitHub release assets: ``targets_url = https://github.com/OWNER/REPO/releases/download/`` with
version folders named after the tags).

Each target carries its version in its signed custom metadata, in a namespace of its own so
later fields (rollout, recall) sit beside it::

    "custom": {"trayupdater": {"version": "1.2.0", "published": "2025-01-02T03:04:05Z"}}

Both sides check target paths with :func:`parse_target`, so the publisher refuses what a
client would reject.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from packaging.version import Version

from trayupdater.release_model import parse_version
from trayupdater.sources.github_json import file_name_problem

ROLES = ("root", "targets", "snapshot", "timestamp")  # top-level only: no delegations
METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
CUSTOM_NAMESPACE = "trayupdater"
HASH = "sha256"  # every target lists it: the pipeline's own digest check uses it too
MAX_FIELD = 256


class TargetFormatError(ValueError):
    """A target whose path or custom metadata does not follow the format above."""


@dataclass(frozen=True)
class TargetEntry:
    """One target as trayupdater understands it."""

    path: str  # "<folder>/<name>", as in the targets metadata
    folder: str  # the version's folder: "1.2.0", or a tag such as "v1.2.0"
    name: str  # the file name: what the asset picker chooses among
    version: Version
    published: str = ""


def target_path(folder: str, name: str) -> str:
    return f"{folder}/{name}"


def check_folder(folder: str) -> Version:
    """The version a version folder names; TargetFormatError unless it is a safe name."""
    problem = file_name_problem(folder)
    if problem:
        raise TargetFormatError(f"version {folder[:80]!r} {problem}")
    version = parse_version(folder)
    if version is None or len(folder) > MAX_FIELD:
        raise TargetFormatError(f"{folder[:80]!r} is not a version (such as 1.2.0 or v1.2.0)")
    return version


def custom_block(version: Version, published: datetime | None = None) -> dict[str, Any]:
    """The ``custom`` field of a new target of ``version``."""
    when = (published or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        CUSTOM_NAMESPACE: {
            "version": str(version),
            "published": when.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    }


def parse_target(path: str, custom: Any) -> TargetEntry:
    """Check one target of the signed targets metadata; TargetFormatError if it is not ours.

    The path must be ``<version folder>/<plain file name>`` and the custom version must be
    the version the folder names: a botched or foreign target is skipped, never guessed at.
    """
    parts = path.split("/")
    if len(parts) != 2:
        raise TargetFormatError(f"target {path[:120]!r} is not <version>/<file>")
    folder, name = parts
    folder_version = check_folder(folder)
    problem = file_name_problem(name)
    if problem:
        raise TargetFormatError(f"target {path[:120]!r}: file name {problem}")
    ours = custom.get(CUSTOM_NAMESPACE) if isinstance(custom, Mapping) else None
    if not isinstance(ours, Mapping):
        raise TargetFormatError(f"target {path[:120]!r} has no {CUSTOM_NAMESPACE!r} custom data")
    text = ours.get("version")
    if not isinstance(text, str) or len(text) > MAX_FIELD:
        raise TargetFormatError(f"target {path[:120]!r}: custom version must be a short string")
    version = parse_version(text)
    if version is None:
        raise TargetFormatError(f"target {path[:120]!r}: custom version {text[:80]!r} is invalid")
    if version != folder_version:
        raise TargetFormatError(
            f"target {path[:120]!r}: custom version {text[:80]} disagrees with its folder"
        )
    published = ours.get("published")
    if not isinstance(published, str) or len(published) > MAX_FIELD:
        published = ""
    return TargetEntry(path, folder, name, version, published)
