"""Release sources behind one interface (:class:`Source`); see :mod:`.base`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trayupdater.sources.base import CheckResult, Source
from trayupdater.sources.github import GitHubSource

if TYPE_CHECKING:
    from trayupdater.cancel import Interrupt
    from trayupdater.config import Config

__all__ = ["CheckResult", "GitHubSource", "Source", "make_source"]


def make_source(
    config: Config, repo: str | None = None, *, interrupt: Interrupt | None = None
) -> Source:
    """The source the config names, for ``repo`` (default: the child's)."""
    return GitHubSource(
        repo or config.repo, api_url=config.api_url, token=config.token, interrupt=interrupt
    )
