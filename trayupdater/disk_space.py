"""Room on the disk before a download starts: an update must not fill the disk.

A download and its unpacking that run the disk full fail, and free what they used, but
meanwhile every other program on the machine met a full disk: the running child writing its
log, the user's own work. So before fetching, the free space must hold the archive, what it
typically unpacks to (:data:`UNPACK_FACTOR` times; programs compress 2-5 times), and a margin
left to everyone else (:data:`RESERVE_FRACTION` of the disk, at most :data:`RESERVE_MAX`).
An asset whose size the source does not say is not checked: the full-disk path still frees
what it used and keeps the current version.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trayupdater.errors import StorageError

UNPACK_FACTOR = 3
RESERVE_FRACTION = 0.02
RESERVE_MAX = 64 * 1024 * 1024


def room_needed(asset_size: int, disk_size: int) -> int:
    """Bytes that must be free to download and unpack an asset of ``asset_size`` bytes."""
    reserve = min(RESERVE_MAX, int(disk_size * RESERVE_FRACTION))
    return asset_size * (1 + UNPACK_FACTOR) + reserve


def check_room(folder: Path, asset_size: int, what: str, *, max_bytes: int) -> None:
    """Raise StorageError, before a byte is written, if ``folder``'s disk has too little room
    for ``what`` (an asset of ``asset_size`` bytes; 0 or less: unknown, not checked). One
    over ``max_bytes`` is not checked either: the download refuses it, saying so."""
    if asset_size <= 0 or asset_size > max_bytes:
        return
    usage = shutil.disk_usage(folder)
    needed = room_needed(asset_size, usage.total)
    if usage.free < needed:
        raise StorageError(
            f"cannot store {what} in {folder}: it needs about {_mb(needed)} free and "
            f"{_mb(usage.free)} are; free some space there, and the update follows at the "
            "next check (the current version keeps running)"
        )


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"
