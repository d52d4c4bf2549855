"""python-tuf's network layer (``FetcherInterface``) on the app's one HTTP policy.

ngclient decides *what* to fetch and verifies it; this decides *how*, under the same rules as
every other request of the app: HTTPS or loopback only, each redirect hop checked, reads
interruptible by a rollback or quit. On top of that:

- **Conditional requests.** ``timestamp.json`` is fetched on every check and changes only on
  a publish or a refresh, so each small answer's ``ETag``/``Last-Modified`` is kept and sent
  back; a 304 hands ngclient the same bytes as last time (which it verifies again, so a
  frozen 304 still runs into the metadata's expiry). Static servers derive both validators
  from the file's modification time in whole seconds, so a file changed twice within a
  second keeps them: like HTTP caches (RFC 9110 8.8.2.2), an answer whose ``Last-Modified``
  is less than :data:`MIN_VALIDATOR_AGE` before its ``Date`` is not validated later.
- **Deadlines.** A timeout per read, and one for the whole request, from before it is sent
  to the last byte of the body: a server that drips a byte every few seconds, of the body or
  of the status line and headers, cannot hold a check (and the metadata cache's lock) for
  ever: :meth:`HttpClient.deadline` shuts the request's sockets down when it passes.
  ngclient caps the length itself.
- **Errors that say what happened.** HTTP errors carry the status and ``Retry-After``;
  policy refusals and cancellations are kept as the cause for the source to report.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from trayupdater.cancel import Interrupt
from trayupdater.failure_reasons import describe
from trayupdater.http_body import NETWORK_ERRORS, discard
from trayupdater.http_client import Deadline, HttpClient, HttpFailed
from trayupdater.numbers import ascii_int
from trayupdater.urls import redact_url

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
REMEMBER_BYTES = 64 * 1024  # answers this small are kept for conditional requests
KEEP_BYTES = 8 * 1024 * 1024  # within ngclient's metadata caps: kept while a check runs
MAX_RETRY_AFTER = 24 * 3600.0
MIN_VALIDATOR_AGE = 2.0  # seconds between Last-Modified and Date for a validator to be safe


class HttpStatusError(exceptions.DownloadHTTPError):
    """An HTTP error answer; ``retry_after`` is the server's hint in seconds, if it gave one."""

    def __init__(self, url: str, status: int, retry_after: float | None) -> None:
        super().__init__(f"{redact_url(url)} answered HTTP {status}", status)
        self.url = url
        self.retry_after = retry_after


@dataclass
class _Remembered:
    etag: str | None
    last_modified: str | None
    body: bytes


