"""Which GitHub release asset fits an OS/CPU.

Release assets are named by hand or by a dozen build tools (goreleaser, cargo-dist, .NET
runtime ids, PyInstaller scripts...), so names are split into words and each word is read
as an OS, a CPU, a libc, a version or "something else".  An asset is *compatible* with a
platform when nothing in its name contradicts it; among compatible assets the most specific
and most ordinary build wins (see ``_rank``).  The rules were fitted to the real releases in
``shared/data/asset-cases.json`` whose notes explain each trap.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from platform import machine as _machine

from trayupdater.errors import ConfigError

__all__ = ["ALL_PLATFORMS", "Platform", "PlatformError", "is_auxiliary", "pick_asset"]


class PlatformError(ConfigError, ValueError):
    """An OS/CPU name or an asset pattern that cannot be understood or is not supported.

    A ConfigError because the fix is in the config (``platform``/``asset_pattern``), and a
    ValueError so callers parsing text can catch the usual type.
    """


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


OSES = ("linux", "darwin", "windows")
X86_64 = "x86_64"
AARCH64 = "aarch64"
_BIT32 = "32bit"  # any 32-bit CPU: never runs on the 64-bit platforms we support
_OTHER_ARCH = "other"  # ppc64le, s390x, riscv64, mips...: a different 64-bit CPU

_OS_WORDS = {
    "linux": "linux",
    "musllinux": "linux",
    "manylinux": "linux",
    "darwin": "darwin",
    "macos": "darwin",
    "macosx": "darwin",
    "osx": "darwin",
    "mac": "darwin",
    "apple": "darwin",  # apple-darwin triples
    "windows": "windows",
    "win": "windows",
    "msvc": "windows",  # pc-windows-msvc
    "mingw": "windows",
    "cygwin": "windows",
}
_OTHER_OS_WORDS = _words(
    "freebsd netbsd openbsd dragonfly dragonflybsd solaris illumos sunos aix android "
    "ios plan9 haiku wasm wasm32 wasi js emscripten fuchsia redox hurd zos"
)
# OS glued to a bit width or an OS version: linux64, win32, freebsd64, windows7, macos11.
_GLUED_OS = re.compile(
    r"^(linux|win|windows|mingw|osx|macos|macosx|mac|darwin|freebsd|netbsd|openbsd|"
    r"dragonflybsd|solaris|android)(\d+)$"
)

_ARCH_WORDS = {
    "x8664": X86_64,  # x86_64 / x86-64 once separators are dropped
    "amd64": X86_64,
    "x64": X86_64,
    "intel": X86_64,  # piknik-macos-intel
    "aarch64": AARCH64,  # also aarch_64
    "arm64": AARCH64,
    "arm64e": AARCH64,
    "armv8": AARCH64,
    "armv8a": AARCH64,
    "universal": "universal",
    "universal2": "universal",
}
_BIT32_WORDS = _words(
    "i386 i486 i586 i686 386 486 586 686 x8632 x32 32bit 32bits ia32 arm32 armel armhf armhfp "
    "gnueabi gnueabihf musleabi musleabihf eabi eabihf gnux32 thumbv7"
)
_BIT32_RE = re.compile(r"^armv[4-7]\w*$|^armv8l$")
_OTHER_ARCH_RE = re.compile(r"^(ppc|powerpc|s390|riscv|loong|sparc|mips)\w*$|^(ia64|m68k|sh4)$")

_LIBC_WORDS = {"gnu": "gnu", "glibc": "gnu", "musl": "musl", "musllinux": "musl"}
# Words of target triples and build tools that say nothing about the build's variant.
_NEUTRAL_WORDS = _words("unknown pc w64 none binary bin release exe")
_VERSIONISH_RE = re.compile(
    r"^v?\d+$|^(rc|alpha|beta|pre|preview|dev|nightly|snapshot|canary)\d*$"
    r"|^v?\d+(rc|alpha|beta|pre|dev|a|b)\d*$"
)

# Word splitting: compounds whose halves mean nothing alone come first.
_TOKEN_RE = re.compile(
    r"x86[-_]64|x86[-_]32|aarch[-_]64|arm[-_]64|ppcle[-_]64|s390[-_]64|(?:32|64)[-_]?bits?"
    r"|[a-z0-9]+"
)

# Archive and binary forms with their preference (lower is better); a name with none of
# these endings is a bare binary (0): the program itself. Among archives, what the standard
# library unpacks comes first. Listed so that ".tar.gz" is tried before ".gz".
_ZIP = 7
_FORMATS: tuple[tuple[str, int], ...] = (
    (".tar.gz", 1),
    (".tgz", 2),
    (".tar.xz", 3),
    (".txz", 3),
    (".tar.zst", 4),
    (".tzst", 4),
    (".tar.bz2", 5),
    (".tbz2", 5),
    (".tbz", 5),
    (".tar", 6),
    (".zip", _ZIP),
    (".gz", 8),
    (".xz", 9),
    (".bz2", 10),
    (".zst", 10),
    (".7z", 11),
    (".exe", 0),
)

_ARCHIVE_FORMATS = frozenset(range(1, 8))  # tar.* and zip: what sdists are shipped as

# --------------------------------------------------------------------------------------
# Auxiliary files
# --------------------------------------------------------------------------------------

_AUX_SUFFIXES = tuple(
    "." + ext
    for group in (
        # checksums
        "sha sha1 sha256 sha512 sha256sum sha512sum md5 md5sum sum b3 blake3",
        # signatures, certificates, attestations, SBOMs
        "sig asc minisig pem crt cert pub gpg sign p7s sigstore bundle jsonl att sbom spdx cdx",
        # packages and installers need a package manager or a GUI; AppImage also needs FUSE
        # at run time and is a desktop format, never a server build
        "deb rpm apk msi msix msixbundle appx appxbundle dmg pkg snap flatpak flatpakref "
        "nupkg appimage whl gem vsix xpi crx ipk",
        # text, metadata, scripts, pictures
        "txt json md yml yaml toml xml html pdf csv rst log sh ps1 bat cmd py bash zsh fish "
        "buildinfo changes dsc png svg ico icns jpg",
        # debug symbols and libraries
        "pdb dsym debug dbg so dylib dll lib a h",
    )
    for ext in _words(group)
)
_AUX_RE = re.compile(
    r"[a-z]\.[1-9](\.gz)?$"  # man pages: witr.1, foo.8.gz (not tool-v1.2.1)
    r"|\.man$"
    r"|\.pkg\.tar\.\w+$"  # Arch Linux packages
    r"|^[_.]"  # _update_spec, .goreleaser files: metadata by convention
)
_AUX_WORDS = _words(
    "checksum checksums shasum shasums hashes digest digests src source sources vendor "
    "vendored license licence readme changelog notice copying manpage manpages docs doc "
    "documentation completion completions autocomplete debuginfo dbgsym dsym symbols "
    "installer sbom provenance attestation"
)
_AUX_WORD_RE = re.compile(r"^\w*sums$|^sha\d*$|^md5$")


def _lower_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def is_auxiliary(name: str) -> bool:
    """True for an asset that is never the program: checksums, signatures, packages,
    installers, man pages, source archives, metadata."""
    return _is_sidecar(name) or _looks_like_source(name)


def _looks_like_source(name: str) -> bool:
    """``protobuf-33.1.tar.gz``, ``freeze-0.2.2.tar.gz``: a name and a version and nothing
    about a platform is, on GitHub, the source distribution. A heuristic, so an explicit
    asset pattern may still select such a name."""
    lower = name.strip().lower()
    base, fmt = _split_format(lower)
    if fmt not in _ARCHIVE_FORMATS or lower.endswith(".exe"):
        return False
    words = _lower_words(base)
    if not words or not any(_VERSIONISH_RE.match(w) for w in words):
        return False
    facts = _analyse(name.strip())
    return not facts.oses and not facts.arches and not facts.other_os


def _is_sidecar(name: str) -> bool:
    """Checksums, signatures, packages, docs: certain from the name alone."""
    lower = name.strip().lower()
    if not lower:
        return True
    if lower.endswith(_AUX_SUFFIXES) or _AUX_RE.search(lower):
        return True
    words = _lower_words(lower)
    if any(w in _AUX_WORDS or _AUX_WORD_RE.match(w) for w in words):
        return True
    # "Foo-Setup-1.2.exe" is an installer; a tool called setup-envtest is not.
    return lower.endswith(".exe") and "setup" in words


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
        facts = _analyse(text.strip())
        problem = None
        if facts.unknown:
            problem = f"unrecognised word {facts.unknown[0]!r}"
        elif facts.other_os:
            problem = "that OS is not supported"
        elif len(facts.oses) != 1:
            problem = "it names no OS" if not facts.oses else "it names several OSes"
        elif _BIT32 in facts.arches:
            problem = "32-bit CPUs are not supported"
        elif _OTHER_ARCH in facts.arches:
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
# Reading one asset name
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    oses: frozenset[str]  # supported OSes named (linux/darwin/windows)
    other_os: bool  # names freebsd, android, wasm...
    arches: frozenset[str]  # x86_64, aarch64, universal, 32bit, other
    implied_x64: bool  # Windows build with no CPU word: always the x64 one
    musl: bool
    stem: tuple[str, ...]  # leading words before the first platform/version word
    repo_prefixed: bool  # name starts with the repo name's words
    extras: int  # unexplained words after the stem: -static, -pgo, _legacy, windows7...
    fmt: int
    unknown: tuple[str, ...]  # unexplained words anywhere (parse rejects them)


def _split_format(lower: str) -> tuple[str, int]:
    for suffix, rank in _FORMATS:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return lower[: -len(suffix)], rank
    return lower, 0


def _tokens(text: str) -> list[str]:
    return [re.sub(r"[-_]", "", t) for t in _TOKEN_RE.findall(text.lower())]


def _analyse(name: str, repo_words: Sequence[str] = ()) -> _Facts:
    lower = name.lower()
    base, fmt = _split_format(lower)
    exe = lower.endswith(".exe")
    words = _tokens(base)
    repo_prefixed = bool(repo_words) and words[: len(repo_words)] == list(repo_words)
    if repo_prefixed:
        # The repo's own name may contain OS-like words (win-acme, mac-cleanup).
        words = words[len(repo_words) :]

    oses: set[str] = set()
    other_os = False
    arches: set[str] = set()
    weak: set[str] = set()  # from win64, linux32, 64bit: used only if nothing explicit
    libc: set[str] = set()
    extras = 0
    kinds: list[str] = []  # "u" unexplained, "p" platform/version word, per word
    pending_x86 = pending_arm = False
    prev_os = False

    for w in words:
        kind = "p"
        is_os = False
        glued = _GLUED_OS.match(w)
        if w in _OS_WORDS or w in _LIBC_WORDS:
            if w in _OS_WORDS:
                oses.add(_OS_WORDS[w])
                is_os = True
            if w in _LIBC_WORDS:
                libc.add(_LIBC_WORDS[w])
        elif w in _OTHER_OS_WORDS:
            other_os = True
        elif glued:
            os_word, digits = glued.groups()
            mapped = _OS_WORDS.get(os_word)
            if mapped is None:
                other_os = True
            else:
                oses.add(mapped)
                is_os = True
                if digits == "64":
                    weak.add(X86_64)
                elif digits == "32":
                    weak.add(_BIT32)
                elif mapped == "windows":
                    extras += 1  # windows7: a compatibility build, not the usual one
        elif w in _ARCH_WORDS:
            arches.add(_ARCH_WORDS[w])
        elif w == "x86":
            pending_x86 = True  # 32-bit, except on macOS (decided below)
        elif w == "arm":
            pending_arm = True
        elif w in ("64bit", "64bits"):
            weak.add(X86_64)
        elif w in _BIT32_WORDS or _BIT32_RE.match(w):
            arches.add(_BIT32)
            if w.startswith("musl"):
                libc.add("musl")
        elif w in ("ppcle64", "s39064") or _OTHER_ARCH_RE.match(w):
            arches.add(_OTHER_ARCH)
        elif w in ("64", "32") and prev_os:
            weak.add(X86_64 if w == "64" else _BIT32)  # conda style linux-64, win-32
        elif w in _NEUTRAL_WORDS or _VERSIONISH_RE.match(w):
            pass
        else:
            kind = "u"
        kinds.append(kind)
        prev_os = is_os

    if pending_arm:
        # macOS never had 32-bit ARM builds; "ARM" next to "64bit" is arm64 as well.
        arches.add(AARCH64 if ("darwin" in oses or X86_64 in weak) else _BIT32)
        weak.discard(X86_64)
    if pending_x86:
        # macOS has had no 32-bit builds since 10.15: gitui's "mac-x86" is the Intel build.
        arches.add(X86_64 if "darwin" in oses else _BIT32)
    if not oses and repo_prefixed:
        # Nothing after the repo name names an OS: the repo's own word is the only hint
        # (win-acme.v2.2.9.x64.zip is the Windows build).
        oses.update(_OS_WORDS[w] for w in repo_words if w in _OS_WORDS)
    if not oses and exe:
        oses.add("windows")  # yt-dlp.exe, dug.exe
    if not arches and weak:
        arches = weak

    stem_len = next((i for i, k in enumerate(kinds) if k != "u"), len(kinds))
    stem = tuple(words[:stem_len])
    extras += sum(1 for k in kinds[stem_len:] if k == "u")
    if repo_prefixed:
        stem = (*repo_words, *stem)
    return _Facts(
        oses=frozenset(oses),
        other_os=other_os,
        arches=frozenset(arches),
        implied_x64=not arches and oses == {"windows"},
        musl="musl" in libc,
        stem=stem,
        repo_prefixed=repo_prefixed,
        extras=extras,
        fmt=fmt,
        unknown=tuple(w for w, k in zip(words, kinds, strict=True) if k == "u"),
    )


# --------------------------------------------------------------------------------------
# Pattern override
# --------------------------------------------------------------------------------------

_OS_ALIASES = {
    "linux": ("linux", "unknown-linux-gnu", "unknown-linux-musl", "linux-gnu", "linux-musl"),
    "darwin": ("darwin", "macos", "macosx", "osx", "mac", "apple-darwin", "apple"),
    "windows": ("windows", "win", "pc-windows-msvc", "pc-windows-gnu"),
}
_ARCH_ALIASES = {
    X86_64: ("x86_64", "x86-64", "amd64", "x64", "64bit", "64-bit"),
    AARCH64: ("aarch64", "aarch_64", "arm64", "armv8"),
}
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


def _alternation(options: Iterable[str]) -> str:
    # Longest first, so "x86_64" is tried before "x86" would be (regex alternation is ordered).
    return "(?:" + "|".join(re.escape(o) for o in sorted(set(options), key=len, reverse=True)) + ")"


def _version_regex(version: str | None) -> str:
    if not version or not version.strip():
        return r"v?\d[0-9a-z.+~_-]*?"
    text = version.strip().lower()
    if text.startswith("v"):
        text = text[1:]
    # Match the tag spelling as well as packaging's normalised one: 1.0.0rc1 ~ 1.0.0-rc.1.
    spelled = {"a": "(?:a|alpha)", "b": "(?:b|beta)", "rc": "(?:rc|c|pre|preview)"}
    parts = re.findall(r"\d+|[a-z]+", text)
    out = ""
    for i, part in enumerate(parts):
        if i:
            both_digits = part.isdigit() and parts[i - 1].isdigit()
            out += r"[-._+]" if both_digits else r"[-._+]?"
        out += spelled.get(part, re.escape(part))
    return "v?" + (out or re.escape(text))


def _glob_to_regex(glob: str) -> str:
    """fnmatch's syntax (* ? [seq] [!seq]) as a regex fragment, without anchors."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < len(glob) and glob[j] == "!":
                j += 1
            if j < len(glob) and glob[j] == "]":
                j += 1
            while j < len(glob) and glob[j] != "]":
                j += 1
            if j >= len(glob):
                out.append(r"\[")  # unclosed: a literal bracket, as fnmatch does
                continue
            negate = glob[i] == "!"
            # Escape what a regex class would read as syntax (nested sets, set operations).
            body = re.sub(r"([\\\[\]^&~|])", r"\\\1", glob[i + int(negate) : j])
            out.append(f"[{'^' if negate else ''}{body}]")
            i = j + 1
        else:
            out.append(re.escape(c))
    return "".join(out)


