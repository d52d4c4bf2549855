"""Plain data describing a release and its assets, independent of where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Asset:
    name: str
    api_url: str  # GET with Accept: application/octet-stream answers the bytes (or a redirect)
    download_url: str  # browser_download_url: public, no token needed
    size: int = 0
    # "sha256:<hex>" as GitHub computes it for assets uploaded since mid-2025; None before.
    digest: str | None = None

    @property
    def sha256(self) -> str | None:
        if self.digest and self.digest.lower().startswith("sha256:"):
            return self.digest.split(":", 1)[1].lower()
        return None


@dataclass(frozen=True)
class Release:
    tag: str
    version: Version
    prerelease: bool = False
    assets: tuple[Asset, ...] = field(default_factory=tuple)
    published_at: str = ""
    html_url: str = ""  # the release page, for "What's new"
    notes: str = ""  # the release body (Markdown), as published

    @property
    def version_text(self) -> str:
        """The version as users read it and as the version store names folders."""
        return str(self.version)

    def asset(self, name: str) -> Asset | None:
        return next((a for a in self.assets if a.name == name), None)


def parse_version(tag: str) -> Version | None:
    """``v1.2.3``, ``1.2.3`` and ``1.2.3-rc.1`` -> Version; anything else -> None."""
    text = tag.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    try:
        return Version(text)
    except InvalidVersion:
        return None
