"""One running app per data folder: an exclusive OS lock on ``<data_dir>/instance.lock``.

Asking the control endpoint "is anyone running?" is not enough on its own: two launches at
the same moment (start at login and a double-click) both hear nothing, as neither has
written ``control.json`` yet, and both run. The lock closes that gap: whoever holds it is
*the* instance; a launch that cannot take it waits for the holder's control endpoint.

The lock belongs to an open file, so the OS drops it when the process ends however it ends
(``kill -9`` included): there is never a stale lock to clean up. For the same reason the
file itself is never deleted: a launch could lock the deleted file while another locks a
new one. Child processes do not inherit it (Python opens files non-inheritable).

- POSIX: ``flock(LOCK_EX | LOCK_NB)`` on the whole file.
- Windows: ``msvcrt.locking(LK_NBLCK)`` on its first byte (allowed past the end of file).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Protocol

log = logging.getLogger(__name__)

LOCK_FILE = "instance.lock"


class LockBackend(Protocol):
    def try_lock(self, fd: int) -> bool:
        """Lock ``fd``'s file without waiting: False if another open file holds it."""

    def unlock(self, fd: int) -> None: ...


class PosixLocking:
    def try_lock(self, fd: int) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # EWOULDBLOCK: held by another open file
            return False
        return True

    def unlock(self, fd: int) -> None:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


class WindowsLocking:
    """``msvcrt.locking`` (a module given for tests: it exists only on Windows)."""

    def __init__(self, msvcrt: ModuleType | None = None) -> None:
        self._msvcrt = msvcrt or importlib.import_module("msvcrt")

    def try_lock(self, fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)  # locking() starts at the file position
        try:
            self._msvcrt.locking(fd, self._msvcrt.LK_NBLCK, 1)  # LK_LOCK would retry for 10 s
        except OSError:  # EACCES / EDEADLOCK: another process holds the byte
            return False
        return True

    def unlock(self, fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        self._msvcrt.locking(fd, self._msvcrt.LK_UNLCK, 1)


def default_backend() -> LockBackend:
    return WindowsLocking() if os.name == "nt" else PosixLocking()


def held_by_anyone(data_dir: Path, *, backend: LockBackend | None = None) -> bool | None:
    """Does some process hold ``data_dir``'s instance lock (this one included)? None when
    it cannot be told: no lock file (a build from before the lock) or no locking here.

    Found free, nobody runs on the folder: a control.json there is stale, and its port
    may belong to another program by now. The probe takes the lock for a moment; a launch
    that tries it just then retries (App waits for the holder, a successor polls)."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    try:
        backend = backend or default_backend()
        if not backend.try_lock(fd):
            return True
        backend.unlock(fd)
        return False
    except OSError:
        return None
    finally:
        os.close(fd)


class InstanceLock:
    """The lock of one data folder; :meth:`release` gives it up (and ends a wait for it)."""

    def __init__(self, data_dir: Path, *, backend: LockBackend | None = None) -> None:
        self.path = data_dir / LOCK_FILE
        self._backend = backend or default_backend()
        self._fd: int | None = None
        self._mutex = threading.Lock()  # acquire (maybe from the waiting thread) vs release
        self._released = threading.Event()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if it is free, never waiting; True when this object holds it.

        OSError when the file cannot be opened or the OS cannot lock at all."""
        with self._mutex:
            return self._acquire_locked()

    def _acquire_locked(self) -> bool:
        if self._fd is not None:
            return True
        if self._released.is_set():
            return False  # released for good: a late waiting thread must not take it again
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
        try:
            locked = self._backend.try_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire_when_free(self, poll: float = 0.2) -> threading.Thread:
        """Take the lock in the background as soon as its holder lets it go (or until
        :meth:`release`): for a self-update's successor, whose predecessor holds it until
        it exits."""

        def wait() -> None:
            try:
                while not self.acquire():
                    if self._released.wait(poll):
                        return
            except OSError as exc:
                log.warning("cannot lock %s: %s", self.path, exc)
                return
            log.info("took the instance lock %s", self.path)

        thread = threading.Thread(target=wait, name="instance-lock", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        with self._mutex:
            self._released.set()
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self._backend.unlock(fd)
        except OSError:
            pass  # closing the file below drops the lock anyway
        finally:
            os.close(fd)
