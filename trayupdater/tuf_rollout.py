"""A published version's rollout and recall, as the publisher changes them.

``trayupdater repo rollout`` and ``repo recall`` (:mod:`trayupdater.publish`) land here: the
new value is written into the custom metadata of every target of the version
(:mod:`trayupdater.tuf_format` has the shape) and published as new targets, snapshot and
timestamp metadata by :class:`~trayupdater.tuf_repository.FolderRepository`, signed like any
release. Installations read it at their next check (:mod:`trayupdater.rollout`). A change
that changes nothing publishes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from packaging.version import Version

from trayupdater.release_model import Rollout
from trayupdater.tuf_format import (
    TargetFormatError,
    check_folder,
    make_rollout,
    parse_rollout,
    parse_time,
    rollout_field,
)
from trayupdater.tuf_repository import FolderRepository, Outcome, PublishError


@dataclass(frozen=True)
class RolloutRequest:
    """A rollout as the publisher asks for it; ``at(start)`` makes the signed one."""

    steps: tuple[float, ...]
    every: float = 0.0
    from_now: bool = False  # a schedule counts from now, not from the publish time

    def at(self, start: float) -> Rollout:
        try:
            return make_rollout(self.steps, self.every, start)
        except TargetFormatError as exc:
            raise PublishError(str(exc)) from None

    @staticmethod
    def describe(rollout: Rollout, now: datetime) -> str:
        return describe_rollout(rollout, now)


def describe_rollout(rollout: Rollout, now: datetime) -> str:
    """``rolling out to 25 % of installations``, or the schedule with its dates."""
    if not rollout.is_schedule:
        percent = rollout.steps[0]
        if percent >= 100:
            return "every installation may take it"
        if percent <= 0:
            return "rollout halted: no further installation takes it (0 %)"
        return f"rolling out to {percent:g} % of installations"
    parts = []
    for step, percent in enumerate(rollout.steps):
        when = datetime.fromtimestamp(rollout.start + step * rollout.every, timezone.utc)
        parts.append(f"{percent:g} % from {when:%Y-%m-%d %H:%M} UTC")
    current = rollout.percent_at(now.timestamp())
    return f"rolling out on a schedule, {current:g} % now: " + ", ".join(parts)


def _set(ours: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        ours.pop(key, None)
    else:
        ours[key] = value


def _rollout_of(ours: dict[str, Any]) -> Rollout | None:
    try:
        return parse_rollout(ours["rollout"]) if ours.get("rollout") is not None else None
    except TargetFormatError:
        return None


def published_version(repo: FolderRepository, text: str) -> Version:
    """The published version ``text`` names; PublishError if there is none."""
    repo.require_repository()
    try:
        version = check_folder(text)
    except TargetFormatError as exc:
        raise PublishError(str(exc)) from None
    if version not in set(repo.versions()):
        raise PublishError(
            f"version {version} is not published here; publish it first with repo add"
        )
    return version


def published_time(repo: FolderRepository, version: Version) -> float:
    """When ``version`` was published (time.time()), as its targets say."""
    for entry, _ in repo.entries():
        if entry.version == version and entry.published:
            try:
                return parse_time(entry.published)
            except TargetFormatError:
                break
    return repo.now().timestamp()


def set_rollout(repo: FolderRepository, version_text: str, rollout: RolloutRequest) -> Outcome:
    """Sign a new rollout for a published version (every target of it)."""
    version = published_version(repo, version_text)
    published = published_time(repo, version)
    start = repo.now().timestamp() if rollout.from_now else published
    new = rollout.at(start)
    outcome = Outcome()
    field = rollout_field(new)
    old, changed = repo.edit_version(version, lambda ours: _set(ours, "rollout", field))
    now = repo.now()
    if not changed:
        outcome.lines.append(f"{version}: unchanged, {describe_rollout(new, now)}")
        return outcome
    before = _rollout_of(old)
    was = describe_rollout(before, now) if before else "every installation"
    outcome.lines.append(f"{version}: {describe_rollout(new, now)} (was: {was})")
    previous = before.percent_at(now.timestamp()) if before else 100.0
    if new.percent_at(now.timestamp()) < previous:
        outcome.warnings.append(
            f"installations that already took {version} keep it; "
            f"to pull it back: trayupdater repo recall DIR --version {version}"
        )
    return outcome


def set_recalled(repo: FolderRepository, version_text: str, recalled: bool) -> Outcome:
    """Recall a published version (installations running it roll back) or lift that."""
    version = published_version(repo, version_text)
    _, changed = repo.edit_version(
        version, lambda ours: _set(ours, "recalled", True if recalled else None)
    )
    outcome = Outcome()
    if not changed:
        state = "recalled" if recalled else "not recalled"
        outcome.lines.append(f"{version} is already {state}; nothing changed")
    elif recalled:
        outcome.lines.append(
            f"{version} recalled: installations running it roll back to the version they "
            "ran before at their next check; no installation takes it any more"
        )
        if not any(v < version for v in repo.versions()):
            outcome.warnings.append(
                f"no version older than {version} is published: installations with "
                "nothing older installed keep running it and say it was recalled"
            )
    else:
        outcome.lines.append(
            f"the recall of {version} is lifted: installations may take it again "
            "(those that rolled back from it do at their next check)"
        )
    return outcome
