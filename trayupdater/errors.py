"""Exceptions shared across the update pipeline.

Every failure the user can see carries a short, stable ``reason`` label: it is what the
tray shows next to the message and what metrics count failures by.
"""

from __future__ import annotations


class TrayUpdaterError(Exception):
    """Base class: an expected failure with a message meant for the user.

    ``str(exc)`` is one sentence for the status line and notifications; ``details`` (a
    child's log excerpt, say) go to the log file only, indented below the message.
    """

    reason = "error"

    def __init__(self, message: str = "", *, details: str = "") -> None:
        super().__init__(message)
        self.details = details

    def for_log(self) -> str:
        """The message, then the details indented below it (never glued to it)."""
        if not self.details:
            return str(self)
        lines = self.details.rstrip().splitlines()
        return str(self) + "".join(f"\n    | {line}" for line in lines)


class ConfigError(TrayUpdaterError):
    reason = "config"


class SourceError(TrayUpdaterError):
    """The release source could not be asked or answered nonsense."""

    reason = "source"


class RateLimitedError(SourceError):
    reason = "rate_limited"

    def __init__(self, message: str, retry_at: float) -> None:
        super().__init__(message)
        self.retry_at = retry_at  # time.time() value after which asking again is allowed


class NoMatchingAssetError(TrayUpdaterError):
    reason = "no_asset"


class DownloadError(TrayUpdaterError):
    reason = "download"


class VerificationError(TrayUpdaterError):
    reason = "verification"


class ExtractionError(TrayUpdaterError):
    reason = "extraction"


class StorageError(TrayUpdaterError):
    """The data folder could not be written: disk full, read-only, permissions."""

    reason = "storage"


class SelfUpdateError(TrayUpdaterError):
    """Replacing the app's own executable failed; the running version keeps serving."""

    reason = "self_update"


class ChildError(TrayUpdaterError):
    """A child version failed to start, to become healthy or to stay healthy."""

    reason = "child"


class InternalError(TrayUpdaterError):
    """A bug: an unexpected exception the update worker caught so that it could go on."""

    reason = "internal"
