"""Publisher signatures: minisign (what Tauri and minio use) over a release asset or its
checksums file, checked against an ed25519 public key pinned in the config.

The crypto is libsodium's (PyNaCl) and BLAKE2b from the standard library; this module only
parses minisign's small text formats and applies the release policy.

Formats (jedisct1/minisign, src/minisign.h and src/minisign.c):

* public key file: ``untrusted comment: ...`` then base64 of
  ``"Ed"`` + key id (8 bytes) + ed25519 public key (32 bytes). The config may hold the
  whole file or just the base64 line (``RW...``).
* signature file (``.minisig``)::

      untrusted comment: <anything, not authenticated>
      base64("Ed" or "ED" + key id (8) + ed25519 signature (64))
      trusted comment: <text>
      base64(ed25519 signature (64) over signature + text)

  ``Ed`` (legacy) signs the file itself; ``ED`` (the default since minisign 0.10) signs
  BLAKE2b-512 of the file. The global signature authenticates the trusted comment.
* Tauri ships both files base64-encoded once more; that wrapping is undone here too.

Publishers (the full guide is packaging/SIGNING.md)::

    minisign -G                         # once: minisign.pub + ~/.minisign/minisign.key
    minisign -Sm checksums.txt          # per release: writes checksums.txt.minisig
    # upload checksums.txt.minisig next to checksums.txt (or <asset>.minisig per asset)
    # config: [security] public_key = "RW..."   (the second line of minisign.pub)

With a key configured a valid signature is required: ``<asset>.minisig`` over the
downloaded file, or a ``.minisig`` over a checksums file that lists the file's SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from trayupdater.errors import VerificationError
from trayupdater.release_model import Asset, Release
from trayupdater.verify import is_checksums_file, parse_checksums

log = logging.getLogger(__name__)

SIGNATURE_SUFFIX = ".minisig"
ALG_LEGACY = b"Ed"  # the signature covers the file's bytes
ALG_PREHASHED = b"ED"  # the signature covers BLAKE2b-512 of the file
KEY_ID_BYTES = 8
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
UNTRUSTED_PREFIX = "untrusted comment:"
# The prefix with its space is not part of what the global signature covers.
TRUSTED_PREFIX = "trusted comment: "
_CHUNK = 1024 * 1024
# minisign refuses to make legacy (whole-file, in memory) signatures of larger files.
MAX_LEGACY_BYTES = 1 << 30


def format_key_id(key_id: bytes) -> str:
    """A key id as minisign prints it (little-endian 64-bit integer in hex), so that error
    messages match the ``untrusted comment: minisign public key XXXX`` line publishers see."""
    return format(int.from_bytes(key_id, "little"), "X")


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes
    key: bytes

    @property
    def key_id_hex(self) -> str:
        return format_key_id(self.key_id)

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """The base64 line (``RW...``), the whole ``minisign.pub`` text, or Tauri's
        base64 of the whole file."""
        lines = _lines(_unwrap_tauri(text))
        if lines and lines[0].lstrip().startswith(UNTRUSTED_PREFIX):
            lines = lines[1:]
        if len(lines) != 1:
            raise VerificationError(
                "invalid minisign public key: expected one base64 line (RW...), optionally "
                f"after an '{UNTRUSTED_PREFIX}' line; got {len(lines)} lines"
            )
        blob = _b64decode(lines[0], "invalid minisign public key")
        expected = 2 + KEY_ID_BYTES + PUBLIC_KEY_BYTES
        if len(blob) != expected:
            raise VerificationError(
                f"invalid minisign public key: decodes to {len(blob)} bytes, expected {expected}"
            )
        if blob[:2] != ALG_LEGACY:
            raise VerificationError(
                f"invalid minisign public key: algorithm {blob[:2]!r}, expected b'Ed' (ed25519)"
            )
        return cls(key_id=blob[2 : 2 + KEY_ID_BYTES], key=blob[2 + KEY_ID_BYTES :])

    def __post_init__(self) -> None:
        if len(self.key_id) != KEY_ID_BYTES or len(self.key) != PUBLIC_KEY_BYTES:
            raise VerificationError(
                f"invalid minisign public key: key id must be {KEY_ID_BYTES} bytes and key "
                f"{PUBLIC_KEY_BYTES} bytes, got {len(self.key_id)} and {len(self.key)}"
            )


@dataclass(frozen=True)
class Signature:
    """A parsed ``.minisig`` file; nothing in it is trusted until :func:`verify_minisign`."""

    algorithm: bytes
    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes

    @property
    def prehashed(self) -> bool:
        return self.algorithm == ALG_PREHASHED

    @classmethod
    def parse(cls, text: str) -> Signature:
        lines = _lines(_unwrap_tauri(text))
        if len(lines) != 4:
            raise VerificationError(
                f"invalid minisign signature: expected 4 lines (untrusted comment, signature, "
                f"trusted comment, comment signature), got {len(lines)}"
            )
        untrusted, sig_line, trusted, global_line = lines
        if not untrusted.lstrip().startswith(UNTRUSTED_PREFIX):
            raise VerificationError(
                f"invalid minisign signature: line 1 does not start with '{UNTRUSTED_PREFIX}'"
            )
        if not trusted.startswith(TRUSTED_PREFIX):
            raise VerificationError(
                f"invalid minisign signature: line 3 does not start with '{TRUSTED_PREFIX}'"
            )
        blob = _b64decode(sig_line, "invalid minisign signature: line 2")
        expected = 2 + KEY_ID_BYTES + SIGNATURE_BYTES
        if len(blob) != expected:
            raise VerificationError(
                f"invalid minisign signature: line 2 decodes to {len(blob)} bytes, "
                f"expected {expected}"
            )
        algorithm = blob[:2]
        if algorithm not in (ALG_LEGACY, ALG_PREHASHED):
            raise VerificationError(
                f"invalid minisign signature: algorithm {algorithm!r}, expected b'Ed' or b'ED'"
            )
        global_signature = _b64decode(global_line, "invalid minisign signature: line 4")
        if len(global_signature) != SIGNATURE_BYTES:
            raise VerificationError(
                f"invalid minisign signature: line 4 decodes to {len(global_signature)} bytes, "
                f"expected {SIGNATURE_BYTES}"
            )
        return cls(
            algorithm=algorithm,
            key_id=blob[2 : 2 + KEY_ID_BYTES],
            signature=blob[2 + KEY_ID_BYTES :],
            trusted_comment=trusted[len(TRUSTED_PREFIX) :],
            global_signature=global_signature,
        )


def verify_minisign(data_or_path: bytes | Path, signature_text: str, public_key: PublicKey) -> str:
    """Check a minisign signature over bytes or a file; return the (now trusted) comment.

    Raises VerificationError naming what failed: malformed signature, other key, file
    contents, or trusted comment.
    """
    sig = Signature.parse(signature_text)
    if sig.key_id != public_key.key_id:
        raise VerificationError(
            f"signed with key {format_key_id(sig.key_id)}, expected {public_key.key_id_hex} "
            "(the configured public key)"
        )
    verify_key = VerifyKey(public_key.key)
    message = _blake2b(data_or_path) if sig.prehashed else _read(data_or_path)
    try:
        verify_key.verify(message, sig.signature)
    except BadSignatureError:
        raise VerificationError(
            f"bad minisign signature: it does not match the {_what(data_or_path)} "
            f"(key {public_key.key_id_hex})"
        ) from None
    try:
        # Binds the comment (timestamp, file name) to the signature: it cannot be edited.
        verify_key.verify(sig.signature + sig.trusted_comment.encode(), sig.global_signature)
    except BadSignatureError:
        raise VerificationError(
            "bad minisign signature: the trusted comment was altered (comment signature "
            "does not verify)"
        ) from None
    return sig.trusted_comment


def verify_release_asset(
    release: Release,
    asset: Asset,
    path: Path,
    *,
    public_key: str,
    fetch_text: Callable[[Asset], str],
) -> str:
    """Require a publisher signature for the downloaded ``asset`` at ``path``.

    Accepts ``<asset>.minisig`` over the file, or a signed checksums file listing the
    file's SHA-256. Returns the trusted comment of the signature that was accepted.
    A ``.sig`` (cosign, GPG) is not minisign and is not looked at.
    """
    key = PublicKey.parse(public_key)
    failures: list[str] = []

    own = release.asset(asset.name + SIGNATURE_SUFFIX)
    if own is not None:
        try:
            comment = verify_minisign(path, fetch_text(own), key)
        except VerificationError as exc:
            # Not fatal yet: a signed checksums file may still vouch for the file (for
            # example after a key rotation that re-signed only checksums.txt).
            log.warning("%s: %s", own.name, exc)
            failures.append(f"{own.name}: {exc}")
        else:
            log.info("%s: minisign signature verified (key %s)", asset.name, key.key_id_hex)
            return comment

    for checksums, sig_asset in _signed_checksums_files(release, asset):
        try:
            comment = _verify_via_checksums(checksums, sig_asset, asset, path, key, fetch_text)
        except VerificationError as exc:
            failures.append(f"{checksums.name}: {exc}")
        else:
            log.info(
                "%s: sha256 listed in %s, minisign signature verified (key %s)",
                asset.name,
                checksums.name,
                key.key_id_hex,
            )
            return comment

    if not failures:
        raise VerificationError(
            f"release {release.tag} has no minisign signature for {asset.name} or its checksums "
            "file; refusing (a public key is configured)"
        )
    raise VerificationError(
        f"release {release.tag}: no valid minisign signature for {asset.name}; refusing. "
        + "; ".join(failures)
    )


def _verify_via_checksums(
    checksums: Asset,
    sig_asset: Asset,
    asset: Asset,
    path: Path,
    key: PublicKey,
    fetch_text: Callable[[Asset], str],
) -> str:
    signature_text = fetch_text(sig_asset)
    text = fetch_text(checksums)
    # Checksums files are ASCII, so the text round-trips to the bytes that were signed.
    comment = verify_minisign(text.encode(), signature_text, key)
    listed = parse_checksums(text).get(asset.name)
    if listed is None:
        raise VerificationError(f"signed, but does not list {asset.name}")
    actual = _sha256(path)
    if listed.lower() != actual:
        raise VerificationError(
            f"signed, but lists sha256 {listed.lower()} for {asset.name}; the file has {actual}"
        )
    return comment


def _signed_checksums_files(release: Release, asset: Asset) -> list[tuple[Asset, Asset]]:
    """(checksums file, its .minisig) pairs: only a signed list can vouch for the asset."""
    pairs = []
    for candidate in release.assets:
        if candidate.name == asset.name or candidate.name.endswith(SIGNATURE_SUFFIX):
            continue
        # Same names as the checksum step: checksums.txt, SHA256SUMS, x_1.0_checksums.txt
        if not is_checksums_file(candidate.name):
            continue
        sig_asset = release.asset(candidate.name + SIGNATURE_SUFFIX)
        if sig_asset is not None:
            pairs.append((candidate, sig_asset))
    return pairs


def _lines(text: str) -> list[str]:
    """Lines as minisign reads them: split on LF, CR/LF stripped and nothing else (other
    whitespace in a trusted comment is signed); blank lines around the text dropped."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    return lines


