"""Safe extraction of real archives built here (good and malicious), and finding the program."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from trayupdater.errors import ExtractionError
from trayupdater.extract import archive_kind, extract, find_executable

PROGRAM = b"\x7fELF fake program\n" * 100
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and symlinks")

# An entry: (kind, name, payload, mode). kind: file, dir, sym, hard, fifo, chr.
Entry = tuple[str, str, "bytes | str", int]


def file(name: str, data: bytes = b"data\n", mode: int = 0o644) -> Entry:
    return ("file", name, data, mode)


def make_tar(path: Path, entries: list[Entry], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for kind, name, payload, perm in entries:
            info = tarfile.TarInfo(name)
            info.mode = perm
            info.mtime = int(time.time())
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chr": tarfile.CHRTYPE,
            }[kind]
            if kind in ("sym", "hard"):
                info.linkname = str(payload)
            tar.addfile(info)
    return path


def make_zip(path: Path, entries: list[Entry], *, unix: bool = True) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for kind, name, payload, perm in entries:
            info = zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            if kind == "sym":
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, str(payload))
            elif kind == "dir":
                info.filename = name.rstrip("/") + "/"
                info.external_attr = ((stat.S_IFDIR | 0o755) << 16 | 0x10) if unix else 0x10
                zf.writestr(info, b"")
            else:
                # A Windows tool writes DOS attributes only (0x20: "archive").
                info.create_system = 3 if unix else 0
                info.external_attr = ((stat.S_IFREG | perm) << 16) if unix else 0x20
                zf.writestr(info, payload)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    # Deep enough that "../../x" would still land inside tmp_path, where we can see it.
    folder = tmp_path / "store" / "versions" / "1.0.0.tmp"
    folder.mkdir(parents=True)
    (tmp_path / "store" / "outside").mkdir()  # what "../../outside" links would reach
    return folder


def escaped(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if "evil" in p.name and "archive" not in str(p)]


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --- good archives -------------------------------------------------------------------------


@posix_only
def test_goreleaser_tarball_keeps_exec_bits_and_finds_repo_named_program(tmp_path, dest):
    archive = make_tar(
        tmp_path / "archive.tar.gz",
        [
            file("simple-server", PROGRAM, 0o755),
            file("README.md"),
            file("LICENSE", mode=0o4644 | 0o022),
        ],
    )
    extract(archive, dest, asset_name="simple-server_Linux_x86_64.tar.gz")
    assert tree(dest) == ["LICENSE", "README.md", "simple-server"]
    assert stat.S_IMODE((dest / "simple-server").stat().st_mode) == 0o755
    # setuid and group/other write are dropped.
    assert stat.S_IMODE((dest / "LICENSE").stat().st_mode) == 0o644
    found = find_executable(dest, exe_name=None, repo_name="simple-server", os_name="linux")
    assert found == dest / "simple-server" and found.read_bytes() == PROGRAM


@pytest.mark.parametrize(
    ("suffix", "mode"),
    [
        (".tar.gz", "w:gz"),
        (".tgz", "w:gz"),
        (".tar.xz", "w:xz"),
        (".tar.bz2", "w:bz2"),
        (".tar", "w"),
    ],
)
def test_tar_compressions_and_nested_version_folder(tmp_path, dest, suffix, mode):
    archive = make_tar(
        tmp_path / f"archive{suffix}",
        [
            ("dir", "./tool-1.2.0", b"", 0o755),
            file("./tool-1.2.0/README"),
            file("./tool-1.2.0/bin/Tool", PROGRAM, 0o755),
        ],
        mode,
    )
    extract(archive, dest, asset_name=f"tool-1.2.0-linux-amd64{suffix}")
    assert tree(dest) == [
        "tool-1.2.0",
        "tool-1.2.0/README",
        "tool-1.2.0/bin",
        "tool-1.2.0/bin/Tool",
    ]
    assert find_executable(dest, exe_name=None, repo_name="tool", os_name="linux") == (
        dest / "tool-1.2.0" / "bin" / "Tool"
    )


def test_windows_zip_without_unix_modes(tmp_path, dest):
    archive = make_zip(
        tmp_path / "archive.zip",
        [file("Simple-Server.EXE", PROGRAM), file("README.md"), ("dir", "docs", b"", 0)],
        unix=False,
    )
    extract(archive, dest, asset_name="simple-server_Windows_x86_64.zip")
    assert tree(dest) == ["README.md", "Simple-Server.EXE", "docs"]
    found = find_executable(dest, exe_name=None, repo_name="simple-server", os_name="windows")
    assert found == dest / "Simple-Server.EXE"


@posix_only
def test_zip_exec_bits_are_kept_and_find_sets_them_when_missing(tmp_path, dest):
    make_zip(tmp_path / "a.zip", [file("tool", PROGRAM, 0o755), file("notes.txt")])
    extract(tmp_path / "a.zip", dest, asset_name="tool_linux.zip")
    assert (dest / "tool").stat().st_mode & 0o111 == 0o111
    assert (dest / "notes.txt").stat().st_mode & 0o111 == 0

    other = dest.parent / "other"
    make_zip(tmp_path / "b.zip", [file("tool", PROGRAM), file("notes.txt")], unix=False)
    extract(tmp_path / "b.zip", other, asset_name="tool_linux.zip")
    assert (other / "tool").stat().st_mode & 0o111 == 0
    found = find_executable(other, exe_name=None, repo_name="tool", os_name="linux")
    assert found.stat().st_mode & 0o111 == 0o111


@pytest.mark.parametrize(
    ("suffix", "compress"), [(".gz", gzip.compress), (".xz", lzma.compress), (".bz2", bz2.compress)]
)
def test_single_compressed_file_is_unpacked_without_its_suffix(tmp_path, dest, suffix, compress):
    asset = f"serve_1.9.8_linux_amd64{suffix}"
    (tmp_path / asset).write_bytes(compress(PROGRAM))
    extract(tmp_path / asset, dest, asset_name=asset)
    assert tree(dest) == ["serve_1.9.8_linux_amd64"]
    found = find_executable(dest, exe_name=None, repo_name="serve", os_name="linux")
    assert found.read_bytes() == PROGRAM
    if os.name == "posix":
        assert found.stat().st_mode & 0o111 == 0o111


def test_bare_binary_keeps_its_name_and_is_found(tmp_path, dest):
    (tmp_path / "download").write_bytes(PROGRAM)
    extract(tmp_path / "download", dest, asset_name="simple-server_Linux_x86_64")
    assert tree(dest) == ["simple-server_Linux_x86_64"]
    found = find_executable(dest, exe_name=None, repo_name="simple-server", os_name="linux")
    assert found == dest / "simple-server_Linux_x86_64"
    # Even a configured exe_name that the bare file does not carry finds the only file.
    assert find_executable(dest, exe_name="tw", repo_name="tabiew", os_name="linux") == found


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.tar.gz", "tar"),
        ("a.TGZ", "tar"),
        ("a.zip", "zip"),
        ("serve_linux.gz", "single"),
        ("buf-Linux-x86_64", "bare"),
        ("mkcert-v1.4.4-windows-amd64.exe", "bare"),
        ("witr.1", "bare"),
    ],
)
def test_archive_kind(name, kind):
    assert archive_kind(name) == kind


@pytest.mark.parametrize(
    "name", ["duf_0.9.1_linux_amd64.deb", "yazi-amd64.snap", "a.tar.zst", "x.7z"]
)
def test_packages_and_unsupported_formats_are_refused(tmp_path, dest, name):
    (tmp_path / name).write_bytes(b"whatever")
    with pytest.raises(ExtractionError, match="not an archive or program"):
        extract(tmp_path / name, dest, asset_name=name)


@posix_only
def test_symlink_and_hardlink_inside_the_folder_are_fine(tmp_path, dest):
    archive = make_tar(
        tmp_path / "archive.tar.gz",
        [
            file("pkg/lib/real", PROGRAM, 0o755),
            ("sym", "pkg/bin/tool", "../lib/real", 0o777),
            ("hard", "pkg/copy", "pkg/lib/real", 0o755),
        ],
    )
    extract(archive, dest, asset_name="pkg.tar.gz")
    assert (dest / "pkg/bin/tool").is_symlink()
    assert (dest / "pkg/bin/tool").read_bytes() == PROGRAM
    assert (dest / "pkg/copy").read_bytes() == PROGRAM
    assert find_executable(dest, exe_name="tool", repo_name="pkg", os_name="linux") == (
        dest / "pkg/bin/tool"
    )


# --- malicious archives ------------------------------------------------------------------


# case -> (entries, what the refusal must say when only this module's own checks run)
MALICIOUS_TAR: dict[str, tuple[list[Entry], str]] = {
    "dotdot": ([file("ok"), file("../../evil")], "climbs out"),
    "dotdot-inner": ([file("a/../../../evil")], "climbs out"),
    "absolute": ([file("/tmp/evil-abs")], "absolute path"),
    "backslash": ([file("..\\..\\evil")], "climbs out"),
    "drive": ([file("C:\\evil")], "absolute path"),
    "symlink-out": ([("sym", "evil-link", "../../outside", 0o777)], "points outside"),
    "symlink-absolute": ([("sym", "evil-link", "/etc", 0o777)], "points to an absolute path"),
    "symlink-out-then-write": (
        [("sym", "evil-link", "../../outside", 0o777), file("evil-link/evil")],
        "points outside",
    ),
    "symlink-then-write-through": (
        [("dir", "real", b"", 0o755), ("sym", "inner", "real", 0o777), file("inner/evil")],
        "written through link inner",
    ),
    "symlink-chain-escape": (
        [("sym", "b", "a/..", 0o777), ("sym", "a", ".", 0o777)],
        "link b resolves outside",
    ),
    "hardlink-out": ([("hard", "evil-hard", "../../etc/passwd", 0o644)], "points outside"),
    "hardlink-absolute": ([("hard", "evil-hard", "/etc/passwd", 0o644)], "points outside"),
    "hardlink-to-nothing-yet": (
        [("hard", "evil-hard", "later", 0o644), file("later")],
        "not to a file unpacked before it",
    ),
    "fifo": ([("fifo", "evil-fifo", b"", 0o644)], "special file"),
    "device": ([("chr", "evil-dev", b"", 0o644)], "special file"),
    "duplicate": ([file("tool", b"good"), file("tool", b"evil")], "duplicate entry tool"),
    "file-then-dir": ([file("x"), file("x/evil")], "below a file"),
}


@pytest.mark.parametrize("data_filter", ["with-data-filter", "own-checks-only"])
@pytest.mark.parametrize("case", sorted(MALICIOUS_TAR))
def test_malicious_tar_is_refused_and_leaves_nothing(
    tmp_path, dest, case, data_filter, monkeypatch
):
    if os.name != "posix" and "sym" in case:
        pytest.skip("symlinks need privileges on Windows")
    if data_filter == "own-checks-only":
        # As on a Python 3.10/3.11 without the tarfile filter backport.
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile.data_filter")
    entries, reason = MALICIOUS_TAR[case]
    archive = make_tar(tmp_path / "archive.tar.gz", entries)
    with pytest.raises(ExtractionError, match="refused") as info:
        extract(archive, dest, asset_name="evil.tar.gz")
    if data_filter == "own-checks-only":
        assert reason in str(info.value)
    assert info.value.reason == "extraction"
    assert list(dest.iterdir()) == []  # emptied, still there for the caller to remove
    assert escaped(tmp_path) == []
    assert not Path("/tmp/evil-abs").exists()


def test_malicious_zip_names_are_refused(tmp_path, dest):
    for name in ["../evil", "/evil", "..\\evil", "C:/evil", "sub/../../evil"]:
        archive = make_zip(tmp_path / "archive.zip", [file("fine"), file(name)])
        with pytest.raises(ExtractionError, match="refused"):
            extract(archive, dest, asset_name="evil.zip")
        assert list(dest.iterdir()) == []
    assert escaped(tmp_path) == []


@posix_only
@pytest.mark.parametrize("target", ["../../outside", "/etc"])
def test_zip_symlink_out_is_refused(tmp_path, dest, target):
    archive = make_zip(tmp_path / "archive.zip", [("sym", "evil-link", target, 0o777)])
    with pytest.raises(ExtractionError, match="points"):
        extract(archive, dest, asset_name="evil.zip")
    assert list(dest.iterdir()) == []


def test_zip_bomb_is_stopped_on_bytes_actually_written(tmp_path, dest):
    archive = make_zip(tmp_path / "archive.zip", [file("zeros", bytes(50 * 1024 * 1024))])
    assert archive.stat().st_size < 1024 * 1024  # small on disk, 50 MiB unpacked
    started = time.monotonic()
    with pytest.raises(ExtractionError, match=r"more than 10485760 bytes"):
        extract(archive, dest, asset_name="bomb.zip", max_total_bytes=10 * 1024 * 1024)
    assert time.monotonic() - started < 10
    assert list(dest.iterdir()) == []


def test_byte_limit_counts_across_entries(tmp_path, dest):
    entries = [file(f"part{i}", bytes(1024 * 1024)) for i in range(12)]
    archive = make_tar(tmp_path / "archive.tar.gz", entries)
    with pytest.raises(ExtractionError, match="bomb"):
        extract(archive, dest, asset_name="many.tar.gz", max_total_bytes=10 * 1024 * 1024)
    assert list(dest.iterdir()) == []


def test_single_gz_bomb_is_stopped(tmp_path, dest):
    (tmp_path / "x.gz").write_bytes(gzip.compress(bytes(20 * 1024 * 1024)))
    with pytest.raises(ExtractionError, match="bomb"):
        extract(tmp_path / "x.gz", dest, asset_name="tool.gz", max_total_bytes=1024 * 1024)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("builder", ["tar", "zip"])
def test_too_many_entries(tmp_path, dest, builder):
    entries = [file(f"f{i}") for i in range(30)]
    if builder == "tar":
        archive = make_tar(tmp_path / "a.tar.gz", entries)
    else:
        archive = make_zip(tmp_path / "a.zip", entries)
    with pytest.raises(ExtractionError, match="more than 10"):
        extract(archive, dest, asset_name=archive.name, max_files=10)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("name", ["broken.tar.gz", "broken.zip", "broken.gz", "broken.tar.xz"])
def test_damaged_archives_are_extraction_errors(tmp_path, dest, name):
    good = make_tar(tmp_path / "good.tar.gz", [file("tool", PROGRAM * 50, 0o755)])
    data = good.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ExtractionError, match=name):
        extract(tmp_path / name, dest, asset_name=name)
    assert list(dest.iterdir()) == []


PAX_SPARSE_GARBAGE = {
    "sparse map": {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.map": "x,y"},
    "sparse size": {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "z"},
}


@pytest.mark.parametrize("case", sorted(PAX_SPARSE_GARBAGE))
def test_a_pax_header_tarfile_chokes_on_is_an_extraction_error(tmp_path, dest, case):
    """tarfile raises a bare ValueError on these; it used to end the check as an
    "internal error" instead of one sentence about the archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("tool")
        info.size, info.mode = len(PROGRAM), 0o755
        info.pax_headers = {**PAX_SPARSE_GARBAGE[case], "GNU.sparse.name": "tool"}
        tar.addfile(info, io.BytesIO(PROGRAM))
    archive = tmp_path / "tool_linux_amd64.tar"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(ExtractionError, match="damaged or unreadable"):
        extract(archive, dest, asset_name=archive.name)
    assert list(dest.iterdir()) == []


