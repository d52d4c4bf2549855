"""Download one release asset to disk: streamed, size-capped, hashed on the way, resumable.

The bytes go to a ``.part`` beside ``dest`` first and are renamed to ``dest`` only once
complete, so a crash never leaves something at ``dest`` that looks finished. A cut
connection keeps the part so the next call asks for the rest with ``Range``; any answer that
does not prove it continues exactly where the part ends makes the download start again from
zero. The part is named after what it is a part of (the URL and the listed size): asset
names carry no version, so a cut download of 1.1.0 must not be continued with 1.2.0's bytes;
a part of anything else at ``dest`` is removed when a download starts.

Requests go through :class:`~trayupdater.http_client.HttpClient`: every redirect hop is
checked before it is sent to, and ``Authorization`` travels only to the origin of the URL
it was given for (GitHub's asset API answers 302 to a storage host that must never see the
token). A server can hold a download in three ways, each with a limit: silence (``timeout``
per read), a trickle (``min_rate`` bytes/s over ``rate_window`` seconds) and sheer length
(``deadline`` for the whole download). A rollback or quit interrupts it within a moment.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import requests
from requests.structures import CaseInsensitiveDict

from trayupdater.cancel import Interrupt
from trayupdater.errors import DownloadError
from trayupdater.failure_reasons import describe
from trayupdater.http_body import NETWORK_ERRORS
from trayupdater.http_client import HttpClient, HttpFailed, HttpRefused
from trayupdater.numbers import ascii_int
from trayupdater.urls import insecure_reason, redact_url

CHUNK_SIZE = 64 * 1024

ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total or None)

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str  # lower-case hex


def part_path(dest: Path, url: str, expected_size: int | None = None) -> Path:
    """Where the unfinished bytes of ``dest`` from ``url`` live between calls."""
    key = hashlib.sha256(f"{url}\n{expected_size}".encode()).hexdigest()[:12]
    return dest.with_name(f"{_part_stem(dest.name)}.{key}.part")


def _part_stem(name: str) -> str:
    """``name``, cut so that the part's name fits a file name's 255 bytes (an asset's name
    may take them all; the key in the part's name tells the downloads apart)."""
    room = 255 - len(".0123456789ab.part")
    return name.encode("utf-8")[:room].decode("utf-8", "ignore")


def _own_parts(dest: Path) -> re.Pattern[str]:
    return re.compile(re.escape(_part_stem(dest.name)) + r"(\.[0-9a-f]{12})?\.part")


def remove_parts(dest: Path, keep: Path | None = None) -> None:
    """Remove the unfinished downloads of ``dest`` (but ``keep``)."""
    own = _own_parts(dest)
    with contextlib.suppress(FileNotFoundError):
        for path in dest.parent.iterdir():
            if path != keep and own.fullmatch(path.name):
                _remove(path)


def remove_other_downloads(dest: Path) -> None:
    """Remove the files beside ``dest`` that are neither ``dest`` nor a part of it.

    Asset names often carry the version (goreleaser's default does): a cut download of
    1.1.0 is never resumed once 1.2.0 is out, and its part would stay forever, one per
    such release. Only for a folder that holds nothing but downloads of one kind.
    """
    own = _own_parts(dest)
    with contextlib.suppress(FileNotFoundError):
        for path in dest.parent.iterdir():
            if path.name == dest.name or own.fullmatch(path.name):
                continue
            if path.is_symlink() or path.is_file():
                _remove(path)


@dataclass(frozen=True)
class Pace:
    """How long a download may take: the slow-server rules (see the module doc)."""

    timeout: float = 30.0  # connecting, and each read
    deadline: float | None = 3600.0  # the whole download, resumes of it included
    min_rate: float = 1024.0  # bytes/s averaged over rate_window; 0 switches the rule off
    rate_window: float = 30.0


def download(
    client: HttpClient | requests.Session,
    url: str,
    dest: Path,
    *,
    headers: Mapping[str, str] | None = None,
    max_bytes: int,
    timeout: float | None = None,
    pace: Pace | None = None,
    progress: ProgressCallback | None = None,
    expected_size: int | None = None,
) -> DownloadResult:
    """Fetch ``url`` into ``dest`` and return its size and SHA-256.

    ``pace`` limits time (``timeout``, if given, overrides its per-read timeout).
    ``expected_size`` (the size the release lists) is enforced when given. Raises
    DownloadError (CancelledError when interrupted); the ``.part`` is kept only when
    resuming it later makes sense (cut connection, timeout, server error, interruption).
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    if not isinstance(client, HttpClient):
        client = HttpClient(client)
    pace = pace or Pace()
    if timeout is not None:
        pace = Pace(timeout, pace.deadline, pace.min_rate, pace.rate_window)
    clock = _Clock(pace, client.interrupt)
    shown = redact_url(url)
    reason = insecure_reason(url)
    if reason:  # checked before sending: the request may carry a token
        raise DownloadError(f"{shown}: {reason}; refused")
    if expected_size is not None and expected_size > max_bytes:
        raise DownloadError(
            f"{shown} is {expected_size} bytes, more than the limit of {max_bytes} bytes"
        )
    part = part_path(dest, url, expected_size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_parts(dest, keep=part)  # of another release: never resumed into this one

    # The deadline also cuts a read that waits (see http_client): the status line and
    # headers included, which the per-read timeout alone lets a server drip for hours.
    cutoff = client.deadline(pace.deadline) if pace.deadline is not None else None
    in_time = (
        cutoff.enforced(lambda: _not_finished(shown, cutoff.seconds), DownloadError)
        if cutoff is not None
        else contextlib.nullcontext()
    )
    with in_time:
        # Two rounds at most: the second one starts from zero after a reply that could not be
        # trusted to continue the part.
        for attempt in range(2):
            offset, hasher = _hash_existing_part(part, max_bytes, expected_size)
            with _get(client, url, headers, offset, pace.timeout) as resp:
                plan = _plan(resp, offset, expected_size, shown)
                if plan.restart:
                    if attempt == 0 and offset > 0:
                        _remove(part)
                        continue
                    raise DownloadError(f"{shown}: {plan.restart}")
                total = plan.total
                if total is not None and total > max_bytes:
                    _remove(part)
                    raise DownloadError(
                        f"{shown} is {total} bytes, more than the limit of {max_bytes} bytes"
                    )
                if expected_size is not None and total is not None and total != expected_size:
                    _remove(part)
                    raise DownloadError(
                        f"{shown} is {total} bytes according to the server, "
                        f"but the release lists {expected_size} bytes"
                    )
                if plan.complete:
                    size = offset
                    if progress:
                        progress(size, size)
                else:
                    if plan.start == 0:
                        hasher = hashlib.sha256()
                    # From here on the size is known if either side said it (they agree).
                    total = total if total is not None else expected_size
                    limit = min(max_bytes, total if total is not None else max_bytes)
                    body = _Body(part, plan.start, hasher, limit, total, shown)
                    size = body.stream(resp, clock, progress)
            break

    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return DownloadResult(path=dest, size=size, sha256=hasher.hexdigest())


@dataclass(frozen=True)
class _Plan:
    start: int = 0  # where the body's first byte goes in the part
    total: int | None = None  # full size of the file, when the server said
    complete: bool = False  # the part already holds the whole file
    restart: str = ""  # non-empty: why this reply cannot continue the part


def _plan(resp: requests.Response, offset: int, expected: int | None, shown: str) -> _Plan:
    """Decide from status and headers what the body of ``resp`` means for the part."""
    status = resp.status_code
    length = _int_header(resp, "Content-Length")
    if status == 200:
        # The full file (a server that ignores Range included): the part is rewritten.
        return _Plan(start=0, total=length)
    if status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not match:
            return _Plan(restart="206 reply without a usable Content-Range")
        first, last = int(match.group(1)), int(match.group(2))
        total = None if match.group(3) == "*" else int(match.group(3))
        if first != offset or last < first:
            return _Plan(
                restart=f"asked for bytes from {offset}, got Content-Range "
                f"{resp.headers.get('Content-Range')!r}"
            )
        if total is None:
            total = last + 1
        if last + 1 != total or (expected is not None and total != expected):
            return _Plan(restart=f"206 reply does not end the file ({match.group(0).strip()})")
        if length is not None and length != last - first + 1:
            return _Plan(restart="206 reply whose Content-Length disagrees with Content-Range")
        return _Plan(start=offset, total=total)
    if status == 416 and offset > 0:
        match = _UNSATISFIED_RANGE.match(resp.headers.get("Content-Range", ""))
        server_total = int(match.group(1)) if match else None
        size = expected if expected is not None else server_total
        if size == offset:
            return _Plan(start=offset, total=offset, complete=True)
        return _Plan(restart=f"416 reply for a part of {offset} bytes")
    reason = f" {resp.reason}" if resp.reason else ""
    final = redact_url(resp.url)
    where = shown if final == shown else f"{final} (redirected from {shown})"
    raise DownloadError(f"{where} answered HTTP {status}{reason}")


class _Clock:
    """The slow-server rules of one download, checked after every read."""

    def __init__(self, pace: Pace, interrupt: Interrupt | None) -> None:
        self.pace = pace
        self.interrupt = interrupt
        self.started = time.monotonic()
        self._recent: deque[tuple[float, int]] = deque()  # (when, bytes) in rate_window

    def tick(self, received: int, shown: str) -> None:
        """Raise if the download is interrupted, too slow or past its deadline."""
        if self.interrupt is not None:
            self.interrupt.check()
        now = time.monotonic()
        pace = self.pace
        if pace.deadline is not None and now - self.started > pace.deadline:
            raise _not_finished(shown, pace.deadline)
        if not pace.min_rate:
            return
        recent = self._recent
        recent.append((now, received))
        while recent and recent[0][0] < now - pace.rate_window:
            recent.popleft()
        if now - self.started >= pace.rate_window:
            got = sum(n for _, n in recent)
            if got < pace.min_rate * pace.rate_window:
                raise DownloadError(
                    f"{shown}: too slow ({got} bytes in the last {pace.rate_window:g} s, "
                    f"less than {pace.min_rate:g} bytes/s); the partial file is kept to resume"
                )


def _not_finished(shown: str, deadline: float) -> DownloadError:
    return DownloadError(
        f"{shown}: not finished after {deadline:g} s; the partial file is kept to resume"
    )


@dataclass
class _Body:
    """Writing one response body after ``start`` bytes of the part."""

    part: Path
    start: int
    hasher: hashlib._Hash
    limit: int
    total: int | None
    shown: str

    def stream(
        self, resp: requests.Response, clock: _Clock, progress: ProgressCallback | None
    ) -> int:
        """Write the body; return the part's final size."""
        done, shown = self.start, self.shown
        with open(self.part, "r+b" if self.start else "wb") as out:
            out.seek(self.start)
            out.truncate()
            if progress:
                progress(done, self.total)
            while True:
                try:
                    # read1: whatever has arrived, so the clock ticks even on a trickle.
                    # Raw, undecoded bytes: ranges and published checksums refer to them.
                    chunk = resp.raw.read1(CHUNK_SIZE, decode_content=False)
                except NETWORK_ERRORS as exc:
                    _sync(out)
                    if clock.interrupt is not None:
                        clock.interrupt.check()
                    raise DownloadError(
                        f"{shown}: connection failed after {done} bytes "
                        f"({describe(exc)}); the partial file is kept to resume"
                    ) from exc
                if not chunk:
                    break
                if done + len(chunk) > self.limit:
                    out.close()
                    _remove(self.part)
                    raise DownloadError(f"{shown} sent more than {self.limit} bytes; refused")
                out.write(chunk)
                self.hasher.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, self.total)
                try:
                    clock.tick(len(chunk), shown)
                except BaseException:
                    _sync(out)
                    raise
            _sync(out)
        if self.total is not None and done != self.total:
            # A close without an error before the announced end: keep what came for a resume.
            raise DownloadError(f"{shown}: connection ended after {done} of {self.total} bytes")
        return done


def _get(
    client: HttpClient,
    url: str,
    headers: Mapping[str, str] | None,
    offset: int,
    timeout: float,
) -> requests.Response:
    sent: CaseInsensitiveDict[str] = CaseInsensitiveDict(headers or {})
    # Compressed transfer would make byte ranges and checksums refer to other bytes.
    sent["Accept-Encoding"] = "identity"
    sent.pop("Range", None)
    if offset:
        sent["Range"] = f"bytes={offset}-"
    try:
        return client.get(url, headers=sent, timeout=(timeout, timeout))
    except (HttpRefused, HttpFailed) as exc:
        raise DownloadError(str(exc)) from None


def _hash_existing_part(
    part: Path, max_bytes: int, expected: int | None
) -> tuple[int, hashlib._Hash]:
    hasher = hashlib.sha256()
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0, hasher
    if size > max_bytes or (expected is not None and size > expected):
        _remove(part)  # cannot be a prefix of what we want
        return 0, hasher
    with open(part, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)
    return size, hasher


def _int_header(resp: requests.Response, name: str) -> int | None:
    return ascii_int(resp.headers.get(name))


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable on POSIX; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
