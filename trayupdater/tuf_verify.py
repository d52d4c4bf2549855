"""Check a TUF repository folder the way a client will, before anything is uploaded.

python-tuf's own client (ngclient) refreshes from ``1.root.json`` through a fetcher that
reads the folder itself, then every target present in the folder is compared with its
metadata. Targets absent from the folder are hosted elsewhere (release assets): only their
metadata is checked.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from trayupdater.tuf_format import METADATA_DIR, TARGETS_DIR


def verify_folder(folder: Path, target_names: Iterable[str]) -> list[str]:
    """Problems found in the repository at ``folder``, as text; empty when it verifies."""
    first = folder / METADATA_DIR / "1.root.json"
    try:
        bootstrap = first.read_bytes()
    except OSError as exc:
        return [f"cannot read {first}: {exc.strerror or exc}"]
    with tempfile.TemporaryDirectory() as cache:
        try:
            updater = Updater(
                cache,
                "file:///" + METADATA_DIR + "/",
                target_base_url="file:///" + TARGETS_DIR + "/",
                fetcher=_FolderFetcher(folder),
                config=UpdaterConfig(prefix_targets_with_hash=False),
                bootstrap=bootstrap,
            )
            updater.refresh()
            problems = []
            for name in target_names:
                info = updater.get_targetinfo(name)
                local = folder.joinpath(TARGETS_DIR, *name.split("/"))
                if info is not None and not local.exists():
                    continue  # hosted elsewhere (release assets): only metadata is here
                if info is None or updater.find_cached_target(info, os.fspath(local)) is None:
                    problems.append(f"{TARGETS_DIR}/{name} does not match its metadata")
            return problems
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            return [f"the repository does not verify: {exc}"]


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
