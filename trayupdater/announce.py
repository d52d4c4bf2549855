"""Which status changes deserve a desktop notification, and in what words.

Only transitions count: an install, update or rollback finishing (its message appears), a
failure starting, and the end of a check the user asked for. A failure with the same text
(numbers ignored, so "restarting in 4 s" equals "restarting in 8 s") is announced again
only after the app recovered in between and ``repeat_after`` seconds passed: an offline
machine or a crash loop gets one notification, not one per poll.

Notifications are one sentence: pids, ports and log excerpts stay in the log (the
"details" action opens it). Each notice names the actions that fit it; the notifier shows
them as buttons where the desktop supports that.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from trayupdater.failsafe import START_FAILED
from trayupdater.status import Phase, Status

FAILURE_REPEAT_AFTER = 300.0  # seconds before the same failure may be announced again
SENTENCE_LIMIT = 140

# Action keys a notice may carry (the tray maps them to what they do).
OPEN, ROLLBACK, DETAILS, WHATS_NEW = "open", "rollback", "details", "whats_new"
ACTION_LABELS = {
    OPEN: "Open",
    ROLLBACK: "Roll back",
    DETAILS: "Show error details",
    WHATS_NEW: "What's new",
}
_RESTING = (Phase.RUNNING, Phase.NO_VERSION, Phase.ERROR, Phase.RESTARTING)
_BUSY = (Phase.CHECKING, Phase.DOWNLOADING, Phase.UPDATING)


@dataclass(frozen=True)
class Notice:
    title: str
    message: str
    actions: tuple[str, ...] = ()


def one_sentence(text: str) -> str:
    """A failure as a notification says it: first line, no pids, ports or log tails."""
    text = text.split("\n", 1)[0]
    text = re.sub(r";? its log ends with:.*$", "", text)
    text = re.sub(r"\s*\((?:pid|port)\b[^)]*\)", "", text)
    text = re.sub(r"\s+on port \d+", "", text)
    text = " ".join(text.split()).rstrip(":;, ")
    if len(text) > SENTENCE_LIMIT:
        text = text[: SENTENCE_LIMIT - 1].rstrip() + "…"
    return text[:1].upper() + text[1:]


class Announcer:
    def __init__(
        self,
        first: Status,
        *,
        clock: Callable[[], float] = time.monotonic,
        repeat_after: float = FAILURE_REPEAT_AFTER,
    ) -> None:
        self._last = first
        self._clock = clock
        self._repeat_after = repeat_after
        self._failure_key: str | None = None
        self._failure_at = 0.0
        self._recovered = True
        self._check_asked = False  # the user clicked "Check for updates"
        self._check_seen = False  # ... and the worker has started on it

    def expect_check_result(self) -> None:
        """The user asked for a check: its end is announced whatever it found."""
        self._check_asked, self._check_seen = True, False

    def notices(self, new: Status) -> list[Notice]:
        old, self._last = self._last, new
        found: list[Notice] = []
        app = new.app_name
        if new.message != old.message:
            done = self._outcome(new)
            if done is not None:
                found.append(done)
        if new.error is None and new.phase is Phase.RUNNING:
            self._recovered = True
        if new.error and new.error != old.error:
            forced = self._check_asked and self._check_seen and new.phase in _RESTING
            if self._is_new_failure(new.error) or forced:
                actions = (DETAILS, ROLLBACK) if new.can_roll_back else (DETAILS,)
                title = (
                    "TrayUpdater could not start"
                    if new.extra.get(START_FAILED)
                    else (f"{app}: problem")
                )
                found.append(Notice(title, one_sentence(new.error), actions))
        if self._check_asked:
            if new.phase in _BUSY:
                self._check_seen = True
            elif self._check_seen and new.phase in _RESTING:
                self._check_asked = False
                if not found:
                    when = time.strftime("%H:%M", time.localtime(new.last_check or time.time()))
                    text = new.message or "Check finished"
                    found.append(Notice(app, f"{text} — checked {when}", (OPEN,)))
        return found

    @staticmethod
    def _outcome(new: Status) -> Notice | None:
        app, message = new.app_name, new.message
        if message.startswith("Installed "):
            return Notice(f"{app} installed", message, (OPEN,))
        if message.startswith("Updated to "):
            notes = new.release_notes if new.latest == new.active else ""
            text = f"{message}: {notes}" if notes else message
            actions = [OPEN]
            if new.can_roll_back:
                actions.append(ROLLBACK)
            if new.release_url:
                actions.append(WHATS_NEW)
            return Notice(f"{app} updated", text, tuple(actions))
        if message.startswith(("Rolled back to", "Automatically rolled back to")):
            return Notice(f"{app} rolled back", one_sentence(message), (OPEN,))
        return None

    def _is_new_failure(self, error: str) -> bool:
        key = re.sub(r"\d+(?:\.\d+)*", "#", error)
        now = self._clock()
        repeat = self._recovered and now - self._failure_at >= self._repeat_after
        if key == self._failure_key and not repeat:
            return False
        self._failure_key, self._failure_at, self._recovered = key, now, False
        return True
