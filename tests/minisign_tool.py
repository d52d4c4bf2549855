"""Make minisign keys and signatures with PyNaCl, for tests and for publishing test feeds.

Independent of trayupdater.signatures on purpose (it writes the formats, that module reads
them), and checked against the real ``minisign`` tool in tests/test_signatures.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time

from nacl.signing import SigningKey

ALG_LEGACY = b"Ed"
ALG_PREHASHED = b"ED"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_id_text(key_id: bytes) -> str:
    """How minisign prints a key id: the 8 bytes as a little-endian integer, in hex."""
    return format(int.from_bytes(key_id, "little"), "X")


def public_key_line(secret: SigningKey, key_id: bytes) -> str:
    """The ``RW...`` line: base64("Ed" + key id + public key)."""
    return b64(ALG_LEGACY + key_id + bytes(secret.verify_key))


def generate_keypair(key_id: bytes | None = None) -> tuple[SigningKey, bytes, str]:
    """(secret key, key id, public key file text as ``minisign -G`` writes it)."""
    secret = SigningKey.generate()
    key_id = key_id if key_id is not None else os.urandom(8)
    text = (
        f"untrusted comment: minisign public key {key_id_text(key_id)}\n"
        f"{public_key_line(secret, key_id)}\n"
    )
    return secret, key_id, text


def sign(
    data: bytes,
    secret: SigningKey,
    key_id: bytes,
    trusted_comment: str | None = None,
    *,
    prehashed: bool = True,
    untrusted_comment: str = "signature from minisign secret key",
) -> str:
    """The ``.minisig`` text for ``data``: ED (BLAKE2b-512 prehash) or legacy Ed."""
    if trusted_comment is None:
        trusted_comment = f"timestamp:{int(time.time())}"
    message = hashlib.blake2b(data, digest_size=64).digest() if prehashed else data
    signature = secret.sign(message).signature
    global_signature = secret.sign(signature + trusted_comment.encode()).signature
    alg = ALG_PREHASHED if prehashed else ALG_LEGACY
    return (
        f"untrusted comment: {untrusted_comment}\n"
        f"{b64(alg + key_id + signature)}\n"
        f"trusted comment: {trusted_comment}\n"
        f"{b64(global_signature)}\n"
    )
