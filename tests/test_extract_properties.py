"""Property: no archive, however hostile, gets extract() to touch anything outside its folder.

hypothesis builds archives byte by byte, as an attacker would, of every kind extract()
accepts (``.tar`` ``.tar.gz`` ``.tgz`` ``.tar.xz`` ``.tar.bz2`` ``.zip``, a single ``.gz``
``.xz`` ``.bz2`` and a bare program), with members tarfile and zipfile would not write on
their own: absolute names (some aimed at the watched tree around the folder), ``..``
segments, backslashes, drive letters, NUL, empty and ``.`` names, overlong names and paths,
duplicates, a file and a link or a folder of the same name, names differing only in case or
in Unicode form, symlinks and hard links pointing inside, outside, at folders, at other links
(chains, loops) and files written through them afterwards, devices, FIFOs, PAX and GNU
long-name headers and unknown tar types, zip entries whose Unix mode says "symlink" or
"device", sizes and CRCs that lie, a few flipped bytes. Three mixes (see cases()): plain
members with "gadgets" (links that stay inside on paper but climb out through another link,
and the like), one or two hostile members among plain ones so that they are reached, and
anything at all. Around the destination sits a sentinel tree (the previous version beside
it, a folder and files above) that a successful attack would change. tarfile's ``data``
filter is removed in two examples out of three, so that this module's own checks are tested,
as on a Python without the filter.

For every example (what the updater relies on when it unpacks a download):
1. extract() raises ExtractionError or returns; nothing else escapes;
2. nothing outside the destination is created, changed or deleted (names, types, contents,
   link targets, modes, inodes, link counts and times of the whole tree around it);
3. after a refusal the destination is empty (and still the same folder);
4. after success everything in it is a regular file, a folder, or a symlink whose real path
   stays inside it; no special file, no setuid/setgid bit, no regular file sharing its inode
   or holding a sentinel file's bytes (copied from outside); at most ``max_files`` files and
   links and ``max_total_bytes`` bytes;
5. it ends in bounded time (TIME_LIMIT; SIGALRM stops a hang).

test_each_gadget_alone plays every gadget on its own, every run; the regressions at the end
are what the property found. ``TRAYUPDATER_EXTRACT_EXAMPLES=N`` runs N random examples
instead of the derandomized ones.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import io
import lzma
import os
import signal
import stat
import tarfile
import tempfile
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import event, given, reject
from hypothesis import strategies as st
from property_settings import property_settings

from trayupdater.errors import ExtractionError
from trayupdater.extract import extract, find_executable

TIME_LIMIT = 30.0  # seconds for one extraction of an archive of a few kB
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX symlinks, modes and devices")

# Placeholders, replaced by absolute paths once the example's folder exists.
ABS, DEST, OUT = "<ABS>", "<DEST>", "<OUT>"
# In every file of the watched tree: found in the destination, it was copied from outside.
MARKER = b"sentinel-7f3a9c"
# Absolute paths outside the watched tree that some names aim at (checked to stay absent).
FIXED_ABSOLUTE = ("/evil-abs", "/tmp/trayupdater-evil-abs")

# Names from a small pool collide often: duplicates, a file then a folder or a link of the
# same name, links then entries written through them.
PLAIN = ["a", "b", "d", "l", "m", "a/x", "d/a", "d/l", "l/x", "m/x", "d/l/x", "A", "L"]
SEGMENTS = [
    *("a", "b", "d", "l", "m", "A", "x"),
    *("..", "..", ".", "", "...", ". ", ".. "),
    *("\u00e9", "e\u0301", "\u212a", "K", "k", "\ufb01", "fi", "a:b", "con", "evil."),
    *("x" * 255, "y" * 256, "\udcff"),
]
HOSTILE_NAMES = [
    *("", ".", "./", "/", "//", "./.", "..", "../", "./..", "./../evil", ".../evil"),
    *("../evil", "../../evil", "../../../evil", "../../outside/evil", "../1.0.0/server"),
    *("a/../../evil", "a/../b", "a/b/../../../evil", "l/../../evil", "d/l/../evil"),
    *("..\\evil", "a\\..\\..\\evil", "..\\..\\outside\\evil", "\\evil", "\\\\srv\\share\\evil"),
    *(f"{ABS}/evil", f"{ABS}/secret.txt", f"{OUT}/evil", f"{DEST}/../evil", f"{DEST}/x"),
    *FIXED_ABSOLUTE,
    *("C:evil", "C:\\evil", "c:/evil", "C:", "C:..\\evil", "\\\\?\\C:\\evil", "a:$DATA"),
    *("a\x00../../evil", "\x00", "a\x00", "evil\x00.txt"),
    *("x" * 255, "x" * 256, "d/" * 40 + "f", ("a" * 200 + "/") * 22 + "f"),
    *("\u00e9", "e\u0301", "\u212a", "K", "\ufb01", "fi", "A", "a", "TOOL", "tool"),
    *("con", "NUL", "evil.", "evil ", "l/evil", "d/l/evil", "m/../x"),
]
# Targets that stay inside when every name in them is a folder, but not when one is a link
# to a folder higher up ("d/l" -> "..", then "m" -> "d/l/..").
SUBTLE_TARGETS = [
    *(".", "..", "../..", "a", "b", "d", "l", "m", "x", "A", "d/l", "d/a", "l/x", "../l"),
    *("l/..", "m/..", "d/l/..", "d/l/../..", "d/..", "l/l/..", "../d/l/..", "./l/.."),
    *("d/l/a", "m/a/..", "l/../a", "d/l/l/.."),
    "n" * 256,  # a name too long to exist: stat() of the link fails with ENAMETOOLONG
]
# Sequences that only work together, to be mixed with other members: links that stay inside
# lexically but climb out through another link ("d/l" -> ".." is the folder itself), files
# written through links, hard links through or to links, loops, one name twice, a refusal
# with a link to a name too long to exist in the folder.
GADGETS: list[list[tuple[str, str, str]]] = [
    [("dir", "d", ""), ("sym", "d/l", ".."), ("sym", "m", "d/l/..")],
    [("sym", "d/l", ".."), ("sym", "m", "d/l/../.."), ("file", "m/evil", "")],
    [("sym", "d/l", ".."), ("sym", "m", "d/l/../1.0.0/server"), ("file", "m", "")],
    [("sym", "d/l", ".."), ("sym", "m", "d/l/../../outside/keep.txt"), ("hard", "h", "m")],
    [("sym", "a", "."), ("sym", "b", "a/.."), ("file", "b/evil", "")],
    [("sym", "a", "."), ("sym", "b", "a/../1.0.0"), ("file", "b/evil", "")],
    [("sym", "a", "."), ("sym", "b", "a/a/a/../../.."), ("dir", "b/evil", "")],
    [("sym", "d/e/l", "../.."), ("sym", "m", "d/e/l/../outside")],
    [("dir", "d", ""), ("sym", "l", "d"), ("file", "l/x", "")],
    [("sym", "l", "d"), ("dir", "d", ""), ("file", "l/x", "")],
    [("file", "d/f", ""), ("sym", "l", "d"), ("hard", "h", "l/f")],
    [("dir", "d", ""), ("hard", "h", "../1.0.0/server")],
    [("dir", "d", ""), ("hard", "h", "d/../../../outside/keep.txt")],
    [("sym", "a", "b"), ("sym", "b", "a")],
    [("sym", "a", "b/.."), ("sym", "b", "a/..")],
    [("sym", "a", "a/..")],
    [("file", "x", ""), ("sym", "x", "d")],
    [("sym", "x", "d"), ("file", "x", "")],
    [("dir", "x", ""), ("file", "x", "")],
    [("file", "x", ""), ("dir", "x", "")],
    [("sym", "x", "d"), ("dir", "x", "")],
    [("dir", "d", ""), ("sym", "x", "d"), ("dir", "x/y", "")],
    [("sym", "l", "n" * 256), ("sym", "m", "..")],  # refused with a link stat() cannot follow
]
HOSTILE_TARGETS = [
    *(".", "./", "..", "../", "../..", "../../outside", "../../outside/keep.txt"),
    *("../../../", "../1.0.0", "../1.0.0/server", "../" * 50, "a/" * 60 + "../" * 61),
    *(ABS, f"{ABS}/secret.txt", DEST, f"{DEST}/a", OUT, "/etc", "/etc/passwd"),
    *("a", "b", "d", "l", "m", "x", "d/l", "d/a", "l/x", "A", "L", "l/l/l"),
    *("l/..", "m/..", "d/l/..", "d/..", "d/../..", "a/../..", "b/../..", "a/b/../../.."),
    *("", "\x00", "a\x00", "a\x00/../../..", "C:\\", "C:..", "c:/x", "\\..\\..", "..\\.."),
    *("..\\..\\outside", "d\\..\\..", "x" * 300, "y/" * 2100, "\u00e9", "e\u0301"),
]

TAR_SUFFIXES = [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".TGZ"]
TAR_FORMATS = [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]
TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "afile": tarfile.AREGTYPE,
    "cont": tarfile.CONTTYPE,
    "dir": tarfile.DIRTYPE,
    "sym": tarfile.SYMTYPE,
    "hard": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    # Headers whose data is read as metadata, and a type nobody knows.
    "pax": tarfile.XHDTYPE,
    "globalpax": tarfile.XGLTYPE,
    "solarispax": tarfile.SOLARIS_XHDTYPE,
    "longname": tarfile.GNUTYPE_LONGNAME,
    "longlink": tarfile.GNUTYPE_LONGLINK,
    "sparse": tarfile.GNUTYPE_SPARSE,
    "unknown": b"Z",
}
TAR_DATA_KINDS = ("file", "afile", "cont", "pax", "globalpax", "solarispax", "longname")
TAR_DATA_KINDS += ("longlink", "sparse", "unknown")
TAR_KINDS = ["file", "file", "dir", "sym", "sym", "sym", "hard", "hard", *TAR_TYPES]
SUBTLE_TAR_KINDS = ["file", "file", "dir", "dir", "sym", "sym", "sym", "sym", "hard"]
# zip: (create_system, file type in the Unix mode) a kind stands for.
ZIP_KINDS = {
    "file": (3, stat.S_IFREG),
    "dosfile": (0, 0),
    "dir": (3, stat.S_IFDIR),
    "dirslash": (0, 0),
    "sym": (3, stat.S_IFLNK),
    "dossym": (0, stat.S_IFLNK),  # symlink bits from a non-Unix system: a plain file
    "fifo": (3, stat.S_IFIFO),
    "chr": (3, stat.S_IFCHR),
    "blk": (3, stat.S_IFBLK),
    "sock": (3, stat.S_IFSOCK),
    "nobits": (3, 0),
}
ZIP_KIND_PICKS = ["file", "file", "dir", "sym", "sym", "sym", *ZIP_KINDS]
SUBTLE_ZIP_KINDS = ["file", "file", "dir", "dirslash", "sym", "sym", "sym", "sym"]
ZIP_METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


@dataclasses.dataclass
class Member:
    kind: str
    name: str
    target: str = ""  # symlink or hard link target (tar, zip symlinks)
    data: bytes = b""
    mode: int = 0o644
    size_lie: int = 0  # declared size minus the real one
    crc_lie: bool = False  # zip: a wrong CRC-32
    fmt: int = tarfile.GNU_FORMAT  # tar header format
    raw_pax: bool = False  # tar: name and target verbatim in a PAX header
    method: int = zipfile.ZIP_STORED


@dataclasses.dataclass
class Case:
    kind: str  # tar, zip, single, bare
    mode: str  # subtle, hostile, chaos (see cases())
    asset_name: str
    members: list[Member]
    max_files: int
    max_total_bytes: int
    data_filter: bool
    tail: str = "end"  # tar: how the stream ends (end, none, cut)
    flips: list[tuple[float, int]] = dataclasses.field(default_factory=list)


def names(*, plain: bool = True) -> st.SearchStrategy[str]:
    """Names from PLAIN half the time (unless not ``plain``), else hostile ones."""
    composed = st.builds(
        lambda prefix, segments, sep, suffix: prefix + sep.join(segments) + suffix,
        st.sampled_from(["", "", "", "/", "./", "../", f"{ABS}/", "C:", "C:\\", "\\\\s\\h\\"]),
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5),
        st.sampled_from(["/", "/", "\\", "//"]),
        st.sampled_from(["", "", "", "/", "/.", "\\"]),
    )
    hostile = st.one_of(st.sampled_from(HOSTILE_NAMES), composed)
    return st.one_of(st.sampled_from(PLAIN), hostile) if plain else hostile


def targets() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_TARGETS), st.sampled_from(PLAIN), names())


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode("utf-8", "surrogateescape")
    length = len(body)
    while length != len(body) + len(str(length)):
        length = len(body) + len(str(length))
    return str(length).encode() + body


# Data a PAX, GNU long name or sparse header would read as metadata.
METADATA = [
    pax_record("path", "../../outside/evil"),
    pax_record("path", "/evil-abs"),
    pax_record("path", "a\x00../../evil"),
    pax_record("path", "l/evil") + pax_record("linkpath", "../.."),
    pax_record("linkpath", "../../outside"),
    pax_record("size", "99999999999"),
    pax_record("size", "-1"),
    pax_record("GNU.sparse.map", "0,1,x"),
    pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.realsize", "9999999"),
    pax_record("hdrcharset", "BINARY") + pax_record("path", "\udcff"),
    b"99999 path=x\n",
    b"../../outside/evil\0",
    b"l/evil\0",
]
payloads = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(METADATA),
    st.sampled_from([b"", b"#!/bin/sh\necho pwned\n"]),
    st.builds(bytes, st.sampled_from([511, 512, 513, 5000, 70_000])),
)
modes = st.sampled_from([0o644, 0o755, 0o000, 0o777, 0o4755, 0o2755, 0o1777, 0o7777, 0o200])
size_lies = st.one_of(st.just(0), st.just(0), st.sampled_from([0, -1, 1, -512, 512, 10**6, 2**40]))
# tarfile reads a metadata header's data whole: what matters there is a size too big to read.
header_sizes = st.sampled_from([0, 1, 10**6, 2**40, 2**62])
METADATA_KINDS = ("pax", "globalpax", "solarispax", "longname", "longlink")


@st.composite
def members(
    draw: st.DrawFn, kinds: list[str], *, subtle: bool = False, plain: bool = True
) -> Member:
    """One member; ``subtle``: plain names and targets that stay inside lexically, no lies
    (these get past the name checks, so links resolving out are left to the final check)."""
    kind = draw(st.sampled_from(kinds))
    linked = kind in ("sym", "hard", "dossym")
    if subtle:
        return Member(
            kind=kind,
            name=draw(st.sampled_from(PLAIN)),
            target=draw(st.sampled_from(PLAIN if kind == "hard" else SUBTLE_TARGETS))
            if linked
            else "",
            data=draw(payloads),
            mode=draw(modes),
            fmt=draw(st.sampled_from(TAR_FORMATS)),
        )
    return Member(
        kind=kind,
        name=draw(names(plain=plain)),
        target=draw(targets()) if linked else "",
        data=draw(payloads),
        mode=draw(modes),
        size_lie=draw(header_sizes if kind in METADATA_KINDS else size_lies),
        crc_lie=draw(st.integers(0, 19)) == 0,
        fmt=draw(st.sampled_from(TAR_FORMATS)),
        raw_pax=draw(st.integers(0, 4)) == 0,
        method=draw(st.sampled_from(ZIP_METHODS)),
    )


def weave(draw: st.DrawFn, first: list[Member], second: list[Member]) -> list[Member]:
    """Both lists merged in a drawn order, each one's own order kept."""
    first, second, woven = list(first), list(second), []
    while first or second:
        source = first if first and (not second or draw(st.booleans())) else second
        woven.append(source.pop(0))
    return woven


