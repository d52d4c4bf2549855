"""What the publisher's keys signed for each repository, kept beside the keys, so an older
copy of the repository folder put back is refused instead of being built on.

Whoever can write the served folder (a sync job restoring an old copy, a stale CI checkout,
an attacker on the file server) can put back an earlier state of it. Every file in that
state was signed with the publisher's keys, so it verifies
(:func:`~trayupdater.tuf_verify.trusted_metadata`); built on, it would have the next
``repo add``, ``refresh`` or ``recall`` sign timestamp, snapshot and targets versions below
the ones clients already trust. Every client then refuses them as a rollback attack: the
fleet silently stops updating, and a recall the old copy predates is undone. The folder
cannot vouch for itself, so the key folder does, which whoever writes the repository folder
cannot touch: ``KEYDIR/signed-versions.json`` holds, for each repository, the highest
version of each top-level role these keys made visible in it, and a folder whose verified
metadata has any role below that is refused.

A repository is known by the SHA-256 of its version 1 root (``metadata/1.root.json``, the
anchor every client starts from), taken over its signed part as the signature covers it: the
folder may move between paths and machines, a re-formatted copy of the file (which still
verifies) is the same repository, and two repositories signed with the same keys keep
separate records. A version is recorded once clients can see it: a root when it is written
(clients follow ``N.root.json``), timestamp, snapshot and targets when the timestamp that
leads to them is, so a publish that stopped before its timestamp is done again under the
same version numbers. No record (first use, a new machine, a key folder made afresh for
each CI run) means no check; the first command that signs creates it. If the newest copy
of a folder is truly lost, removing the repository's entry lets the folder be built on
again, but clients that saw newer versions stay put until the versions pass them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from trayupdater.errors import PublishError

RECORD_NAME = "signed-versions.json"
MAX_RECORD_BYTES = 256 * 1024
_ROLES = (Root.type, Timestamp.type, Snapshot.type, Targets.type)
_REPOSITORY_ID = re.compile(r"[0-9a-f]{64}")


def repository_id(first_root: bytes) -> str:
    """SHA-256 of version 1 of the root, over its signed part in canonical JSON."""
    return hashlib.sha256(Metadata.from_bytes(first_root).signed_bytes).hexdigest()


def role_versions(metadata: Mapping[str, bytes]) -> dict[str, int]:
    """The version of each top-level role in ``metadata`` (role -> metadata bytes)."""
    return {
        role: Metadata.from_bytes(data).signed.version
        for role, data in metadata.items()
        if role in _ROLES
    }


class SignedVersions:
    """The record in ``keys_folder`` for the repository whose ``metadata/`` is given."""

    def __init__(self, keys_folder: Path, metadata_dir: Path) -> None:
        self.path = keys_folder / RECORD_NAME
        self.metadata_dir = metadata_dir
        self._id: str | None = None

    def check(self, trusted: Mapping[str, bytes]) -> None:
        """PublishError when ``trusted`` (the folder's verified metadata) has a role at a
        lower version than these keys signed for this repository."""
        remembered = self._read().get(self._repository(), {})
        for role, version in role_versions(trusted).items():
            if version < remembered.get(role, 0):
                raise PublishError(
                    f"the repository folder {self.metadata_dir.parent} holds {role} version "
                    f"{version}, but these keys signed version {remembered[role]} of it "
                    f"({self.path}): an older copy of the folder was put back; restore the "
                    "newest copy before publishing (nothing was signed)"
                )

    def signed(self, role: str, metadata: Mapping[str, bytes]) -> None:
        """``role`` was just written and ``metadata`` is what the folder now leads to: raise
        the record once clients can see it (a root at once, the rest with the timestamp). A
        record that cannot be written is a warning: what was signed stands, and undoing it
        (a rotated root's new key with it) would be worse than a check that lags."""
        if role in (Root.type, Timestamp.type):
            try:
                self.raise_to(role_versions(metadata))
            except PublishError as exc:  # what was written stands (a rotated key included)
                print(
                    f"warning: {exc}; the versions just signed are not remembered", file=sys.stderr
                )

    def raise_to(self, versions: Mapping[str, int]) -> None:
        """Record ``versions`` for this repository, keeping any higher one recorded."""
        record = self._read()  # read again: another repository may have been signed since
        ours = record.setdefault(self._repository(), {})
        for role, version in versions.items():
            ours[role] = max(version, ours.get(role, 0))
        self._write(record)

    def _repository(self) -> str:
        if self._id is None:
            first = self.metadata_dir / "1.root.json"
            try:
                self._id = repository_id(first.read_bytes())
            except OSError as exc:
                raise PublishError(f"cannot read {first}: {exc.strerror or exc}") from None
        return self._id

    def _read(self) -> dict[str, dict[str, int]]:
        try:
            with self.path.open("rb") as fh:
                data = fh.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise PublishError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if len(data) > MAX_RECORD_BYTES:
            problem = f"it is larger than {MAX_RECORD_BYTES // 1024} KiB"
        else:
            try:
                return _parse(json.loads(data))
            except (ValueError, UnicodeDecodeError) as exc:
                problem = str(exc)
        raise PublishError(
            f"{self.path} is not a record of the versions these keys signed ({problem}); "
            "restore it from a backup, or remove it to start the record afresh from the "
            "folder as it is"
        )

    def _write(self, record: dict[str, dict[str, int]]) -> None:
        document = {
            "about": "versions the keys in this folder signed, per repository "
            "(SHA-256 of its signed 1.root.json); trayupdater repo refuses older folders",
            "repositories": record,
        }
        data = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
        folder = self.path.parent
        tmp = None
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".signed-", delete=False) as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp.name, 0o600)
            os.replace(tmp.name, self.path)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp.name)
            raise PublishError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def _parse(document: Any) -> dict[str, dict[str, int]]:
    """The ``repositories`` of a record, checked; ValueError saying what is wrong."""
    if not isinstance(document, dict) or not isinstance(document.get("repositories"), dict):
        raise ValueError('no "repositories" object')
    record: dict[str, dict[str, int]] = {}
    for key, versions in document["repositories"].items():
        if not _REPOSITORY_ID.fullmatch(key) or not isinstance(versions, dict):
            raise ValueError(f"{key[:80]!r} is not a repository's SHA-256 and its versions")
        for role, version in versions.items():
            valid = type(version) is int and 1 <= version < 2**63
            if role not in _ROLES or not valid:
                raise ValueError(f"{role[:40]!r}: {str(version)[:40]} is not a role's version")
        record[key] = dict(versions)
    return record
