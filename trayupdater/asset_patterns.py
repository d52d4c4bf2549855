"""The ``asset_pattern`` override: a glob with ``{os}``, ``{arch}`` and ``{version}``.

A publisher whose names the picker cannot read sets a case-insensitive fnmatch-style glob;
each placeholder becomes an alternation of the spellings build tools use for this platform
(``{os}`` on darwin matches macos, osx, apple-darwin...), and ``{version}`` matches the tag
as well as packaging's normalised spelling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from trayupdater.asset_names import AARCH64, X86_64
from trayupdater.errors import PlatformError

if TYPE_CHECKING:
    from trayupdater.platforms import Platform

__all__ = ["compile_pattern", "glob_to_regex"]

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


def glob_to_regex(glob: str) -> str:
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
    return glob_to_regex(chunk)


def compile_pattern(pattern: str, platform: Platform, version: str | None) -> re.Pattern[str]:
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
