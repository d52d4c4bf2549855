"""Which GitHub release asset fits an OS/CPU.

Each asset name is read into facts (OS, CPU, libc, format, program stem) by
``trayupdater.asset_names``; an ``asset_pattern`` narrows the names first
(``trayupdater.asset_patterns``). An asset is *compatible* with a platform when nothing in
its name contradicts it; among compatible assets the most specific and most ordinary build
wins (see ``_rank``). The rules were fitted to the real releases in
``shared/data/asset-cases.json`` whose notes explain each trap.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from platform import machine as _machine

from trayupdater.asset_names import (
    AARCH64,
    BIT32,
    OSES,
    OTHER_ARCH,
    X86_64,
    ZIP_FORMAT,
    AssetFacts,
    analyse_name,
    is_auxiliary,
    is_sidecar,
    name_words,
)
from trayupdater.asset_patterns import compile_pattern
from trayupdater.errors import PlatformError

__all__ = ["ALL_PLATFORMS", "Platform", "PlatformError", "is_auxiliary", "pick_asset"]


# --------------------------------------------------------------------------------------
# Platform
# --------------------------------------------------------------------------------------


_PLATFORM_OS = {
    "linux": "linux",
    "darwin": "darwin",
    "macos": "darwin",
    "osx": "darwin",
    "mac": "darwin",
    "windows": "windows",
    "win": "windows",
}


def _canonical_arch(os_name: str, family: str) -> str:
    # Apple and the Go/Rust world disagree on the name; we follow each OS's own usage.
    return "arm64" if (os_name == "darwin" and family == AARCH64) else family


def _arch_family(word: str) -> str | None:
    w = word.lower().replace("-", "_")
    if w in ("x86_64", "amd64", "x64", "x8664"):
        return X86_64
    if w in ("aarch64", "aarch_64", "arm64", "arm_64"):
        return AARCH64
    return None


@dataclass(frozen=True)
class Platform:
    """An OS and 64-bit CPU that trayupdater can run a child on."""

    os: str  # "linux" | "darwin" | "windows"
    arch: str  # "x86_64" | "aarch64" ("arm64" on darwin, as Apple names it)

    def __post_init__(self) -> None:
        os_name = _PLATFORM_OS.get(str(self.os).strip().lower())
        if os_name is None:
            raise PlatformError(f"unknown OS {self.os!r}: expected one of {', '.join(OSES)}")
        family = _arch_family(str(self.arch))
        if family is None:
            raise PlatformError(
                f"unsupported CPU {self.arch!r}: expected x86_64 (amd64) or aarch64 (arm64)"
            )
        # Frozen dataclass: normalising aliases here keeps equality and hashing meaningful.
        object.__setattr__(self, "os", os_name)
        object.__setattr__(self, "arch", _canonical_arch(os_name, family))

    def __str__(self) -> str:
        return f"{self.os}-{self.arch}"

    @property
    def family(self) -> str:
        """The CPU as this module compares it: "x86_64" or "aarch64" on every OS."""
        return _arch_family(self.arch) or self.arch

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux-x86_64``, ``darwin-arm64``... and aliases such as ``linux-amd64``,
        ``macos-arm64``, ``win-x64``, ``linux/arm64`` or ``x86_64-apple-darwin``."""
        valid = ", ".join(str(p) for p in ALL_PLATFORMS)
        if not isinstance(text, str) or not text.strip():
            raise PlatformError(f"empty platform name; expected one of {valid}")
        facts = analyse_name(text.strip())
        problem = None
        if facts.unknown:
            problem = f"unrecognised word {facts.unknown[0]!r}"
        elif facts.other_os:
            problem = "that OS is not supported"
        elif len(facts.oses) != 1:
            problem = "it names no OS" if not facts.oses else "it names several OSes"
        elif BIT32 in facts.arches:
            problem = "32-bit CPUs are not supported"
        elif OTHER_ARCH in facts.arches:
            problem = "that CPU is not supported"
        elif not facts.arches - {"universal"}:
            problem = "it names no CPU (x86_64 or arm64)"
        elif len(facts.arches) != 1:
            problem = "it names several CPUs"
        if problem:
            raise PlatformError(f"cannot use platform {text!r}: {problem}; expected one of {valid}")
        (os_name,) = facts.oses
        (family,) = facts.arches
        return cls(os_name, family)

    @classmethod
    def current(cls, *, sys_platform: str | None = None, machine: str | None = None) -> Platform:
        """This machine, from ``sys.platform`` and ``platform.machine()``.

        The keywords exist so that the mapping can be tested for every OS on any OS. An
        x86_64 Python translated by Rosetta or Windows' emulation may report x86_64; such
        builds do run there, so no correction is attempted.
        """
        sp = (sys.platform if sys_platform is None else sys_platform).lower()
        mach = (_machine() if machine is None else machine).strip().lower()
        if sp.startswith("linux"):
            os_name = "linux"
        elif sp == "darwin":
            os_name = "darwin"
        elif sp in ("win32", "cygwin", "msys"):
            os_name = "windows"
        else:
            raise PlatformError(
                f"this OS ({sp!r}) is not supported; set the platform explicitly "
                f"to one of {', '.join(str(p) for p in ALL_PLATFORMS)}"
            )
        family = _arch_family(mach) or (AARCH64 if mach.startswith("armv8") else None)
        if family is None:
            raise PlatformError(
                f"this CPU ({mach or 'unknown'!r}) is not supported: trayupdater runs "
                "children on x86_64 and aarch64 only"
            )
        return cls(os_name, family)


