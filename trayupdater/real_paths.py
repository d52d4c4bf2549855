"""Where paths below an unpacked folder really lead, each symbolic link read once.

``os.path.realpath`` resolves every link a path passes through again on each call: its
cache lives for one call. An archive of n links whose targets each pass through the next
one (``L2/../L2/../...``, 4 KB of it) then costs n calls, each walking the targets of all
the links after it: 60 links took 6 s, 200 took a minute, and a hostile asset of a few
hundred kilobytes could keep the updater busy for hours. Here each link below the root is
resolved once and remembered, so checking every link of a folder costs about the length of
all their targets together, and a cap on the steps taken bounds even that.

The answers are os.path.realpath's on POSIX (tested against it), except that a link loop or
a chain nested deeper than the kernel would follow raises :class:`TangledLinks` instead of
giving a path that could not be opened anyway. Each step looks at the disk itself (lstat,
readlink), so a case-insensitive or normalising file system resolves names as the kernel
does. The folder must not change while one RealPaths is in use.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_NESTING = 40  # links within links: Linux gives ELOOP past 40 as well
MAX_STEPS = 1_000_000  # path components looked at, all calls together (about a second)


class TangledLinks(ValueError):
    """Links that loop, nest too deep, or take too many steps to resolve."""


class RealPaths:
    """Real paths below ``root`` (POSIX), every link resolved at most once."""

    def __init__(self, root: Path, max_steps: int = MAX_STEPS) -> None:
        self._given = os.path.abspath(root)
        self.root = os.path.realpath(root)
        self._steps_left = max_steps
        # A link's path (its folder already real) -> its real target; None while resolving.
        self._links: dict[str, str | None] = {}

    def of(self, path: Path | str) -> str:
        """The real path of ``path``, which must be the root or below it."""
        if os.name == "nt":  # other rules (drives, junctions); links there need privileges
            return os.path.realpath(path)
        relative = os.path.relpath(os.path.abspath(path), self._given)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            raise ValueError(f"{path} is not below {self._given}")
        return self._walk(self.root, relative, 0)

    def inside(self, path: Path | str) -> bool:
        """Does ``path`` really lead to the root or somewhere below it?"""
        real = self.of(path)
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def _walk(self, base: str, rest: str, nesting: int) -> str:
        """``rest`` (relative, or absolute from /) followed from the real folder ``base``."""
        if rest.startswith(os.sep):
            base = os.sep
        for name in rest.split(os.sep):
            if name in ("", os.curdir):
                continue
            self._steps_left -= 1
            if self._steps_left < 0:
                raise TangledLinks("its links take too many steps to resolve")
            if name == os.pardir:
                base = os.path.dirname(base)  # the parent of a real folder is real
                continue
            path = os.path.join(base, name)
            if path in self._links:
                known = self._links[path]
                if known is None:
                    raise TangledLinks(f"link {self._shown(path)} is part of a loop")
                base = known
                continue
            try:
                is_link = stat.S_ISLNK(os.lstat(path).st_mode)
            except OSError:  # missing, or below a file: the rest is taken as written
                is_link = False
            if not is_link:
                base = path
                continue
            if nesting >= MAX_NESTING:
                raise TangledLinks(
                    f"links nest more than {MAX_NESTING} deep at {self._shown(path)}"
                )
            self._links[path] = None
            base = self._links[path] = self._walk(base, os.readlink(path), nesting + 1)
        return base

    def _shown(self, path: str) -> str:
        return os.path.relpath(path, self.root)
