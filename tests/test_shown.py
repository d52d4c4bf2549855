"""Text from elsewhere is escaped where it meets a log file or a terminal."""

from __future__ import annotations

import base64
import io
import logging

from trayupdater.errors import SourceError
from trayupdater.shown import LogFormatter, keep_secret, printable


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


def test_a_secret_sent_is_hidden_in_every_form_a_peer_could_send_back() -> None:
    keep_secret("Bearer ghp_SHOWNTEST0a1b2c3d4e5f")
    keep_secret("Basic " + base64.b64encode(b"fleet:c0rp%pa55word").decode())
    keep_secret("http%3A%2F%2Fodd%2Fsecret")  # percent-encoded, as in a proxy URL
    text = printable(
        "token ghp_SHOWNTEST0a1b2c3d4e5f, login fleet:c0rp%pa55word, "
        "password c0rp%pa55word, decoded http://odd/secret"
    )
    assert text == "token ***, login ***, password ***, decoded ***"


def test_short_secrets_are_not_hidden_everywhere() -> None:
    """A 3-character password would turn every "abc" of every message into ***."""
    keep_secret("abc")
    keep_secret("Bearer xy")
    assert printable("abc xy") == "abc xy"


def test_an_error_and_its_log_line_hide_a_secret_and_so_does_a_traceback() -> None:
    keep_secret("s3cret-TRACEBACK-value")
    error = SourceError("the server said s3cret-TRACEBACK-value", details="s3cret-TRACEBACK-value")
    assert "s3cret" not in str(error) and "s3cret" not in error.for_log()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogFormatter("%(message)s"))
    log = logging.getLogger("test.shown.secret")
    log.addHandler(handler)
    try:
        try:
            raise ValueError("s3cret-TRACEBACK-value")
        except ValueError:
            log.exception("failed with %s", "s3cret-TRACEBACK-value")
    finally:
        log.removeHandler(handler)
    assert "s3cret" not in out.getvalue() and "***" in out.getvalue()
