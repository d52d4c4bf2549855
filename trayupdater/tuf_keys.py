"""The publisher's signing keys: one ed25519 key per TUF role, one PEM file each, 0600.

``KEYDIR/<role>.pem`` holds the private key (PKCS#8, as securesystemslib's ``CryptoSigner``
writes it); the public half and its key id are derived from it, so there is nothing else to
keep in step. A replaced key is moved to ``KEYDIR/retired/`` rather than deleted: the
publisher decides when it is gone for good. The folder must never sit inside the repository
folder, or an upload would publish the keys.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from trayupdater.errors import TrayUpdaterError

MAX_KEY_BYTES = 64 * 1024


class KeyFileError(TrayUpdaterError):
    reason = "keys"


class KeyStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, role: str) -> Path:
        return self.folder / f"{role}.pem"

    def has(self, role: str) -> bool:
        return self.path(role).is_file()

    def load(self, role: str) -> CryptoSigner:
        path = self.path(role)
        try:
            with path.open("rb") as fh:
                pem = fh.read(MAX_KEY_BYTES)
        except FileNotFoundError:
            raise KeyFileError(
                f"no {role} key at {path} (--keys names the folder holding the keys)"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        _warn_if_readable_by_others(path)
        try:
            return CryptoSigner(load_pem_private_key(pem, password=None))
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path} is not an unencrypted ed25519 PEM key: {exc}") from None

    def generate(self, role: str, *, suffix: str = "") -> tuple[CryptoSigner, Path]:
        """A new key for ``role``, written (0600) to ``<role>.pem`` + ``suffix``."""
        signer = CryptoSigner.generate_ed25519()
        path = self.folder / f"{role}.pem{suffix}"
        self._write_private(path, signer.private_bytes)
        return signer, path

    def activate(self, role: str, new: Path) -> Path | None:
        """Make ``new`` the key of ``role``; the one it replaces goes to ``retired/``."""
        current = self.path(role)
        retired = None
        if current.exists():
            retired_dir = self.folder / "retired"
            retired_dir.mkdir(mode=0o700, exist_ok=True)
            signer = self.load(role)
            retired = retired_dir / f"{role}-{signer.public_key.keyid[:12]}.pem"
            os.replace(current, retired)
        os.replace(new, current)
        return retired

    def _write_private(self, path: Path, data: bytes) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{path} already exists; not overwriting a key") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def check_outside(keys: Path, repository: Path) -> None:
    """Refuse a key folder inside the repository folder: an upload would publish it."""
    keys_real, repo_real = keys.resolve(), repository.resolve()
    if keys_real == repo_real or repo_real in keys_real.parents:
        raise KeyFileError(
            f"the key folder {keys} is inside the repository {repository}, which gets "
            "uploaded; keep the keys elsewhere (default: keys/ beside the repository)"
        )


def _warn_if_readable_by_others(path: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(f"warning: {path} is readable by other users; chmod 600 it", file=sys.stderr)
