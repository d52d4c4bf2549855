"""Text that came from elsewhere (a release source, a server, a child), made safe to show.

A tag name or an error message from a server may hold control characters: escape sequences
that retitle or clear a terminal, or a newline that forges a line of the log file
(``2030-01-01 ... INFO trayupdater: updated ...``). So wherever text meets a terminal or a
log it passes through here: C0 and C1 control characters, DEL and the Unicode line
separators are written as escapes (``\\x1b``). Tabs stay, and so do newlines where the
output keeps them: in the log only before an indented line (the details
:meth:`~trayupdater.errors.TrayUpdaterError.for_log` adds), so no message can start a line
of its own.

Secrets are kept out the same way. The token and a proxy's password go only to the origin
they are for, but that origin can send them back: a proxy that quotes its login in a
refusal, an API whose error or tag name holds the token. Whatever the app sends as a
credential is registered with :func:`keep_secret`, and :func:`printable` (so every log
line, notification and terminal message) and :func:`without_secrets` write it as ``***``.
Values under :data:`MIN_SECRET` characters are not registered: hiding "abc" everywhere
would garble messages more than it protects.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from urllib.parse import unquote

MIN_SECRET = 6
_secrets: tuple[str, ...] = ()  # longest first, so that a secret inside another goes too
_secrets_lock = threading.Lock()
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # \t and \n aside
_BARE_NEWLINE = re.compile(r"\n(?![ \t])")  # one that would start a line at column 0


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def keep_secret(value: str | None) -> None:
    """Never show ``value`` (a token, a password, a credential header) from now on; for a
    header value such as ``Bearer X`` or ``Basic X``, neither ``X``."""
    global _secrets
    if not value:
        return
    forms = {value, unquote(value)}
    scheme, _, credential = value.partition(" ")
    if credential and scheme.isalpha():
        forms.add(credential.strip())
        if scheme.lower() == "basic":  # user:password, as a proxy may quote it decoded
            try:
                login = base64.b64decode(credential, validate=True).decode()
            except ValueError:  # binascii.Error and UnicodeDecodeError among them
                login = ""
            forms |= {login, login.partition(":")[2]}
    new = {form for form in forms if len(form) >= MIN_SECRET}
    with _secrets_lock:
        if not new - set(_secrets):
            return
        _secrets = tuple(sorted(new | set(_secrets), key=len, reverse=True))


def without_secrets(text: str) -> str:
    """``text`` with every registered secret written as ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def printable(text: str, *, newlines: bool = True) -> str:
    """``text`` with control characters escaped (newlines too unless ``newlines``) and no
    registered secret."""
    text = _CONTROLS.sub(_escape, without_secrets(text))
    return text if newlines else text.replace("\n", "\\n")


class LogFormatter(logging.Formatter):
    """A formatter whose messages cannot hold control characters or forge a log line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _BARE_NEWLINE.sub(r"\\n", printable(record.message))
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return without_secrets(super().format(record))  # a traceback's text too
