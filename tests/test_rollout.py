"""Phased rollout and recall: what the publisher signs (the real ``repo`` CLI, read back by the
real client through a real static server) and what an installation decides from it (install
id, bucket, schedule, recall bookkeeping), hostile values included."""

from __future__ import annotations

import json
import multiprocessing
import random
import stat
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version
from static_server import StaticServer
from tuf.api.metadata import Metadata
from tuf_support import Publisher, pipeline, tuf_config, tuf_source

from trayupdater.release_model import Release, Rollout
from trayupdater.rollout import (
    ID_FILE,
    HeldBack,
    bucket,
    choose,
    install_id,
    note_recalls,
    takes,
)
from trayupdater.sources.tuf_targets import index_targets
from trayupdater.store import State
from trayupdater.tuf_format import TargetFormatError, parse_rollout
from trayupdater.tuf_rollout import RolloutRequest, set_rollout

DAY = 24 * 3600.0


def newest_targets(publisher: Publisher) -> dict[str, dict[str, object]]:
    files = sorted(
        publisher.metadata.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0])
    )
    targets = Metadata.from_file(str(files[-1])).signed.targets
    return {path: info.custom["trayupdater"] for path, info in targets.items()}


def checked(server: StaticServer, publisher: Publisher, cache: Path) -> dict[str, Release]:
    """The releases the real client sees, by version (signatures and all checked)."""
    source = tuf_source(server.url, publisher, cache)
    return {r.version_text: r for r in source.check().releases}


# --- the publisher ------------------------------------------------------------------------------