def _literal(pattern: str, chunk: str) -> str:
    if "{" in chunk or "}" in chunk:
        raise PlatformError(f"asset pattern {pattern!r}: unbalanced brace in {chunk!r}")
    return _glob_to_regex(chunk)


def _compile_pattern(pattern: str, platform: Platform, version: str | None) -> re.Pattern[str]:
    family = platform.family
    os_aliases = list(_OS_ALIASES[platform.os])
    arch_aliases = list(_ARCH_ALIASES[family])
    if family == X86_64:
        os_aliases += {"windows": ["win64"], "linux": ["linux64"]}.get(platform.os, [])
        if platform.os == "darwin":
            arch_aliases += ["intel", "x86"]
    elif platform.os == "darwin":
        arch_aliases += ["arm"]
    fills = {
        "os": _alternation(os_aliases),
        "arch": _alternation(arch_aliases),
        "version": _version_regex(version),
    }
    out: list[str] = []
    pos = 0
    for m in _PLACEHOLDER_RE.finditer(pattern):
        key = m.group(1).strip().lower()
        if key not in fills:
            raise PlatformError(
                f"asset pattern {pattern!r}: unknown placeholder {{{m.group(1)}}}; "
                "use {os}, {arch} or {version}"
            )
        out.append(_literal(pattern, pattern[pos : m.start()]))
        out.append(fills[key])
        pos = m.end()
    out.append(_literal(pattern, pattern[pos:]))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


