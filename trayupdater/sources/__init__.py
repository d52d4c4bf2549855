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
    from trayupdater.network import Network

    network = Network.from_config(config)
    if config.kind == "tuf" and repo is None:
        # Imported here: python-tuf is loaded only by the installations that use it.
        from trayupdater.sources.tuf_source import TufSource, cache_dir_for

        return TufSource(
            metadata_url=config.tuf_metadata_url,
            targets_url=config.tuf_targets_url,
            cache_dir=cache_dir_for(config.data_dir, config.tuf_metadata_url),
            trusted_root=config.trusted_root,
            interrupt=interrupt,
            network=network,
        )
    return GitHubSource(
        repo or config.repo,
        api_url=config.api_url,
        token=config.token,
        interrupt=interrupt,
        network=network,
    )
