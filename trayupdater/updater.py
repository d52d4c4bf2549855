"""The update worker: the one thread that owns update state.

Everything that changes what runs goes through its queue: the check timer, "check now",
"roll back", "resume", "quit", and the monitors' "a child went down". Handling them one at
a time on one thread is what makes tray clicks, CLI commands and timers race-free.

A check: pipeline (ask the source, pick, download, verify, install) -> :mod:`serving`
(start, soak, switch with the old child warm, probation, rollback). Every step can fail;
a failure leaves the current version serving and is reported in the status.

The worker survives anything: an unexpected exception in any job is logged once with its
traceback, counted as ``failures_total{reason="internal"}``, shown in the status, and the
loop goes on. "Roll back" and "Quit" interrupt network I/O that is under way
(:mod:`cancel`), so they never wait behind a slow download.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from trayupdater import preferences
from trayupdater.cancel import CancelledError, Interrupt
from trayupdater.children import Child
from trayupdater.config import Config
from trayupdater.errors import InternalError, StorageError, TrayUpdaterError
from trayupdater.events import Events
from trayupdater.pipeline import Plan, ReleasePipeline
from trayupdater.proxy import ReverseProxy
from trayupdater.rollout import note_recalls, recall_reason
from trayupdater.schedule import MAX_NAP, retry_delay, since_boot
from trayupdater.selfupdate import SelfUpdater
from trayupdater.serving import Hooks, Serving, child_log_path
from trayupdater.shown import without_secrets
from trayupdater.status import Command, Phase, Status
from trayupdater.store import State, VersionStore

__all__ = ["Events", "Updater", "child_log_path"]

log = logging.getLogger(__name__)

# Commands that must not wait behind a download: they interrupt network I/O.
URGENT = frozenset({Command.ROLLBACK, Command.QUIT})


@dataclass
class _Job:
    command: Command | str  # str: internal events ("child_down", "self_update")
    done: threading.Event = field(default_factory=threading.Event)
    payload: object = None
    result: Status | None = None
    refused: str | None = None  # why the worker refused it (an update control)


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
        self._clock = since_boot  # checks are scheduled on it: it counts sleep (schedule.py)
        self.self_updater = self_updater
        self.store = store
        self.proxy = proxy
        self.events = events or Events()
        self.interrupt = Interrupt()
        self.pipeline = pipeline or ReleasePipeline(config, store, interrupt=self.interrupt)
        self.pipeline.progress = self._on_progress
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._listeners: list[Callable[[Status], None]] = []
        self._lock = threading.Lock()
        self._state = State()
        self._status = Status(
            app_name=config.repo_name,
            proxy_url=f"http://{_host_for_url(config.bind)}:{config.port}",
        )
        hooks = Hooks(
            state=lambda: self._state,
            save=self._save,
            publish=self._publish,
            post=lambda kind, payload: self._queue.put(_Job(kind, payload=payload)),
            events=self.events,
        )
        self.serving = Serving(config, store, proxy, hooks, self.interrupt)
        self._next_check = 0.0 if check_on_start else self._clock() + self._interval()
        self._thread: threading.Thread | None = None
        self._downloaded: int | None = None  # bytes of the current download seen so far
        self._check_failures = 0  # failed checks in a row: the retry back-off (schedule.py)
        # Called by retire(): the app lets go of what says "I am the app" (control endpoint,
        # instance lock, tray icon) while this process watches its successor on probation.
        self.on_retire: list[Callable[[], None]] = []

    # --- Controller API (any thread) ---

    def status(self) -> Status:
        with self._lock:
            return self._status

    def subscribe(self, callback: Callable[[Status], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def send(self, command: Command, payload: object = None) -> None:
        self._enqueue(_Job(command, payload=payload))

    def request(self, command: Command, timeout: float = 300.0, payload: object = None) -> Status:
        """Queue a command and wait until the worker has handled it; the status after it."""
        job = _Job(command, payload=payload)
        self._enqueue(job)
        if not job.done.wait(timeout):
            raise TrayUpdaterError(f"{command.value} did not finish within {timeout:.0f} s")
        if job.refused is not None:
            # Said only in the status message, a refusal looked like success to the CLI
            # (exit 0): the caller must hear it.
            raise preferences.PreferenceError(job.refused)
        return job.result or self.status()

    def _enqueue(self, job: _Job) -> None:
        if job.command in URGENT:
            # Before the put: once the worker takes the job it calls handled().
            self.interrupt.request(str(job.command.value))  # type: ignore[union-attr]
        self._queue.put(job)

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
        self._guard("start-up", self._boot)
        while True:
            job = self._next_job()
            if job is None:
                self._guard("a scheduled check", self._on_timer)
                continue
            if job.command in URGENT:
                self.interrupt.handled(str(job.command.value))  # type: ignore[union-attr]
            if job.command == Command.QUIT:
                self._guard("shutting down", self._shutdown)
                job.result = self.status()
                job.done.set()
                return
            name = str(getattr(job.command, "value", job.command))
            self._guard(name, lambda job=job: self._handle(job))
            job.result = self.status()
            job.done.set()

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        """Run one job; whatever it raises, the worker and the current version go on."""
        try:
            action()
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("internal error while handling %s", what)
            error = InternalError(f"Internal error while handling {what}: {exc!r}"[:300])
            self.events.failed(error.reason, str(error))
            self._publish(error=str(error), message=str(error), progress=None)
            try:
                self._publish(phase=self.serving.resting_phase(self.status().phase))
            except Exception:
                log.exception("cannot tell the phase after an internal error")

    def _next_job(self) -> _Job | None:
        # Two clocks (schedule.py): checks count time asleep, a child's timers do not.
        waits = [self._next_check - self._clock(), MAX_NAP]
        serving = self.serving.wakeup()
        if serving is not None:
            waits.append(serving - time.monotonic())
        try:
            return self._queue.get(timeout=max(0.0, min(waits)))
        except queue.Empty:
            return None

    def _handle(self, job: _Job) -> None:
        if job.command == Command.CHECK:
            self._check(manual=True)  # queued commands come from a user (tray, CLI)
        elif job.command == Command.ROLLBACK:
            self.serving.rollback(automatic=False, reason="rolled back by the user")
        elif job.command == Command.RESUME:
            self._state.blocked = []
            self._save()
            self._publish(blocked=(), message="Updates resumed")
        elif job.command in _PREFERENCES:
            # Skip / allow / pause / unpause: the rules live in preferences.py.
            try:
                message = preferences.apply(self._state, Command(job.command), job.payload)
            except TrayUpdaterError as exc:
                job.refused = str(exc)
                self._publish(message=str(exc))
                return
            self._save()
            self._publish(message=message)
            if job.command in (Command.ALLOW, Command.UNPAUSE):
                self._next_check = self._clock()  # what was held back may install now
        elif job.command == "child_down":
            child, why = job.payload  # type: ignore[misc]
            assert isinstance(child, Child)
            self.serving.child_down(child, str(why))
        elif job.command == "reinstall":  # a damaged install was removed (serving.repair)
            self._check()
        elif job.command == "self_update":
            self._self_update()

    def _on_timer(self) -> None:
        self.serving.on_timer()
        if self._clock() >= self._next_check:
            self._check()

    # --- start-up and shutdown ---

    def _boot(self) -> None:
        try:
            removed = self.store.clean_temporary()
            if removed:
                log.info("removed leftovers of an interrupted run: %s", ", ".join(removed))
            self._state = self.store.load_state()
            self._publish_state()
            self.serving.boot()
        except BaseException:
            # App._start holds requests until boot says what serves: nothing will, so they
            # get 503 now instead of after hold_seconds.
            self.proxy.switch(None)
            raise

    def _shutdown(self) -> None:
        self._publish(phase=Phase.STOPPING)
        self.serving.shutdown()
        self._save()
        self._publish(phase=Phase.STOPPING, message="Stopped")

    # --- checking and updating ---

    def _check(self, *, manual: bool = False) -> None:
        """``manual``: a user asked (the rollout may be bypassed); the timer's are not."""
        self._next_check = self._clock() + self._interval()
        previous_phase = self.status().phase
        self._publish(phase=Phase.CHECKING, message="Checking…", error=None)
        outcome = "error"
        try:
            plan = self.pipeline.plan(self._state, manual=manual)
            self._state.last_check = time.time()
            self._state.latest_seen = plan.latest
            self._state.etag = self.pipeline.source.etag
            self._publish(
                latest=plan.latest,
                last_check=self._state.last_check,
                release_url=plan.release.page if plan.release else None,
                release_notes=plan.release.notes_headline if plan.release else "",
            )
            if self._follow_recalls(plan):  # rolled back: what may it take from there?
                plan = self.pipeline.plan(self._state, manual=manual)
                if not plan.should_install:
                    outcome = "up_to_date"
                    self._publish(latest=plan.latest, notice=plan.notice)
                    return  # the rollback's message stands
            self._publish(notice=plan.notice)
            if not plan.should_install:
                outcome = "up_to_date" if plan.release else "no_release"
                if plan.newer and plan.asset is None:
                    self.pipeline.require_asset(plan)  # raises the "no asset" error
                self._publish(
                    phase=self.serving.resting_phase(previous_phase),
                    message=_capital(plan.summary()),
                )
                return
            hold = preferences.hold_reason(self._state, plan.latest or "")
            if hold:
                outcome = "held"
                self._publish_state()
                self._publish(phase=self.serving.resting_phase(previous_phase), message=hold)
                return
            release, asset = self.pipeline.require_asset(plan)
            self._publish(
                phase=Phase.DOWNLOADING,
                progress=0.0,
                message=f"Downloading {release.version_text}…",
            )
            self._downloaded = None
            installed = self.pipeline.install(release, asset)
            self._publish(
                progress=None,
                download_done=None,
                download_total=None,
                phase=Phase.UPDATING,
                message=f"Starting {release.version_text}…",
            )
            old = self._state.active
            self.serving.update_to(installed)
            self.events.updated(old, installed.version)
            done = "Installed" if old is None else "Updated to"  # a first install is no update
            self._publish(phase=Phase.RUNNING, message=f"{done} {installed.version}", error=None)
            outcome = "updated"
        except CancelledError as exc:
            outcome = "cancelled"
            log.info("check stopped: %s", exc)
            self._publish(
                phase=self.serving.resting_phase(previous_phase),
                message="Update paused for a command; it resumes at the next check",
                progress=None,
            )
        except TrayUpdaterError as exc:
            self._fail(exc, previous_phase)
            self._check_failures += 1
            self._next_check = self._clock() + retry_delay(
                self._check_failures, self.config.check_interval, self.config.first_retry
            )
            if exc.reason == "rate_limited":
                retry_at = getattr(exc, "retry_at", 0.0)
                self._next_check = self._clock() + max(60.0, retry_at - time.time())
        except OSError as exc:
            # The data folder went read-only or full under a running app: say which.
            self._fail(_storage_error(exc, self.config), previous_phase)
        finally:
            if outcome not in ("error", "cancelled"):
                self._check_failures = 0
            self.events.check_done(outcome)
            self._save()
            if self.self_updater is not None:
                # Queued, not run here: the check's caller gets its answer first.
                self._queue.put(_Job("self_update"))

    def _follow_recalls(self, plan: Plan) -> bool:
        """Block recalled versions (saved with the check); leave the active one if the
        publisher recalled it. True if it rolled back."""
        if note_recalls(self._state, plan.releases, self.store.installed()) and plan.release:
            plan.blocked = plan.release.version_text in self._state.blocked  # maybe lifted
        if plan.active_recalled:
            if self.serving.leave_recalled(recall_reason(plan.current or "")):
                return True
            plan.recall_kept = True
        return False

    def _self_update(self) -> None:
        """Replace the app's own executable if a newer build is out (frozen builds)."""
        if self.self_updater is None or self.serving.probation_until is not None:
            return  # one change at a time: the child's probation first
        if self.status().phase not in (Phase.RUNNING, Phase.NO_VERSION):
            return  # a successor must not be judged by a child that is failing anyway
        try:
            self.self_updater.check_and_apply(self)  # exits the process once handed over
        except TrayUpdaterError as exc:
            log.error("self-update: %s", exc.for_log())
            self.events.failed(exc.reason, str(exc))
            self._publish(message=str(exc))

    # selfupdate.Handover: what a self-update borrows from the running app.
    def listening_socket(self) -> socket.socket:
        return self.proxy.listening_socket()

    def retire(self) -> None:
        """A successor serves now: finish our requests, stop our child, keep state.json
        (the successor's now) as it is."""
        self.proxy.close()
        for callback in list(self.on_retire):
            try:
                callback()
            except Exception:
                log.exception("retire callback failed")
        self.serving.retire()

    def quitting(self) -> bool:
        # An urgent command waits; once retired (no control endpoint, no menu) that is a
        # quit from a signal, e.g. at logout.
        return self.interrupt.pending

    # --- status ---

    def _fail(self, exc: TrayUpdaterError, resting: Phase) -> None:
        message = str(exc)
        log.error("%s", exc.for_log())
        self._state.last_error = message
        self.events.failed(exc.reason, message)
        phase = self.serving.resting_phase(resting)
        self._publish(phase=phase, error=message, message=message, progress=None)

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
            error = _storage_error(exc, self.config)
            log.error("cannot save state: %s", error)
            self.events.failed(error.reason, str(error))
            self._publish(error=str(error))
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
        # An error may quote what a server sent, and a server may send the token back.
        changes = {k: without_secrets(v) if isinstance(v, str) else v for k, v in changes.items()}
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


def _storage_error(exc: OSError, config: Config) -> StorageError:
    where = exc.filename or config.data_dir
    return StorageError(
        f"cannot write to {where}: {exc.strerror or exc} — the data folder must be writable "
        f"({config.data_dir}); the current version keeps running"
    )


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _host_for_url(bind: str) -> str:
    if bind in ("0.0.0.0", "::"):  # noqa: S104 - mapping a wildcard bind to a URL, not binding
        return "127.0.0.1"
    return f"[{bind}]" if ":" in bind else bind
