"""Reading one release asset's name: which OS, CPU, libc, format and program it names.

Release assets are named by hand or by a dozen build tools (goreleaser, cargo-dist, .NET
runtime ids, PyInstaller scripts...), so a name is split into words and each word is read
as an OS, a CPU, a libc, a version or "something else" (``analyse_name``). Checksums,
signatures and source archives are *auxiliary* files, never the program (``is_auxiliary``).
The vocabulary was fitted to the real releases in ``shared/data/asset-cases.json``; how the
facts decide between assets is in ``trayupdater.platforms``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AARCH64",
    "BIT32",
    "OSES",
    "OTHER_ARCH",
    "X86_64",
    "ZIP_FORMAT",
    "AssetFacts",
    "analyse_name",
    "is_auxiliary",
    "is_sidecar",
    "name_words",
]

# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


OSES = ("linux", "darwin", "windows")
X86_64 = "x86_64"
AARCH64 = "aarch64"
BIT32 = "32bit"  # any 32-bit CPU: never runs on the 64-bit platforms we support
OTHER_ARCH = "other"  # ppc64le, s390x, riscv64, mips...: a different 64-bit CPU

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
ZIP_FORMAT = 7
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
    (".zip", ZIP_FORMAT),
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
    return is_sidecar(name) or _looks_like_source(name)


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
    facts = analyse_name(name.strip())
    return not facts.oses and not facts.arches and not facts.other_os


def is_sidecar(name: str) -> bool:
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
# Reading one asset name
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetFacts:
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


def name_words(text: str) -> list[str]:
    return [re.sub(r"[-_]", "", t) for t in _TOKEN_RE.findall(text.lower())]


def analyse_name(name: str, repo_words: Sequence[str] = ()) -> AssetFacts:
    lower = name.lower()
    base, fmt = _split_format(lower)
    exe = lower.endswith(".exe")
    words = name_words(base)
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
                    weak.add(BIT32)
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
            arches.add(BIT32)
            if w.startswith("musl"):
                libc.add("musl")
        elif w in ("ppcle64", "s39064") or _OTHER_ARCH_RE.match(w):
            arches.add(OTHER_ARCH)
        elif w in ("64", "32") and prev_os:
            weak.add(X86_64 if w == "64" else BIT32)  # conda style linux-64, win-32
        elif w in _NEUTRAL_WORDS or _VERSIONISH_RE.match(w):
            pass
        else:
            kind = "u"
        kinds.append(kind)
        prev_os = is_os

    if pending_arm:
        # macOS never had 32-bit ARM builds; "ARM" next to "64bit" is arm64 as well.
        arches.add(AARCH64 if ("darwin" in oses or X86_64 in weak) else BIT32)
        weak.discard(X86_64)
    if pending_x86:
        # macOS has had no 32-bit builds since 10.15: gitui's "mac-x86" is the Intel build.
        arches.add(X86_64 if "darwin" in oses else BIT32)
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
    return AssetFacts(
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
