"""Text from elsewhere is escaped where it meets a log file or a terminal."""

from __future__ import annotations

import io
import logging

from trayupdater.errors import SourceError
from trayupdater.shown import LogFormatter, printable


def _log(*args: object, exc: bool = False) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test-shown")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception(*args)
        else:
            logger.error(*args)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_no_message_can_forge_a_log_line_or_hold_an_escape_sequence() -> None:
    text = _log("check failed: %s", "v9\x1b]0;x\x07\n2030-01-01 INFO forged\u2028more\r")
    assert text == "ERROR check failed: v9\\x1b]0;x\\x07\\n2030-01-01 INFO forged\\u2028more\\x0d\n"


def test_details_and_tracebacks_keep_their_own_lines() -> None:
    error = SourceError("cannot reach the feed", details="line one\nline two")
    assert _log("%s", error.for_log()).splitlines() == [
        "ERROR cannot reach the feed",
        "    | line one",
        "    | line two",
    ]
    lines = _log("failed", exc=True).splitlines()
    assert lines[0] == "ERROR failed" and lines[1] == "Traceback (most recent call last):"


def test_printable_keeps_text_and_escapes_controls() -> None:
    assert printable("naïve — ok\tfine") == "naïve — ok\tfine"
    assert printable("a\nb") == "a\nb" and printable("a\nb", newlines=False) == "a\\nb"
    assert printable("\x9b31m") == "\\x9b31m"  # the C1 form of ESC [
