"""Release source: a TUF repository on any static host, through python-tuf's ngclient.

A check builds a fresh ``tuf.ngclient.Updater`` (one refresh per instance, as ngclient
requires) on the metadata cache in the data folder, anchored at the shipped trusted root, and
lets it refresh root -> timestamp -> snapshot -> targets. Everything TUF guarantees is
ngclient's doing: signatures and thresholds, the ``N.root.json`` rotation chain, versions
that never go back (the cache remembers the highest seen), metadata that must not be
expired, snapshot and targets that must match what the timestamp and snapshot say. This
module only maps the outcome onto the app: verified targets become releases
(:mod:`.tuf_targets`), and each ngclient failure becomes one sentence for the status line:

- expired metadata -> :class:`MetadataExpiredError` naming the role and its expiry date;
- anything that does not verify -> :class:`UntrustedMetadataError`;
- the network -> ``SourceError`` after retries with back-off, or ``RateLimitedError`` when
  the host answers 429/503 with ``Retry-After`` (honoured without sending anything).

The verified target list comes through ngclient's public API: the names are read from the
targets metadata ngclient has just verified and cached, and each name is looked up again
with ``get_targetinfo``, which answers from its in-memory trusted set only.

Downloads go through :func:`trayupdater.download.download` like every other asset (resume,
slow-server rules, the size cap, the signed length as the expected size), and the finished
file is then checked by ngclient (``find_cached_target``: signed length and hashes) before
the pipeline sees it; the pipeline then checks the signed SHA-256 once more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import requests
from tuf.api import exceptions
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from trayupdater.cancel import CancelledError, Interrupt, pause
from trayupdater.download import DownloadResult, Pace, ProgressCallback, download
from trayupdater.errors import (
    MetadataExpiredError,
    RateLimitedError,
    SourceError,
    StorageError,
    TrayUpdaterError,
    UntrustedMetadataError,
    VerificationError,
)
from trayupdater.http_client import HttpClient, HttpFailed, HttpRefused
from trayupdater.network import Network
from trayupdater.release_model import Asset, Release
from trayupdater.sources.base import CheckResult
from trayupdater.sources.trusted_root import find_trusted_root, read_trusted_root
from trayupdater.sources.tuf_fetcher import HttpFetcher, HttpStatusError
from trayupdater.sources.tuf_targets import TargetIndex, index_targets, target_url
from trayupdater.urls import redact_url
from trayupdater.verify import ExpectedDigest

log = logging.getLogger(__name__)

MAX_TEXT_TARGET_BYTES = 1024 * 1024  # signatures beside an asset are small
MAX_RATE_LIMIT_WAIT = 24 * 3600.0
LOCK_TIMEOUT = 60.0
ROLES = ("root", "timestamp", "snapshot", "targets")


class TufSource:
    """Asks one TUF repository for its newest release."""

    def __init__(
        self,
        *,
        metadata_url: str,
        targets_url: str,
        cache_dir: Path,
        trusted_root: Path | None = None,
        root_locations: list[Path] | None = None,
        session: requests.Session | None = None,
        interrupt: Interrupt | None = None,
        network: Network | None = None,
        timeout: tuple[float, float] = (5.0, 20.0),
        retries: int = 2,
        backoff_base: float = 0.5,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.metadata_url = _slash(metadata_url)
        self.targets_url = _slash(targets_url)
        self.label = redact_url(self.metadata_url)
        self.cache_dir = cache_dir
        self.trusted_root = trusted_root
        self.root_locations = root_locations
        self.retries = retries
        self.backoff_base = backoff_base
        self._clock = clock
        self._interrupt = interrupt
        self._sleep = sleep or (lambda seconds: pause(seconds, interrupt))
        self.client = HttpClient(session, interrupt=interrupt, network=network)
        self.fetcher = HttpFetcher(self.client, timeout=timeout)
        self.blocked_until = 0.0  # the host asked us to wait: no request before this time
        self._updater: Updater | None = None  # the one that refreshed in the last check
        self._index = TargetIndex()

    # --- the Source interface ---

    @property
    def etag(self) -> str | None:
        return self.fetcher.etag(self.metadata_url + "timestamp.json")

    def check(self, *, include_prereleases: bool = False) -> CheckResult:
        """The newest release on the channel; raises SourceError and its kinds (see above)."""
        now = self._clock()
        if now < self.blocked_until:
            raise RateLimitedError(
                f"{self.label} asked to wait: not asking again for "
                f"{self.blocked_until - now:.0f} s",
                self.blocked_until,
            )
        root = read_trusted_root(find_trusted_root(self.trusted_root, self.root_locations))
        attempt = 0
        while True:
            try:
                return self._check_once(root, include_prereleases)
            except _RetryableError as exc:
                if attempt >= self.retries:
                    raise exc.error from None
                delay = self.backoff_base * (2**attempt) * random.uniform(0.5, 1.5)  # noqa: S311
                log.info("%s; retrying in %.1f s", exc.error, delay)
                self._sleep(delay)
                attempt += 1

    def expected_digest(self, release: Release, asset: Asset) -> ExpectedDigest | None:
        target = self._target(release, asset)
        return ExpectedDigest(target.hashes["sha256"], "the signed TUF targets metadata")

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
        target = self._target(release, asset)
        result = download(
            self.client,
            target_url(self.targets_url, target.path),
            dest,
            max_bytes=max_bytes,
            pace=pace,
            progress=progress,
            expected_size=target.length,
        )
        assert self._updater is not None  # _target() found it in the last check's index
        if self._updater.find_cached_target(target, os.fspath(result.path)) is None:
            result.path.unlink(missing_ok=True)
            raise VerificationError(
                f"{asset.name}: the download does not match its signed TUF metadata "
                f"(length {target.length}, sha256 {target.hashes['sha256'][:16]}…); "
                "it was tampered with or corrupted, so it is refused"
            )
        return result

    def verify_signature(
        self, release: Release, asset: Asset, path: Path, public_key: str | None
    ) -> None:
        """minisign too, when a key is set: over ``<asset>.minisig`` among the version's
        targets (fetched and verified through TUF like the asset)."""
        if not public_key:
            return
        from trayupdater.signatures import verify_release_asset

        verify_release_asset(
            release,
            asset,
            path,
            public_key=public_key,
            fetch_text=lambda text_asset: self._fetch_text(release, text_asset),
        )

    def close(self) -> None:
        self.client.close()

    # --- one check ---

    def _check_once(self, root: bytes, include_prereleases: bool) -> CheckResult:
        self.fetcher.reset()
        self._updater = None
        self._index = TargetIndex()
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with _cache_lock(self.cache_dir):
                before = _read_optional(self.cache_dir / "timestamp.json")
                updater = self._new_updater(root)
                updater.refresh()
                infos = [
                    info
                    for name in self._cached_target_names()
                    if (info := updater.get_targetinfo(name)) is not None
                ]
                after = _read_optional(self.cache_dir / "timestamp.json")
        except (TrayUpdaterError, _RetryableError):
            raise
        except exceptions.ExpiredMetadataError as exc:
            raise self._expired(exc) from None
        except exceptions.RepositoryError as exc:
            raise UntrustedMetadataError(
                f"{self.label} served update metadata that does not verify ({_short(exc)}); "
                "refused — an old or altered copy (a stale cache or mirror?), the current "
                "version keeps running"
            ) from None
        except exceptions.DownloadError as exc:
            raise self._download_failure(exc) from None
        except OSError as exc:
            raise StorageError(
                f"cannot use the TUF metadata cache {self.cache_dir}: {exc.strerror or exc}"
            ) from None
        self._updater = updater
        self._index = index_targets(infos, self.targets_url)
        release = self._index.newest(include_prereleases=include_prereleases)
        return CheckResult(
            release=release,
            not_modified=before is not None and before == after,
            skipped_tags=list(dict.fromkeys(self._index.skipped)),
            releases=self._index.newest_first(),
        )

    def _new_updater(self, root: bytes) -> Updater:
        try:
            return Updater(
                os.fspath(self.cache_dir),
                self.metadata_url,
                target_base_url=self.targets_url,
                fetcher=self.fetcher,
                # Version folders are immutable: target names carry no hash prefix.
                config=UpdaterConfig(prefix_targets_with_hash=False),
                bootstrap=root,
            )
        except exceptions.RepositoryError as exc:
            raise SourceError(
                f"the trusted root is not valid TUF root metadata ({_short(exc)}); "
                "ship the publisher's metadata/root.json"
            ) from None

    def _cached_target_names(self) -> list[str]:
        """Names in the targets metadata ngclient has just verified and cached: only a list
        to look up (``get_targetinfo`` answers from the verified copy in memory)."""
        path = self.cache_dir / "targets.json"
        data = _read_optional(path, limit=UpdaterConfig().targets_max_length)
        try:
            targets = json.loads(data or b"{}").get("signed", {}).get("targets", {})
        except (ValueError, RecursionError, AttributeError):
            return []
        if not isinstance(targets, dict):
            return []
        return [name for name in targets if isinstance(name, str)]

    # --- errors ---

    def _expired(self, exc: exceptions.ExpiredMetadataError) -> MetadataExpiredError:
        text = str(exc)
        role = next((r for r in ROLES if r in text), None)
        when = self._expiry_of(role) if role else None
        shown = when.strftime("%Y-%m-%d %H:%M UTC") if when else "an earlier date"
        log.error("TUF: %s", text)
        return MetadataExpiredError(
            f"the update metadata of {self.label} expired on {shown} ({role or 'metadata'}"
            ".json): no new version is installed until the publisher re-signs it "
            "(trayupdater repo refresh); the current version keeps running",
            when.isoformat() if when else None,
        )

    def _expiry_of(self, role: str) -> datetime | None:
        """When ``role`` expired, read from the bytes ngclient has just verified and refused
        as expired (the verified root in the cache for root)."""
        if role == "root":
            data = _read_optional(self.cache_dir / "root.json", UpdaterConfig().root_max_length)
        else:
            seen = [
                body
                for url, body in self.fetcher.fetched.items()
                if url.rsplit("/", 1)[-1].split(".")[-2:] == [role, "json"]
            ]
            data = seen[-1] if seen else None
        if data is None:
            return None
        try:
            expires = Metadata.from_bytes(data).signed.expires
        except (exceptions.RepositoryError, ValueError):
            return None
        return expires.astimezone(timezone.utc)

    def _download_failure(
        self, exc: exceptions.DownloadError
    ) -> TrayUpdaterError | _RetryableError:
        """What a failed download means; a _RetryableError when trying again may help."""
        cause = exc.__cause__
        if isinstance(cause, CancelledError):
            return cause
        if isinstance(cause, HttpRefused):
            return SourceError(str(cause))
        if isinstance(exc, HttpStatusError):
            return self._status_failure(exc)
        if isinstance(exc, exceptions.DownloadLengthMismatchError):
            return UntrustedMetadataError(
                f"{self.label} served a metadata file longer than signed metadata allows "
                f"({_short(exc)}); refused"
            )
        why = cause.why if isinstance(cause, HttpFailed) else _short(exc)
        return _RetryableError(SourceError(f"cannot reach {self.label}: {why}"))

    def _status_failure(self, exc: HttpStatusError) -> TrayUpdaterError | _RetryableError:
        status = exc.status_code
        if status == 429 or (status == 503 and exc.retry_after is not None):
            wait = 60.0 if exc.retry_after is None else exc.retry_after
            until = self._clock() + min(max(wait, 1.0), MAX_RATE_LIMIT_WAIT)
            self.blocked_until = max(self.blocked_until, until)
            return RateLimitedError(
                f"{exc} (too many requests); next check in {until - self._clock():.0f} s",
                self.blocked_until,
            )
        if status >= 500 or status == 408:
            return _RetryableError(SourceError(str(exc)))
        if status in (403, 404):
            return SourceError(
                f"{exc}: is metadata_url the repository's metadata/ folder "
                "(or url the folder above it)?"
            )
        return SourceError(str(exc))

    # --- targets ---

    def _target(self, release: Release, asset: Asset) -> TargetFile:
        target = self._index.target(release, asset)
        if target is None or self._updater is None:
            raise SourceError(f"{asset.name} of {release.tag} is not in the last TUF check")
        return target

    def _fetch_text(self, release: Release, asset: Asset) -> str:
        """A small target (a ``.minisig``), checked as ngclient's ``download_target`` does,
        but fetched from the quoted URL the asset itself comes from: ngclient joins the
        raw path, so a space, ``#`` or ``%41`` in a name would ask for another URL."""
        target = self._target(release, asset)
        if target.length > MAX_TEXT_TARGET_BYTES:
            raise SourceError(f"{asset.name} is larger than {MAX_TEXT_TARGET_BYTES} bytes")
        url = target_url(self.targets_url, target.path)
        try:
            # Capped at the signed length; the fetcher's deadline covers the whole request.
            with self.fetcher.download_file(url, target.length) as fh:
                target.verify_length_and_hashes(fh)
                fh.seek(0)
                data = fh.read()
        except (exceptions.RepositoryError, exceptions.DownloadLengthMismatchError) as exc:
            raise VerificationError(
                f"{asset.name} does not match its signed TUF metadata ({_short(exc)}); refused"
            ) from None
        except exceptions.DownloadError as exc:
            failure = self._download_failure(exc)
            if isinstance(failure, _RetryableError):
                failure = failure.error
            raise failure from None
        return data.decode("utf-8", errors="replace")


class _RetryableError(Exception):
    def __init__(self, error: SourceError) -> None:
        super().__init__(str(error))
        self.error = error


def cache_dir_for(data_dir: Path, metadata_url: str) -> Path:
    """One metadata cache per repository: switching URLs never mixes what was trusted."""
    key = hashlib.sha256(_slash(metadata_url).encode()).hexdigest()[:16]
    return data_dir / "tuf" / key


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def _read_optional(path: Path, limit: int = 64 * 1024) -> bytes | None:
    try:
        with path.open("rb") as fh:
            return fh.read(limit + 1)
    except OSError:
        return None


@contextlib.contextmanager
def _cache_lock(folder: Path) -> Iterator[None]:
    """ngclient supports one user of a cache at a time; ``check --dry-run`` beside a running
    app makes two. A lock file, waited for with a deadline."""
    with open(folder / ".lock", "a+b") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while not _try_lock(fh.fileno()):
            if time.monotonic() > deadline:
                raise SourceError(f"the TUF metadata cache {folder} is busy; try again")
            time.sleep(0.05)
        try:
            yield
        finally:
            _unlock(fh.fileno())


if os.name == "nt":  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
