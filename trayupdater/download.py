"""Download one release asset to disk: streamed, size-capped, hashed on the way, resumable.

The bytes go to ``<dest>.part`` first and are renamed to ``dest`` only once complete, so a
crash never leaves something at ``dest`` that looks finished. A cut connection keeps the
part so the next call asks for the rest with ``Range``; any answer that does not prove it
continues exactly where the part ends makes the download start again from zero.

Redirects are followed by requests, which drops ``Authorization`` (and ``session.auth``)
whenever the host, port or scheme changes: GitHub's asset API answers 302 to a storage host
that must never see the token (tests/test_download.py proves it on two loopback hosts).
A token must therefore travel in ``Authorization``, never in a custom header.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict

from trayupdater.errors import DownloadError
from trayupdater.urls import insecure_reason

CHUNK_SIZE = 64 * 1024

ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total or None)

# What reading the body can raise when the peer misbehaves; all of them keep the part.
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException, OSError)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str  # lower-case hex


def part_path(dest: Path) -> Path:
    """Where the unfinished bytes of ``dest`` live between calls."""
    return dest.with_name(dest.name + ".part")


def download(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    headers: Mapping[str, str] | None = None,
    max_bytes: int,
    timeout: float = 30.0,
    progress: ProgressCallback | None = None,
    expected_size: int | None = None,
) -> DownloadResult:
    """Fetch ``url`` into ``dest`` and return its size and SHA-256.

    ``timeout`` applies to connecting and to every read. ``expected_size`` (the size the
    release lists) is enforced when given. Raises DownloadError; the ``.part`` is kept only
    when resuming it later makes sense (cut connection, timeout, server error).
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    shown = redact_url(url)
    reason = insecure_reason(url)
    if reason:  # checked before sending: the request may carry a token
        raise DownloadError(f"{shown}: {reason}; refused")
    if expected_size is not None and expected_size > max_bytes:
        raise DownloadError(
            f"{shown} is {expected_size} bytes, more than the limit of {max_bytes} bytes"
        )
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)

    # Two rounds at most: the second one starts from zero after a reply that could not be
    # trusted to continue the part.
    for attempt in range(2):
        offset, hasher = _hash_existing_part(part, max_bytes, expected_size)
        with _get(session, url, headers, offset, timeout) as resp:
            _refuse_downgrade(url, resp)
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
                size = _stream_body(resp, part, plan.start, hasher, limit, total, progress, shown)
        break

    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return DownloadResult(path=dest, size=size, sha256=hasher.hexdigest())


def redact_url(url: str) -> str:
    """The URL without credentials or query: storage redirects carry signatures there."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


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


def _stream_body(
    resp: requests.Response,
    part: Path,
    start: int,
    hasher: hashlib._Hash,
    limit: int,
    total: int | None,
    progress: ProgressCallback | None,
    shown: str,
) -> int:
    """Write the body after ``start`` bytes of the part; return the part's final size."""
    done = start
    # Raw, undecoded bytes: byte ranges and published checksums both refer to them.
    chunks = resp.raw.stream(CHUNK_SIZE, decode_content=False)
    with open(part, "r+b" if start else "wb") as out:
        out.seek(start)
        out.truncate()
        if progress:
            progress(done, total)
        while True:
            try:
                chunk = next(chunks, b"")
            except _NETWORK_ERRORS as exc:
                _sync(out)
                raise DownloadError(
                    f"{shown}: connection failed after {done} bytes "
                    f"({_describe(exc)}); the partial file is kept to resume"
                ) from exc
            if not chunk:
                break
            if done + len(chunk) > limit:
                out.close()
                _remove(part)
                raise DownloadError(f"{shown} sent more than {limit} bytes; refused")
            out.write(chunk)
            hasher.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        _sync(out)
    if total is not None and done != total:
        # A close without an error before the announced end: keep what came for a resume.
        raise DownloadError(f"{shown}: connection ended after {done} of {total} bytes")
    return done


def _get(
    session: requests.Session,
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
        return session.get(
            url, headers=sent, stream=True, timeout=(timeout, timeout), allow_redirects=True
        )
    except requests.RequestException as exc:
        raise DownloadError(f"{redact_url(url)}: request failed ({_describe(exc)})") from exc


def _refuse_downgrade(url: str, resp: requests.Response) -> None:
    if urlsplit(url).scheme == "https" and urlsplit(resp.url).scheme != "https":
        raise DownloadError(f"{redact_url(url)} redirected to plain HTTP; refused")
    reason = insecure_reason(resp.url)
    if reason:
        raise DownloadError(f"{redact_url(resp.url)}: {reason}; refused")


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
    value = resp.headers.get(name, "").strip()
    return int(value) if value.isdigit() else None


def _describe(exc: BaseException) -> str:
    # Exception texts quote the URL; drop query strings, which may carry signatures.
    text = re.sub(r"\?[^\s'\")]*", "?…", str(exc)) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


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
