"""Release source: the GitHub REST API (github.com or a GitHub Enterprise ``/api/v3`` base).

Polite by construction: conditional requests with the ETag (a 304 re-uses the release parsed
last time), a timeout on every request, back-off with jitter on 5xx and network errors, and
rate-limit answers (403/429 with ``x-ratelimit-*`` or ``retry-after``) turned into a
"do not ask before T" that is honoured without sending anything.

Distrustful by construction: answers are read with a cap after decoding and validated
field by field (:mod:`.github_json`); the token goes only to the API's own origin (scheme,
host and port of ``api_url``), never to an asset URL elsewhere and never after a redirect
to another origin (:mod:`trayupdater.http_client` enforces it on every hop).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from trayupdater.cancel import Interrupt, pause
from trayupdater.download import DownloadResult, Pace, ProgressCallback, download
from trayupdater.errors import RateLimitedError, SourceError
from trayupdater.http_body import discard, read_capped
from trayupdater.http_client import Deadline, HttpClient, HttpFailed, HttpRefused, origin
from trayupdater.network import Network
from trayupdater.numbers import ascii_int
from trayupdater.release_model import Asset, Release
from trayupdater.sources.base import CheckResult
from trayupdater.sources.github_json import MalformedRelease, is_draft, loads, release_from_github
from trayupdater.verify import ExpectedDigest, find_expected_digest

if TYPE_CHECKING:
    from trayupdater.config import Config

log = logging.getLogger(__name__)

# Seconds for a whole answer (API JSON, checksums, signatures), headers included: a server
# dripping a byte within each read timeout is cut off then (HttpClient.deadline).
ANSWER_DEADLINE = 60.0

MAX_TEXT_ASSET_BYTES = 1024 * 1024  # checksums files and signatures are small; cap what we read
MAX_API_BYTES = 8 * 1024 * 1024  # 30 releases with 1,000 assets each fit; a bomb does not
MAX_RATE_LIMIT_WAIT = 24 * 3600.0  # GitHub's limits reset hourly
UNAUTHENTICATED_PER_HOUR = 60  # GitHub's limit without a token, per IP address


@dataclass
class _Answer:
    data: Any
    url: str
    etag: str | None


@dataclass
class _Cache:
    url: str
    etag: str
    result: CheckResult


class GitHubSource:
    """Asks one repository for its newest release."""

    def __init__(
        self,
        repo: str,
        *,
        api_url: str = "https://api.github.com",
        token: str | None = None,
        session: requests.Session | None = None,
        interrupt: Interrupt | None = None,
        network: Network | None = None,
        timeout: tuple[float, float] = (5.0, 20.0),
        answer_deadline: float = ANSWER_DEADLINE,
        retries: int = 2,
        backoff_base: float = 0.5,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.repo = repo
        self.label = repo
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.answer_deadline = answer_deadline  # a whole answer, however it trickles
        self.retries = retries
        self.backoff_base = backoff_base
        self._clock = clock
        self._interrupt = interrupt
        self._sleep = sleep or (lambda seconds: pause(seconds, interrupt))
        self._token = token
        self.client = HttpClient(session, interrupt=interrupt, network=network)
        self.session = self.client.session
        self.session.headers["X-GitHub-Api-Version"] = "2022-11-28"
        self._cache: _Cache | None = None
        self.blocked_until = 0.0  # rate limit: no request before this time.time()

    # --- public API ---

    def check(self, *, include_prereleases: bool = False) -> CheckResult:
        """The newest release on the channel; raises SourceError / RateLimitedError."""
        if include_prereleases:
            return self._newest_from_list(include_prereleases=True)
        try:
            answer = self._get_json(f"/repos/{self.repo}/releases/latest")
        except _NotFoundError:
            return CheckResult(release=None)  # no published release yet (drafts are invisible)
        if isinstance(answer, CheckResult):
            return answer
        data = answer.data
        release = self._parse_release(data)
        try:
            draft = is_draft(data)
        except MalformedRelease as exc:
            raise SourceError(f"{self.repo}: malformed release: {exc}") from None
        if draft:  # GitHub never answers one here: unpublished, so never installed
            raise SourceError(f"{self.repo}: /releases/latest answered a draft; not installed")
        if release is not None and release.prerelease:
            # Nor a pre-release: the list, which is filtered by channel, decides.
            return self._newest_from_list(include_prereleases=False)
        if release is not None:
            return self._remember(answer, CheckResult(release=release))
        # "latest" carries a tag that is not a version: report it and look at the others.
        tag = str(data.get("tag_name"))[:100]
        log.warning("%s: latest release tag %r is not a version; skipped", self.repo, tag)
        result = self._newest_from_list(include_prereleases=False)
        if tag not in result.skipped_tags:
            result.skipped_tags.insert(0, tag)
        return result

    def download_headers(self, asset: Asset) -> tuple[str, dict[str, str]]:
        """URL and headers to fetch an asset's bytes (the API URL works for private repos).

        The token is added only when the asset's API URL is on the API's own origin: a
        release naming another host must not collect it.
        """
        if asset.api_url:
            headers = {"Accept": "application/octet-stream"}
            if origin(asset.api_url) == origin(self.api_url):
                headers.update(self._auth_headers())
            return asset.api_url, headers
        return asset.download_url, {}

    def fetch_text(self, asset: Asset) -> str:
        """A small text asset (a checksums file, a signature) as text, size capped."""
        url, headers = self.download_headers(asset)
        deadline = self.client.deadline(self.answer_deadline)
        with deadline.enforced(lambda: self._too_slow(asset.name, deadline), SourceError):
            try:
                response = self.client.get(url, headers=headers, timeout=self.timeout)
            except (HttpRefused, HttpFailed) as exc:
                raise SourceError(f"{asset.name}: {exc}") from None
            if response.status_code != 200:
                discard(response)
                raise SourceError(f"{asset.name}: download answered HTTP {response.status_code}")
            body = read_capped(
                response,
                MAX_TEXT_ASSET_BYTES,
                error=SourceError,
                what=asset.name,
                interrupt=self._interrupt,
            )
        return body.decode("utf-8", errors="replace")

    def _too_slow(self, what: str, deadline: Deadline) -> SourceError:
        return SourceError(
            f"{what} took more than {self.answer_deadline:g} s to arrive ({deadline.cause})"
        )

    # --- the Source interface beyond check() ---

    def expected_digest(self, release: Release, asset: Asset) -> ExpectedDigest | None:
        return find_expected_digest(release, asset, self.fetch_text)

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
        url, headers = self.download_headers(asset)
        return download(
            self.client,
            url,
            dest,
            headers=headers,
            max_bytes=max_bytes,
            pace=pace,
            progress=progress,
            expected_size=asset.size or None,
        )

    def verify_signature(
        self, release: Release, asset: Asset, path: Path, public_key: str | None
    ) -> None:
        """minisign over the asset or its checksums file; a no-op unless a key is set."""
        if not public_key:
            return
        from trayupdater.signatures import verify_release_asset

        verify_release_asset(
            release, asset, path, public_key=public_key, fetch_text=self.fetch_text
        )

    def close(self) -> None:
        self.client.close()

    @property
    def etag(self) -> str | None:
        return self._cache.etag if self._cache else None

    # --- internals ---

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _newest_from_list(self, *, include_prereleases: bool) -> CheckResult:
        try:
            answer = self._get_json(f"/repos/{self.repo}/releases?per_page=30")
        except _NotFoundError:  # unlike /latest, the list of a repository without releases is []
            raise SourceError(
                f"{self.repo}: /releases answered HTTP 404 (no such repository, or a private one "
                "and no token)"
            ) from None
        if isinstance(answer, CheckResult):
            return answer
        data = answer.data
        if not isinstance(data, list):
            raise SourceError(f"{self.repo}: /releases answered {type(data).__name__}, not a list")
        best: Release | None = None
        skipped: list[str] = []
        if len(data) > 100:
            raise SourceError(f"{self.repo}: /releases answered {len(data)} items for 30 asked")
        for item in data:
            if not isinstance(item, dict):
                raise SourceError(f"{self.repo}: /releases holds a {type(item).__name__}")
            try:
                if is_draft(item):
                    continue
            except MalformedRelease as exc:
                raise SourceError(f"{self.repo}: malformed release: {exc}") from None
            release = self._parse_release(item)
            if release is None:
                skipped.append(str(item.get("tag_name"))[:100])
                continue
            if release.prerelease and not include_prereleases:
                continue
            if best is None or release.version > best.version:
                best = release
        for tag in skipped:
            log.warning("%s: release tag %r is not a version; skipped", self.repo, tag)
        return self._remember(answer, CheckResult(release=best, skipped_tags=skipped))

    def _parse_release(self, data: Any) -> Release | None:
        if not isinstance(data, dict) or "tag_name" not in data:
            raise SourceError(f"{self.repo}: answer is not a release object")
        try:
            return release_from_github(data)
        except MalformedRelease as exc:
            raise SourceError(f"{self.repo}: malformed release: {exc}") from None

    def _remember(self, answer: _Answer, result: CheckResult) -> CheckResult:
        if answer.etag:
            self._cache = _Cache(answer.url, answer.etag, result)
        return result

    def _get_json(self, path: str) -> _Answer | CheckResult:
        """GET with retries; the parsed JSON, or the cached CheckResult on 304."""
        url = self.api_url + path
        now = self._clock()
        if now < self.blocked_until:
            raise RateLimitedError(
                f"GitHub rate limit: not asking again for {self.blocked_until - now:.0f} s",
                self.blocked_until,
            )
        headers = {
            "Accept": "application/vnd.github+json",
            "Accept-Encoding": "gzip",  # the one encoding read_capped decodes with a cap
            **self._auth_headers(),
        }
        cache = self._cache if self._cache and self._cache.url == url else None
        if cache:
            headers["If-None-Match"] = cache.etag

        attempt = 0
        while True:
            # The whole answer in time, status line and headers too (see http_client).
            deadline = self.client.deadline(self.answer_deadline)
            try:
                response = self.client.get(url, headers=headers, timeout=self.timeout)
            except HttpRefused as exc:
                raise SourceError(str(exc)) from None
            except HttpFailed as exc:
                error: SourceError = SourceError(f"cannot reach {self.api_url}: {exc.why}")
                if deadline.expired:
                    error = self._too_slow(f"the answer of {self.api_url}", deadline)
            else:
                if response.status_code != 200:
                    discard(response)
                self._note_rate_limit(response)
                if response.status_code == 304 and cache:
                    return CheckResult(
                        release=cache.result.release,
                        not_modified=True,
                        skipped_tags=list(cache.result.skipped_tags),
                    )
                if response.status_code == 200:
                    too_slow = functools.partial(
                        self._too_slow, f"the answer of {self.api_url}", deadline
                    )
                    with deadline.enforced(too_slow, SourceError):
                        answer = _Answer(self._decode(response), url, _etag(response))
                    return answer
                if response.status_code == 404:
                    raise _NotFoundError
                error = self._status_error(response)
                if not _retryable(response.status_code):
                    raise error
            finally:
                deadline.cancel()
            if attempt >= self.retries:
                raise error
            delay = self.backoff_base * (2**attempt) * random.uniform(0.5, 1.5)  # noqa: S311
            log.info("%s; retrying in %.1f s", error, delay)
            self._sleep(delay)
            attempt += 1

    def _decode(self, response: requests.Response) -> Any:
        kind = response.headers.get("Content-Type", "")
        if "json" not in kind:
            response.close()
            shown = repr(kind[:60]) if kind else "no content type"
            raise SourceError(
                f"{self.api_url} answered {shown}, not JSON "
                "(is api_url the API base, e.g. https://HOST/api/v3?)"
            )
        body = read_capped(
            response,
            MAX_API_BYTES,
            error=SourceError,
            what=f"the answer of {self.api_url}",
            interrupt=self._interrupt,
        )
        try:
            return loads(body)
        except MalformedRelease as exc:
            raise SourceError(f"{self.api_url} answered {exc}") from None

    def _note_rate_limit(self, response: requests.Response) -> None:
        """Turn rate-limit headers into blocked_until; raise on a rate-limited answer."""
        h = response.headers
        retry_after = h.get("Retry-After")
        remaining = h.get("X-RateLimit-Remaining")
        reset = h.get("X-RateLimit-Reset")
        limited = response.status_code in (403, 429) and (retry_after or remaining == "0")
        until = 0.0
        retry_seconds, reset_at = ascii_int(retry_after, 11), ascii_int(reset, 11)
        if retry_seconds is not None:
            until = self._clock() + retry_seconds
        elif remaining == "0" and reset_at is not None:
            until = float(reset_at)
        elif limited:
            until = self._clock() + 60  # secondary limit without a hint: GitHub asks for >= 1 min
        if until:
            # A hostile or broken header must not silence the app for years.
            until = min(until, self._clock() + MAX_RATE_LIMIT_WAIT)
            self.blocked_until = max(self.blocked_until, until)
        if limited:
            wait = max(0.0, self.blocked_until - self._clock())
            raise RateLimitedError(
                f"GitHub rate limit reached (HTTP {response.status_code}); "
                f"next check in {wait:.0f} s"
                + ("" if self._token else "; a token raises the limit"),
                self.blocked_until,
            )

    def _status_error(self, response: requests.Response) -> SourceError:
        code = response.status_code
        if code == 401:
            return SourceError("GitHub refused the token (HTTP 401): check token / GITHUB_TOKEN")
        if code == 403:
            return SourceError(f"GitHub denied access to {self.repo} (HTTP 403)")
        return SourceError(f"{self.api_url} answered HTTP {code} for {self.repo}")


class _NotFoundError(Exception):
    pass


def rate_limit_note(config: Config) -> str | None:
    """What GitHub's limit without a token means for this check interval, for the start-up
    log; None with a token, or when nothing asks the GitHub API."""
    per_check = (config.kind == "github") + bool(config.self_update_repo)
    if config.token or not per_check:
        return None
    per_hour = per_check * 3600 / config.check_interval
    every = _interval_text(config.check_interval)
    if per_hour > UNAUTHENTICATED_PER_HOUR:
        share = (
            f"checking every {every} takes {per_hour:.0f} requests/hour, more than the limit "
            "for this machine alone"
        )
    else:
        machines = int(UNAUTHENTICATED_PER_HOUR // per_hour)
        share = (
            f"checking every {every} uses {per_hour:g} of them per hour here, so about "
            f"{machines} machines like this one can share an address before checks are "
            "refused (an update costs a few more)"
        )
    who = "GitHub source" if config.kind == "github" else "Self-update from GitHub"
    return (
        f"{who} without a token: the API allows {UNAUTHENTICATED_PER_HOUR} "
        "requests/hour per IP, shared by every machine behind your address; "
        f"{share}. Set [source] token or GITHUB_TOKEN (5,000 requests/hour), or publish a "
        "TUF repository on a static host (packaging/TRUST.md)"
    )


def _interval_text(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _etag(response: requests.Response) -> str | None:
    """The ETag to send back next time, if it is one (short, visible ASCII)."""
    value = response.headers.get("ETag")
    if value and len(value) <= 256 and value.isascii() and value.isprintable():
        return value
    return None


def _retryable(status: int) -> bool:
    return status >= 500 or status == 408