class HttpFetcher(FetcherInterface):
    def __init__(
        self,
        client: HttpClient,
        *,
        timeout: tuple[float, float] = (5.0, 20.0),
        deadline: float = 120.0,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.deadline = deadline
        self._remembered: dict[str, _Remembered] = {}
        self.not_modified: set[str] = set()  # URLs answered 304 since the last reset()
        # Complete bodies since the last reset(), by URL: what ngclient was handed, so an
        # error about a file can quote it (its expiry date).
        self.fetched: dict[str, bytes] = {}

    @property
    def interrupt(self) -> Interrupt | None:
        return self.client.interrupt

    def reset(self) -> None:
        """Start a new check: forget what the previous one saw (validators stay)."""
        self.not_modified.clear()
        self.fetched.clear()

    def etag(self, url: str) -> str | None:
        remembered = self._remembered.get(url)
        return remembered.etag if remembered else None

    def _fetch(self, url: str) -> Iterator[bytes]:
        headers = {"Accept-Encoding": "identity", "Accept": "application/json, */*"}
        remembered = self._remembered.get(url)
        if remembered is not None:
            if remembered.etag:
                headers["If-None-Match"] = remembered.etag
            if remembered.last_modified:
                headers["If-Modified-Since"] = remembered.last_modified
        cutoff = self.client.deadline(self.deadline)
        reading = False
        try:
            # HttpRefused / HttpFailed / CancelledError propagate: ngclient wraps them in a
            # DownloadError whose __cause__ the source reads.
            try:
                response = self.client.get(url, headers=headers, timeout=self.timeout)
            except HttpFailed:
                self._check_cutoff(url, cutoff)  # a shut-down socket: say why
                raise
            if cutoff.expired:  # headers cut short can still parse as an answer
                response.close()
                self._check_cutoff(url, cutoff)
            status = response.status_code
            if status == 304 and remembered is not None:
                discard(response)
                self._check_cutoff(url, cutoff)
                self.not_modified.add(url)
                self.fetched[url] = remembered.body
                return iter([remembered.body])
            if status != 200:
                retry_after = _retry_after(response)
                discard(response)
                self._check_cutoff(url, cutoff)
                raise HttpStatusError(url, status, retry_after)
            reading = True
            return self._chunks(url, response, cutoff)
        finally:
            if not reading:
                cutoff.cancel()

    def _check_cutoff(self, url: str, cutoff: Deadline) -> None:
        """SlowRetrievalError once the deadline has cut the request off: what ended it is
        not an answer (a 200 with headers cut short, an empty body, a reset)."""
        if cutoff.expired:
            raise exceptions.SlowRetrievalError(
                f"{redact_url(url)}: not finished after {self.deadline:g} s ({cutoff.cause})"
            )

    def _chunks(self, url: str, response: requests.Response, cutoff: Deadline) -> Iterator[bytes]:
        """The body, read under the request's deadline; remembered when small and complete."""
        shown = redact_url(url)
        body = bytearray()
        complete = False
        try:
            while True:
                if self.interrupt is not None:
                    self.interrupt.check()
                try:
                    # read1: whatever has arrived, so an interrupt is noticed between drips.
                    chunk = response.raw.read1(READ_SIZE, decode_content=True)
                except NETWORK_ERRORS as exc:
                    if self.interrupt is not None:
                        self.interrupt.check()
                    self._check_cutoff(url, cutoff)
                    raise exceptions.DownloadError(
                        f"{shown}: reading the answer failed ({describe(exc)})"
                    ) from None
                self._check_cutoff(url, cutoff)  # also when the cut ended the body early
                if not chunk:
                    complete = True
                    break
                if len(body) <= KEEP_BYTES:
                    body += chunk
                yield chunk
        finally:
            cutoff.cancel()
            response.close()
            if complete:
                self._remember(url, response, bytes(body))

    def _remember(self, url: str, response: requests.Response, body: bytes) -> None:
        if len(body) <= KEEP_BYTES:
            self.fetched[url] = body
        if len(body) > REMEMBER_BYTES:
            self._remembered.pop(url, None)
            return
        etag = _header(response, "ETag")
        last_modified = _header(response, "Last-Modified")
        if last_modified and not _old_enough(last_modified, _header(response, "Date")):
            etag = last_modified = None  # it may change again within the same second
        if etag or last_modified:
            self._remembered[url] = _Remembered(etag, last_modified, body)
        else:
            self._remembered.pop(url, None)


def _header(response: requests.Response, name: str) -> str | None:
    """A validator to send back, if it is one (short, visible ASCII)."""
    value = response.headers.get(name)
    if value and len(value) <= 256 and value.isascii() and value.isprintable():
        return value
    return None


def _old_enough(last_modified: str, date: str | None) -> bool:
    changed = _http_date(last_modified)
    now = _http_date(date) if date else time.time()
    return changed is not None and now is not None and now - changed >= MIN_VALIDATOR_AGE


def _http_date(text: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _retry_after(response: requests.Response) -> float | None:
    """``Retry-After`` in seconds from now (delta or HTTP date), capped; None if absent."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value or len(value) > 64:
        return None
    seconds = ascii_int(value, 64)
    if seconds is not None:
        return min(float(seconds), MAX_RETRY_AFTER)
    when = _http_date(value)
    if when is None:
        return None
    return min(max(0.0, when - time.time()), MAX_RETRY_AFTER)
