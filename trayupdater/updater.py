"""The update worker: the one thread that owns update state.

Everything that changes what runs goes through its queue: the check timer, "check now",
"roll back", "resume", "quit", and the supervisor's "the child exited". Handling them one
at a time on one thread is what makes tray clicks, CLI commands and timers race-free.

An update: pipeline (check, download, verify, install) -> start the new child on a free
loopback port -> health -> proxy switch -> drain the old generation -> stop the old child
-> probation (the new child must stay healthy, else automatic rollback and the version is
blocked) -> prune old versions. Every step can fail; a failure leaves the current version
serving and is reported in the status.
"""

from __future__ import annotations

import http.client
import logging
import os
import queue
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from trayupdater import preferences
from trayupdater.children import Child, kill_stale
from trayupdater.config import Config
from trayupdater.errors import ChildError, TrayUpdaterError
from trayupdater.pipeline import ReleasePipeline
from trayupdater.proxy import Backend, ReverseProxy
from trayupdater.schedule import retry_delay
from trayupdater.selfupdate import SelfUpdater
from trayupdater.status import Command, Phase, Status
from trayupdater.store import InstalledVersion, State, VersionStore, version_key

log = logging.getLogger(__name__)

RESTART_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
STABLE_AFTER = 60.0  # a child up this long resets the restart back-off
PROBATION_PROBE_INTERVAL = 1.0
DRAIN_TIMEOUT = 30.0


class Events:
    """Hooks for metrics and notifications; all no-ops by default."""

    def check_done(self, outcome: str) -> None: ...
    def updated(self, old: str | None, new: str) -> None: ...
    def rolled_back(self, old: str, new: str, automatic: bool, reason: str) -> None: ...
    def failed(self, reason: str, message: str) -> None: ...
    def download_bytes(self, count: int) -> None: ...


@dataclass
class _Job:
    command: Command | str  # str: internal events ("child_exited")
    done: threading.Event = field(default_factory=threading.Event)
    payload: object = None
    result: Status | None = None


