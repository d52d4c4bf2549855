"""Plain data describing a release and its assets, independent of where it came from."""

from __future__ import annotations

import re
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
class Rollout:
    """Which share of installations may take a version, as its publisher signed it: a fixed
    percent (one step), or a schedule of percents, each lasting ``every`` seconds from
    ``start`` (the last one then holds). See :mod:`trayupdater.rollout`."""

    steps: tuple[float, ...]  # percents, 0..100, never decreasing
    every: float = 0.0  # seconds per step (schedules only)
    start: float = 0.0  # time.time() when the first step began (schedules only)

    @property
    def is_schedule(self) -> bool:
        return len(self.steps) > 1

    def step_at(self, now: float) -> int:
        if not self.is_schedule or now < self.start:
            return 0  # before the start (a clock behind): the first, smallest step
        return min(int((now - self.start) // self.every), len(self.steps) - 1)

    def percent_at(self, now: float) -> float:
        return self.steps[self.step_at(now)]

    def next_change(self, now: float) -> tuple[float, float] | None:
        """(when, percent) of the next step, or None after the last one."""
        step = self.step_at(now)
        if step + 1 >= len(self.steps):
            return None
        return self.start + (step + 1) * self.every, self.steps[step + 1]


@dataclass(frozen=True)
class Release:
    tag: str
    version: Version
    prerelease: bool = False
    assets: tuple[Asset, ...] = field(default_factory=tuple)
    published_at: str = ""
    html_url: str = ""  # the release page, for "What's new"
    notes: str = ""  # the release body (Markdown), as published
    rollout: Rollout | None = None  # None: every installation may take it
    recalled: bool = False  # the publisher pulled it back: never taken, left where running

    @property
    def notes_headline(self) -> str:
        """The first line of the notes that says something, as plain text (for a
        notification): headings such as "## What's Changed" and list bullets are skipped."""
        return notes_headline(self.notes)

    @property
    def page(self) -> str | None:
        """``html_url`` if it is a web page the tray may open for "What's new", else None."""
        return web_page(self.html_url)

    @property
    def version_text(self) -> str:
        """The version as users read it and as the version store names folders."""
        return str(self.version)

    def asset(self, name: str) -> Asset | None:
        return next((a for a in self.assets if a.name == name), None)


# A version names folders in the store ("<version>.tmp-XXXXXXXX" while it installs), and a
# file name has 255 bytes: a longer one was only refused once its download had finished.
MAX_VERSION_TEXT = 128


def parse_version(tag: str) -> Version | None:
    """``v1.2.3``, ``1.2.3`` and ``1.2.3-rc.1`` -> Version; anything else -> None."""
    text = tag.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    try:
        version = Version(text)
    except InvalidVersion:
        return None
    return version if len(str(version)) <= MAX_VERSION_TEXT else None


HEADLINE_LIMIT = 120


def notes_headline(notes: str) -> str:
    lines = [line.strip() for line in notes.splitlines() if line.strip()]
    text = next((line for line in lines if not line.startswith("#")), lines[0] if lines else "")
    text = re.sub(r"^(?:(?:#{1,6}|[*+-]|>)\s+)+", "", text)  # heading marks, bullets, quotes
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [text](url) -> text
    text = re.sub(r"[*_`]{1,3}([^*_`]+)[*_`]{1,3}", r"\1", text)  # emphasis, code
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= HEADLINE_LIMIT else text[: HEADLINE_LIMIT - 1] + "…"


def web_page(url: str) -> str | None:
    """Only an http(s) address is handed to the desktop's opener (not file:, javascript:)."""
    if re.match(r"https?://[^\s]+$", url) and len(url) <= 2048:
        return url
    return None
