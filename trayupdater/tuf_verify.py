"""Check a TUF repository folder the way a client will, before and after the publisher signs.

python-tuf's own client (ngclient) refreshes from ``1.root.json`` through a fetcher that
reads the folder itself. :func:`verify_folder` (after a change) then compares every target
present in the folder with its metadata; targets absent from the folder are hosted elsewhere
(release assets): only their metadata is checked. :func:`trusted_metadata` (before a change)
hands back the metadata the client verified, for the publisher to build on, so that nothing
edited in the folder without the keys ever gets signed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

from tuf.api import exceptions
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from trayupdater.tuf_format import METADATA_DIR, TARGETS_DIR

_TOP_LEVEL = (Root.type, Timestamp.type, Snapshot.type, Targets.type)
# No metadata expires before this: compared with it, expiry is set aside (trusted_metadata).
_BEFORE_ANY_EXPIRY = datetime(1, 1, 2, tzinfo=timezone.utc)


class FolderUnverified(ValueError):
    """The repository folder does not verify; the message says why, in one sentence."""


def verify_folder(folder: Path, target_names: Iterable[str]) -> list[str]:
    """Problems found in the repository at ``folder``, as text; empty when it verifies."""
    with tempfile.TemporaryDirectory() as cache:
        try:
            updater = _refreshed(folder, cache, check_expiry=True)
            problems = []
            for name in target_names:
                info = updater.get_targetinfo(name)
                local = folder.joinpath(TARGETS_DIR, *name.split("/"))
                if info is not None and not local.exists():
                    continue  # hosted elsewhere (release assets): only metadata is here
                if info is None or updater.find_cached_target(info, os.fspath(local)) is None:
                    problems.append(f"{TARGETS_DIR}/{name} does not match its metadata")
            return problems
        except FolderUnverified as exc:
            return [f"the repository does not verify: {exc}"]


def trusted_metadata(folder: Path) -> dict[str, bytes]:
    """The newest root, timestamp, snapshot and targets of the repository at ``folder``, as
    bytes, exactly as python-tuf's client verified them from ``1.root.json``: signatures,
    thresholds, the root chain, and the versions and hashes each role names of the next.

    Expiry aside: renewing expired metadata is what ``repo refresh`` is for. Files no signed
    metadata names (a newer ``N.targets.json`` dropped into the folder) are not read, but
    ``root.json`` must be the newest root: it is the file new builds ship. FolderUnverified
    when the folder does not verify.
    """
    with tempfile.TemporaryDirectory() as cache:
        try:
            _refreshed(folder, cache, check_expiry=False)
        except FolderUnverified as exc:
            raise FolderUnverified(
                f"{folder} does not verify as a client checks it ({exc})"
            ) from None
        # ngclient keeps what it verified, byte for byte, in its cache folder.
        trusted = {role: Path(cache, f"{role}.json").read_bytes() for role in _TOP_LEVEL}
    shipped = folder / METADATA_DIR / "root.json"
    try:
        same = shipped.read_bytes() == trusted[Root.type]
    except OSError:
        same = False
    if not same:
        newest = Metadata.from_bytes(trusted[Root.type]).signed.version
        raise FolderUnverified(f"{shipped} is not the newest signed root ({newest}.root.json)")
    return trusted


def _refreshed(folder: Path, cache: str, *, check_expiry: bool) -> Updater:
    first = folder / METADATA_DIR / "1.root.json"
    try:
        bootstrap = first.read_bytes()
    except OSError as exc:
        raise FolderUnverified(f"cannot read {first}: {exc.strerror or exc}") from None
    try:
        updater = Updater(
            cache,
            "file:///" + METADATA_DIR + "/",
            target_base_url="file:///" + TARGETS_DIR + "/",
            fetcher=_FolderFetcher(folder),
            config=UpdaterConfig(prefix_targets_with_hash=False),
            bootstrap=bootstrap,
        )
        if not check_expiry:
            # ngclient has no public switch for this (tuf is pinned below 8): the time it
            # compares expiry dates with, moved before them all.
            trusted_set = updater._trusted_set
            if not hasattr(trusted_set, "reference_time"):
                raise RuntimeError("this python-tuf cannot set metadata expiry aside")
            trusted_set.reference_time = _BEFORE_ANY_EXPIRY
        updater.refresh()
    except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
        raise FolderUnverified(str(exc) or type(exc).__name__) from None
    return updater


class _FolderFetcher(FetcherInterface):
    """ngclient reading the repository folder itself (``file:///metadata/x`` -> DIR/metadata/x)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _fetch(self, url: str) -> Iterator[bytes]:
        relative = unquote(url.removeprefix("file:///"))
        path = self.folder.joinpath(*relative.split("/"))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise exceptions.DownloadHTTPError(f"{relative} not found", 404) from None
        return iter([data])