ALL_PLATFORMS: tuple[Platform, ...] = (
    Platform("linux", X86_64),
    Platform("linux", AARCH64),
    Platform("darwin", X86_64),
    Platform("darwin", "arm64"),
    Platform("windows", X86_64),
    Platform("windows", AARCH64),
)

# --------------------------------------------------------------------------------------
# Choosing
# --------------------------------------------------------------------------------------

_Key = tuple[int, int, int, int, int, int, int, int, str]


def _repo_words(repo: str | None) -> tuple[str, ...]:
    if not repo:
        return ()
    return tuple(name_words(repo.strip().rstrip("/").rsplit("/", 1)[-1]))


def _repo_tier(facts: AssetFacts, repo_words: Sequence[str]) -> int:
    """0: the repo's program, 1: a near name (kube-health-monitor, cyclonedx for
    cyclonedx-cli), 2: some other program (tw for tabiew)."""
    if not repo_words:
        return 0
    if facts.repo_prefixed:
        return 0 if len(facts.stem) == len(repo_words) else 1
    n = min(len(facts.stem), len(repo_words))
    return 1 if n and facts.stem[:n] == tuple(repo_words[:n]) else 2


def _arch_fit(facts: AssetFacts, family: str, lenient: bool) -> int | None:
    """0 exact, 1 universal or implied, 2 no CPU word; None when it cannot run."""
    arches = facts.arches
    if BIT32 in arches or OTHER_ARCH in arches:
        return None
    specific = arches - {"universal"}
    if specific:
        return (0 if specific == {family} else 1) if family in specific else None
    if "universal" in arches:
        return 1
    if facts.implied_x64:
        if family == X86_64:
            return 1
        return 2 if lenient else None
    return 2


def _rank(
    facts: AssetFacts, platform: Platform, repo_words: Sequence[str], name: str, lenient: bool
) -> _Key | None:
    if facts.other_os or len(facts.oses) > 1:
        return None
    if facts.oses and platform.os not in facts.oses:
        return None
    if not facts.oses and not lenient:
        return None
    fit = _arch_fit(facts, platform.family, lenient)
    if fit is None:
        return None
    return (
        0 if facts.oses else 1,  # only a pattern lets an OS-less name through: last resort
        _repo_tier(facts, repo_words),
        int(facts.musl),  # .NET musl builds do not run on glibc; Rust ones do, but glibc first
        fit,
        len(facts.stem),  # main program before helpers: buf before protoc-gen-buf-lint
        facts.extras,
        _format_rank(facts.fmt, platform.os),
        len(name),
        name,
    )


def _format_rank(fmt: int, os_name: str) -> int:
    if os_name != "windows" or fmt == 0:
        return fmt
    # Windows builds are conventionally zips (television ships both .zip and .tar.gz).
    return 1 if fmt == ZIP_FORMAT else fmt + 1


_SiblingKey = tuple[tuple[str, ...], frozenset[str]]  # (program stem, OSes named)


def _sibling_arches(all_facts: Iterable[AssetFacts]) -> dict[_SiblingKey, set[str]]:
    """CPU words used per (program, OS), for ``_is_other_cpu_default``."""
    seen: dict[_SiblingKey, set[str]] = {}
    for facts in all_facts:
        seen.setdefault((facts.stem, facts.oses), set()).update(facts.arches - {"universal"})
    return seen


def _is_other_cpu_default(
    facts: AssetFacts, siblings: dict[_SiblingKey, set[str]], family: str
) -> bool:
    """True when a name with no CPU word is, by its siblings, the build for another CPU.

    Releases that add a CPU word to some builds only leave it off the "default" one:
    yt-dlp_linux next to yt-dlp_linux_aarch64 is x86_64, micro's osx next to macos-arm64
    is Intel. When siblings of the same program and OS name CPUs and none is x86_64, the
    word-less build is the x86_64 one; otherwise (piknik-macos next to macos-intel) it is
    the other one or universal.
    """
    if family == X86_64:
        return False
    arches = siblings.get((facts.stem, facts.oses), set())
    return bool(arches) and X86_64 not in arches


def pick_asset(
    names: Sequence[str],
    platform: Platform,
    *,
    repo: str | None = None,
    pattern: str | None = None,
    version: str | None = None,
) -> str | None:
    """The name of the asset to install on ``platform``, or None if none fits.

    ``repo`` ("owner/name") prefers the repo's own program when a release carries
    several; ``pattern`` (a case-insensitive glob with ``{os}``, ``{arch}``, ``{version}``)
    restricts the choice to matching names; ``version`` fills ``{version}``.
    Raises PlatformError only for a malformed ``pattern``.
    """
    matcher = compile_pattern(pattern, platform, version) if pattern else None
    repo_words = _repo_words(repo)
    candidates: list[tuple[str, AssetFacts]] = []
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or name in seen:
            continue
        seen.add(name)
        if matcher is None:
            if is_auxiliary(name):
                continue
        elif is_sidecar(name) or not matcher.fullmatch(name.strip()):
            continue
        candidates.append((name, analyse_name(name.strip(), repo_words)))

    siblings = _sibling_arches(f for _, f in candidates)
    best: tuple[_Key, str] | None = None
    for name, facts in candidates:
        key = _rank(facts, platform, repo_words, name, lenient=matcher is not None)
        if key is None:
            continue
        if key[3] == 2 and _is_other_cpu_default(facts, siblings, platform.family):
            continue
        if best is None or key < best[0]:
            best = (key, name)
    return best[1] if best else None