# --------------------------------------------------------------------------------------
# Choosing
# --------------------------------------------------------------------------------------

_Key = tuple[int, int, int, int, int, int, int, int, str]


def _repo_words(repo: str | None) -> tuple[str, ...]:
    if not repo:
        return ()
    return tuple(_tokens(repo.strip().rstrip("/").rsplit("/", 1)[-1]))


def _repo_tier(facts: _Facts, repo_words: Sequence[str]) -> int:
    """0: the repo's program, 1: a near name (kube-health-monitor, cyclonedx for
    cyclonedx-cli), 2: some other program (tw for tabiew)."""
    if not repo_words:
        return 0
    if facts.repo_prefixed:
        return 0 if len(facts.stem) == len(repo_words) else 1
    n = min(len(facts.stem), len(repo_words))
    return 1 if n and facts.stem[:n] == tuple(repo_words[:n]) else 2


def _arch_fit(facts: _Facts, family: str, lenient: bool) -> int | None:
    """0 exact, 1 universal or implied, 2 no CPU word; None when it cannot run."""
    arches = facts.arches
    if _BIT32 in arches or _OTHER_ARCH in arches:
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
    facts: _Facts, platform: Platform, repo_words: Sequence[str], name: str, lenient: bool
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
    return 1 if fmt == _ZIP else fmt + 1


_SiblingKey = tuple[tuple[str, ...], frozenset[str]]  # (program stem, OSes named)


def _sibling_arches(all_facts: Iterable[_Facts]) -> dict[_SiblingKey, set[str]]:
    """CPU words used per (program, OS), for ``_is_other_cpu_default``."""
    seen: dict[_SiblingKey, set[str]] = {}
    for facts in all_facts:
        seen.setdefault((facts.stem, facts.oses), set()).update(facts.arches - {"universal"})
    return seen


def _is_other_cpu_default(
    facts: _Facts, siblings: dict[_SiblingKey, set[str]], family: str
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
    matcher = _compile_pattern(pattern, platform, version) if pattern else None
    repo_words = _repo_words(repo)
    candidates: list[tuple[str, _Facts]] = []
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or name in seen:
            continue
        seen.add(name)
        if matcher is None:
            if is_auxiliary(name):
                continue
        elif _is_sidecar(name) or not matcher.fullmatch(name.strip()):
            continue
        candidates.append((name, _analyse(name.strip(), repo_words)))

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
