"""A TUF repository in a folder, kept with python-tuf's repository helper.

:class:`FolderRepository` implements ``tuf.repository.Repository`` (``open``/``close`` and
the two version infos); the library's ``edit_*``, ``do_snapshot`` and ``do_timestamp`` do
the rest. ``close`` bumps the version, sets the role's expiry, signs with the role's key
from the :class:`~trayupdater.tuf_keys.KeyStore` and writes the file where the layout in
:mod:`trayupdater.tuf_format` says. Files are written so that the repository is always
usable mid-way: targets first, then targets and snapshot metadata under new version
numbers, and ``timestamp.json`` last, which is what makes a change visible to clients.

Every change starts from the metadata python-tuf's client verifies from ``1.root.json``
(:func:`~trayupdater.tuf_verify.trusted_metadata`), never from the files as they lie: the
folder is often writable by more than the keys' holder (a CI cache, a shared drive, release
assets), and whatever ``open`` returns gets signed. A folder that does not verify is refused,
so is an older copy of it put back (:mod:`~trayupdater.tuf_signed_versions`), a ``metadata/``
or ``targets/`` that is a link, and a key that is not the only key of its role. A publish
that stopped half-way is done again: files that no signed timestamp leads to are not trusted.

:meth:`FolderRepository.verify` runs python-tuf's own client over the folder
(:mod:`trayupdater.tuf_verify`), so a publish is checked the way a client will check it,
before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import Version
from securesystemslib.signer import Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import AbortEdit, Repository

from trayupdater.errors import PublishError
from trayupdater.sources.github_json import file_name_problem
from trayupdater.store import file_sha256
from trayupdater.tuf_format import (
    CUSTOM_NAMESPACE,
    HASH,
    METADATA_DIR,
    ROLES,
    TARGETS_DIR,
    TargetEntry,
    TargetFormatError,
    check_folder,
    custom_block,
    parse_target,
    target_path,
)
from trayupdater.tuf_keys import KeyStore
from trayupdater.tuf_signed_versions import SignedVersions
from trayupdater.tuf_verify import FolderUnverified, trusted_metadata, verify_folder

if TYPE_CHECKING:
    from trayupdater.release_model import Rollout
    from trayupdater.tuf_rollout import RolloutRequest

DAY = timedelta(days=1)
DEFAULT_LIFETIMES = {
    "root": 365 * DAY,
    "targets": 180 * DAY,
    "snapshot": 7 * DAY,
    "timestamp": 7 * DAY,
}
_NEW: dict[str, Callable[[], Signed]] = {
    Root.type: lambda: Root(consistent_snapshot=True),
    Targets.type: Targets,
    Snapshot.type: Snapshot,
    Timestamp.type: Timestamp,
}


@dataclass
class Outcome:
    """What an operation did, for the CLI to print."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class FolderRepository(Repository):
    def __init__(
        self,
        folder: Path,
        keys: KeyStore,
        *,
        lifetimes: dict[str, timedelta] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.folder = folder
        self.metadata_dir = folder / METADATA_DIR
        self.targets_dir = folder / TARGETS_DIR
        self.keys = keys
        self.lifetimes = {**DEFAULT_LIFETIMES, **(lifetimes or {})}
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._signers: dict[str, Signer] = {}  # loaded once per operation
        self._old_root_signers: list[Signer] = []  # a root key rotation: the old key signs too
        # The metadata to build on, by role: as verified, then as this object signed it.
        self._trusted: dict[str, bytes] | None = None
        self._record = SignedVersions(keys.folder, self.metadata_dir)  # refuses older folders

    # --- tuf.repository.Repository ---

    def open(self, role: str) -> Metadata:
        if role not in _NEW:
            raise PublishError(f"{role}: delegated roles are not used by trayupdater")
        data = self._metadata().get(role)
        if data is None:
            md = Metadata(_NEW[role]())
            md.signed.version = 0  # close() makes it version 1
            return md
        return Metadata.from_bytes(data)

    def close(self, role: str, md: Metadata) -> None:
        md.signed.version += 1
        md.signed.expires = (self.now() + self.lifetimes[role]).replace(microsecond=0)
        md.signatures.clear()
        for signer in self._signers_for(role, md):
            md.sign(signer, append=True)
        data = md.to_bytes(JSONSerializer(compact=False))
        version = md.signed.version
        if role == Root.type:
            self._write(self.metadata_dir / f"{version}.root.json", data)
            self._write(self.metadata_dir / "root.json", data)
        elif role == Timestamp.type:
            self._write(self.metadata_dir / "timestamp.json", data)
        else:
            self._write(self.metadata_dir / f"{version}.{role}.json", data)
        self._metadata()[role] = data  # what this operation signed is built on next
        self._record.signed(role, self._metadata())

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": MetaFile(self._version(Targets.type))}

    @property
    def snapshot_info(self) -> MetaFile:
        data = self._metadata().get(Snapshot.type)
        if data is None:
            return MetaFile(0)
        digest = hashlib.sha256(data).hexdigest()
        return MetaFile(self._version(Snapshot.type), len(data), {HASH: digest})

    # --- operations ---

    def exists(self) -> bool:
        return (self.metadata_dir / "root.json").is_file()

    def initialise(self) -> Outcome:
        """Keys (made when missing) and version 1 of every role."""
        if self.exists():
            raise PublishError(f"{self.folder} already holds a repository; not overwriting it")
        self._inside(self.metadata_dir, self.targets_dir)
        if self.metadata_dir.is_dir() and any(self.metadata_dir.glob("*.json")):
            raise PublishError(
                f"{self.metadata_dir} already holds metadata files but no root.json; "
                "not creating a repository on top of them"
            )
        outcome = Outcome()
        for role in ROLES:
            if self.keys.has(role):
                outcome.lines.append(f"using the {role} key {self.keys.path(role)}")
            else:
                signer, path = self.keys.generate(role)
                self._signers[role] = signer
                outcome.lines.append(f"new {role} key: {path}")
        with self.edit_root() as root:
            root.consistent_snapshot = True
            for role in ROLES:
                root.add_key(self._signer(role).public_key, role)
        with self.edit_targets():
            pass
        self.do_snapshot()
        self.do_timestamp()
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        return outcome

    def add_version(
        self, folder: str, files: Sequence[Path], *, rollout: RolloutRequest | None = None
    ) -> Outcome:
        """Publish ``files`` as version ``folder``; the same files again are a no-op.
        ``rollout``: the share of installations that may take it (default: all)."""
        self.require_repository()
        try:
            version = check_folder(folder)
        except TargetFormatError as exc:
            raise PublishError(str(exc)) from None
        if not files:
            raise PublishError("name at least one file to publish")
        names = [path.name for path in files]
        for path, name in zip(files, names, strict=True):
            problem = file_name_problem(name)
            if problem:
                raise PublishError(f"{path}: the file name {problem}")
            if not path.is_file():
                raise PublishError(f"{path} is not a file")
        if len(set(names)) != len(names):
            raise PublishError("two files have the same name; a version holds each name once")
        wanted = {name: file_sha256(path) for path, name in zip(files, names, strict=True)}
        self._load_keys(Targets.type, Snapshot.type, Timestamp.type)  # all, before any change

        outcome = Outcome()
        published = self._published(version)
        if published:
            if published == {(folder, n, h) for n, h in wanted.items()}:
                outcome.lines.append(f"{folder} is already published with these files")
                return outcome
            raise PublishError(
                f"version {version} is already published with other files; a published "
                "version never changes (publish a new version instead)"
            )
        newest = max(self.versions(), default=None)
        if newest is not None and version < newest:
            outcome.warnings.append(
                f"{version} is older than {newest}: installations never move back to it"
            )

        signed_rollout = rollout.at(self.now().timestamp()) if rollout else None
        infos = self._copy_targets(folder, files, version, signed_rollout)
        with self.edit_targets() as targets:
            for info in infos:
                targets.targets[info.path] = info
        self.do_snapshot()
        self.do_timestamp()
        outcome.lines.append(
            f"published {version}: "
            + ", ".join(f"{TARGETS_DIR}/{info.path} ({info.length} bytes)" for info in infos)
        )
        if rollout is not None and signed_rollout is not None:
            outcome.lines.append(f"{version}: {rollout.describe(signed_rollout, self.now())}")
        return outcome

    def refresh(self) -> Outcome:
        """New timestamp and snapshot; targets and root too when they are due and their keys
        are at hand (the root key usually is not: it lives offline)."""
        self.require_repository()
        due = [role for role in (Root.type, Targets.type) if self._due(role)]
        at_hand = [role for role in due if self.keys.has(role)]
        self._load_keys(*at_hand, Snapshot.type, Timestamp.type)  # all, before any change
        outcome = Outcome()
        for role in due:
            expires = self.open(role).signed.expires
            if role not in at_hand:
                outcome.warnings.append(
                    f"{role} metadata expires {expires:%Y-%m-%d}: run repo refresh with the "
                    f"{role} key in --keys to extend it"
                )
                continue
            with self.edit(role):
                pass
            outcome.lines.append(f"re-signed {role} (it expired {expires:%Y-%m-%d})")
        self.do_snapshot(force=True)
        self.do_timestamp(force=True)
        timestamp = self.timestamp()
        outcome.lines.append(
            f"timestamp v{timestamp.version} valid until {timestamp.expires:%Y-%m-%d %H:%M} UTC"
        )
        return outcome

    def rotate_key(self, role: str) -> Outcome:
        """Replace ``role``'s key: a new root version lists the new key (signed by the old
        and the new root key when it is the root key), then the role is re-signed."""
        self.require_repository()
        if role not in ROLES:
            raise PublishError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        # The current root key signs the change; every key the re-signing below needs is
        # loaded (and the folder verified) before anything changes, the new key included.
        self._load_keys(
            Root.type,
            *{"targets": ("snapshot", "timestamp"), "snapshot": ("timestamp",)}.get(role, ()),
        )
        old_root = self._signer(Root.type)
        new_signer, new_path = self.keys.generate(role, suffix=".new")
        self._signers[role] = new_signer
        if role == Root.type:
            self._old_root_signers = [old_root]
        try:
            with self.edit_root() as root:
                old_ids = list(root.roles[role].keyids)
                root.add_key(new_signer.public_key, role)
                for keyid in old_ids:
                    root.revoke_key(keyid, role)
        except BaseException:
            new_path.unlink(missing_ok=True)  # no metadata names the new key: it never existed
            raise
        finally:
            self._old_root_signers = []
        # From here the new root lists the new key: it is kept whatever happens next.
        retired = self.keys.activate(role, new_path)
        if role == Targets.type:
            with self.edit_targets():
                pass
        if role in (Targets.type, Snapshot.type):
            self.do_snapshot(force=True)
        if role != Root.type:
            self.do_timestamp(force=True)
        outcome = Outcome([f"new {role} key {self.keys.path(role)}; root v{self.root().version}"])
        if retired is not None:
            outcome.lines.append(f"the old {role} key is in {retired}: destroy it when done")
        return outcome

    def verify(self) -> list[str]:
        """Problems found by python-tuf's own client over the folder, as text
        (:func:`~trayupdater.tuf_verify.verify_folder`)."""
        return verify_folder(self.folder, self.targets().targets)

    # --- internals ---

    def now(self) -> datetime:
        return self._clock().astimezone(timezone.utc)

    def require_repository(self) -> None:
        if not self.exists():
            raise PublishError(
                f"{self.folder} holds no repository ({self.metadata_dir / 'root.json'} is "
                "missing); create it with: trayupdater repo init"
            )

    def _version(self, role: str) -> int:
        return self.open(role).signed.version if role in self._metadata() else 0

    def _metadata(self) -> dict[str, bytes]:
        """The metadata to build on, verified the first time it is needed."""
        if self._trusted is None:
            self._inside(self.metadata_dir, self.targets_dir)
            self._trusted = self._verified() if self.exists() else {}
        return self._trusted

    def _verified(self) -> dict[str, bytes]:
        try:
            trusted = trusted_metadata(self.folder)
        except FolderUnverified as exc:
            raise PublishError(
                f"{exc}, so nothing was signed: restore the metadata from the last upload "
                "(it was changed without the keys, or damaged)"
            ) from None
        self._record.check(trusted)  # not older than what these keys signed for it
        return trusted

    def _signer(self, role: str) -> Signer:
        if role not in self._signers:
            self._signers[role] = self.keys.load(role)
        return self._signers[role]

    def _load_keys(self, *roles: str) -> None:
        """Fail on a missing, unreadable or foreign key before anything is written, not
        half-way; and on a role that trusts another key besides ours: metadata that key
        signed would verify, and we would sign over it."""
        root = self.root()  # verifies the folder first
        for role in roles:
            keyid = self._signer(role).public_key.keyid
            listed = root.roles[role]
            if keyid not in listed.keyids:
                raise PublishError(self._foreign(role, keyid))
            if listed.keyids != [keyid]:
                raise PublishError(
                    f"the signed root trusts {len(listed.keyids)} keys for the {role} role "
                    f"where trayupdater uses one ({self.keys.path(role)}), so nothing was signed"
                )

    def _signers_for(self, role: str, md: Metadata) -> list[Signer]:
        signer = self._signer(role)
        root = md.signed if role == Root.type else self.root()
        assert isinstance(root, Root)
        if signer.public_key.keyid not in root.roles[role].keyids:
            raise PublishError(self._foreign(role, signer.public_key.keyid))
        extra = self._old_root_signers if role == Root.type else []
        return [signer, *extra]

    def _foreign(self, role: str, keyid: str) -> str:
        return (
            f"{self.keys.path(role)} is not the {role} key of this repository "
            f"(its key id {keyid[:12]}… is not listed in root.json)"
        )

    def _due(self, role: str) -> bool:
        """Less than a quarter of its lifetime left, or expiring before a new timestamp."""
        expires = self.open(role).signed.expires
        left = expires - self.now()
        return left < self.lifetimes[role] / 4 or left < self.lifetimes[Timestamp.type]

    def entries(self) -> Iterator[tuple[TargetEntry, TargetFile]]:
        """The targets in trayupdater's format (:func:`~trayupdater.tuf_format.parse_target`)."""
        for path, info in self.targets().targets.items():
            entry = _entry(path, info)
            if entry is not None:
                yield entry, info

    def _published(self, version: Version) -> set[tuple[str, str, str]]:
        return {
            (entry.folder, entry.name, info.hashes.get(HASH, ""))
            for entry, info in self.entries()
            if entry.version == version
        }

    def versions(self) -> Iterator[Version]:
        return (entry.version for entry, _ in self.entries())

    def edit_version(
        self, version: Version, change: Callable[[dict[str, Any]], None]
    ) -> tuple[dict[str, Any], bool]:
        """Apply ``change`` to the custom data of every target of ``version`` and publish
        new targets, snapshot and timestamp metadata, unless nothing changed. Returns the
        custom data as it was, and whether it changed."""
        self._load_keys(Targets.type, Snapshot.type, Timestamp.type)  # all, before any change
        before: dict[str, Any] = {}
        changed = False
        with self.edit_targets() as targets:
            for path, info in targets.targets.items():
                entry = _entry(path, info)
                if entry is None or entry.version != version:
                    continue
                ours = info.unrecognized_fields["custom"][CUSTOM_NAMESPACE]
                before = dict(ours)
                change(ours)
                changed |= ours != before
            if not changed:
                raise AbortEdit  # no new metadata for nothing
        if changed:
            self.do_snapshot()
            self.do_timestamp()
        return before, changed

    def _copy_targets(
        self,
        folder: str,
        files: Sequence[Path],
        version: Version,
        rollout: Rollout | None = None,
    ) -> list[TargetFile]:
        destination = self._inside(self.targets_dir, self.targets_dir / folder)
        destination.mkdir(parents=True, exist_ok=True)
        infos = []
        custom = custom_block(version, self.now(), rollout)
        for source in files:
            target = destination / source.name
            with tempfile.NamedTemporaryFile(dir=destination, delete=False) as tmp:
                with source.open("rb") as fh:
                    shutil.copyfileobj(fh, tmp)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp.name, target)
            # Hashed from the copy: what is uploaded is what is signed.
            info = TargetFile.from_file(target_path(folder, source.name), os.fspath(target), [HASH])
            info.unrecognized_fields["custom"] = custom
            infos.append(info)
        return infos

    def _inside(self, *folders: Path) -> Path:
        """The last of ``folders`` the publisher writes in (``metadata/``, ``targets/``, a
        version folder); refused when one is a link or lies outside the repository."""
        for path in folders:
            if path.is_symlink():
                raise PublishError(
                    f"{path} is a symbolic link and the publisher writes only inside "
                    f"{self.folder}; replace it with a folder"
                )
            if not path.resolve().is_relative_to(self.folder.resolve()):  # a junction
                raise PublishError(f"{path} lies outside {self.folder}; refused")
        return folders[-1]

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, path)


def _entry(path: str, info: TargetFile) -> TargetEntry | None:
    try:
        return parse_target(path, info.custom)
    except TargetFormatError:
        return None
