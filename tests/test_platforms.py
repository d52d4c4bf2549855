"""Tests for trayupdater.platforms: real release asset lists, then the parts one by one.

The labelled cases and the unlabelled lists live in ``<repo>/../shared/data`` (the repo and
shared/ sit side by side in development and in CI); TRAYUPDATER_SHARED_DATA overrides the
folder. The invariants over unlabelled lists use their own small word lists on purpose, so
they do not merely restate the module's vocabulary.
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from trayupdater.asset_patterns import glob_to_regex
from trayupdater.errors import ConfigError
from trayupdater.platforms import (
    ALL_PLATFORMS,
    Platform,
    PlatformError,
    is_auxiliary,
    pick_asset,
)

SIX = (
    "linux-x86_64",
    "linux-aarch64",
    "darwin-x86_64",
    "darwin-arm64",
    "windows-x86_64",
    "windows-aarch64",
)


def _shared_data_dir() -> Path:
    override = os.environ.get("TRAYUPDATER_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


DATA_DIR = _shared_data_dir()
MISSING_REASON = (
    f"shared data folder {DATA_DIR} not found (set TRAYUPDATER_SHARED_DATA to the folder "
    "holding asset-cases.json and asset-lists-unlabelled.json)"
)


def _load(file_name: str) -> list[dict[str, Any]] | None:
    path = DATA_DIR / file_name
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


CASES = _load("asset-cases.json")
UNLABELLED = _load("asset-lists-unlabelled.json")
_SKIP = pytest.mark.skip(reason=MISSING_REASON)


def _case_params() -> list[Any]:
    if CASES is None:
        return [pytest.param(None, None, id="no-shared-data", marks=_SKIP)]
    return [
        pytest.param(case, plat, id=f"{case['project']}@{case.get('tag')}:{plat}")
        for case in CASES
        for plat in SIX
    ]


def _unlabelled_params() -> list[Any]:
    if UNLABELLED is None:
        return [pytest.param(None, id="no-shared-data", marks=_SKIP)]
    return [
        pytest.param(entry, id=f"{i}:{entry['project']}@{entry.get('tag')}")
        for i, entry in enumerate(UNLABELLED)
    ]


# --------------------------------------------------------------------------------------
# Labelled real releases
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "plat"), _case_params())
def test_labelled_case(case: dict[str, Any], plat: str) -> None:
    expected = case["expected"][plat]
    acceptable = {expected, *case.get("also_acceptable", {}).get(plat, [])}
    got = pick_asset(
        case["assets"], Platform.parse(plat), repo=case["project"], version=case.get("tag")
    )
    notes = {k: case[k] for k in ("traps", "notes", "uncertain") if case.get(k)}
    assert got in acceptable, f"picked {got!r}, want one of {sorted(map(str, acceptable))}\n{notes}"


@pytest.mark.parametrize(("case", "plat"), _case_params())
def test_labelled_case_ignores_asset_order(case: dict[str, Any], plat: str) -> None:
    # The API lists assets in upload order, which differs between releases of one project.
    platform = Platform.parse(plat)
    first = pick_asset(case["assets"], platform, repo=case["project"])
    shuffled = list(case["assets"])
    random.Random(plat).shuffle(shuffled)
    assert pick_asset(shuffled, platform, repo=case["project"]) == first
    assert pick_asset(list(reversed(case["assets"])), platform, repo=case["project"]) == first


@pytest.mark.skipif(CASES is None, reason=MISSING_REASON)
def test_labelled_cases_cover_the_six_platforms() -> None:
    assert CASES
    for case in CASES:
        assert set(case["expected"]) == set(SIX), case["project"]


def test_original_go_bug_title_case_goreleaser_names() -> None:
    # go-updater never matched this on amd64: "Linux" vs "linux", "x86_64" vs "amd64".
    names = [
        "checksums.txt",
        "simple-server_Linux_i386.tar.gz",
        "simple-server_Linux_x86_64.tar.gz",
        "simple-server_Linux_arm64.tar.gz",
    ]
    plat = Platform.parse("linux-amd64")
    assert pick_asset(names, plat) == "simple-server_Linux_x86_64.tar.gz"
    assert (
        pick_asset(names, plat, pattern="simple-server_{os}_{arch}.tar.gz")
        == "simple-server_Linux_x86_64.tar.gz"
    )


def test_repo_name_picks_the_program_among_several() -> None:
    names = ["kubens_v1_linux_x86_64.tar.gz", "kubectx_v1_linux_x86_64.tar.gz"]
    plat = Platform.parse("linux-x86_64")
    assert pick_asset(names, plat, repo="ahmetb/kubectx") == "kubectx_v1_linux_x86_64.tar.gz"
    assert pick_asset(names, plat, repo="ahmetb/kubens") == "kubens_v1_linux_x86_64.tar.gz"
    # A bare repo name works as well as owner/name.
    assert pick_asset(names, plat, repo="kubens") == "kubens_v1_linux_x86_64.tar.gz"


def test_repo_name_with_an_os_word_in_it() -> None:
    # The repo's own "win" must not make every asset look like a Windows build, yet it is
    # the only OS hint when nothing else names one.
    names = ["mac-cleanup-linux-amd64.tar.gz", "mac-cleanup-darwin-arm64.tar.gz"]
    assert pick_asset(names, Platform.parse("linux-x86_64"), repo="o/mac-cleanup") == names[0]
    assert pick_asset(names, Platform.parse("darwin-arm64"), repo="o/mac-cleanup") == names[1]
    win = ["win-acme.v2.2.9.x64.trimmed.zip", "win-acme.v2.2.9.x86.trimmed.zip"]
    assert pick_asset(win, Platform.parse("windows-x86_64"), repo="o/win-acme") == win[0]
    assert pick_asset(win, Platform.parse("linux-x86_64"), repo="o/win-acme") is None


def test_word_less_build_is_not_taken_for_a_cpu_its_siblings_leave_out() -> None:
    # yt-dlp_linux beside yt-dlp_linux_armv7l (and no x86_64 word anywhere) is the x86_64
    # build, so an aarch64 machine must not get it.
    names = ["yt-dlp_linux", "yt-dlp_linux_armv7l", "yt-dlp_macos"]
    assert pick_asset(names, Platform.parse("linux-x86_64")) == "yt-dlp_linux"
    assert pick_asset(names, Platform.parse("linux-aarch64")) is None
    # With no sibling naming a CPU the word-less build may serve every CPU (minisign).
    assert pick_asset(["minisign-linux.tar.gz"], Platform.parse("linux-aarch64")) == (
        "minisign-linux.tar.gz"
    )


def test_musl_only_when_nothing_else() -> None:
    plat = Platform.parse("linux-x86_64")
    both = ["app-linux-musl-x64", "app-linux-x64"]
    assert pick_asset(both, plat) == "app-linux-x64"
    # Not just the shorter name winning: the glibc build here has the longer name.
    both = ["app-linux-x64-glibc2.28.tar.gz", "app-linux-x64-musl.tar.gz"]
    assert pick_asset(both, plat) == "app-linux-x64-glibc2.28.tar.gz"
    assert pick_asset(["app-x86_64-unknown-linux-musl.tar.gz"], plat) == (
        "app-x86_64-unknown-linux-musl.tar.gz"
    )


def test_same_build_in_several_forms() -> None:
    # Deterministic: the bare program first, then tar archives, zip first on Windows.
    names = ["t-linux-amd64.zip", "t-linux-amd64.tgz", "t-linux-amd64.tar.gz"]
    assert pick_asset(names, Platform.parse("linux-x86_64")) == "t-linux-amd64.tar.gz"
    assert pick_asset([*names, "t-linux-amd64"], Platform.parse("linux-x86_64")) == "t-linux-amd64"
    win = ["t-windows-amd64.tar.gz", "t-windows-amd64.zip"]
    assert pick_asset(win, Platform.parse("windows-x86_64")) == "t-windows-amd64.zip"


def test_no_reverse_rosetta_and_no_arm_emulation_guess() -> None:
    names = ["t-aarch64-apple-darwin.tar.gz", "t-x86_64-pc-windows-msvc.zip"]
    assert pick_asset(names, Platform.parse("darwin-x86_64")) is None
    assert pick_asset(names, Platform.parse("windows-aarch64")) is None
    assert pick_asset(["dug.exe"], Platform.parse("windows-aarch64")) is None
    assert pick_asset(["dug.exe"], Platform.parse("windows-x86_64")) == "dug.exe"


# --------------------------------------------------------------------------------------
# Unlabelled real releases: invariants
# --------------------------------------------------------------------------------------

# Independent, deliberately small vocabularies (see module docstring).
_AUX_TAIL = re.compile(
    r"(\.(txt|sig|asc|minisig|pem|sha\d*|sum|json|jsonl|deb|rpm|apk|msi|dmg|pkg|snap|nupkg"
    r"|sh|ps1|[1-9])$)|sums?(\.|$)|checksums|(^|[-_.])(src|source)[-_.]",
    re.IGNORECASE,
)
_OS_OF_WORD = {
    "linux": "linux",
    "musllinux": "linux",
    "darwin": "darwin",
    "macos": "darwin",
    "osx": "darwin",
    "mac": "darwin",
    "apple": "darwin",
    "windows": "windows",
    "win": "windows",
    "msvc": "windows",
}
_FOREIGN_OS = {"freebsd", "netbsd", "openbsd", "dragonflybsd", "dragonfly", "android", "wasm"}
_WORDS_32 = {
    "i386", "i686", "386", "x86", "32bit", "x32", "armv5", "armv6", "armv7", "armv7l",
    "armhf", "arm", "arm32", "armel", "gnueabihf", "musleabihf",
}  # fmt: skip
_WORDS_OTHER_CPU = {"ppc64le", "ppc64", "s390x", "riscv64", "riscv64gc", "mips", "loongarch64"}
_WORDS_CPU = {"x86_64": {"x64", "amd64", "64bit"}, "aarch64": {"arm64", "aarch64"}}


def _plain_words(name: str) -> list[str]:
    text = name.lower()
    text = re.sub(r"x86[-_]64", "x64", text)
    text = re.sub(r"aarch_64", "aarch64", text)
    text = re.sub(r"x86[-_]32", "i386", text)
    text = re.sub(r"(32|64)-bit", r"\1bit", text)
    words = []
    for w in re.split(r"[^a-z0-9]+", text):
        glued = re.fullmatch(r"([a-z]+?)(32|64|7)", w)
        if glued and glued.group(1) in {*_OS_OF_WORD, *_FOREIGN_OS}:
            # linux64, win32, freebsd64, windows7
            words.append(glued.group(1))
            words.append({"32": "32bit", "64": "64bit"}.get(glued.group(2), ""))
        elif w:
            words.append(w)
    return words


def _assert_fits(name: str, plat: Platform) -> None:
    words = _plain_words(name)
    assert not _AUX_TAIL.search(name), f"{name}: auxiliary file picked for {plat}"
    assert not set(words) & _FOREIGN_OS, f"{name}: another OS's build picked for {plat}"
    oses = {_OS_OF_WORD[w] for w in words if w in _OS_OF_WORD}
    assert oses <= {plat.os}, f"{name}: names {oses} but the platform is {plat}"
    if not oses:
        assert plat.os == "windows" and name.lower().endswith(".exe"), name
    cpu32 = set(words) & _WORDS_32
    if plat.os == "darwin":
        # macOS has had no 32-bit builds since 10.15: gitui's "mac-x86" is its Intel build.
        cpu32 -= {"x86", "arm"}
        if "arm" in words:
            assert plat.family == "aarch64", name
        if "x86" in words:
            assert plat.family == "x86_64", name
    assert not cpu32, f"{name}: 32-bit build picked for {plat}"
    assert not set(words) & _WORDS_OTHER_CPU, f"{name}: another CPU's build picked for {plat}"
    other_family = "aarch64" if plat.family == "x86_64" else "x86_64"
    assert not set(words) & _WORDS_CPU[other_family] - {"64bit"}, f"{name}: wrong CPU for {plat}"


def _plainly_for(name: str, plat: Platform) -> bool:
    """An asset whose words say exactly this OS and this CPU and nothing contradicting."""
    if _AUX_TAIL.search(name):
        return False
    words = set(_plain_words(name))
    oses = {_OS_OF_WORD[w] for w in words if w in _OS_OF_WORD}
    other_cpu = words & (
        _WORDS_32 | _WORDS_OTHER_CPU | _WORDS_CPU["x86_64"] | _WORDS_CPU["aarch64"]
    )
    return (
        oses == {plat.os}
        and not words & _FOREIGN_OS
        and bool(words & _WORDS_CPU[plat.family])
        and other_cpu <= _WORDS_CPU[plat.family]
        and "musl" not in words
    )


@pytest.mark.parametrize("entry", _unlabelled_params())
def test_unlabelled_release_invariants(entry: dict[str, Any]) -> None:
    names = entry["assets"]
    for plat in ALL_PLATFORMS:
        got = pick_asset(names, plat, repo=entry["project"], version=entry.get("tag"))
        shuffled = list(names)
        random.Random(str(plat)).shuffle(shuffled)
        assert pick_asset(shuffled, plat, repo=entry["project"], version=entry.get("tag")) == got
        if got is None:
            plain = [n for n in names if _plainly_for(n, plat)]
            assert not plain, f"nothing picked for {plat} although {plain} plainly fit"
            continue
        assert got in names
        assert not is_auxiliary(got)
        _assert_fits(got, plat)


@pytest.mark.skipif(UNLABELLED is None, reason=MISSING_REASON)
def test_unlabelled_lists_mostly_yield_a_pick() -> None:
    # Guards against a regression that returns None everywhere (which would pass the
    # invariants above): count the releases with a non-empty asset list that get a pick.
    assert UNLABELLED
    non_empty = [e for e in UNLABELLED if e["assets"]]
    picked = sum(
        1
        for e in non_empty
        if pick_asset(e["assets"], Platform("linux", "x86_64"), repo=e["project"])
    )
    assert picked == len(non_empty)


# --------------------------------------------------------------------------------------
# Robustness
# --------------------------------------------------------------------------------------

_SOUP_TEXT = (
    "linux darwin macos osx mac win win32 win64 windows windows7 freebsd64 apple pc unknown "
    "gnu musl msvc x86_64 x86 amd64 x64 aarch64 aarch_64 arm64 arm armv7 i386 386 64bit "
    "32-bit universal_binary intel ppc64le s390x riscv64 v1.2.3 0.1 rc1 static pgo src "
    "tar.gz zip exe tgz gz sha256 sig deb 1 {os} [ ] * ? ü . - _"
)
_SOUP = _SOUP_TEXT.split()


def test_never_crashes_on_random_names() -> None:
    rng = random.Random(20240611)
    for _ in range(400):
        names = [
            rng.choice(["", "app", "x"])
            + "".join(
                rng.choice(["-", "_", ".", ""]) + rng.choice(_SOUP)
                for _ in range(rng.randint(0, 6))
            )
            for _ in range(rng.randint(0, 12))
        ]
        for plat in ALL_PLATFORMS:
            got = pick_asset(names, plat, repo=rng.choice([None, "o/app", "", "/", "a/b/c"]))
            assert got is None or got in names
            assert pick_asset(sorted(names, reverse=True), plat) == pick_asset(names, plat)


@pytest.mark.parametrize(
    "names",
    [
        [],
        [""],
        [".", "-", "_", "...", ".tar.gz", ".exe", "exe"],
        ["a" * 100_000 + "-linux-amd64"],
        ["\x00linux\x00amd64", "linux amd64 ✓.tar.gz", "ЛИНУКС-amd64"],
        ["app-linux-amd64", "app-linux-amd64"],  # duplicates
        ["app-linux-amd64", None, 3],  # not even strings
    ],
)
def test_never_crashes_on_odd_lists(names: list[Any]) -> None:
    for plat in ALL_PLATFORMS:
        got = pick_asset(names, plat)
        assert got is None or got in names
    assert is_auxiliary("") is True


def test_odd_names_still_pick_sensibly() -> None:
    plat = Platform.parse("linux-x86_64")
    assert pick_asset(["linux amd64 ✓.tar.gz"], plat) == "linux amd64 ✓.tar.gz"
    assert pick_asset(["app-linux-amd64", None, 3], plat) == "app-linux-amd64"  # type: ignore[list-item]


# --------------------------------------------------------------------------------------
# Platform
# --------------------------------------------------------------------------------------


def test_all_platforms_order_and_names() -> None:
    assert tuple(str(p) for p in ALL_PLATFORMS) == SIX
    assert len(set(ALL_PLATFORMS)) == 6


@pytest.mark.parametrize("name", SIX)
def test_parse_round_trips(name: str) -> None:
    assert str(Platform.parse(name)) == name
    assert Platform.parse(name) in ALL_PLATFORMS


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("linux-amd64", "linux-x86_64"),
        ("Linux_x86_64", "linux-x86_64"),
        ("linux/amd64", "linux-x86_64"),
        ("linux-x86-64", "linux-x86_64"),
        ("linux-arm64", "linux-aarch64"),
        ("linux/aarch_64", "linux-aarch64"),
        ("x86_64-unknown-linux-gnu", "linux-x86_64"),
        ("aarch64-unknown-linux-musl", "linux-aarch64"),
        ("macos-arm64", "darwin-arm64"),
        ("darwin-aarch64", "darwin-arm64"),
        ("aarch64-apple-darwin", "darwin-arm64"),
        ("osx-x64", "darwin-x86_64"),
        ("mac-intel", "darwin-x86_64"),
        ("macOS 64bit", "darwin-x86_64"),
        ("win-x64", "windows-x86_64"),
        ("win64", "windows-x86_64"),
        ("Windows_AMD64", "windows-x86_64"),
        ("windows-arm64", "windows-aarch64"),
        ("x86_64-pc-windows-msvc", "windows-x86_64"),
        ("  linux-amd64  ", "linux-x86_64"),
    ],
)
def test_parse_aliases(text: str, want: str) -> None:
    assert str(Platform.parse(text)) == want


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("linux", "no CPU"),
        ("amd64", "no OS"),
        ("freebsd-amd64", "OS is not supported"),
        ("linux-i386", "32-bit"),
        ("linux-armv7", "32-bit"),
        ("win32", "32-bit"),
        ("linux-ppc64le", "CPU is not supported"),
        ("darwin-universal", "no CPU"),
        ("linux-darwin-amd64", "several OSes"),
        ("linux-amd64-arm64", "several CPUs"),
        ("linux-amd64-banana", "'banana'"),
    ],
)
def test_parse_rejects_with_a_clear_message(text: str, why: str) -> None:
    with pytest.raises(PlatformError) as info:
        Platform.parse(text)
    message = str(info.value)
    assert why in message
    assert "linux-x86_64" in message  # lists what would have worked
    # Callers may catch either the project's config error or a plain ValueError.
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ConfigError)
    assert info.value.reason == "config"


def test_constructor_normalises_and_validates() -> None:
    assert Platform("darwin", "aarch64") == Platform("darwin", "arm64")
    assert Platform("darwin", "aarch64").arch == "arm64"
    assert Platform("linux", "arm64").arch == "aarch64"
    assert Platform("macos", "amd64") == Platform("darwin", "x86_64")
    assert hash(Platform("win", "x64")) == hash(Platform("windows", "x86_64"))
    with pytest.raises(PlatformError, match="unknown OS 'solaris'"):
        Platform("solaris", "x86_64")
    with pytest.raises(PlatformError, match="unsupported CPU 'i686'"):
        Platform("linux", "i686")


@pytest.mark.parametrize(
    ("sys_platform", "machine", "want"),
    [
        ("linux", "x86_64", "linux-x86_64"),
        ("linux", "aarch64", "linux-aarch64"),
        ("linux", "armv8l", "linux-aarch64"),
        ("darwin", "arm64", "darwin-arm64"),
        ("darwin", "x86_64", "darwin-x86_64"),
        ("win32", "AMD64", "windows-x86_64"),
        ("win32", "ARM64", "windows-aarch64"),
    ],
)
def test_current_maps_python_names(sys_platform: str, machine: str, want: str) -> None:
    assert str(Platform.current(sys_platform=sys_platform, machine=machine)) == want


@pytest.mark.parametrize(
    ("sys_platform", "machine", "why"),
    [
        ("freebsd14", "amd64", "'freebsd14'"),
        ("linux", "i686", "'i686'"),
        ("linux", "armv7l", "'armv7l'"),
        ("linux", "", "'unknown'"),
    ],
)
def test_current_rejects_unsupported_machines(sys_platform: str, machine: str, why: str) -> None:
    with pytest.raises(PlatformError, match=why):
        Platform.current(sys_platform=sys_platform, machine=machine)


def test_current_on_this_machine() -> None:
    import platform as stdlib_platform

    here = Platform.current()
    assert here in ALL_PLATFORMS
    assert here == Platform.current(sys_platform=sys.platform, machine=stdlib_platform.machine())
    if sys.platform.startswith("linux"):
        assert here.os == "linux"


# --------------------------------------------------------------------------------------
# Pattern override
# --------------------------------------------------------------------------------------

SIMPLE = [
    "checksums.txt",
    "simple-server_Darwin_arm64.tar.gz",
    "simple-server_Darwin_x86_64.tar.gz",
    "simple-server_Linux_arm64.tar.gz",
    "simple-server_Linux_i386.tar.gz",
    "simple-server_Linux_x86_64.tar.gz",
    "simple-server_Windows_arm64.zip",
    "simple-server_Windows_x86_64.zip",
]


@pytest.mark.parametrize(
    ("plat", "want"),
    [
        ("linux-x86_64", "simple-server_Linux_x86_64.tar.gz"),
        ("linux-aarch64", "simple-server_Linux_arm64.tar.gz"),
        ("darwin-x86_64", "simple-server_Darwin_x86_64.tar.gz"),
        ("darwin-arm64", "simple-server_Darwin_arm64.tar.gz"),
        # The pattern says .tar.gz and Windows ships .zip: nothing matches, nothing is taken.
        ("windows-x86_64", None),
        ("windows-aarch64", None),
    ],
)
def test_pattern_os_and_arch_aliases(plat: str, want: str | None) -> None:
    got = pick_asset(SIMPLE, Platform.parse(plat), pattern="simple-server_{os}_{arch}.tar.gz")
    assert got == want


def test_pattern_placeholders_are_case_insensitive_too() -> None:
    got = pick_asset(SIMPLE, Platform.parse("linux-amd64"), pattern="SIMPLE-server_{OS}_{Arch}.*")
    assert got == "simple-server_Linux_x86_64.tar.gz"


def test_pattern_version_with_or_without_v() -> None:
    names = [
        "myapp-1.2.2-linux-amd64.tar.gz",
        "myapp-1.2.3-linux-amd64.tar.gz",
        "myapp-1.2.3-linux-amd64.tar.gz.sha256",
        "myapp-1.2.3-linux-arm64.tar.gz",
        "myapp-1.2.3-darwin-amd64.tar.gz",
    ]
    plat = Platform.parse("linux-x86_64")
    pattern = "myapp-{version}-{os}-{arch}*"
    for version in ("1.2.3", "v1.2.3"):
        assert pick_asset(names, plat, pattern=pattern, version=version) == names[1]
    assert pick_asset(names, plat, pattern=pattern, version="1.2.4") is None
    # "1.2.3" must not match "1.2.30" or "1.2.3.1" through the version placeholder.
    assert pick_asset(["myapp-1.2.30-linux-amd64"], plat, pattern=pattern, version="1.2.3") is None
    tagged = ["myapp-v1.2.3-linux-x86_64.zip"]
    assert pick_asset(tagged, plat, pattern=pattern, version="1.2.3") == tagged[0]
    # Without a version the placeholder matches any version text.
    assert pick_asset(names[3:], Platform.parse("linux-arm64"), pattern=pattern) == names[3]


def test_pattern_version_matches_tag_spelling_of_a_normalised_version() -> None:
    # release_model gives "1.0.0rc1" for the tag v1.0.0-rc.1.
    names = ["app-1.0.0-rc.1-linux-x86_64.tar.gz", "app-1.0.0-linux-x86_64.tar.gz"]
    got = pick_asset(
        names, Platform.parse("linux-x86_64"), pattern="app-{version}-{os}-{arch}.tar.gz",
        version="1.0.0rc1",
    )  # fmt: skip
    assert got == names[0]


def test_pattern_still_refuses_contradicting_builds() -> None:
    names = ["app-linux-arm64", "app-linux-386", "app-linux-amd64", "app-freebsd-amd64"]
    assert pick_asset(names, Platform.parse("linux-x86_64"), pattern="app-*") == "app-linux-amd64"
    assert pick_asset(names[:2], Platform.parse("linux-x86_64"), pattern="app-*") is None


def test_pattern_may_name_an_asset_without_platform_words() -> None:
    # A publisher whose names say nothing about the platform can still point at the asset,
    # even one that looks like a source archive to the automatic rules.
    names = ["server-1.4.tar.gz", "server-1.4.tar.gz.sha256"]
    plat = Platform.parse("linux-x86_64")
    assert pick_asset(names, plat) is None
    assert pick_asset(names, plat, pattern="server-{version}.tar.gz", version="1.4") == names[0]


def test_pattern_glob_syntax() -> None:
    names = ["tool_linux_amd64.tgz", "tool_linux_amd64.zip", "tool[1]_linux_amd64.zip"]
    plat = Platform.parse("linux-x86_64")
    assert pick_asset(names, plat, pattern="tool_{os}_{arch}.[!t]*") == "tool_linux_amd64.zip"
    assert pick_asset(names, plat, pattern="tool_{os}_{arch}.?gz") == "tool_linux_amd64.tgz"
    assert pick_asset(names, plat, pattern="tool[[]1]_*") == "tool[1]_linux_amd64.zip"


def test_glob_translation_agrees_with_fnmatch() -> None:
    # The pattern's glob parts are translated by hand (placeholders need regex
    # alternation); check the translation against fnmatch itself on random globs.
    rng = random.Random(7)
    for _ in range(5000):
        glob = "".join(rng.choice("ab[]!^-*?\\&~|.") for _ in range(rng.randint(0, 6)))
        text = "".join(rng.choice("ab[]!^-\\&~|.") for _ in range(rng.randint(0, 4)))
        mine = re.fullmatch(glob_to_regex(glob), text, re.DOTALL) is not None
        assert mine == fnmatch.fnmatchcase(text, glob), (glob, text)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("app-{platform}.zip", "unknown placeholder {platform}"),
        ("app-{os.zip", "unbalanced brace"),
        ("app-os}.zip", "unbalanced brace"),
    ],
)
def test_bad_pattern_is_a_config_error(pattern: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        pick_asset(SIMPLE, Platform.parse("linux-x86_64"), pattern=pattern)
    assert why in str(info.value)
    assert pattern in str(info.value)


# --------------------------------------------------------------------------------------
# is_auxiliary
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "checksums.txt",
        "croc_v10.2.4_checksums.txt",
        "SHA2-256SUMS",
        "SHA2-512SUMS.sig",
        "SHA256SUMS",
        "sha256.txt.minisig",
        "sha256.sum",
        "micro-2.0.14-linux64.tar.gz.sha",
        "tv-0.14.5-x86_64-apple-darwin.sha256",
        "checksums.txt.pem",
        "freeze_0.2.2_Linux_x86_64.tar.gz.sbom.json",
        "MODULE.bazel.intoto.jsonl",
        "app.tar.gz.asc",
        "duf_0.9.1_linux_amd64.deb",
        "freeze-0.2.2-1.x86_64.rpm",
        "freeze_0.2.2_x86_64.apk",
        "gitui-win.msi",
        "App-1.0.dmg",
        "App-1.0.pkg",
        "yazi-amd64.snap",
        "dug.0.0.94.nupkg",
        "App-x86_64.AppImage",
        "App-Setup-1.2.exe",
        "uv-installer.sh",
        "uv-installer.ps1",
        "witr.1",
        "tool.8.gz",
        "croc_v10.2.4_src.tar.gz",
        "source.tar.gz",
        "protobuf-33.1.tar.gz",
        "protobuf-33.1.zip",
        "freeze-0.2.2.tar.gz",
        "minisign-0.12.tar.gz",
        "_update_spec",
        "dist-manifest.json",
        "app-linux-amd64.pkg.tar.zst",
        "app_1.0_windows_amd64.pdb",
    ],
)
def test_is_auxiliary_true(name: str) -> None:
    assert is_auxiliary(name)


@pytest.mark.parametrize(
    "name",
    [
        "buf-Linux-x86_64",
        "buf-Windows-arm64.exe",
        "yt-dlp.exe",
        "yt-dlp_macos",
        "dug.exe",
        "dug.0.0.94.linux-x64.tar.gz",
        "tmux.linux-amd64.stripped.gz",
        "serve_1.9.8_linux_amd64.gz",
        "minisign-0.12-linux.tar.gz",
        "micro-2.0.14-osx.tgz",
        "protoc-33.1-win64.zip",
        "tool-v1.2.1",  # a version at the end is not a man page section
        "setup-envtest-linux-amd64",  # a tool named setup-*, not an installer
        "gitui-win.tar.gz",
        "cyclonedx-linux-musl-x64",
    ],
)
def test_is_auxiliary_false(name: str) -> None:
    assert not is_auxiliary(name)


@pytest.mark.skipif(CASES is None, reason=MISSING_REASON)
def test_no_labelled_answer_is_auxiliary() -> None:
    assert CASES
    for case in CASES:
        answers = {v for v in case["expected"].values() if v}
        for extra in case.get("also_acceptable", {}).values():
            answers.update(extra)
        for name in answers:
            assert not is_auxiliary(name), (case["project"], name)
