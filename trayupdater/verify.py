"""What a downloaded asset must hash to, and the check that it does.

Sources, in the order they are trusted:
1. the asset's ``digest`` that GitHub computed on upload (no extra request);
2. a checksums file published in the release (``checksums.txt``, ``SHA256SUMS``, ...)
   that lists the asset;
3. a sidecar next to the asset (``<asset>.sha256``, ``.sha256sum``, ``.sha``, or one
   named after the asset without its archive suffix, as television publishes).
Every source that exists is read, not just the first: if two disagree, the release has
been tampered with (or botched) and nothing from it is trusted.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from trayupdater.errors import VerificationError
from trayupdater.release_model import Asset, Release

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# GNU coreutils: "<hash>  <name>" (text mode) or "<hash> *<name>" (binary mode); a leading
# backslash means the name is escaped. Single spaces and tabs are tolerated too.
_GNU_LINE = re.compile(r"^(\\?)([0-9a-fA-F]+)[ \t]+\*?(.+)$")
# BSD / ``shasum --tag`` / OpenSSL: "SHA256 (<name>) = <hash>", "SHA2-256(<name>)= <hash>".
_BSD_LINE = re.compile(r"^(\\?)(SHA[\w-]*?)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$", re.IGNORECASE)
_SHA256_TAGS = {"sha256", "sha2-256"}

# Release-wide checksum files. SHA-512 ones are not fetched; a generic name (SHASUMS) is,
# since lines whose hash is not 64 hex digits are skipped anyway.
_CHECKSUMS_NAME = re.compile(
    r"^(?:.*[._-])?(?:checksums?|sha(?:2-)?256sums?|shasums?)(?:\.txt)?$"
    r"|^(?:.*[._-])?sha256\.(?:txt|sum)$",
    re.IGNORECASE,
)
_SIDECAR_SUFFIXES = (".sha256", ".sha256sum", ".sha")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar.zst")
_ARCHIVE_SUFFIXES += (".tar", ".zip", ".gz", ".xz", ".bz2", ".exe")


@dataclass(frozen=True)
class ExpectedDigest:
    sha256: str  # lower-case hex
    source: str  # where it came from, for messages: "GitHub asset digest", "checksums.txt"


def parse_checksums(text: str) -> dict[str, str]:
    """Map file name -> lower-case SHA-256 hex from a checksums file.

    Understands GNU (``hash  name``, ``hash *name``) and BSD (``SHA256 (name) = hash``)
    lines; ignores blank lines, comments and lines whose hash is not 64 hex digits (other
    algorithms). Paths are reduced to their last part (``./dist/x`` -> ``x``). A name
    listed twice with different hashes is ambiguous and left out.
    """
    found: dict[str, str] = {}
    ambiguous: set[str] = set()
    for raw in text.lstrip("\ufeff").splitlines():
        entry = _parse_line(raw.strip())
        if entry is None:
            continue
        name, digest = entry
        if found.setdefault(name, digest) != digest:
            ambiguous.add(name)
    for name in ambiguous:
        log.warning("checksums list %s with different hashes; ignoring that name", name)
        del found[name]
    return found


def find_expected_digest(
    release: Release, asset: Asset, fetch_text: Callable[[Asset], str]
) -> ExpectedDigest | None:
    """The SHA-256 ``asset`` must have, or None when the release publishes none.

    ``fetch_text`` downloads a small text asset (the caller caps its size); its errors
    propagate, so an unreadable checksums file never quietly turns into "no checksum".
    Raises VerificationError when sources disagree or GitHub's digest is malformed.
    """
    found: list[ExpectedDigest] = []
    if asset.digest is not None:
        digest = asset.sha256
        if digest is not None and not _HEX64.fullmatch(digest):
            raise VerificationError(f"{asset.name}: GitHub digest {asset.digest!r} is malformed")
        if digest is not None:
            found.append(ExpectedDigest(digest, "GitHub asset digest"))
    for listing in _checksum_files(release, asset):
        digest = parse_checksums(fetch_text(listing)).get(asset.name)
        if digest is not None:
            found.append(ExpectedDigest(digest, listing.name))
    for sidecar, exact in _sidecars(release, asset):
        digest = _sidecar_digest(fetch_text(sidecar), asset, sidecar, exact, release)
        if digest is not None:
            found.append(ExpectedDigest(digest, sidecar.name))

    if len({d.sha256 for d in found}) > 1:
        listed = "; ".join(f"{d.source}: {d.sha256}" for d in found)
        raise VerificationError(
            f"{asset.name}: the release's checksums disagree ({listed}); refusing the release"
        )
    return found[0] if found else None


def check_digest(actual_sha256: str, expected: ExpectedDigest, asset_name: str) -> None:
    """Raise VerificationError unless the downloaded file hashes to ``expected``."""
    actual = actual_sha256.strip().lower()
    if not hmac.compare_digest(actual, expected.sha256.lower()):
        raise VerificationError(
            f"{asset_name}: SHA-256 is {actual}, but {expected.source} says "
            f"{expected.sha256}; the download is corrupt or was tampered with"
        )


def is_checksums_file(name: str) -> bool:
    """True for names like checksums.txt, foo_1.0_checksums.txt, SHA256SUMS, sha256.txt."""
    return bool(_CHECKSUMS_NAME.match(name))


def _parse_line(line: str) -> tuple[str, str] | None:
    if not line or line.startswith("#"):
        return None
    bsd = _BSD_LINE.match(line)
    if bsd:
        if bsd.group(2).lower() not in _SHA256_TAGS:
            return None
        escaped, name, digest = bsd.group(1), bsd.group(3), bsd.group(4)
    else:
        gnu = _GNU_LINE.match(line)
        if not gnu:
            return None
        escaped, digest, name = gnu.group(1), gnu.group(2), gnu.group(3)
    if len(digest) != 64:
        return None
    if escaped:
        name = _unescape(name)
    name = _basename(name)
    return (name, digest.lower()) if name else None


def _unescape(name: str) -> str:
    # GNU escapes only backslash and newline (and carriage return since coreutils 9).
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), name)


def _basename(name: str) -> str:
    return re.split(r"[\\/]", name.strip())[-1]


def _checksum_files(release: Release, asset: Asset) -> Iterator[Asset]:
    for candidate in release.assets:
        if candidate.name != asset.name and is_checksums_file(candidate.name):
            yield candidate


def _stem(name: str) -> str | None:
    lowered = name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _sidecars(release: Release, asset: Asset) -> Iterator[tuple[Asset, bool]]:
    """Sidecar assets for ``asset``; the flag says whether named after the full asset name."""
    by_name = {a.name: a for a in release.assets}
    for suffix in _SIDECAR_SUFFIXES:
        if (sidecar := by_name.get(asset.name + suffix)) is not None:
            yield sidecar, True
    stem = _stem(asset.name)
    if stem is not None:
        for suffix in _SIDECAR_SUFFIXES[:2]:
            if (sidecar := by_name.get(stem + suffix)) is not None:
                yield sidecar, False


def _sidecar_digest(
    text: str, asset: Asset, sidecar: Asset, exact: bool, release: Release
) -> str | None:
    listed = parse_checksums(text)
    if asset.name in listed:
        return listed[asset.name]
    lines = [s for raw in text.lstrip("\ufeff").splitlines() if (s := raw.strip())]
    lines = [s for s in lines if not s.startswith("#")]
    first = lines[0].split()[0] if lines else ""
    if len(lines) != 1 or not _HEX64.fullmatch(first):
        if exact:
            log.warning("%s: not a single SHA-256 hash; ignored", sidecar.name)
        return None
    names_other_file = len(lines[0].split()) > 1
    if exact:
        # Named after the asset: the file name binds it even if it lists a build path.
        return first.lower()
    # Named after the stem (tv-...-gnu.sha256): it may belong to .tar.gz or .zip alike, so
    # a bare hash only counts when just one asset has that stem.
    if names_other_file:
        return None
    siblings = [a for a in release.assets if _stem(a.name) == _stem(asset.name)]
    return first.lower() if len(siblings) == 1 else None
