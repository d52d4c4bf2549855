"""Plain data describing a release and its assets, independent of where it came from."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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

    @classmethod
    def from_github(cls, data: Mapping[str, Any]) -> Asset:
        return cls(
            name=str(data["name"]),
            api_url=str(data.get("url") or ""),
            download_url=str(data.get("browser_download_url") or ""),
            size=int(data.get("size") or 0),
            digest=data.get("digest") or None,
        )


@dataclass(frozen=True)
class Release:
    tag: str
    version: Version
    prerelease: bool = False
    assets: tuple[Asset, ...] = field(default_factory=tuple)
    published_at: str = ""
    html_url: str = ""
    notes: str = ""  # the release body (Markdown), at most MAX_NOTES characters

    @property
    def notes_headline(self) -> str:
        """The first line of the notes that says something, as plain text (for a
        notification): headings such as "## What's Changed" and list bullets are skipped."""
        return notes_headline(self.notes)

    @property
    def version_text(self) -> str:
        """The version as users read it and as the version store names folders."""
        return str(self.version)

    def asset(self, name: str) -> Asset | None:
        return next((a for a in self.assets if a.name == name), None)


MAX_NOTES = 64 * 1024
HEADLINE_LIMIT = 120


def notes_headline(notes: str) -> str:
    lines = [line.strip() for line in notes.splitlines() if line.strip()]
    text = next((line for line in lines if not line.startswith("#")), lines[0] if lines else "")
    text = re.sub(r"^(?:(?:#{1,6}|[*+-]|>)\s+)+", "", text)  # heading marks, bullets, quotes
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [text](url) -> text
    text = re.sub(r"[*_`]{1,3}([^*_`]+)[*_`]{1,3}", r"\1", text)  # emphasis, code
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= HEADLINE_LIMIT else text[: HEADLINE_LIMIT - 1] + "…"


def _notes(value: Any) -> str:
    # The body is the publisher's free text: anything but a string is ignored, and it is
    # capped so a huge body cannot sit in memory (or in every status answer).
    return value[:MAX_NOTES] if isinstance(value, str) else ""


def _url(value: Any) -> str:
    # Only a web page address is opened in the browser for "What's new".
    if isinstance(value, str) and len(value) <= 2048 and re.match(r"https?://[^\s]+$", value):
        return value
    return ""


def parse_version(tag: str) -> Version | None:
    """``v1.2.3``, ``1.2.3`` and ``1.2.3-rc.1`` -> Version; anything else -> None."""
    text = tag.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    try:
        return Version(text)
    except InvalidVersion:
        return None


def release_from_github(data: Mapping[str, Any]) -> Release | None:
    """Build a Release from a GitHub API release object; None if the tag is not a version."""
    tag = str(data.get("tag_name") or "")
    version = parse_version(tag)
    if version is None:
        return None
    return Release(
        tag=tag,
        version=version,
        prerelease=bool(data.get("prerelease")),
        assets=tuple(Asset.from_github(a) for a in data.get("assets") or ()),
        published_at=str(data.get("published_at") or ""),
        html_url=_url(data.get("html_url")),
        notes=_notes(data.get("body")),
    )
