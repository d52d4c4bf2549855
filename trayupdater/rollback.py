"""Going back a version: when a failure calls for it, which version, and the one save after.

A rollback serves ``state.previous`` (the newest installed version older than the active
one that is not blocked) instead of the active version, which is blocked in the same save
that makes the target active. It is asked for by the user, by a version that fails
probation or crash-loops (:mod:`restarts` counts the exits), and by a publisher's recall
(:mod:`rollout`). Moving traffic is :mod:`serving`'s, which owns the children
(:class:`Children`): to the previous child at once while it is still warm, else to a fresh
child of the previous version once it is healthy, the active one serving until then.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from trayupdater.children import Child
from trayupdater.config import Config
from trayupdater.errors import ChildError
from trayupdater.restarts import Restarts
from trayupdater.status import Phase
from trayupdater.store import InstalledVersion, State, VersionStore, version_key

if TYPE_CHECKING:  # serving imports this module
    from trayupdater.serving import Hooks

log = logging.getLogger(__name__)


def older_than(state: State, store: VersionStore, version: str) -> str | None:
    """The newest installed version older than ``version`` that is not blocked."""
    blocked = state.blocked
    older = [
        v for v in store.installed() if version_key(v) < version_key(version) and v not in blocked
    ]
    return older[-1] if older else None


def can_roll_back(state: State, store: VersionStore) -> bool:
    previous = state.previous
    return bool(previous) and store.get(previous) is not None


def block(state: State, version: str) -> None:
    """Mark ``version`` blocked (the caller saves, once, with the rest of the change)."""
    if version not in state.blocked:
        state.blocked.append(version)


class Children(Protocol):
    """What a rollback asks of the children's owner (:class:`~trayupdater.serving.Serving`)."""

    def start_child(self, installed: InstalledVersion, *, soak: bool) -> Child:
        """A healthy child of ``installed``; ChildError if not."""
        ...

    def switch_to_warm(self, version: str) -> Child | None:
        """Traffic to the warm previous child if it is ``version`` and alive, which becomes
        the active one (the active one drained and stopped, probation over); None if not."""
        ...

    def switch_to_started(self, child: Child) -> None:
        """Traffic to ``child``, which becomes the active one (the others drained and
        stopped, probation over)."""
        ...

    def end_failed_probation(self) -> Child | None:
        """The active child failed probation (the proxy moved its traffic already): it is
        stopped and the warm previous child, if alive, is the active one. Probation is over
        either way; that child, or None."""
        ...


class Rollbacks:
    """Rolling back the active version, and deciding when a failure calls for it."""

    def __init__(
        self,
        config: Config,
        store: VersionStore,
        hooks: Hooks,
        restarts: Restarts,
        children: Children,
    ) -> None:
        self._config = config
        self._store = store
        self._hooks = hooks
        self._restarts = restarts
        self._children = children

    def rollback(self, *, automatic: bool, reason: str, block_current: bool = True) -> bool:
        """Serve the previous version instead of the active one, which is blocked (unless
        ``block_current`` is False: a damaged install, which is installed again)."""
        state = self._hooks.state()
        target, current = state.previous, state.active
        installed = self._store.get(target) if target else None
        if target is None or installed is None:
            self._hooks.publish(message="Nothing to roll back to")
            return False
        # On probation with the previous child still warm: switch at once.
        child = self._children.switch_to_warm(target)
        if child is None:
            self._hooks.publish(phase=Phase.ROLLING_BACK, message=f"Rolling back to {target}…")
            try:
                child = self._children.start_child(installed, soak=False)
            except ChildError as exc:
                log.error("rollback to %s failed: %s", target, exc.for_log())
                self._hooks.publish(error=f"rollback to {target} failed: {exc}")
                return False
            self._children.switch_to_started(child)
        self._commit(current, child, automatic=automatic, reason=reason, block_bad=block_current)
        return True

    def leave_recalled(self, reason: str) -> bool:
        """The publisher recalled the active version: roll back to the newest installed one
        that is neither blocked nor recalled (the caller blocks those first), with the same
        zero-failure switch. False when there is none: it keeps running."""
        state = self._hooks.state()
        if not state.active:
            return False
        state.previous = older_than(state, self._store, state.active)
        if not can_roll_back(state, self._store):
            return False
        return self.rollback(automatic=True, reason=reason)

    def probation_failed(self, version: str, why: str) -> bool:
        """Roll back from ``version``, which failed probation; False if there is nothing to
        roll back to (it is then restarted like any crash)."""
        reason = f"{version} {why} during probation"
        log.error("%s; rolling back", reason)
        warm = self._children.end_failed_probation()
        if warm is not None:
            self._commit(version, warm, automatic=True, reason=reason)
            return True
        return self.rollback(automatic=True, reason=reason)

    def crash_looped(self, version: str) -> bool:
        """Count an exit (or a failed restart) of the active version; roll back from a
        crash loop. True if that happened."""
        exits = self._restarts.crash_loop(time.monotonic())
        if exits is None:
            return False
        minutes = self._config.crash_loop_seconds / 60
        reason = f"{version} crashed {exits} times in {minutes:g} minutes"
        if not can_roll_back(self._hooks.state(), self._store):
            log.error("%s; nothing to roll back to, so it keeps being restarted", reason)
            return False
        return self.rollback(automatic=True, reason=reason)

    def _commit(
        self, bad: str | None, child: Child, *, automatic: bool, reason: str, block_bad: bool = True
    ) -> None:
        state = self._hooks.state()
        if bad and block_bad:
            block(state, bad)
        state.active = child.version
        state.previous = older_than(state, self._store, child.version)
        state.child_pid, state.child_port = child.pid, child.port
        self._restarts.reset()
        self._hooks.save()  # one save: "bad blocked" and "target active" together
        self._hooks.events.rolled_back(bad or "?", child.version, automatic, reason)
        kind = "Automatically rolled back" if automatic else "Rolled back"
        self._hooks.publish(
            phase=Phase.RUNNING,
            message=f"{kind} to {child.version}" + (f": {reason}" if automatic else ""),
            error=None,
        )