def test_a_zip_entry_without_a_name_is_an_extraction_error(tmp_path, dest):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tool", PROGRAM)
        zf.writestr("Q", b"x")
    data = bytearray(buf.getvalue())
    # Give the second entry an empty name in the central directory (zipfile reads that one).
    central = data.rfind(b"PK\x01\x02")
    assert data[central + 46 : central + 47] == b"Q"
    data[central + 28 : central + 30] = b"\x00\x00"  # file name length 0
    del data[central + 46]
    end = data.rfind(b"PK\x05\x06")
    size = int.from_bytes(data[end + 12 : end + 16], "little") - 1
    data[end + 12 : end + 16] = size.to_bytes(4, "little")
    archive = tmp_path / "tool_windows_amd64.zip"
    archive.write_bytes(bytes(data))
    assert [i.filename for i in zipfile.ZipFile(archive).infolist()] == ["tool", ""]
    with pytest.raises(ExtractionError, match="an entry has no name"):
        extract(archive, dest, asset_name=archive.name)
    assert list(dest.iterdir()) == []


def test_destination_must_be_empty(tmp_path, dest):
    (dest / "leftover").write_text("x")
    (tmp_path / "bin").write_bytes(PROGRAM)
    with pytest.raises(ValueError, match="empty"):
        extract(tmp_path / "bin", dest, asset_name="tool")


