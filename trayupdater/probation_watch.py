"""The app's own probation: after a self-update, the old process watches the new one.

A child server that dies soon after its health check is rolled back (:mod:`serving`); a
new build of the app that does so would leave nothing running, its predecessor gone.
So once the successor reports ready, the predecessor commits and retires (proxy, child,
control endpoint, instance lock, tray icon) but stays: it started the successor, so it
is its parent and learns how it ends. For ``probation_seconds``:

- still running at the end: **passed**, the predecessor exits;
- exited with code 0: the user quit it (or logged out): **quit**, nothing to undo;
- any other code, or killed by a signal: **crashed**; the caller puts the old build back,
  blocks the version and hands the listening socket, which it held meanwhile, to the old
  build started again (``SelfUpdater._start_old_build``);
- the predecessor is told to quit meanwhile (a logout's SIGTERM reaches it too):
  **stopped**, it exits without judging.

The ``.old`` build is there to put back for the whole probation: the successor removes
it only once our channel has closed and our process is gone (``Successor._await_commit``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from trayupdater.processes import describe_exit

STEP = 0.1  # how often a quit of the predecessor is noticed


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "passed" | "quit" | "crashed" | "stopped"
    reason: str = ""

    @property
    def crashed(self) -> bool:
        return self.outcome == "crashed"


def watch_successor(
    proc: subprocess.Popen[bytes],
    version: str,
    seconds: float,
    stopping: Callable[[], bool],
) -> Verdict:
    """Wait until ``proc`` (the successor, running ``version``) ends, ``seconds`` pass or
    ``stopping()`` is true; how it went. ``seconds`` 0: no probation."""
    started = time.monotonic()
    deadline = started + seconds
    while True:
        remaining = deadline - time.monotonic()
        try:
            code = proc.wait(max(0.0, min(STEP, remaining)))
            break
        except subprocess.TimeoutExpired:
            pass
        if stopping():
            return Verdict("stopped", "the old process was told to quit during the probation")
        if remaining <= 0:
            return Verdict("passed")
    elapsed = time.monotonic() - started
    after = f"after {elapsed:.1f} s" if elapsed < 10 else f"after {elapsed:.0f} s"
    if code == 0:
        return Verdict("quit", f"{version} quit {after} (exit code 0)")
    return Verdict("crashed", f"{version} {describe_exit(code)} {after} (on probation)")