class Updater:
    def __init__(
        self,
        config: Config,
        store: VersionStore,
        proxy: ReverseProxy,
        *,
        pipeline: ReleasePipeline | None = None,
        events: Events | None = None,
        check_on_start: bool = True,
        self_updater: SelfUpdater | None = None,
    ) -> None:
        self.config = config
        self.self_updater = self_updater
        self.store = store
        self.proxy = proxy
        self.events = events or Events()
        self.pipeline = pipeline or ReleasePipeline(config, store)
        self.pipeline.progress = self._on_progress
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._listeners: list[Callable[[Status], None]] = []
        self._lock = threading.Lock()
        self._state = State()
        self._status = Status(
            app_name=config.repo_name,
            proxy_url=f"http://{_host_for_url(config.bind)}:{config.port}",
        )
        self._child: Child | None = None
        self._child_started = 0.0
        self._restart_attempt = 0
        self._restart_at: float | None = None
        self._probation_until: float | None = None
        self._next_probe = 0.0
        self._next_check = 0.0 if check_on_start else time.monotonic() + self._interval()
        self._thread: threading.Thread | None = None
        self._downloaded: int | None = None  # bytes of the current download seen so far
        self._check_failures = 0  # failed checks in a row: the retry back-off (schedule.py)

    # --- Controller API (any thread) ---

    def status(self) -> Status:
        with self._lock:
            return self._status

    def subscribe(self, callback: Callable[[Status], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def send(self, command: Command, payload: object = None) -> None:
        self._queue.put(_Job(command, payload=payload))

    def request(self, command: Command, timeout: float = 300.0, payload: object = None) -> Status:
        """Queue a command and wait until the worker has handled it; the status after it."""
        job = _Job(command, payload=payload)
        self._queue.put(job)
        if not job.done.wait(timeout):
            raise TrayUpdaterError(f"{command.value} did not finish within {timeout:.0f} s")
        return job.result or self.status()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="update-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the children and the worker; safe after a QUIT already ended the worker."""
        if self._thread and self._thread.is_alive():
            self.send(Command.QUIT)  # a no-op if the worker is already on its way out
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has stopped (after QUIT); True if it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the worker thread ---

    def _run(self) -> None:
        try:
            self._boot()
        except Exception as exc:  # a bug must not leave the app with a dead worker silently
            log.exception("start-up failed")
            self._publish(phase=Phase.ERROR, error=str(exc), message=str(exc))
        while True:
            job = self._next_job()
            if job is None:
                self._on_timer()
                continue
            if job.command == Command.QUIT:
                self._shutdown()
                job.result = self.status()
                job.done.set()
                return
            try:
                self._handle(job)
            except Exception as exc:
                log.exception("handling %s failed", job.command)
                self._publish(error=str(exc), message=f"Internal error: {exc}")
            job.result = self.status()
            job.done.set()

    def _next_job(self) -> _Job | None:
        wake = min(
            t
            for t in (self._next_check, self._restart_at, self._probation_wakeup())
            if t is not None
        )
        try:
            return self._queue.get(timeout=max(0.0, wake - time.monotonic()))
        except queue.Empty:
            return None

    def _probation_wakeup(self) -> float | None:
        if self._probation_until is None:
            return None
        return min(self._probation_until, self._next_probe)

    def _handle(self, job: _Job) -> None:
        if job.command == Command.CHECK:
            self._check()
        elif job.command == Command.ROLLBACK:
            self._rollback(automatic=False, reason="rolled back by the user")
        elif job.command == Command.RESUME:
            self._state.blocked = []
            self._save()
            self._publish(blocked=(), message="Updates resumed")
        elif job.command in _PREFERENCES:
            # Skip / allow / pause / unpause: the rules live in preferences.py.
            try:
                message = preferences.apply(self._state, Command(job.command), job.payload)
            except TrayUpdaterError as exc:
                self._publish(message=str(exc))
                return
            self._save()
            self._publish(message=message)
            if job.command in (Command.ALLOW, Command.UNPAUSE):
                self._next_check = time.monotonic()  # what was held back may install now
        elif job.command == "child_exited":
            self._on_child_exit(job.payload)
        elif job.command == "self_update":
            self._self_update()

    def _on_timer(self) -> None:
        now = time.monotonic()
        if self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            self._restart_child()
        if self._probation_until is not None:
            if self._child is not None and not self._probe(self._child) and self._can_roll_back():
                self._probation_failed("it stopped answering its health check")
            elif now >= self._probation_until:
                self._probation_passed()
            else:
                self._next_probe = now + PROBATION_PROBE_INTERVAL
        if now >= self._next_check:
            self._check()

    # --- start-up and shutdown ---

    def _boot(self) -> None:
        removed = self.store.clean_temporary()
        if removed:
            log.info("removed leftovers of an interrupted run: %s", ", ".join(removed))
        self._state = self.store.load_state()
        if self._state.child_pid:
            # The app died without stopping its child (kill -9): make sure no stale copy
            # holds resources; the version is started afresh below.
            active = self._state.active and self.store.get(self._state.active)
            if active:
                kill_stale(self._state.child_pid, active.executable)
            self._state.child_pid = None
        self._publish_state()
        candidates = [v for v in (self._state.active, self._state.previous) if v]
        candidates += [v for v in reversed(self.store.installed()) if v not in candidates]
        for version in candidates:
            installed = self.store.get(version)
            if installed is None or (version in self._state.blocked and version != candidates[0]):
                continue
            try:
                child = self._start_child(installed)
            except ChildError as exc:
                self.events.failed(exc.reason, str(exc))
                log.error("could not start %s: %s", version, exc)
                continue
            self.proxy.switch(self._backend(child))
            remaining = (self._state.probation_until or 0.0) - time.time()
            if version != self._state.active:
                # The active version would not start: never fall back to it again.
                if self._state.active:
                    self._block(self._state.active)
                self._state.active = version
                self._state.previous = self._older_than(version)
                remaining = 0.0
            # Killed mid-probation: the new version still has to prove itself.
            self._set_probation(remaining if remaining > 0 and self._can_roll_back() else None)
            self._adopt_child(child)
            self._publish(phase=Phase.RUNNING, message=f"Running {version}", error=None)
            return
        if candidates:
            self._publish(phase=Phase.ERROR, error="no installed version could be started")
        else:
            self._publish(phase=Phase.NO_VERSION, message="No version installed yet")

    def _shutdown(self) -> None:
        self._publish(phase=Phase.STOPPING)
        self._probation_until = None
        child, self._child = self._child, None
        old = self.proxy.switch(None)
        self.proxy.drain(old, timeout=5.0)
        if child is not None:
            child.stop()
        self._state.child_pid = None
        self._state.child_port = None
        self._save()
        self._publish(phase=Phase.STOPPING, message="Stopped")

    # --- checking and updating ---

    def _check(self) -> None:
        self._next_check = time.monotonic() + self._interval()
        previous_phase = self.status().phase
        self._publish(phase=Phase.CHECKING, message="Checking…", error=None)
        outcome = "error"
        try:
            plan = self.pipeline.plan(self._state)
            self._state.last_check = time.time()
            self._state.latest_seen = plan.latest
            self._state.etag = self.pipeline.source.etag
            self._publish(
                latest=plan.latest,
                last_check=self._state.last_check,
                release_url=(plan.release.html_url or None) if plan.release else None,
                release_notes=plan.release.notes_headline if plan.release else "",
            )
            if not plan.should_install:
                outcome = "up_to_date" if plan.release else "no_release"
                if plan.newer and plan.asset is None:
                    self.pipeline.require_asset(plan)  # raises the "no asset" error
                self._publish(
                    phase=self._resting_phase(previous_phase), message=_capital(plan.summary())
                )
                return
            hold = preferences.hold_reason(self._state, plan.latest or "")
            if hold:
                outcome = "held"
                self._publish_state()
                self._publish(phase=self._resting_phase(previous_phase), message=hold)
                return
            release, asset = self.pipeline.require_asset(plan)
            self._publish(
                phase=Phase.DOWNLOADING,
                progress=0.0,
                message=f"Downloading {release.version_text}…",
            )
            self._downloaded = None
            installed = self.pipeline.install(release, asset)
            self._publish(progress=None, download_done=None, download_total=None)
            self._update_to(installed)
            outcome = "updated"
        except TrayUpdaterError as exc:
            self._fail(exc, previous_phase)
            self._check_failures += 1
            self._next_check = time.monotonic() + retry_delay(
                self._check_failures, self.config.check_interval, self.config.first_retry
            )
            if exc.reason == "rate_limited":
                retry_at = getattr(exc, "retry_at", 0.0)
                self._next_check = time.monotonic() + max(60.0, retry_at - time.time())
        finally:
            if outcome != "error":
                self._check_failures = 0
            self.events.check_done(outcome)
            self._save()
            if self.self_updater is not None:
                # Queued, not run here: the check's caller gets its answer first.
                self._queue.put(_Job("self_update"))

    def _update_to(self, installed: InstalledVersion) -> None:
        old_version = self._state.active
        self._publish(phase=Phase.UPDATING, message=f"Starting {installed.version}…")
        try:
            new_child = self._start_child(installed)
        except ChildError as exc:
            self._block(installed.version)
            raise ChildError(f"{installed.version} failed to start: {exc}; it is blocked") from None
        self._swap_to(new_child)
        self._state.previous = old_version
        self._state.active = installed.version
        self._set_probation(self.config.probation_seconds or None)
        self._save()
        log.info("updated %s -> %s", old_version, installed.version)
        if not self.config.probation_seconds:
            self._probation_passed()
        self.events.updated(old_version, installed.version)
        done = "Installed" if old_version is None else "Updated to"  # a first install is no update
        self._publish(phase=Phase.RUNNING, message=f"{done} {installed.version}", error=None)

    def _swap_to(self, new_child: Child) -> None:
        """Point the proxy at ``new_child``, drain the old generation, stop the old child."""
        old_child = self._child
        old_generation = self.proxy.switch(self._backend(new_child))
        self._adopt_child(new_child)
        if not self.proxy.drain(old_generation, timeout=DRAIN_TIMEOUT):
            log.warning("old backend still had requests after %.0f s; stopping it", DRAIN_TIMEOUT)
        if old_child is not None:
            log.info("drained %s; stopping it", old_child.version)
            old_child.stop()

    def _self_update(self) -> None:
        """Replace the app's own executable if a newer build is out (frozen builds)."""
        if self.self_updater is None or self._probation_until is not None:
            return  # one change at a time: the child's probation first
        if self.status().phase not in (Phase.RUNNING, Phase.NO_VERSION):
            return  # a successor must not be judged by a child that is failing anyway
        try:
            self.self_updater.check_and_apply(self)  # exits the process once handed over
        except TrayUpdaterError as exc:
            log.error("self-update: %s", exc)
            self.events.failed(exc.reason, str(exc))
            self._publish(message=str(exc))

    # selfupdate.Handover: what a self-update borrows from the running app.
    def listening_socket(self) -> socket.socket:
        return self.proxy.listening_socket()

    def retire(self) -> None:
        """A successor serves now: finish our requests, stop our child, keep state.json
        (the successor's now) as it is."""
        self.proxy.close()
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    def _set_probation(self, seconds: float | None) -> None:
        """Start (``seconds``) or end (None) the new version's probation. The deadline is
        also kept in state.json, so an app restarted mid-probation carries it on."""
        if seconds is None:
            self._probation_until = None
            self._state.probation_until = None
            return
        self._probation_until = time.monotonic() + seconds
        self._next_probe = time.monotonic() + PROBATION_PROBE_INTERVAL
        self._state.probation_until = time.time() + seconds

    def _probation_passed(self) -> None:
        self._set_probation(None)
        self._save()
        protect = {v for v in (self._state.active, self._state.previous) if v}
        removed = self.store.prune(self.config.keep_versions, protect)
        if removed:
            log.info("pruned old versions: %s", ", ".join(removed))

    def _probation_failed(self, why: str) -> None:
        bad = self._state.active or "?"
        self._set_probation(None)
        log.error("%s failed probation: %s; rolling back", bad, why)
        self._rollback(automatic=True, reason=f"{bad} {why} during probation")

    # --- rollback ---

    def _rollback(self, *, automatic: bool, reason: str) -> None:
        target = self._state.previous
        current = self._state.active
        if not target or self.store.get(target) is None:
            message = "Nothing to roll back to"
            self._publish(message=message)
            if automatic:
                self._fail(ChildError(f"{reason}; and there is no previous version"), Phase.ERROR)
            return
        installed = self.store.get(target)
        assert installed is not None
        self._publish(phase=Phase.ROLLING_BACK, message=f"Rolling back to {target}…")
        try:
            child = self._start_child(installed)
        except ChildError as exc:
            self._fail(ChildError(f"rollback to {target} failed: {exc}"), Phase.RUNNING)
            return
        self._set_probation(None)
        self._swap_to(child)
        if current:
            self._block(current)
        self._state.active = target
        self._state.previous = self._older_than(target)
        self._save()
        self.events.rolled_back(current or "?", target, automatic, reason)
        kind = "Automatically rolled back" if automatic else "Rolled back"
        self._publish(
            phase=Phase.RUNNING,
            message=f"{kind} to {target}" + (f": {reason}" if automatic else ""),
            error=None,
        )

    def _can_roll_back(self) -> bool:
        return bool(self._state.previous) and self.store.get(self._state.previous) is not None

    def _older_than(self, version: str) -> str | None:
        older = [
            v
            for v in self.store.installed()
            if version_key(v) < version_key(version) and v not in self._state.blocked
        ]
        return older[-1] if older else None

    def _block(self, version: str) -> None:
        if version not in self._state.blocked:
            self._state.blocked.append(version)
        self._save()

    # --- the running child ---

    def _start_child(self, installed: InstalledVersion) -> Child:
        log_path = child_log_path(self.config, installed.version)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        child = Child(
            installed.executable,
            installed.version,
            command=self.config.command,
            log_path=log_path,
            cwd=installed.folder,
            # simple-server (Go) shuts down gracefully on Interrupt only; SIGTERM kills it.
            stop_signal=getattr(signal, "SIGINT", None) if os.name == "posix" else None,
        )
        started = time.monotonic()
        child.start()
        try:
            child.wait_healthy(
                path=self.config.health_path,
                expect=self.config.health_expect,
                timeout=self.config.health_timeout,
            )
        except ChildError:
            child.stop()
            raise
        log.info(
            "%s healthy %.0f ms after start", installed.version, (time.monotonic() - started) * 1000
        )
        return child

    def _adopt_child(self, child: Child) -> None:
        """Make ``child`` the active one: remember it and watch it for an unexpected exit."""
        self._child = child
        self._child_started = time.monotonic()
        self._restart_at = None  # whatever was pending, this child is the one that runs now
        self._state.child_pid = child.pid
        self._state.child_port = child.port
        self._save()
        threading.Thread(
            target=self._watch, args=(child,), name=f"watch-{child.version}", daemon=True
        ).start()

    def _watch(self, child: Child) -> None:
        child.wait_exit()
        self._queue.put(_Job("child_exited", payload=child))

    def _on_child_exit(self, child: object) -> None:
        if child is not self._child or not isinstance(child, Child):
            return  # an old child we stopped on purpose
        code = child.returncode
        log.error("%s exited unexpectedly (code %s)", child.version, code)
        if self._probation_until is not None and self._can_roll_back():
            self._probation_failed(f"exited with code {code}")
            return
        self._set_probation(None)  # nothing to fall back to: keep restarting this one
        # 503 + Retry-After while it restarts, rather than connection errors.
        self.proxy.switch(None)
        self._child = None
        if time.monotonic() - self._child_started > STABLE_AFTER:
            self._restart_attempt = 0
        delay = RESTART_BACKOFF[min(self._restart_attempt, len(RESTART_BACKOFF) - 1)]
        self._restart_attempt += 1
        self._restart_at = time.monotonic() + delay
        self.events.failed("child_exit", f"{child.version} exited with code {code}")
        self._publish(
            phase=Phase.RESTARTING,
            error=f"{child.version} exited (code {code}); restarting in {delay:g} s",
        )

    def _restart_child(self) -> None:
        installed = self._state.active and self.store.get(self._state.active)
        if not installed:
            self._publish(phase=Phase.ERROR, error="the active version is no longer installed")
            return
        try:
            child = self._start_child(installed)
        except ChildError as exc:
            delay = RESTART_BACKOFF[min(self._restart_attempt, len(RESTART_BACKOFF) - 1)]
            self._restart_attempt += 1
            self._restart_at = time.monotonic() + delay
            self._publish(phase=Phase.RESTARTING, error=f"restart failed: {exc}")
            return
        self.proxy.switch(self._backend(child))
        self._adopt_child(child)
        self._publish(phase=Phase.RUNNING, message=f"Restarted {installed.version}", error=None)

    def _probe(self, child: Child) -> bool:
        if not child.is_alive():
            return False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=2.0)
            conn.request("GET", self.config.health_path)
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except (OSError, http.client.HTTPException):
            return False

    def _backend(self, child: Child) -> Backend:
        return Backend("127.0.0.1", child.port, child.version)

    # --- status ---

    def _fail(self, exc: TrayUpdaterError, resting: Phase) -> None:
        message = str(exc)
        log.error("%s: %s", exc.reason, message)
        self._state.last_error = message
        self.events.failed(exc.reason, message)
        phase = self._resting_phase(resting)
        self._publish(phase=phase, error=message, message=message, progress=None)

    def _resting_phase(self, fallback: Phase) -> Phase:
        if self._child is not None:
            return Phase.RUNNING
        if self._restart_at is not None:
            return Phase.RESTARTING
        if fallback in (Phase.NO_VERSION, Phase.ERROR):
            return fallback
        return Phase.NO_VERSION if not self.store.installed() else Phase.ERROR

    def _on_progress(self, done: int, total: int | None) -> None:
        # The first call of a download reports where it starts (a resume offset): a baseline.
        if self._downloaded is not None and done > self._downloaded:
            self.events.download_bytes(done - self._downloaded)
        self._downloaded = done
        if total:
            self._publish(progress=min(1.0, done / total), download_done=done, download_total=total)

    def _save(self) -> None:
        try:
            self.store.save_state(self._state)
        except OSError as exc:
            # The old state.json stays intact (atomic write); keep serving and say why.
            log.error("cannot save state: %s", exc)
            self.events.failed("storage", f"cannot save state: {exc.strerror or exc}")
            self._publish(error=f"cannot save state: {exc.strerror or exc}")
        self._publish_state()

    def _publish_state(self) -> None:
        previous = self._state.previous if self._state.previous in self.store.installed() else None
        reason = None if previous else "nothing to roll back to"
        self._publish(
            active=self._state.active,
            previous=previous,
            blocked=tuple(self._state.blocked),
            latest=self._state.latest_seen,
            last_check=self._state.last_check,
            rollback_reason=reason,
            skipped=self._state.skipped,
            paused=self._state.paused,
            paused_until=self._state.paused_until,
        )

    def _publish(self, **changes: object) -> None:
        with self._lock:
            new = replace(self._status, **changes)  # type: ignore[arg-type]
            if new == self._status:
                return
            self._status = new
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(new)
            except Exception:
                log.exception("status listener failed")

    def _interval(self) -> float:
        # Jitter spreads many installs' polls so they do not hit GitHub in step.
        return self.config.check_interval * random.uniform(0.9, 1.1)  # noqa: S311


_PREFERENCES = frozenset({Command.SKIP, Command.ALLOW, Command.PAUSE, Command.UNPAUSE})


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _host_for_url(bind: str) -> str:
    if bind in ("0.0.0.0", "::"):  # noqa: S104 - mapping a wildcard bind to a URL, not binding
        return "127.0.0.1"
    return f"[{bind}]" if ":" in bind else bind


def child_log_path(config: Config, version: str) -> Path:
    return config.logs_dir / f"child-{version}.log"