# --- find_executable ---------------------------------------------------------------------


def populate(folder: Path, files: dict[str, int]) -> None:
    for name, mode in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PROGRAM)
        path.chmod(mode)


def test_configured_exe_name_beats_repo_name(dest):
    populate(dest, {"tabiew": 0o755, "tw": 0o755, "README.md": 0o644})
    assert find_executable(dest, exe_name="tw", repo_name="tabiew", os_name="linux") == dest / "tw"


def test_configured_exe_name_as_a_path(dest):
    populate(dest, {"linux/tool": 0o755, "darwin/tool": 0o755})
    assert find_executable(dest, exe_name="linux/tool", repo_name="x", os_name="linux") == (
        dest / "linux" / "tool"
    )


def test_configured_exe_name_missing_lists_what_was_found(dest):
    populate(dest, {"a": 0o755, "docs/b.md": 0o644})
    with pytest.raises(ExtractionError) as info:
        find_executable(dest, exe_name="tool", repo_name="tool", os_name="linux")
    assert "'tool'" in str(info.value) and "a, docs/b.md" in str(info.value)


@posix_only
def test_single_executable_when_no_name_matches(dest):
    # television ships "tv", not "television".
    populate(
        dest, {"tv-0.14.5/tv": 0o755, "tv-0.14.5/README.md": 0o644, "tv-0.14.5/LICENSE": 0o644}
    )
    assert find_executable(dest, exe_name=None, repo_name="television", os_name="linux") == (
        dest / "tv-0.14.5" / "tv"
    )


