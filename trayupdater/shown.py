"""Text that came from elsewhere (a release source, a server, a child), made safe to show.

A tag name or an error message from a server may hold control characters: escape sequences
that retitle or clear a terminal, or a newline that forges a line of the log file
(``2030-01-01 ... INFO trayupdater: updated ...``). So wherever text meets a terminal or a
log it passes through here: C0 and C1 control characters, DEL and the Unicode line
separators are written as escapes (``\\x1b``). Tabs stay, and so do newlines where the
output keeps them: in the log only before an indented line (the details
:meth:`~trayupdater.errors.TrayUpdaterError.for_log` adds), so no message can start a line
of its own.
"""

from __future__ import annotations

import logging
import re

_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # \t and \n aside
_BARE_NEWLINE = re.compile(r"\n(?![ \t])")  # one that would start a line at column 0


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str, *, newlines: bool = True) -> str:
    """``text`` with control characters escaped; newlines too unless ``newlines``."""
    text = _CONTROLS.sub(_escape, text)
    return text if newlines else text.replace("\n", "\\n")


class LogFormatter(logging.Formatter):
    """A formatter whose messages cannot hold control characters or forge a log line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _BARE_NEWLINE.sub(r"\\n", printable(record.message))
        return super().formatMessage(record)
