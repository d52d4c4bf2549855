"""RealPaths gives os.path.realpath's answers, resolving each link once (POSIX).

hypothesis builds folders of files, sub-folders and symbolic links whose targets mix names,
``..``, ``.``, absolute paths and links to links (chains, loops, links out and back in), and
asks both resolvers for every entry and for made-up paths through them. They must agree,
except where RealPaths refuses a loop or a nesting too deep, which is checked apart.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trayupdater.real_paths import MAX_NESTING, RealPaths, TangledLinks

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX resolution")

NAMES = ["a", "b", "c", "L1", "L2", "L3"]
part = st.sampled_from([*NAMES, "..", ".", "", "missing"])
relative_target = st.lists(part, min_size=1, max_size=6).map("/".join).filter(bool)
entry = st.tuples(
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(tuple),  # where
    st.sampled_from(["dir", "file", "link", "link", "abs-link"]),
    relative_target,
)


def _build(root: Path, entries: list[tuple[tuple[str, ...], str, str]], outside: Path) -> None:
    for parts, kind, target in entries:
        path = root.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(path):
                continue
            if kind == "dir":
                path.mkdir()
            elif kind == "file":
                path.write_bytes(b"x")
            elif kind == "link":
                os.symlink(target, path)
            else:  # out of the folder, and maybe back in through it
                os.symlink(str(outside / target), path)
        except OSError:  # a parent is a file or a dangling link: skip that entry
            continue


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    entries=st.lists(entry, max_size=14),
    probes=st.lists(relative_target, max_size=6),
)
def test_real_paths_agree_with_os_path_realpath(entries, probes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, outside = base / "root", base / "outside"
        root.mkdir()
        (outside / "a").mkdir(parents=True)
        os.symlink(str(root), outside / "back")  # out of the folder and back into it
        _build(root, entries, outside)
        paths = [Path(here) / name for here, dirs, files in os.walk(root) for name in dirs + files]
        paths += [root / probe.replace("..", "up").lstrip("/") for probe in probes]  # made up
        real = RealPaths(root)
        for path in [root, *paths]:
            try:
                ours = real.of(path)
            except TangledLinks:
                continue  # a loop or deep nesting: see the tests below
            assert ours == os.path.realpath(path), path


def test_a_path_outside_the_folder_is_refused(tmp_path) -> None:
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError):
        RealPaths(tmp_path / "root").of(tmp_path / "elsewhere")


def test_inside_sees_a_link_that_climbs_out_through_another_link(tmp_path) -> None:
    """``a/up -> ..`` (the root), then ``out -> a/up/..``: lexically ``a``, inside; really
    the root's parent."""
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    os.symlink("..", root / "a" / "up")
    os.symlink("a/up/..", root / "out")
    os.symlink("a/up/a", root / "in")
    real = RealPaths(root)
    assert real.inside(root / "in")
    assert real.inside(root / "a" / "up")
    assert not real.inside(root / "out")
    assert real.of(root / "out") == os.path.realpath(root / "out") == str(tmp_path.resolve())


def test_a_loop_is_tangled(tmp_path) -> None:
    os.symlink("two", tmp_path / "one")
    os.symlink("one", tmp_path / "two")
    with pytest.raises(TangledLinks, match="loop"):
        RealPaths(tmp_path).of(tmp_path / "one")


def test_links_nested_deeper_than_the_kernel_follows_are_tangled(tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    for i in range(MAX_NESTING + 1):
        os.symlink(f"L{i + 1}" if i < MAX_NESTING else "f", tmp_path / f"L{i}")
    with pytest.raises(TangledLinks, match="nest"):
        RealPaths(tmp_path).of(tmp_path / "L0")
    # Resolved in order from the end, each link is one step deeper than one already known.
    real = RealPaths(tmp_path)
    for i in reversed(range(MAX_NESTING + 1)):
        assert real.of(tmp_path / f"L{i}") == str(tmp_path.resolve() / "f")


def test_each_link_is_resolved_once(tmp_path) -> None:
    """n links, each target passing through the next one a hundred times: os.path.realpath
    walks the rest of the chain again for each (n^2 x 100 steps); RealPaths about n x 100."""
    n = 40
    (tmp_path / "f").write_bytes(b"x")
    for i in range(n):
        nxt = f"L{i + 1}" if i < n - 1 else "f"
        os.symlink("/".join([nxt, ".."] * 100 + [nxt]), tmp_path / f"L{i}")
    real = RealPaths(tmp_path, max_steps=n * 250)  # refuses if it walked links again
    for i in reversed(range(n)):
        assert real.inside(tmp_path / f"L{i}")
    with pytest.raises(TangledLinks, match="too many steps"):
        RealPaths(tmp_path, max_steps=1000).of(tmp_path / "L0")