def test_single_exe_on_windows(dest):
    populate(dest, {"tv.exe": 0o644, "README.md": 0o644})
    assert find_executable(dest, exe_name=None, repo_name="television", os_name="windows") == (
        dest / "tv.exe"
    )


@posix_only
def test_two_candidates_are_an_error_listing_them(dest):
    populate(dest, {"kubectx": 0o755, "kubens": 0o755, "LICENSE": 0o644})
    with pytest.raises(ExtractionError) as info:
        find_executable(dest, exe_name=None, repo_name="kubectx-tools", os_name="linux")
    assert "kubectx, kubens, LICENSE" in str(info.value)


def test_same_name_at_the_same_depth_is_ambiguous(dest):
    populate(dest, {"linux/tool": 0o755, "darwin/tool": 0o755})
    with pytest.raises(ExtractionError, match="several files are named 'tool'"):
        find_executable(dest, exe_name=None, repo_name="tool", os_name="linux")


def test_shallowest_match_wins(dest):
    populate(dest, {"tool": 0o755, "vendor/sub/tool": 0o755})
    assert find_executable(dest, exe_name=None, repo_name="TOOL", os_name="linux") == dest / "tool"


def test_empty_folder(dest):
    with pytest.raises(ExtractionError, match="no files"):
        find_executable(dest, exe_name=None, repo_name="tool", os_name="linux")