def test_rollout_and_recall_are_signed_and_the_client_reads_them_back(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    publisher.add("1.1.0", "--percent", "25")
    seen = checked(server, publisher, tmp_path / "c")
    assert seen["1.0.0"].rollout is None and not seen["1.0.0"].recalled
    assert seen["1.1.0"].rollout == Rollout((25.0,))

    publisher.repo("rollout", str(publisher.dir), "--version", "1.1.0", "--percent", "0")
    assert checked(server, publisher, tmp_path / "c")["1.1.0"].rollout == Rollout((0.0,))

    publisher.repo("recall", str(publisher.dir), "--version", "1.1.0")
    seen = checked(server, publisher, tmp_path / "c")
    assert seen["1.1.0"].recalled and not seen["1.0.0"].recalled
    publisher.repo("recall", str(publisher.dir), "--version", "v1.1.0", "--undo")
    assert not checked(server, publisher, tmp_path / "c")["1.1.0"].recalled
    assert "recalled" not in next(iter(newest_targets(publisher).values()))


def test_a_schedule_counts_from_the_publish_time(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    publisher.add("1.1.0", "--schedule", "1,5,25,100", "--every", "24h")
    custom = newest_targets(publisher)[f"1.1.0/{publisher.archive('1.1.0').name}"]
    assert custom["rollout"] == {
        "schedule": [1, 5, 25, 100],
        "every": 86400,
        "start": custom["published"],
    }
    rollout = checked(server, publisher, tmp_path / "c")["1.1.0"].rollout
    assert rollout is not None
    start = datetime.strptime(str(custom["published"]), "%Y-%m-%dT%H:%M:%SZ")
    start_s = start.replace(tzinfo=timezone.utc).timestamp()
    got = [rollout.percent_at(start_s + days * DAY) for days in (-1, 0, 0.9, 1, 2.5, 3, 40)]
    assert got == [1, 1, 1, 5, 25, 100, 100]
    assert rollout.next_change(start_s + 1.5 * DAY) == (start_s + 2 * DAY, 25)

    # The client's clock decides where in the schedule it is: 2.5 days on, a quarter.
    outside = id_with(lambda b: b >= 25, "1.1.0")
    inside = id_with(lambda b: 5 <= b < 25, "1.1.0")
    for name, ident in (("out", outside), ("in", inside)):
        (tmp_path / name).mkdir()
        (tmp_path / name / ID_FILE).write_text(ident + "\n")
    out = pipeline(tuf_config(server.url, publisher, tmp_path / "out"))
    into = pipeline(tuf_config(server.url, publisher, tmp_path / "in"))
    for p in (out, into):
        p.clock = lambda: start_s + 2.5 * DAY
    held = out.plan(State(active="1.0.0")).held
    assert held is not None and held.percent == 25
    day = datetime.fromtimestamp(start_s + 3 * DAY, timezone.utc).strftime("%Y-%m-%d %H:%M")
    assert held.notice == f"1.1.0 is rolling out: 25 % of machines so far (100 % from {day} UTC)"
    assert into.plan(State(active="1.0.0")).release.version_text == "1.1.0"
    into.clock = lambda: start_s + 1.5 * DAY  # a day earlier it was at 5 %: not yet
    assert into.plan(State(active="1.0.0")).release.version_text == "1.0.0"


def test_a_schedule_set_later_can_start_now(tmp_path: Path, publisher: Publisher) -> None:
    publisher.add("1.1.0")
    five_days_on = publisher.library(days_ago=-5)
    outcome = set_rollout(five_days_on, "1.1.0", RolloutRequest((10, 50, 100), DAY, from_now=True))
    assert "10 % now" in outcome.lines[0] and "(was: every installation)" in outcome.lines[0]
    assert outcome.warnings  # fewer machines than before: the ones that took it keep it
    (custom,) = newest_targets(publisher).values()
    rollout = parse_rollout(custom["rollout"])
    assert rollout.start > datetime.now(timezone.utc).timestamp() + 4 * DAY
    assert publisher.library().verify() == []


def test_rollout_and_recall_refuse_what_is_not_published_or_not_a_rollout(
    tmp_path: Path, publisher: Publisher
) -> None:
    from trayupdater.cli import main

    publisher.add("1.0.0")
    before = sorted(p.name for p in publisher.metadata.iterdir())
    for args in (
        ["rollout", str(publisher.dir), "--version", "2.0.0", "--percent", "5"],
        ["recall", str(publisher.dir), "--version", "2.0.0"],
        ["rollout", str(publisher.dir), "--version", "../x", "--percent", "5"],
    ):
        assert main(["repo", *args]) == 1
    for args in (
        ["--percent", "101"],
        ["--percent", "-1"],
        ["--percent", "nan"],
        ["--percent", "12.5"],  # was a SerializationError traceback: canonical JSON has no floats
        ["--schedule", "1,2.5,100", "--every", "1h"],
        ["--schedule", "50,10", "--every", "1h"],
        ["--schedule", "1,5"],
        ["--percent", "5", "--every", "1h"],
    ):
        with pytest.raises(SystemExit):
            main(["repo", "rollout", str(publisher.dir), "--version", "1.0.0", *args])
    assert sorted(p.name for p in publisher.metadata.iterdir()) == before  # nothing written
    # The same rollout again publishes nothing new.
    publisher.repo("rollout", str(publisher.dir), "--version", "1.0.0", "--percent", "30")
    after = sorted(p.name for p in publisher.metadata.iterdir())
    publisher.repo("rollout", str(publisher.dir), "--version", "1.0.0", "--percent", "30")
    assert sorted(p.name for p in publisher.metadata.iterdir()) == after


# --- hostile rollout fields ----------------------------------------------------------------------

FAR_FUTURE = {"schedule": [0, 100], "every": 366 * DAY, "start": "9999-12-31T00:00:00Z"}


@pytest.mark.parametrize(
    "value",
    [
        "25",
        {"percent": True},
        {"percent": float("nan")},
        {"percent": float("inf")},
        {"percent": -0.5},
        {"percent": 100.5},
        {},
        {"schedule": [1, 5], "every": 0, "start": "2025-01-01T00:00:00Z"},
        {"schedule": [5, 1], "every": 60, "start": "2025-01-01T00:00:00Z"},
        {"schedule": [1, 5], "every": 60, "start": "yesterday"},
        {"schedule": [1, 5], "every": 60},
        {"schedule": list(range(100)), "every": 60, "start": "2025-01-01T00:00:00Z"},
        {"schedule": "1,5", "every": 60, "start": "2025-01-01T00:00:00Z"},
        {"schedule": [1, 5], "every": 10**12, "start": "2025-01-01T00:00:00Z"},
        # Dates no client can show (past year 9999), or that end past the sane bound.
        {"schedule": [0, 100], "every": 366 * DAY, "start": "9999-12-31T00:00:00Z"},
        {"schedule": [1, 5, 100], "every": 366 * DAY, "start": "8999-06-01T00:00:00Z"},
        # Valid JSON integers too large for a float (they raised OverflowError).
        {"percent": 10**400},
        {"percent": -(10**400)},
        {"schedule": [1, 10**400], "every": 60, "start": "2025-01-01T00:00:00Z"},
        {"schedule": [1, 5], "every": 10**400, "start": "2025-01-01T00:00:00Z"},
        {"schedule": [1, 5], "every": -(10**400), "start": "2025-01-01T00:00:00Z"},
    ],
)
def test_a_rollout_that_cannot_be_read_is_refused(value: object) -> None:
    with pytest.raises(TargetFormatError):
        parse_rollout(value)


def test_a_signed_rollout_with_a_huge_integer_skips_that_version_only(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    """Another tool (or a hand) signed ``"percent": 1000…0`` (400 digits): the client skips
    that version and reports it, and the publisher's commands go on working around it."""
    from trayupdater.cli import main

    publisher.add("1.0.0")
    publisher.add("1.1.0")
    publisher.library().edit_version(
        Version("1.1.0"), lambda ours: ours.__setitem__("rollout", {"percent": 10**400})
    )
    source = tuf_source(server.url, publisher, tmp_path / "cache")
    result = source.check()
    assert [r.version_text for r in result.releases] == ["1.0.0"]
    assert result.skipped_tags == ["1.1.0"]
    publisher.add("1.2.0")
    refused = ["repo", "rollout", str(publisher.dir), "--version", "1.1.0", "--percent", "5"]
    assert main(refused) == 1  # not published in a form it can read: said, not a crash
    assert sorted(checked(server, publisher, tmp_path / "c2")) == ["1.0.0", "1.2.0"]


def test_a_version_whose_rollout_or_recall_is_garbled_is_not_offered() -> None:
    """Signed, but not what the format says: the version is skipped (an installation never
    takes a version on a rollout it cannot read), and reported."""
    from tuf.api.metadata import TargetFile

    def target(version: str, name: str, **ours: object) -> TargetFile:
        info = TargetFile(10, {"sha256": "ab" * 32}, f"{version}/{name}")
        info.unrecognized_fields["custom"] = {"trayupdater": {"version": version, **ours}}
        return info

    index = index_targets(
        [
            target("1.0.0", "a.tar.gz"),
            target("1.1.0", "a.tar.gz", rollout={"percent": "all"}),
            target("1.2.0", "a.tar.gz", recalled="yes"),
            target("1.3.0", "a.tar.gz", rollout={"percent": 5}),
            target("1.3.0", "b.tar.gz", rollout={"percent": 50}),  # disagrees
            target("1.4.0", "a.tar.gz", recalled=True),
            target("1.4.0", "b.tar.gz"),  # one says recalled: recalled
            target("1.5.0", "a.tar.gz", rollout=FAR_FUTURE),
        ],
        "http://127.0.0.1/targets/",
    )
    assert sorted(index.releases) == [Version("1.0.0"), Version("1.4.0")]
    assert index.releases[Version("1.4.0")].recalled
    assert set(index.skipped) == {"1.1.0", "1.2.0", "1.3.0", "1.5.0"}
    assert index.newest(include_prereleases=False).version_text == "1.0.0"  # not the recalled


# --- the install id and the bucket --------------------------------------------------------------


def test_the_install_id_is_drawn_once_kept_private_and_a_damaged_one_is_redrawn(
    tmp_path: Path,
) -> None:
    first = install_id(tmp_path / "data")
    path = tmp_path / "data" / ID_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert install_id(tmp_path / "data") == first and len(first) == 32
    assert install_id(tmp_path / "other") != first  # random, not derived from anything
    path.write_text("garbage\n")
    second = install_id(tmp_path / "data")
    assert second != first and path.read_text().strip() == second
    assert [p.name for p in (tmp_path / "data").iterdir()] == [ID_FILE]  # no temp files left


def _draw(folder: str) -> str:
    return install_id(Path(folder))


def test_processes_drawing_at_once_agree_on_one_id(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_draw, [str(tmp_path / "data")] * 8)
    assert len(set(ids)) == 1 and ids[0] == (tmp_path / "data" / ID_FILE).read_text().strip()


def test_buckets_are_uniform_stable_and_shuffled_between_versions() -> None:
    draw = random.Random(20250101)
    ids = [f"{draw.getrandbits(128):032x}" for _ in range(4000)]
    for percent in (1, 5, 25, 50, 90):
        share = sum(takes(i, "1.2.0", percent) for i in ids) / len(ids)
        sd = (percent / 100 * (1 - percent / 100) / len(ids)) ** 0.5
        assert abs(share - percent / 100) < 4 * sd + 1e-9, (percent, share)
    assert all(bucket(i, "1.2.0") == bucket(i, "v1.2.0") for i in ids[:50])
    first = {i for i in ids if takes(i, "1.2.0", 25)}
    other = {i for i in ids if takes(i, "1.3.0", 25)}
    overlap = len(first & other) / len(ids)  # independent: about 25 % of 25 %
    assert 0.04 < overlap < 0.09
    assert not any(takes(i, "1.2.0", 0) for i in ids) and all(takes(i, "1.2.0", 100) for i in ids)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_raising_the_percent_only_adds_machines(ident: str, low: float, high: float) -> None:
    low, high = sorted((low, high))
    assert 0 <= bucket(ident, "2.0.0") < 100
    if takes(ident, "2.0.0", low):
        assert takes(ident, "2.0.0", high)


# --- choosing -------------------------------------------------------------------------------------


def release(version: str, percent: float | None = None, recalled: bool = False) -> Release:
    rollout = None if percent is None else Rollout((percent,))
    return Release(version, Version(version), rollout=rollout, recalled=recalled)


def never() -> str:
    raise AssertionError("no rollout below 100 % here: no install id is needed")


def test_choose_takes_the_newest_in_its_rollout_and_names_the_one_held_back() -> None:
    ident = id_with(lambda b: b >= 30, "1.2.0")
    releases = [release("1.0.0"), release("1.1.0"), release("1.2.0", 30)]
    choice = choose(releases, install_id=lambda: ident, now=0)
    assert choice.release.version_text == "1.1.0"
    assert choice.held is not None and choice.held.notice == (
        "1.2.0 is rolling out: 30 % of machines so far"
    )
    assert choose(releases, install_id=lambda: ident, now=0, bypass=True).release.version_text == (
        "1.2.0"
    )
    halted = choose([release("1.0.0"), release("1.2.0", 0)], install_id=lambda: ident, now=0)
    assert halted.held.notice == "1.2.0 is held back by the publisher (its rollout is at 0 %)"
    # Recalled: never taken, bypass or not; nothing else to take: nothing.
    gone = [release("1.0.0", recalled=True), release("1.1.0", recalled=True)]
    assert choose(gone, install_id=never, now=0, bypass=True).release is None
    assert choose([release("1.0.0"), release("1.1.0")], install_id=never, now=0).held is None


def test_a_held_back_notice_survives_a_step_no_calendar_can_show() -> None:
    """A schedule past what a datetime holds (the parser refuses one; this is the last
    line): the notice leaves the date out rather than fail every check."""
    for when in (253402300800.0 + DAY, 1e30, float("inf"), float("nan")):
        held = HeldBack(release("2.0.0", 0), 0.0, (when, 100.0))
        assert held.notice == (
            "2.0.0 is held back by the publisher (its rollout is at 0 %) (100 % later)"
        )
    far = Rollout((0.0, 100.0), 366 * DAY, 253402214400.0)  # 9999-12-31, built unchecked
    new = Release("2.0.0", Version("2.0.0"), rollout=far)
    choice = choose([new, release("1.0.0")], install_id=lambda: "0" * 32, now=1.7e9)
    assert choice.release is not None and choice.release.version_text == "1.0.0"
    assert choice.held is not None and choice.held.notice.endswith("(100 % later)")


def test_recall_blocks_come_and_go_with_the_publishers_recall() -> None:
    state = State(active="1.1.0", previous="1.0.0", blocked=["0.9.0"])
    recalled = [release("0.9.0", recalled=True), release("1.0.0", recalled=True), release("1.1.0")]
    assert note_recalls(state, recalled, installed=["0.9.0", "1.0.0", "1.1.0"])
    assert state.blocked == ["0.9.0", "1.0.0"] and state.recalled == ["1.0.0"]
    assert not note_recalls(state, recalled, installed=["0.9.0", "1.0.0", "1.1.0"])  # stable
    lifted = [release("0.9.0"), release("1.0.0"), release("1.1.0")]
    assert note_recalls(state, lifted, installed=["0.9.0", "1.0.0", "1.1.0"])
    # Ours is lifted; the block from a rollback (0.9.0) stays until `trayupdater resume`.
    assert state.blocked == ["0.9.0"] and state.recalled == []
    # The running version, recalled: noted (its rollback blocks it), not blocked here.
    state = State(active="1.1.0")
    assert note_recalls(state, [release("1.1.0", recalled=True)], installed=["1.1.0"])
    assert state.recalled == ["1.1.0"] and state.blocked == []
    state.blocked.append("1.1.0")  # the rollback did
    # A version the publisher removed altogether stays blocked: only a signed "not recalled"
    # lifts a recall.
    assert not note_recalls(state, [release("1.0.0")], installed=["1.0.0", "1.1.0"])
    assert state.blocked == ["1.1.0"]


def test_the_state_keeps_recall_blocks_across_restarts(tmp_path: Path) -> None:
    from trayupdater.store import VersionStore

    store = VersionStore(tmp_path)
    store.save_state(State(active="1.0.0", blocked=["1.1.0"], recalled=["1.1.0"]))
    assert store.load_state().recalled == ["1.1.0"]
    data = json.loads((tmp_path / "state.json").read_text())
    data.pop("recalled")  # a state.json written before this field existed
    (tmp_path / "state.json").write_text(json.dumps(data))
    assert store.load_state().recalled == []


def test_a_source_without_rollouts_never_draws_an_install_id(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    config = tuf_config(server.url, publisher, tmp_path / "data")
    plan = pipeline(config).plan(State())
    assert plan.release is not None and plan.should_install
    assert not (tmp_path / "data" / ID_FILE).exists()
    publisher.add("1.1.0", "--percent", "50")
    pipeline(config).plan(State())
    assert (tmp_path / "data" / ID_FILE).exists()


def id_with(wanted: Callable[[float], bool], version: str) -> str:
    """An install id whose bucket for ``version`` is what a test needs."""
    return next(f"{n:032x}" for n in range(10**6) if wanted(bucket(f"{n:032x}", version)))


def test_a_data_folder_that_cannot_keep_the_id_is_a_clear_error(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    from trayupdater.errors import StorageError

    publisher.add("1.0.0", "--percent", "50")
    data = tmp_path / "data"
    data.mkdir()
    (data / ID_FILE).mkdir()  # in the way, and not replaceable by a file
    with pytest.raises(StorageError, match="cannot keep the install id"):
        pipeline(tuf_config(server.url, publisher, data)).plan(State())