@st.composite
def subtle_members(draw: st.DrawFn, kinds: list[str], gadgets: int) -> list[Member]:
    """Up to ``gadgets`` gadgets (at least one if asked for two or more), other members woven in
    (none of the gadgets' names: a duplicate would stop the gadget before it plays)."""
    pool = [g for g in GADGETS if all(k in kinds for k, _, _ in g)]
    gadget = [
        Member(kind=kind, name=name, target=target, data=b"evil\n", mode=0o755)
        for chosen in draw(st.lists(st.sampled_from(pool), min_size=gadgets // 2, max_size=gadgets))
        for kind, name, target in chosen
    ]
    used = {m.name for m in gadget}
    extra: list[Member] = []
    for m in draw(st.lists(members(kinds, subtle=True), max_size=4)):
        if m.name not in used:
            extra.append(m)
            used.add(m.name)
    return weave(draw, gadget, extra)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """``subtle``: plain members and gadgets; ``hostile``: one or two hostile members among
    plain ones, so that they are reached; ``chaos``: anything goes, bytes flipped too."""
    kind = draw(st.sampled_from(["tar"] * 4 + ["zip"] * 4 + ["single", "bare"]))
    mode = draw(st.sampled_from(["subtle", "subtle", "hostile", "hostile", "chaos"]))
    if kind in ("tar", "zip"):
        asset = "evil" + draw(st.sampled_from(TAR_SUFFIXES if kind == "tar" else [".zip", ".ZIP"]))
        plain = SUBTLE_TAR_KINDS if kind == "tar" else SUBTLE_ZIP_KINDS
        every = TAR_KINDS if kind == "tar" else ZIP_KIND_PICKS
        if mode == "subtle":
            found = draw(subtle_members(plain, gadgets=draw(st.sampled_from([0, 1, 1, 2]))))
        elif mode == "hostile":
            hostile = draw(st.lists(members(every, plain=False), min_size=1, max_size=2))
            found = weave(draw, draw(subtle_members(plain, gadgets=0)), hostile)
        else:
            found = draw(st.lists(members(every), max_size=8))
    else:  # the asset's own name, from the release, is the file's name
        suffix = draw(st.sampled_from([".gz", ".xz", ".bz2"])) if kind == "single" else ""
        asset = draw(names()) + suffix
        found = [draw(members(["file"]))]
    flips = []
    if mode == "chaos" and draw(st.booleans()):
        flips = draw(
            st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=4)
        )
    tight = mode == "chaos" or draw(st.integers(0, 4)) == 0
    return Case(
        kind=kind,
        mode=mode,
        asset_name=asset,
        members=found,
        max_files=draw(st.sampled_from([10_000, 1, 2, 3, 5] if tight else [10_000])),
        max_total_bytes=draw(
            st.sampled_from([2 * 1024**3, 0, 10, 600, 6000, 100_000] if tight else [2 * 1024**3])
        ),
        data_filter=draw(st.integers(0, 2)) == 0,  # it stops most tar attacks before us
        tail=draw(st.sampled_from(["end", "none", "cut"])) if mode == "chaos" else "end",
        flips=flips,
    )


# --- building the archive bytes --------------------------------------------------------------


def _fill(text: str, where: dict[str, str]) -> str:
    for placeholder, path in where.items():
        text = text.replace(placeholder, path)
    return text


def _flip(data: bytes, flips: list[tuple[float, int]]) -> bytes:
    if not data or not flips:
        return data
    out = bytearray(data)
    for fraction, value in flips:
        out[min(int(fraction * len(out)), len(out) - 1)] = value
    return bytes(out)


def _tar_bytes(case: Case, where: dict[str, str]) -> bytes:
    raw = b""
    for m in case.members:
        info = tarfile.TarInfo()
        info.name = _fill(m.name, where)
        info.type = TAR_TYPES[m.kind]
        info.linkname = _fill(m.target, where)
        info.mode, info.mtime = m.mode, 1_700_000_000
        carries_data = m.kind in TAR_DATA_KINDS
        data = m.data if carries_data else b""
        info.size = max(0, len(data) + m.size_lie) if carries_data else 0
        fmt = m.fmt
        if m.raw_pax:
            fmt = tarfile.PAX_FORMAT
            info.pax_headers = {"path": info.name, "linkpath": info.linkname}
        try:
            header = info.tobuf(fmt, "utf-8", "surrogateescape")
        except ValueError:  # USTAR cannot carry this name: what GNU tar would write
            header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        raw += header + data + b"\0" * (-len(data) % 512)
    raw = _flip(raw + b"\0" * 1024 if case.tail == "end" else raw, case.flips)
    if case.tail == "cut":
        raw = raw[: len(raw) * 2 // 3]
    lowered = case.asset_name.lower()
    if lowered.endswith((".gz", ".tgz")):
        return gzip.compress(raw, mtime=0)
    if lowered.endswith(".xz"):
        return lzma.compress(raw)
    if lowered.endswith(".bz2"):
        return bz2.compress(raw)
    return raw


def _zip_bytes(case: Case, where: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    raw_names: list[bytes] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": the point
        with zipfile.ZipFile(buf, "w") as zf:
            for m in case.members:
                name = _fill(m.name, where)
                # Surrogates have no UTF-8 form; NUL is written below (ZipInfo cuts it off).
                name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                encoded = name.encode("ascii" if name.isascii() else "utf-8")
                system, ftype = ZIP_KINDS[m.kind]
                if m.kind == "dirslash":
                    name += "/"
                    encoded += b"/"
                info = zipfile.ZipInfo(name.replace("\x00", "\x01"), (2025, 1, 1, 0, 0, 0))
                info.create_system = system
                dos = 0x10 if m.kind in ("dir", "dirslash") else 0x20
                info.external_attr = ((ftype | (m.mode & 0o7777)) << 16 if ftype else 0) | dos
                info.compress_type = m.method
                data = m.data
                if m.kind in ("sym", "dossym"):
                    data = _fill(m.target, where).encode("utf-8", "surrogateescape")
                zf.writestr(info, data)
                raw_names.append(encoded)
    return _zip_patch(buf.getvalue(), case.members, raw_names)


def _zip_patch(data: bytes, found: list[Member], raw_names: list[bytes]) -> bytes:
    """Lying sizes and CRCs, and names with NUL, in both the central and the local headers."""
    out = bytearray(data)
    central = int.from_bytes(out[-6:-2], "little")
    for m, name in zip(found, raw_names, strict=True):
        assert out[central : central + 4] == b"PK\x01\x02"
        n, extra, comment = (
            int.from_bytes(out[central + o : central + o + 2], "little") for o in (28, 30, 32)
        )
        local = int.from_bytes(out[central + 42 : central + 46], "little")
        for header, size_at, name_at in ((central, 20, 46), (local, 18, 30)):
            if len(name) == n:
                out[header + name_at : header + name_at + n] = name
            if m.size_lie:
                for at in (size_at, size_at + 4):  # compressed, uncompressed
                    old = int.from_bytes(out[header + at : header + at + 4], "little")
                    new = min(max(0, old + m.size_lie), 0xFFFFFFFE)
                    out[header + at : header + at + 4] = new.to_bytes(4, "little")
            if m.crc_lie:
                out[header + size_at - 4] ^= 0x5A
        central += 46 + n + extra + comment
    return bytes(out)


def _single_bytes(case: Case) -> bytes:
    data = case.members[0].data
    lowered = case.asset_name.lower()
    if case.kind == "single" and case.members[0].size_lie == 0:
        if lowered.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        elif lowered.endswith(".xz"):
            data = lzma.compress(data)
        else:
            data = bz2.compress(data)
    return _flip(data, case.flips)  # a lying single file is not compressed at all


def archive_bytes(case: Case, where: dict[str, str]) -> bytes:
    if case.kind == "tar":
        return _tar_bytes(case, where)
    if case.kind == "zip":
        return _flip(_zip_bytes(case, where), case.flips)
    return _single_bytes(case)


# --- the watched tree ------------------------------------------------------------------------


@dataclasses.dataclass
class Site:
    root: Path  # the example's temporary folder; everything in it is watched
    dest: Path
    archive: Path

    @property
    def where(self) -> dict[str, str]:
        return {ABS: str(self.root), DEST: str(self.dest), OUT: str(self.root / "store/outside")}


@contextlib.contextmanager
def site() -> Iterator[Site]:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        (root / "secret.txt").write_bytes(MARKER + b" secret\n")
        outside = root / "store" / "outside"
        (outside / "sub").mkdir(parents=True)
        (outside / "keep.txt").write_bytes(MARKER + b" keep\n")
        (outside / "sub" / "deep.txt").write_bytes(MARKER + b" deep\n")
        previous = root / "store" / "versions" / "1.0.0"
        previous.mkdir(parents=True)
        (previous / "server").write_bytes(b"\x7fELF " + MARKER + b" previous version\n")
        (previous / "server").chmod(0o755)
        (root / "store" / "state.json").write_bytes(MARKER + b' {"current": "1.0.0"}\n')
        if os.name == "posix":
            os.symlink("../../secret.txt", outside / "link")
            os.symlink("1.0.0", root / "store" / "versions" / "current")
        # Deep enough that "../../x" still lands in the watched tree.
        dest = root / "store" / "versions" / "1.0.1.tmp"
        dest.mkdir()
        yield Site(root, dest, root / "download.bin")


def snapshot(root: Path, dest: Path) -> dict[str, tuple]:
    """Everything under ``root`` except what is inside ``dest``, links not followed."""
    seen: dict[str, tuple] = {}

    def visit(path: Path) -> None:
        st_ = os.lstat(path)
        rel = path.relative_to(root).as_posix()
        if path == dest:  # only that it is still the same, real folder
            seen[rel] = (stat.S_IFMT(st_.st_mode), st_.st_mode, st_.st_ino)
            return
        entry: tuple = (st_.st_mode, st_.st_ino, st_.st_nlink, st_.st_mtime_ns, st_.st_ctime_ns)
        if stat.S_ISLNK(st_.st_mode):
            entry += (os.readlink(path),)
        elif stat.S_ISREG(st_.st_mode):
            entry += (path.read_bytes(),)
        seen[rel] = entry
        if stat.S_ISDIR(st_.st_mode):
            for name in sorted(os.listdir(path)):
                visit(path / name)

    visit(root)
    return seen


def _diff(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    lines = [f"created {k}" for k in sorted(after.keys() - before.keys())]
    lines += [f"deleted {k}" for k in sorted(before.keys() - after.keys())]
    lines += [
        f"changed {k}: {before[k]!r} -> {after[k]!r}"
        for k in sorted(before.keys() & after.keys())
        if before[k] != after[k]
    ]
    return lines


def _inside(path: str, root: str) -> bool:
    path = os.path.normpath(path)  # realpath leaves a loop's rest unresolved ("l/..")
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_extracted(dest: Path, max_files: int, max_total_bytes: int) -> None:
    root = os.path.realpath(dest)
    files = size = 0
    for here, dirs, names_ in os.walk(dest):  # does not follow links to folders
        for name in dirs + names_:
            path = os.path.join(here, name)
            st_ = os.lstat(path)
            shown = os.path.relpath(path, dest)
            if stat.S_ISDIR(st_.st_mode):
                assert not st_.st_mode & (stat.S_ISUID | stat.S_ISGID), shown
                continue
            files += 1
            if stat.S_ISLNK(st_.st_mode):
                real = os.path.realpath(path)
                assert _inside(real, root), f"link {shown} -> {os.readlink(path)} is {real}"
                continue
            assert stat.S_ISREG(st_.st_mode), f"{shown} is a special file ({st_.st_mode:o})"
            assert not st_.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{shown} is setuid/gid"
            assert st_.st_nlink == 1, f"{shown} shares its inode ({st_.st_nlink} links)"
            with open(path, "rb") as data:
                assert MARKER not in data.read(), f"{shown} was copied from outside"
            size += st_.st_size
    assert files <= max_files, f"{files} files and links, limit {max_files}"
    assert size <= max_total_bytes, f"{size} bytes, limit {max_total_bytes}"


class Hung(BaseException):
    """extract() ran past TIME_LIMIT (a BaseException: no except clause in there eats it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def hung(_signum: int, _frame: object) -> None:
        raise Hung(f"extraction still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(case: Case) -> str:
    """Extract ``case`` in a fresh watched tree, assert the invariants; the outcome."""
    with site() as where, pytest.MonkeyPatch.context() as patch:
        if not case.data_filter:
            patch.delattr(tarfile, "data_filter", raising=False)
        try:
            data = archive_bytes(case, where.where)
        except (ValueError, UnicodeError, OverflowError):
            reject()  # a member even tarfile/zipfile cannot write; rare
        where.archive.write_bytes(data)
        before = snapshot(where.root, where.dest)
        outcome = "extracted"
        with time_limit(TIME_LIMIT):
            try:
                extract(
                    where.archive,
                    where.dest,
                    asset_name=case.asset_name,
                    max_total_bytes=case.max_total_bytes,
                    max_files=case.max_files,
                )
            except ExtractionError:
                outcome = "refused"
        changes = _diff(before, snapshot(where.root, where.dest))
        assert not changes, "outside the destination:\n" + "\n".join(changes)
        for path in FIXED_ABSOLUTE:
            assert not os.path.lexists(path), f"{path} was created"
        if outcome == "refused":
            assert list(where.dest.iterdir()) == [], "not emptied after a refusal"
        else:
            check_extracted(where.dest, case.max_files, case.max_total_bytes)
        return outcome


@posix_only
@property_settings("TRAYUPDATER_EXTRACT_EXAMPLES", 600)
@given(cases())
def test_hostile_archive_never_reaches_outside_the_folder(case: Case) -> None:
    outcome = run_case(case)
    links = any(m.kind in ("sym", "hard") for m in case.members)
    event(f"{case.kind} {case.mode} {outcome}{' with links' if links else ''}")


def _shown(member: tuple[str, str, str]) -> str:
    kind, name, target = member
    target = target if len(target) < 20 else f"{target[:3]}...({len(target)})"
    return f"{kind}:{name}" + (f"->{target}" if target else "")


@posix_only
@pytest.mark.parametrize("data_filter", [False, True], ids=["own-checks", "data-filter"])
@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize("gadget", GADGETS, ids=lambda g: " ".join(map(_shown, g)))
def test_each_gadget_alone(gadget: list[tuple[str, str, str]], kind: str, data_filter: bool):
    """The gadgets on their own, every time: the property mixes them with other members and
    meets each one only now and then."""
    if kind == "zip" and any(k == "hard" for k, _, _ in gadget):
        pytest.skip("zip has no hard links")
    found = [Member(kind=k, name=n, target=t, data=b"evil\n", mode=0o755) for k, n, t in gadget]
    run_case(Case(kind, "subtle", f"evil.{kind}", found, 10_000, 2 * 1024**3, data_filter))


# --- regressions found by the property ---------------------------------------------------------


def _tar_with_header(header: bytes, size: int, data: bytes = b"") -> bytes:
    """A metadata header (PAX or GNU long name) declaring ``size`` bytes, then one file."""
    info = tarfile.TarInfo("x")
    info.type, info.size = header, size
    tool = tarfile.TarInfo("tool")
    tool.size = 4
    raw = info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)
    return raw + tool.tobuf(tarfile.GNU_FORMAT) + b"tool".ljust(512, b"\0") + bytes(1024)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
@pytest.mark.parametrize("header", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_a_header_declaring_a_huge_size_is_an_extraction_error(tmp_path, suffix, header):
    """tarfile reads a PAX or GNU long-name header's data in one read() of the size it
    declares: 1 TiB was a MemoryError, which escaped extract() instead of a refusal."""
    raw = _tar_with_header(header, 2**40)
    archive = tmp_path / f"a{suffix}"
    archive.write_bytes(gzip.compress(raw) if suffix == ".tar.gz" else raw)
    dest = tmp_path / "dest"
    with pytest.raises(ExtractionError):
        extract(archive, dest, asset_name=f"tool{suffix}")
    assert list(dest.iterdir()) == []


def test_a_compressed_header_is_not_read_into_memory(tmp_path):
    """64 kB of .tar.gz whose GNU long-name header holds 64 MiB of zeros: tarfile read them
    in one piece, whatever max_total_bytes said (a bomb in memory rather than on disk)."""
    size = 64 * 1024 * 1024
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(
        gzip.compress(_tar_with_header(tarfile.GNUTYPE_LONGNAME, size, bytes(size)))
    )
    dest = tmp_path / "dest"
    tracemalloc.start()
    try:
        with pytest.raises(ExtractionError):
            extract(archive, dest, asset_name="tool.tar.gz", max_total_bytes=1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024
    assert list(dest.iterdir()) == []


def _zip_with_link(target: str, then: str) -> bytes:
    """A zip: symlink ``link`` -> ``target``, then a regular file named ``then``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, kind in (("link", target, stat.S_IFLNK), (then, b"prog", stat.S_IFREG)):
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (kind | 0o755) << 16
            zf.writestr(info, data)
    return buf.getvalue()


@posix_only
def test_refusal_after_a_link_to_an_overlong_name_still_empties_the_folder(tmp_path):
    """Emptying the folder asked is_dir() of a link, which stats its target: a 300-character
    name made that an OSError (ENAMETOOLONG) out of extract(), the link left behind."""
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_with_link("x" * 300, "../evil"))
    dest = tmp_path / "dest"
    with pytest.raises(ExtractionError, match="climbs out"):
        extract(archive, dest, asset_name="tool.zip")
    assert list(dest.iterdir()) == []


@posix_only
def test_find_executable_skips_a_link_to_an_overlong_name(tmp_path):
    """Path.is_file() raised ENAMETOOLONG on that link (after a successful extract); an
    exe_name path naming it is no file, so the only file there is the program."""
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_with_link("x" * 300, "tool"))
    extract(archive, tmp_path / "dest", asset_name="tool.zip")
    found = find_executable(tmp_path / "dest", exe_name=None, repo_name="tool", os_name="linux")
    assert found == tmp_path / "dest" / "tool"
    named = find_executable(tmp_path / "dest", exe_name="./link", repo_name="x", os_name="linux")
    assert named == found


def _chained_links(n: int) -> list[tuple[str, str]]:
    """``L{i} -> L{i+1}/../L{i+1}/../.../L{i+1}`` (4 KB), the last to a file ``f``."""
    links = []
    for i in range(n):
        unit = f"L{i + 1}/../"
        links.append((f"L{i}", unit * (4000 // len(unit)) + f"L{i + 1}" if i < n - 1 else "f"))
    return links


@posix_only
@pytest.mark.parametrize("suffix", [".zip", ".tar"])
def test_links_through_links_are_checked_in_about_linear_time(tmp_path, suffix):
    """os.path.realpath per link walked every link after it again: 120 such links (a 500 kB
    archive) took half a minute to check, 200 a minute, and the update waited meanwhile.
    Resolved once each (real_paths), they take well under a second; a chain nested past
    what the kernel follows is refused, one taken from its end passes."""
    archive = tmp_path / f"tool{suffix}"
    links = _chained_links(120)
    if suffix == ".zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("f", b"prog")
            for name, target in links:
                info = zipfile.ZipInfo(name)
                info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o755) << 16
                zf.writestr(info, target)
        archive.write_bytes(buf.getvalue())
    else:  # from the end of the chain, so that it resolves within the kernel's nesting
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
            info = tarfile.TarInfo("f")
            info.size = 4
            tf.addfile(info, io.BytesIO(b"prog"))
            for name, target in reversed(links):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
    started = time.monotonic()
    if suffix == ".zip":
        with pytest.raises(ExtractionError, match="nest more than 40 deep"):
            extract(archive, tmp_path / "dest", asset_name=archive.name)
    else:
        extract(archive, tmp_path / "dest", asset_name=archive.name)
        dest = tmp_path / "dest"
        assert os.path.realpath(dest / "L0") == str((dest / "f").resolve())
    assert time.monotonic() - started < 10.0  # minutes before; about 0.3 s now
