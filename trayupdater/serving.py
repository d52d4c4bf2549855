"""Which child serves, and every change to that: the zero-failure protocol.

Runs on the update worker thread only (the one writer of ``state.json``); children's
deaths arrive from their :class:`~trayupdater.monitor.ChildMonitor` threads, which move
traffic themselves (``proxy.backend_down``) and then queue the bookkeeping here.

A new version goes live in five steps:

1. **Start** on a free loopback port and wait for ``GET health_path`` to answer its version.
2. **Soak**: it must keep answering (probed every 250 ms) for ``min_ready_seconds``. A child
   that exits or fails here never took traffic; it is blocked like a crash at start. (Steps
   1 and 2 are :mod:`child_start`'s.)
3. **Switch** the proxy to it with the previous child as the *warm fallback*: still running,
   no new traffic.
4. **Probation** (``probation_seconds``): its monitor probes health. If it exits or stops
   answering, the monitor switches the proxy back to the warm child at once (the proxy
   retries there whatever had no response byte yet); the worker then blocks the version,
   reaps it and saves state once.
5. **Pass**: the previous generation is drained, the warm child stopped, old versions pruned.

Outside probation a dead child means *hold*: the proxy keeps requests waiting (up to
``hold_seconds``) while the child is restarted with back-off; ``crash_loop_exits`` exits
within ``crash_loop_seconds`` roll back to the previous installed version instead, which is
then blocked (:mod:`restarts`). When to roll back, and to which version, is :mod:`rollback`'s;
moving the traffic is done here. Every transition is one atomic save of the state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from trayupdater import child_logs
from trayupdater.cancel import Interrupt
from trayupdater.child_start import child_log_path as child_log_path  # updater's import
from trayupdater.child_start import start_healthy
from trayupdater.children import Child
from trayupdater.config import Config
from trayupdater.errors import ChildError
from trayupdater.events import Events
from trayupdater.monitor import ChildMonitor
from trayupdater.processes import kill_stale
from trayupdater.proxy import Backend, Generation, ReverseProxy
from trayupdater.restarts import Restarts
from trayupdater.retiring import Retiring
from trayupdater.rollback import Rollbacks, block, older_than
from trayupdater.status import Phase
from trayupdater.store import InstalledVersion, State, VersionStore

log = logging.getLogger(__name__)


@dataclass
class Hooks:
    """What serving needs from the update worker."""

    state: Callable[[], State]
    save: Callable[[], None]
    publish: Callable[..., None]
    post: Callable[[str, object], None]  # queue a job for the worker: (kind, payload)
    events: Events


@dataclass
class _Running:
    child: Child
    monitor: ChildMonitor

    @property
    def backend(self) -> Backend:
        return backend_of(self.child)


def backend_of(child: Child) -> Backend:
    return Backend(child.host, child.port, child.version)


class Serving:
    def __init__(
        self,
        config: Config,
        store: VersionStore,
        proxy: ReverseProxy,
        hooks: Hooks,
        interrupt: Interrupt,
    ) -> None:
        self.config = config
        self.store = store
        self.proxy = proxy
        self.hooks = hooks
        self.interrupt = interrupt
        self.active: _Running | None = None
        self.warm: _Running | None = None  # the previous child, kept during probation
        self._warm_generation: Generation | None = None  # drained before the warm child stops
        self.probation_until: float | None = None  # monotonic
        self.restart_at: float | None = None
        self._restarts = Restarts(config.crash_loop_exits, config.crash_loop_seconds)
        self._rollbacks = Rollbacks(config, store, hooks, self._restarts, self)
        self._retiring = Retiring(proxy)  # old children finishing their last requests
        self._started_at = 0.0

    @property
    def state(self) -> State:
        return self.hooks.state()

    # --- boot and shutdown ----------------------------------------------------------------

    def boot(self) -> None:
        """Start the version state.json names (or a fallback); one save for the result."""
        state = self.state
        if state.child_pid:
            # The app died without stopping its child (kill -9): make sure no stale copy
            # holds resources; the version is started afresh below.
            active = state.active and self.store.get(state.active)
            if active:
                kill_stale(state.child_pid, active.executable)
            state.child_pid = None
        candidates = [v for v in (state.active, state.previous) if v]
        candidates += [v for v in reversed(self.store.installed()) if v not in candidates]
        if candidates:
            self.proxy.hold()  # a child is coming: requests wait for it instead of 503
        damaged: list[str] = []  # removed to be installed again: not the release's fault
        for version in candidates:
            installed = self.store.get(version)
            if installed is None and (self.repair(version) or self._gone(version)):
                damaged.append(version)
            if installed is None or (version in state.blocked and version != candidates[0]):
                continue
            try:
                child = self.start_child(installed, soak=False)
            except ChildError as exc:
                self.hooks.events.failed(exc.reason, str(exc))
                log.error("could not start %s: %s", version, exc.for_log())
                if self.repair(version):
                    damaged.append(version)
                continue
            try:
                remaining = (state.probation_until or 0.0) - time.time()
                # Never longer than configured (a clock set back, a hand-edited state.json).
                remaining = min(remaining, self.config.probation_seconds)
                if version != state.active:
                    # The active version would not start: never fall back to it again
                    # (unless its install was damaged: then the next check installs it anew).
                    if state.active and state.active not in damaged:
                        block(state, state.active)
                    state.active = version
                    state.previous = older_than(state, self.store, version)
                    remaining = 0.0
                self._go_live(child, probation=remaining if remaining > 0 else None)
                self.hooks.save()
            except BaseException:
                # A bug past this point must not leave an unsupervised child behind.
                running, self.active = self.active, None
                if running is None:
                    child.stop()
                else:
                    self._stop(running)
                self.proxy.switch(None)  # and no client waiting on it
                raise
            if self.probation_until is None:
                # Past any probation (it may have ended while the app was not running, or
                # the app stopped before it pruned): keep only keep_versions.
                self._prune()
            message = f"Running {version}"
            if damaged:
                message += f"; {', '.join(damaged)} was damaged on disk and is installed again"
                self.hooks.post("reinstall", None)
            self.hooks.publish(phase=Phase.RUNNING, message=message, error=None)
            return
        self.proxy.switch(None)
        if damaged:
            self.hooks.post("reinstall", None)  # installs it again
            if state.active in damaged:
                state.active = None  # gone: the check installs it as a first install
        if candidates:
            self.hooks.save()
            self.hooks.publish(phase=Phase.ERROR, error="no installed version could be started")
        else:
            self.hooks.publish(phase=Phase.NO_VERSION, message="No version installed yet")

    def shutdown(self) -> None:
        self.probation_until = None
        old = self.proxy.switch(None)
        self.proxy.drain(old, timeout=5.0)
        for running in (self.active, self.warm):
            if running is not None:
                self._stop(running)
        self.active = self.warm = None
        self._retiring.stop_all()
        state = self.state
        state.child_pid = state.child_port = None

    def retire(self) -> None:
        """A successor serves now (self-update): stop our children, leave state.json alone."""
        for running in (self.active, self.warm):
            if running is not None:
                self._stop(running)
        self.active = self.warm = None
        self._retiring.stop_all()

    # --- a new version -----------------------------------------------------------------------

    def update_to(self, installed: InstalledVersion) -> None:
        """Start, soak and switch to ``installed`` (raises ChildError: it is then blocked)."""
        state = self.state
        old_version = state.active
        try:
            # Nothing serves yet on a first install: no reason to keep clients waiting.
            child = self.start_child(installed, soak=self.active is not None, cancellable=True)
        except ChildError as exc:
            block(state, installed.version)
            self.hooks.save()
            raise ChildError(
                f"{installed.version} was not started: {exc}; it is blocked", details=exc.details
            ) from None
        old = self.active
        self._finish_warm()  # a still-warm child from an earlier update goes now
        probation = self.config.probation_seconds or None
        keep_warm = old is not None and probation is not None and old.child.is_alive()
        if old is None:
            self.proxy.switch(backend_of(child))
        elif not keep_warm:
            generation = self.proxy.switch(backend_of(child))
            self._drain_and_stop(old, generation)
            self.active = None
        elif old is not None:
            generation = self.proxy.switch(backend_of(child), fallback=old.backend)
            self.warm, self._warm_generation = old, generation
            self.active = None
        state.previous = old_version
        state.active = installed.version
        self._restarts.reset()
        self._go_live(child, probation=probation, switched=True)
        self.hooks.save()
        log.info("updated %s -> %s", old_version, installed.version)
        if probation is None:
            self.probation_passed()

    def start_child(
        self, installed: InstalledVersion, *, soak: bool, cancellable: bool = False
    ) -> Child:
        """A healthy child of ``installed`` (soaked first when ``soak``); ChildError if not
        (CancelledError if ``cancellable`` and a quit or rollback cuts in)."""
        return start_healthy(
            self.config,
            installed,
            soak=soak,
            publish=self.hooks.publish,
            interrupt=self.interrupt,
            cancellable=cancellable,
        )

    def _go_live(self, child: Child, *, probation: float | None, switched: bool = False) -> None:
        """``child`` is the active one now (the proxy points at it unless ``switched``)."""
        if not switched:
            self.proxy.switch(backend_of(child))
        monitor = ChildMonitor(child, self._down, health_path=self.config.health_path)
        self.active = _Running(child, monitor.start(probing=probation is not None))
        self._started_at = time.monotonic()
        self.restart_at = None
        self._set_probation(probation)
        state = self.state
        state.child_pid, state.child_port = child.pid, child.port

    def _down(self, child: Child, why: str) -> None:
        """From a monitor thread: move traffic first, then tell the worker."""
        changed = self.proxy.backend_down(backend_of(child))
        log.warning("%s %s%s", child.name, why, "; traffic moved" if changed else "")
        self.hooks.post("child_down", (child, why))

    # --- probation -------------------------------------------------------------------------

    def _set_probation(self, seconds: float | None) -> None:
        """Start (``seconds``) or end (None) probation; the deadline is also kept in
        state.json so an app restarted mid-probation carries it on."""
        state = self.state
        if seconds is None:
            self.probation_until = state.probation_until = None
        else:
            self.probation_until = time.monotonic() + seconds
            state.probation_until = time.time() + seconds
        if self.active is not None:
            self.active.monitor.set_probing(seconds is not None)

    def probation_passed(self) -> None:
        self._set_probation(None)
        self._finish_warm()
        self.hooks.save()
        self._prune()

    def _prune(self) -> None:
        """Old versions beyond keep_versions go, with their logs; never the active or
        previous one. A folder that cannot go now (in use, read-only) goes next time."""
        protect = {v for v in (self.state.active, self.state.previous) if v}
        try:
            removed = self.store.prune(self.config.keep_versions, protect)
        except OSError as exc:
            log.warning("cannot remove old versions now: %s", exc)
            return
        if removed:
            log.info("pruned old versions: %s", ", ".join(removed))
        # Their logs go too, and those of versions removed before logs were cleaned up.
        child_logs.remove_stale(self.config.logs_dir, self.store.installed())

    def _finish_warm(self) -> None:
        warm, self.warm = self.warm, None
        if warm is None:
            return
        self.proxy.drop_fallback(warm.backend)  # healthy: what it answers is drained, not cut
        generation, self._warm_generation = self._warm_generation, None
        self._drain_and_stop(warm, generation)

    # --- a child died --------------------------------------------------------------------

    def child_down(self, child: Child, why: str) -> None:
        """A monitor reported ``child``: the proxy has already moved its traffic."""
        if self.warm is not None and child is self.warm.child:
            log.warning("the warm previous version %s %s", child.version, why)
            self._stop(self.warm)
            self.warm = None
            return
        if self.active is None or child is not self.active.child:
            return  # a child we stopped on purpose
        bad = self.active
        if self.probation_until is not None and self._rollbacks.probation_failed(
            child.version, why
        ):
            return
        self._stop(bad)
        self.active = None
        state = self.state
        state.child_pid = state.child_port = None
        code = child.returncode
        self.hooks.events.failed("child_exit", f"{child.version} {why}")
        if self._rollbacks.crash_looped(child.version):
            return
        now = time.monotonic()
        delay = self._restarts.delay(now, self._started_at)
        self.restart_at = now + delay
        self.hooks.save()
        log.error("%s exited (code %s); restarting in %g s", child.version, code, delay)
        self.hooks.publish(
            phase=Phase.RESTARTING,
            error=f"{child.version} {why}; restarting in {delay:g} s",
        )

    def restart(self) -> None:
        """The back-off delay is over: start the active version again."""
        self.restart_at = None
        state = self.state
        installed = state.active and self.store.get(state.active)
        if not installed:
            if state.active and (self.repair(state.active) or self._gone(state.active)):
                self._replace_damaged(state.active)
                return
            self.proxy.switch(None)
            self.hooks.publish(phase=Phase.ERROR, error="the active version is no longer installed")
            return
        try:
            child = self.start_child(installed, soak=False)
        except ChildError as exc:
            if self.repair(installed.version):
                self._replace_damaged(installed.version)
                return
            if self._rollbacks.crash_looped(installed.version):
                return
            delay = self._restarts.delay(time.monotonic())
            self.restart_at = time.monotonic() + delay
            log.error("restarting %s failed: %s", installed.version, exc.for_log())
            self.hooks.publish(phase=Phase.RESTARTING, error=f"restart failed: {exc}")
            return
        self._go_live(child, probation=None)
        self.hooks.save()
        self.hooks.publish(
            phase=Phase.RUNNING, message=f"Restarted {installed.version}", error=None
        )

    # --- a damaged install: removed, and installed again by the next check -----------------

    def repair(self, version: str) -> bool:
        """If ``version``'s install is damaged (its program gone or changed on disk:
        :meth:`VersionStore.damage`), remove it so that a check installs it again; True if
        so. Called when it would not start, before anyone blames (and blocks) the release."""
        why = self.store.damage(version)
        if why is None:
            return False
        message = f"the installed {version} is damaged ({why}: an antivirus, a disk error?)"
        log.warning("%s; removing it to install it again", message)
        self.hooks.events.failed("damaged", message)
        try:
            self.store.remove(version)
        except OSError as exc:
            log.error("cannot remove the damaged %s: %s", version, exc)
            return False
        return True

    def _gone(self, version: str) -> bool:
        """Is the active ``version``'s install gone from disk (its folder deleted, or its
        manifest: an interrupted delete, which :meth:`VersionStore.clean_temporary` then
        removes)? Like a damaged install it is installed again, not blocked: left named
        active, every check found it "up to date" and nothing served for good."""
        if version != self.state.active or self.store.get(version) is not None:
            return False
        log.warning("the installed %s is gone from disk; installing it again", version)
        self.hooks.events.failed("damaged", f"the installed {version} is gone from disk")
        return True

    def _replace_damaged(self, version: str) -> None:
        """The active version's install was damaged and is gone: serve the previous one if
        there is one (not blocking the active, which the check posted here installs again)."""
        self.hooks.post("reinstall", None)
        if self._rollbacks.rollback(
            automatic=True, reason=f"{version} was damaged on disk", block_current=False
        ):
            return
        running, self.active = self.active, None
        if running is not None:
            self._stop(running)
        self.proxy.switch(None)
        state = self.state
        state.active = state.child_pid = state.child_port = None  # gone: installed anew
        self.hooks.save()
        self.hooks.publish(
            phase=Phase.ERROR, error=f"{version} was damaged on disk; installing it again"
        )

    # --- rollback: rollback.py decides, these move the traffic (its Children) ---------------

    def rollback(self, *, automatic: bool, reason: str) -> bool:
        """Serve the previous version instead of the active one, which is blocked."""
        return self._rollbacks.rollback(automatic=automatic, reason=reason)

    def leave_recalled(self, reason: str) -> bool:
        """The publisher recalled the active version: roll back from it if anything is left
        to roll back to (:meth:`Rollbacks.leave_recalled`); False if it keeps running."""
        return self._rollbacks.leave_recalled(reason)

    def switch_to_warm(self, version: str) -> Child | None:
        """Traffic back to the warm child if it is ``version`` and alive; None if not."""
        warm = self.warm
        if warm is None or warm.child.version != version or not warm.child.is_alive():
            return None
        self.warm = None
        self._warm_generation = None
        generation = self.proxy.switch(warm.backend)
        old, self.active = self.active, warm
        self._set_probation(None)
        if old is not None:
            self._drain_and_stop(old, generation)
        return warm.child

    def switch_to_started(self, child: Child) -> None:
        """Traffic to ``child``, just started; every other child drained and stopped."""
        self._set_probation(None)
        old = self.active
        self._finish_warm()
        generation = self.proxy.switch(backend_of(child))
        if old is not None:
            self._drain_and_stop(old, generation)
        self.active = None
        self._go_live(child, probation=None, switched=True)

    def end_failed_probation(self) -> Child | None:
        """Stop the child that failed probation; the warm child, if alive, replaces it."""
        warm = self.warm
        if warm is not None and warm.child.is_alive():
            # The proxy is on the warm child already; make it the active one.
            self.warm = None
            self._warm_generation = None
            if self.active is not None:
                self._stop(self.active)
            self.active = warm
            self._set_probation(None)
            return warm.child
        self._set_probation(None)
        return None

    # --- helpers -----------------------------------------------------------------------------

    def _stop(self, running: _Running) -> None:
        running.monitor.stop()
        running.child.stop()

    def _drain_and_stop(self, running: _Running, generation: Generation | None) -> None:
        running.monitor.stop()  # its exit from now on is ours, not a crash
        self._retiring.drain_and_stop(running.child, generation)

    def wakeup(self) -> float | None:
        """When the worker must call :meth:`on_timer` next (monotonic), if at all."""
        times = [t for t in (self.restart_at, self.probation_until) if t is not None]
        return min(times) if times else None

    def on_timer(self) -> None:
        now = time.monotonic()
        if self.restart_at is not None and now >= self.restart_at:
            self.restart()
        if self.probation_until is not None and now >= self.probation_until:
            self.probation_passed()

    def resting_phase(self, fallback: Phase) -> Phase:
        if self.active is not None:
            return Phase.RUNNING
        if self.restart_at is not None:
            return Phase.RESTARTING
        if fallback in (Phase.NO_VERSION, Phase.ERROR):
            return fallback
        return Phase.NO_VERSION if not self.store.installed() else Phase.ERROR
