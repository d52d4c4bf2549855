"""GitHub's release JSON -> :class:`Release`, checked field by field at the boundary.

The API answer decides what the app downloads and runs, so nothing in it is trusted: every
field used is type-checked and range-checked, unknown fields are ignored, and anything
malformed becomes one :class:`MalformedRelease` naming the field (the source turns it into a
``SourceError``), never an ``AttributeError`` deep in the pipeline. In particular an asset
name must be a plain file name: it becomes a path in the downloads folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from trayupdater.release_model import Asset, Release, parse_version

MAX_ASSETS = 1000  # GitHub allows 1,000 assets per release
MAX_NAME = 255  # bytes of a file name on every common file system
MAX_URL = 4096
MAX_TAG = 256
MAX_TEXT = 1024
MAX_NOTES = 64 * 1024  # release notes kept for the tray; the rest is cut off
MAX_SIZE = 2**53  # sizes are JSON numbers: beyond this they are not exact


class MalformedRelease(ValueError):
    """A release object that does not have the shape GitHub gives it."""


def loads(data: bytes) -> Any:
    """JSON from the API; MalformedRelease for anything else, deep nesting included
    (CPython's parser raises RecursionError there, which must not reach the worker)."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedRelease(f"invalid JSON: {str(exc)[:200]}") from None


def _no_constant(name: str) -> Any:
    raise MalformedRelease(f"invalid JSON number {name}")


def release_from_github(data: Any) -> Release | None:
    """A Release from one API release object; None if its tag is not a version.

    Raises MalformedRelease for anything not shaped like GitHub's answer.
    """
    if not isinstance(data, Mapping):
        raise MalformedRelease(f"a release must be an object, not {_kind(data)}")
    tag = _text(data, "tag_name", MAX_TAG, required=True)
    version = parse_version(tag)
    if version is None:
        return None
    raw_assets = data.get("assets")
    if raw_assets is None:
        raw_assets = []
    if not isinstance(raw_assets, list):
        raise MalformedRelease(f"{tag}: assets must be a list, not {_kind(raw_assets)}")
    if len(raw_assets) > MAX_ASSETS:
        raise MalformedRelease(f"{tag}: more than {MAX_ASSETS} assets")
    assets = tuple(asset_from_github(item, tag) for item in raw_assets)
    names = [a.name for a in assets]
    if len(set(names)) != len(names):
        raise MalformedRelease(f"{tag}: two assets have the same name")
    notes = data.get("body")
    return Release(
        tag=tag,
        version=version,
        prerelease=_flag(data, "prerelease", tag),
        assets=assets,
        published_at=_text(data, "published_at", MAX_TEXT),
        html_url=_text(data, "html_url", MAX_URL),
        notes=notes[:MAX_NOTES] if isinstance(notes, str) else "",
    )


def is_draft(data: Mapping[str, Any]) -> bool:
    # The tag is not checked yet (it may not even be text): quoted, as any server string.
    return _flag(data, "draft", repr(str(data.get("tag_name"))[:MAX_TAG]))


def asset_from_github(data: Any, tag: str = "") -> Asset:
    where = f"{tag}: asset" if tag else "asset"
    if not isinstance(data, Mapping):
        raise MalformedRelease(f"{where} must be an object, not {_kind(data)}")
    name = _text(data, "name", MAX_NAME * 4, required=True)
    problem = file_name_problem(name)
    if problem:
        raise MalformedRelease(f"{where} name {name[:80]!r} {problem}")
    size = data.get("size")
    if size is None:
        size = 0
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise MalformedRelease(f"{where} {name}: size must be a number, not {_kind(size)}")
    if isinstance(size, float) and (not math.isfinite(size) or not size.is_integer()):
        raise MalformedRelease(f"{where} {name}: size {size!r} is not a whole number")
    if not 0 <= size <= MAX_SIZE:
        raise MalformedRelease(f"{where} {name}: size {size} is out of range")
    digest = data.get("digest")
    if digest is not None and (not isinstance(digest, str) or len(digest) > 200):
        raise MalformedRelease(f"{where} {name}: digest must be a short string or null")
    return Asset(
        name=name,
        api_url=_text(data, "url", MAX_URL),
        download_url=_text(data, "browser_download_url", MAX_URL),
        size=int(size),
        digest=digest or None,
    )


def file_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name, or None: it becomes a path on disk."""
    if not name or name in (".", ".."):
        return "is empty or a relative folder"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "contains a control character"
    try:
        # A lone surrogate ("\ud800" in JSON) is no text any file system can name.
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    if len(encoded) > MAX_NAME:
        return f"is longer than {MAX_NAME} bytes"
    return None


def _text(data: Mapping[str, Any], key: str, limit: int, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise MalformedRelease(f"{key} must be a string, not {_kind(value)}")
    if len(value) > limit:
        raise MalformedRelease(f"{key} is longer than {limit} characters")
    if required and not value.strip():
        raise MalformedRelease(f"{key} is empty")
    return value


def _flag(data: Mapping[str, Any], key: str, tag: str) -> bool:
    value = data.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedRelease(f"{tag}: {key} must be true or false, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
