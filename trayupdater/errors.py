"""Exceptions shared across the update pipeline.

Every failure the user can see carries a short, stable ``reason`` label: it is what the
tray shows next to the message and what metrics count failures by.
"""

from __future__ import annotations

from trayupdater.shown import without_secrets


class TrayUpdaterError(Exception):
    """Base class: an expected failure with a message meant for the user.

    ``str(exc)`` is one sentence for the status line and notifications; ``details`` (a
    child's log excerpt, say) go to the log file only, indented below the message.
    """

    reason = "error"

    def __init__(self, message: str = "", *, details: str = "") -> None:
        super().__init__(message)
        self.details = details

    def __str__(self) -> str:
        # A message may quote what a server sent; a server may send the token back.
        return without_secrets(super().__str__())

    def for_log(self) -> str:
        """The message, then the details indented below it (never glued to it)."""
        if not self.details:
            return str(self)
        lines = without_secrets(self.details).rstrip().splitlines()
        return str(self) + "".join(f"\n    | {line}" for line in lines)


class ConfigError(TrayUpdaterError):
    reason = "config"


class PlatformError(ConfigError, ValueError):
    """An OS/CPU name or an asset pattern that cannot be understood or is not supported.

    A ConfigError because the fix is in the config (``platform``/``asset_pattern``), and a
    ValueError so callers parsing text can catch the usual type.
    """


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


class MetadataExpiredError(SourceError):
    """The update repository's signed metadata is past its expiry date: nothing new is
    installed until the publisher re-signs it; what runs keeps running."""

    reason = "metadata_expired"

    def __init__(self, message: str, expired_at: str | None = None) -> None:
        super().__init__(message)
        self.expired_at = expired_at  # ISO 8601 UTC, when known


class UntrustedMetadataError(SourceError):
    """The update repository served metadata that does not verify (a rollback to older
    versions, a bad signature, a file that does not match what signed metadata says)."""

    reason = "untrusted_metadata"


class PublishError(TrayUpdaterError):
    """A ``trayupdater repo`` command could not go ahead, or what it left does not verify."""

    reason = "publish"