def _unwrap_tauri(text: str) -> str:
    """Tauri stores minisign files base64-encoded as a whole; undo that if it is so."""
    candidate = "".join(text.split())
    if not candidate or text.lstrip().startswith(UNTRUSTED_PREFIX):
        return text
    try:
        decoded = base64.b64decode(candidate, validate=True)
    except binascii.Error:
        return text
    if decoded.startswith(UNTRUSTED_PREFIX.encode()):
        return decoded.decode("utf-8", errors="replace")
    return text


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise VerificationError(f"{what}: not valid base64 ({exc})") from None


def _read(data_or_path: bytes | Path) -> bytes:
    if isinstance(data_or_path, bytes):
        return data_or_path
    size = _open(data_or_path).stat().st_size
    if size > MAX_LEGACY_BYTES:
        raise VerificationError(
            f"legacy (Ed) minisign signature for {data_or_path.name} ({size} bytes): minisign "
            "only makes those for files up to 1 GiB; larger ones are signed prehashed (ED)"
        )
    return data_or_path.read_bytes()


def _blake2b(data_or_path: bytes | Path) -> bytes:
    digest = hashlib.blake2b(digest_size=64)
    if isinstance(data_or_path, bytes):
        digest.update(data_or_path)
    else:
        with _open(data_or_path).open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.digest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with _open(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open(path: Path) -> Path:
    if not path.is_file():
        raise VerificationError(f"cannot verify {path}: not a file")
    return path


def _what(data_or_path: bytes | Path) -> str:
    return "data" if isinstance(data_or_path, bytes) else f"file {data_or_path.name}"
