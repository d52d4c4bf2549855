"""Child logs that stay small and go with their version.

A child writes its stdout and stderr straight into ``child-<version>.log``: the file is its
stdout, there is no pipe. A pipe would need a reader thread in the app, and when the app
dies (or hands the child to its successor, which adopts it) the child's next write would
get EPIPE or SIGPIPE: its output, or the child itself, would be lost. So the app never sees
the bytes, only the file, and bounds it from outside:

* **at each start** (and restart) a log over :data:`MAX_BYTES` is rotated before the new
  process gets it;
* **while children run**, one watch thread looks at each running child's log every
  :data:`CHECK_INTERVAL` seconds and rotates it once it has passed the limit, and the
  child checks once more when its exit is noticed (a burst just before a crash);
* **pruning versions** deletes the logs of every version no longer installed.

Rotating is *copy-truncate*: the last :data:`MAX_BYTES` of the file are copied to
``.log.1`` (``.1`` becomes ``.2``, the oldest goes), then the file is truncated to zero in
place. The running child keeps its handle and never notices, because that handle
*appends*: its next write lands at the new end of the file, offset 0. (Renaming the file
would need the child to reopen it, which it cannot be told to do; and Windows refuses to
rename an open file.) The price: a line written between the copy and the truncation, a
millisecond or so, is lost; and a log may pass the limit by what the child writes in
:data:`CHECK_INTERVAL`. So a version keeps about ``(1 + BACKUPS) x MAX_BYTES`` (6 MB) on
disk, against 2 MB x 4 for the app's own log.

Appending is O_APPEND on POSIX: an adopted child inherited it from the app run that started
it. On Windows Python's ``"ab"`` only emulates append inside our own process (the C
runtime seeks to the end before each of *our* writes); a child's inherited handle would
write at its own position, so after a truncation the file would grow back to that offset
with zeros. So there the log is opened with CreateFile(FILE_APPEND_DATA) and no
FILE_WRITE_DATA, which makes the system put every write at the end, and shared for
reading, writing and deleting so the app can copy, truncate and remove it meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

MAX_BYTES = 2_000_000  # per file, like the app's own log
BACKUPS = 2  # child-<version>.log.1 and .log.2
CHECK_INTERVAL = 2.0  # seconds between size checks of a running child's log

_ROTATE_LOCK = threading.Lock()  # one rotation at a time: the watch thread races starts
_NAME = re.compile(r"child-(?P<version>.+)\.log(?:\.\d+)?")


def log_path(logs_dir: Path, version: str) -> Path:
    return logs_dir / f"child-{version}.log"


def backup_path(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.{number}")


def open_log(path: Path) -> IO[bytes]:
    """``path`` opened for a child to append to (see the module doc for Windows)."""
    if sys.platform != "win32":  # (not os.name: type checkers skip the rest here)
        return open(path, "ab")
    import _winapi
    import msvcrt

    file_append_data, synchronize = 0x0004, 0x00100000
    share_read_write_delete, open_always, attribute_normal = 0x7, 4, 0x80
    handle = _winapi.CreateFile(
        str(path),
        file_append_data | synchronize,
        share_read_write_delete,
        _winapi.NULL,
        open_always,
        attribute_normal,
        _winapi.NULL,
    )
    fd = msvcrt.open_osfhandle(handle, os.O_APPEND)
    return open(fd, "ab")


def rotate_if_big(path: Path, max_bytes: int | None = None) -> bool:
    """Rotate ``path`` if it holds more than ``max_bytes`` (default :data:`MAX_BYTES`).

    True if it did. Never raises: a log that cannot be rotated must not stop a child.
    """
    limit = MAX_BYTES if max_bytes is None else max_bytes
    try:
        with _ROTATE_LOCK:  # the size too: a second caller must not rotate it again
            if path.stat().st_size <= limit:
                return False
            _rotate(path, limit)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("could not rotate %s: %s", path, exc)
        return False
    return True


def _rotate(path: Path, keep: int) -> None:
    with open(path, "r+b") as current:
        for number in range(BACKUPS - 1, 0, -1):  # .1 -> .2, ...: closed files, renames work
            older = backup_path(path, number)
            if older.exists():
                os.replace(older, backup_path(path, number + 1))
        size = current.seek(0, os.SEEK_END)
        if BACKUPS > 0:
            current.seek(max(0, size - keep))
            if size > keep:
                current.readline(65536)  # start the backup at a whole line
            with open(backup_path(path, 1), "wb") as backup:
                shutil.copyfileobj(current, backup)  # to the end, including what came meanwhile
        current.truncate(0)


def read_tail(path: Path, start: int | None, limit: int = 16384) -> str:
    """At most ``limit`` bytes of the end of ``path``, from offset ``start`` on; with
    ``start`` None (the log was rotated since) the end of ``.1`` comes first. Raises
    OSError if ``path`` cannot be read."""
    with open(path, "rb") as current:
        size = current.seek(0, os.SEEK_END)
        if start is not None and start > size:  # truncated by someone else meanwhile
            start = None
        current.seek(max(start or 0, size - limit))
        data = current.read()
    if start is None and len(data) < limit:
        with contextlib.suppress(OSError), open(backup_path(path, 1), "rb") as backup:
            backup.seek(max(0, backup.seek(0, os.SEEK_END) - (limit - len(data))))
            data = backup.read() + data
    return data.decode("utf-8", "replace")


def remove_stale(logs_dir: Path, installed: Iterable[str]) -> list[str]:
    """Delete the logs (and their backups) of every version not in ``installed``; the names
    of the files deleted."""
    keep = set(installed)
    removed: list[str] = []
    try:
        paths = list(logs_dir.iterdir())
    except OSError:
        return removed
    for path in paths:
        match = _NAME.fullmatch(path.name)
        if match is None or match["version"] in keep or not path.is_file():
            continue
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not delete %s: %s", path, exc)
        else:
            removed.append(path.name)
    return removed


class LogWatch:
    """One daemon thread that calls every registered check each ``interval`` seconds."""

    def __init__(self, interval: float = CHECK_INTERVAL) -> None:
        self.interval = interval
        self._cond = threading.Condition()
        self._checks: dict[object, Callable[[], object]] = {}
        self._thread: threading.Thread | None = None

    def add(self, key: object, check: Callable[[], object]) -> None:
        with self._cond:
            self._checks[key] = check
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="child-logs", daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, key: object) -> None:
        with self._cond:
            self._checks.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._checks:  # sleep until a child runs
                    self._cond.wait()
            time.sleep(self.interval)
            with self._cond:
                checks = list(self._checks.values())
            for check in checks:
                try:
                    check()
                except Exception:  # one bad check must not end the watch for all
                    log.exception("checking a child's log failed")


WATCH = LogWatch()
