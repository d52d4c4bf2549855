"""The shape of a trayupdater TUF repository: what ``trayupdater repo`` writes, the client reads.

A repository is a folder uploaded as it is to any static host::

    metadata/1.root.json … N.root.json   every root version: clients follow the chain
    metadata/root.json                   the newest root (the one to ship with a new build)
    metadata/N.snapshot.json             consistent snapshots: fetched by version, so an
    metadata/N.targets.json              upload in progress never mixes two releases
    metadata/timestamp.json              the only file that changes in place
    targets/<version>/<file>             a version's folder never changes once published

TUF features used: the four top-level roles, one ed25519 key per role, threshold 1, and
consistent snapshots for metadata. Not used: delegations, multi-key thresholds, hash-prefixed
target file names (a version's folder is immutable instead, which keeps the targets usable as
GitHub release assets: ``targets_url = https://github.com/OWNER/REPO/releases/download/`` with
version folders named after the tags).

Each target carries its version in its signed custom metadata, in a namespace of its own,
with the publisher's rollout and recall beside it (every target of a version the same)::

    "custom": {"trayupdater": {"version": "1.2.0", "published": "2025-01-02T03:04:05Z",
                               "rollout": {"percent": 25},
                               "recalled": true}}

``rollout`` is absent (every installation), ``{"percent": P}`` with 0 <= P <= 100, or a
schedule ``{"schedule": [1, 5, 25, 100], "every": 86400, "start": "<UTC time>"}``: step i
holds from ``start + i * every`` (:class:`~trayupdater.release_model.Rollout`), and the last
step starts before the year 9000. ``recalled`` is absent or a boolean. A value that does not
follow this makes the target unusable (it is skipped and reported), never guessed at: a
client takes no version on a rollout it cannot read.

Both sides check target paths with :func:`parse_target`, so the publisher refuses what a
client would reject.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from packaging.version import Version

from trayupdater.release_model import Rollout, parse_version
from trayupdater.sources.github_json import file_name_problem

ROLES = ("root", "targets", "snapshot", "timestamp")  # top-level only: no delegations
METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
CUSTOM_NAMESPACE = "trayupdater"
HASH = "sha256"  # every target lists it: the pipeline's own digest check uses it too
MAX_FIELD = 256
MAX_STEPS = 50
MAX_STEP_SECONDS = 366 * 24 * 3600
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# A schedule ends before this: later dates are nonsense, and past year 9999 not representable.
LATEST_TIME = datetime(9000, 1, 1, tzinfo=timezone.utc).timestamp()


class TargetFormatError(ValueError):
    """A target whose path or custom metadata does not follow the format above."""


@dataclass(frozen=True)
class TargetEntry:
    """One target as trayupdater understands it."""

    path: str  # "<folder>/<name>", as in the targets metadata
    folder: str  # the version's folder: "1.2.0", or a tag such as "v1.2.0"
    name: str  # the file name: what the asset picker chooses among
    version: Version
    published: str = ""
    rollout: Rollout | None = None
    recalled: bool = False


def target_path(folder: str, name: str) -> str:
    return f"{folder}/{name}"


def check_folder(folder: str) -> Version:
    """The version a version folder names; TargetFormatError unless it is a safe name."""
    problem = file_name_problem(folder)
    if problem:
        raise TargetFormatError(f"version {folder[:80]!r} {problem}")
    version = parse_version(folder)
    if version is None or len(folder) > MAX_FIELD:
        raise TargetFormatError(f"{folder[:80]!r} is not a version (such as 1.2.0 or v1.2.0)")
    return version


def custom_block(
    version: Version, published: datetime | None = None, rollout: Rollout | None = None
) -> dict[str, Any]:
    """The ``custom`` field of a new target of ``version``."""
    when = (published or datetime.now(timezone.utc)).astimezone(timezone.utc)
    ours: dict[str, Any] = {"version": str(version), "published": format_time(when.timestamp())}
    if rollout is not None:
        ours["rollout"] = rollout_field(rollout)
    return {CUSTOM_NAMESPACE: ours}


def format_time(when: float) -> str:
    return datetime.fromtimestamp(int(when), timezone.utc).strftime(TIME_FORMAT)


def parse_time(text: Any) -> float:
    if not isinstance(text, str) or len(text) > 40:
        raise TargetFormatError("a time must be a short string such as 2025-01-02T03:04:05Z")
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise TargetFormatError(
            f"{text[:40]!r} is not a UTC time such as 2025-01-02T03:04:05Z"
        ) from None


def check_percent(value: Any) -> float:
    """A share of installations: a number from 0 to 100 (TargetFormatError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TargetFormatError(f"a rollout percent must be a number, not {type(value).__name__}")
    number = _as_float(value)
    if not 0 <= number <= 100:  # NaN and infinities fail too
        raise TargetFormatError(f"a rollout percent must be between 0 and 100, not {_shown(value)}")
    return number


def make_rollout(steps: Sequence[Any], every: float = 0.0, start: float = 0.0) -> Rollout:
    """A checked Rollout: 1..50 percents that never decrease; a schedule needs ``every``."""
    if not 1 <= len(steps) <= MAX_STEPS:
        raise TargetFormatError(f"a rollout schedule has 1 to {MAX_STEPS} steps")
    percents = tuple(check_percent(step) for step in steps)
    if any(later < earlier for earlier, later in itertools.pairwise(percents)):
        raise TargetFormatError("the steps of a rollout schedule never go down")
    if len(percents) == 1:
        return Rollout(percents)
    if isinstance(every, bool) or not isinstance(every, (int, float)):
        raise TargetFormatError("a rollout schedule's every must be a number of seconds")
    seconds, begin = _as_float(every), _as_float(start)
    if not 1 <= seconds <= MAX_STEP_SECONDS:  # NaN and infinities fail too
        raise TargetFormatError("a rollout step lasts from 1 second to a year")
    if not math.isfinite(begin) or begin + (len(percents) - 1) * seconds >= LATEST_TIME:
        raise TargetFormatError(f"a rollout schedule must end before {format_time(LATEST_TIME)}")
    return Rollout(percents, seconds, begin)


def _shown(number: float) -> str:
    text = repr(number)
    return text if len(text) <= 20 else text[:20] + "…"


def _as_float(number: float) -> float:
    """``float(number)``; an integer too large for a float (valid JSON: 1e400 written out)
    becomes an infinity, which every range check here refuses, instead of OverflowError."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def rollout_field(rollout: Rollout) -> dict[str, Any]:
    if not rollout.is_schedule:
        return {"percent": _tidy(rollout.steps[0])}
    return {
        "schedule": [_tidy(step) for step in rollout.steps],
        "every": _tidy(rollout.every),
        "start": format_time(rollout.start),
    }


def parse_rollout(value: Any) -> Rollout:
    if not isinstance(value, Mapping):
        raise TargetFormatError("rollout must be an object")
    if "schedule" in value:
        steps = value["schedule"]
        if not isinstance(steps, list):
            raise TargetFormatError("rollout schedule must be a list of percents")
        return make_rollout(steps, value.get("every"), parse_time(value.get("start")))
    if "percent" in value:
        return make_rollout([value["percent"]])
    raise TargetFormatError("rollout has neither percent nor schedule")


def _tidy(number: float) -> int | float:
    return int(number) if float(number).is_integer() else number


def parse_target(path: str, custom: Any) -> TargetEntry:
    """Check one target of the signed targets metadata; TargetFormatError if it is not ours.

    The path must be ``<version folder>/<plain file name>`` and the custom version must be
    the version the folder names: a botched or foreign target is skipped, never guessed at.
    """
    parts = path.split("/")
    if len(parts) != 2:
        raise TargetFormatError(f"target {path[:120]!r} is not <version>/<file>")
    folder, name = parts
    folder_version = check_folder(folder)
    problem = file_name_problem(name)
    if problem:
        raise TargetFormatError(f"target {path[:120]!r}: file name {problem}")
    ours = custom.get(CUSTOM_NAMESPACE) if isinstance(custom, Mapping) else None
    if not isinstance(ours, Mapping):
        raise TargetFormatError(f"target {path[:120]!r} has no {CUSTOM_NAMESPACE!r} custom data")
    text = ours.get("version")
    if not isinstance(text, str) or len(text) > MAX_FIELD:
        raise TargetFormatError(f"target {path[:120]!r}: custom version must be a short string")
    version = parse_version(text)
    if version is None:
        raise TargetFormatError(f"target {path[:120]!r}: custom version {text[:80]!r} is invalid")
    if version != folder_version:
        raise TargetFormatError(
            f"target {path[:120]!r}: custom version {text[:80]} disagrees with its folder"
        )
    published = ours.get("published")
    if not isinstance(published, str) or len(published) > MAX_FIELD:
        published = ""
    rollout = None
    if ours.get("rollout") is not None:
        try:
            rollout = parse_rollout(ours["rollout"])
        except TargetFormatError as exc:
            raise TargetFormatError(f"target {path[:120]!r}: {exc}") from None
    recalled = ours.get("recalled", False)
    if not isinstance(recalled, bool):
        raise TargetFormatError(f"target {path[:120]!r}: recalled must be true or false")
    return TargetEntry(path, folder, name, version, published, rollout, recalled)
