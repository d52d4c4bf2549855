"""A publisher for the TUF tests: a repository made by the real CLI, served by a real server.

``Publisher`` runs ``trayupdater repo …`` (the CLI's own entry point, in this process) on
``<tmp>/site/repo`` with keys in ``<tmp>/site/keys``, publishes real archives of the demo
child, and offers the edits an attacker or a stale mirror would make to what is served:
put old files back, overwrite a file, re-sign something with a clock set in the past.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from trayupdater.cli import main
from trayupdater.config import Config, load_config
from trayupdater.demo import DEMO_REPO, child_archive
from trayupdater.pipeline import ReleasePipeline
from trayupdater.sources.tuf_source import TufSource
from trayupdater.store import VersionStore
from trayupdater.tuf_keys import KeyStore
from trayupdater.tuf_repository import FolderRepository


class Publisher:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.dir = base / "site" / "repo"
        self.keys = base / "site" / "keys"
        self.uploads = base / "uploads"

    @property
    def metadata(self) -> Path:
        return self.dir / "metadata"

    @property
    def shipped_root(self) -> Path:
        """The root a build would ship: version 1, as ``init`` wrote it."""
        return self.metadata / "1.root.json"

    def repo(self, *args: str) -> None:
        code = main(["repo", *args])
        assert code == 0, f"trayupdater repo {' '.join(args)} exited {code}"

    def init(self, *extra: str) -> Publisher:
        self.repo("init", str(self.dir), *extra)
        return self

    def archive(self, version: str, behaviour: Mapping[str, object] | None = None) -> Path:
        name, data = child_archive(version, behaviour=behaviour, program="simple-server")
        path = self.uploads / version / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def add(self, version: str, *extra: str, files: list[Path] | None = None) -> Path:
        """Publish a real archive of the demo child answering ``version``."""
        paths = files or [self.archive(version)]
        self.repo("add", str(self.dir), "--version", version, *map(str, paths), *extra)
        return paths[0]

    def refresh(self, *extra: str) -> None:
        self.repo("refresh", str(self.dir), *extra)

    def age(self, seconds: float) -> None:
        """Make every served file look published ``seconds`` ago."""
        when = time.time() - seconds
        for path in self.dir.rglob("*"):
            os.utime(path, (when, when))

    def save(self) -> dict[Path, bytes]:
        """What is served now, to put back later (a stale mirror)."""
        return {p: p.read_bytes() for p in self.dir.rglob("*") if p.is_file()}

    def serve_old(self, saved: Mapping[Path, bytes], *names: str) -> None:
        """Serve these metadata files as they were when ``saved`` was taken."""
        for name in names:
            path = self.metadata / name
            path.write_bytes(saved[path])

    def library(self, *, days_ago: float = 0, **lifetimes: timedelta) -> FolderRepository:
        """The repository through the publishing library, optionally with a clock set back."""
        when = datetime.now(timezone.utc) - timedelta(days=days_ago)
        return FolderRepository(
            self.dir, KeyStore(self.keys), lifetimes=lifetimes or None, clock=lambda: when
        )

    def resign_expired(self, role: str) -> None:
        """A newer ``role`` signed ten days ago for seven (expired), and the roles above it
        now. One repository object throughout: a new one would build on the verified
        metadata only, which the half-done steps are not yet part of."""
        week = timedelta(days=7)
        now = datetime.now(timezone.utc)
        clock = [now - timedelta(days=10)]
        repository = FolderRepository(
            self.dir,
            KeyStore(self.keys),
            lifetimes={"root": week, "targets": week, "snapshot": week, "timestamp": week},
            clock=lambda: clock[0],
        )
        if role == "root":
            with repository.edit_root():
                pass
            return
        if role == "targets":
            with repository.edit_targets():
                pass
        clock[0] = now - timedelta(days=10 if role == "snapshot" else 0)
        repository.do_snapshot(force=True)
        clock[0] = now - timedelta(days=10 if role == "timestamp" else 0)
        repository.do_timestamp(force=True)


def tuf_config(server_url: str, publisher: Publisher, data_dir: Path, **overrides: Any) -> Config:
    none = data_dir.parent / "none.toml"
    none.parent.mkdir(parents=True, exist_ok=True)
    none.write_text("")
    values: dict[str, Any] = {
        "kind": "tuf",
        "url": server_url,
        "repo": DEMO_REPO,
        "trusted_root": str(publisher.shipped_root),
        "data_dir": str(data_dir),
        **overrides,
    }
    return load_config(none, env={}, overrides=values)


def tuf_source(url: str, publisher: Publisher, cache: Path, **options: Any) -> TufSource:
    """A client of the repository served at ``url`` (its ``metadata/`` and ``targets/``),
    anchored at the root a build would ship; ``options`` go to :class:`TufSource` as they are
    (``network``, ``retries``, ``sleep`` ...)."""
    base = url if url.endswith("/") else url + "/"
    return TufSource(
        metadata_url=base + "metadata/",
        targets_url=base + "targets/",
        cache_dir=cache,
        trusted_root=publisher.shipped_root,
        **options,
    )


def pipeline(config: Config) -> ReleasePipeline:
    return ReleasePipeline(config, VersionStore(config.data_dir))


def copy_repository(publisher: Publisher, base: Path) -> Publisher:
    """Another copy of the same repository and keys (a second, independent site)."""
    other = Publisher(base)
    shutil.copytree(publisher.base / "site", other.base / "site")
    return other
