"""What each setting accepts: its TOML section and the check that makes a raw value typed.

:data:`FIELDS` declares every key of :class:`~trayupdater.config.Config` once, so the TOML
file, the ``TRAYUPDATER_*`` variables and the command-line flags all accept the same values
(:mod:`config` reads them, in that order). A parser takes the raw value (a TOML value, or a
string from the environment or a flag) and returns the typed one or raises ``ValueError``
with a short reason; :mod:`config` adds the key and where the value came from.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trayupdater.urls import insecure_reason, odd_characters, redact_url

SOURCE_KINDS = ("github", "tuf")
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


# --- value parsers: each takes the raw value and returns the typed one or raises ValueError ---


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: Any) -> str | None:
    text = _str(value).strip()
    return text or None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _number(minimum: float, maximum: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float: out of range, not a crash
            number = math.inf if value > 0 else -math.inf
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not minimum <= number <= maximum:
            raise ValueError(f"must be between {minimum:g} and {maximum:g}, got {number:g}")
        return number

    return parse


def _integer(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected a whole number, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if not minimum <= number <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, got {number}")
        return number

    return parse


def _repo(value: Any) -> str:
    text = _str(value).strip()
    if not REPO_RE.match(text):
        raise ValueError(f"expected owner/name, got {text!r}")
    return text


def _opt_repo(value: Any) -> str | None:
    return _repo(value) if _opt_str(value) else None


def _api_url(value: Any) -> str:
    text = _str(value).strip().rstrip("/")
    # Release metadata decides what we execute: plain HTTP only where nobody can intercept.
    reason = insecure_reason(text)
    if reason:
        raise ValueError(f"{reason} (got {redact_url(text)})")
    if "@" in urlsplit(text).netloc:
        # It would be shown in status lines, logs and `trayupdater config`: the token (or
        # the proxy's own settings) is where a credential goes.
        raise ValueError(
            f"a user name or password in the URL is not supported; set token instead "
            f"(got {redact_url(text)})"
        )
    return text


def _opt_url(value: Any) -> str | None:
    text = _str(value).strip()
    return _api_url(text) + "/" if text else None


def _opt_path(value: Any) -> Path | None:
    return _path(value) if _opt_str(value) else None


def _opt_proxy(value: Any) -> str | None:
    text = _opt_str(value)
    if text is None:
        return None
    if odd_characters(text):
        # requests reads CORP\user:pass@proxy as the host "corp" (and shows the password
        # as a path): the escaped form is unambiguous.
        raise ValueError(
            "the proxy URL has a backslash, a space or a control character; write a "
            "user name such as CORP\\jdoe as CORP%5Cjdoe"
        )
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        shown = redact_url(text) if parts.hostname else "a value without a host"
        raise ValueError(f"expected a proxy URL such as http://proxy.example.com:3128, got {shown}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError("the proxy URL has an invalid port") from None
    return text


def _kind(value: Any) -> str:
    text = _str(value).strip().lower()
    if text not in SOURCE_KINDS:
        raise ValueError(f"expected one of {', '.join(map(repr, SOURCE_KINDS))}, got {text!r}")
    return text


def _channel(value: Any) -> str:
    text = _str(value).strip().lower()
    if text not in ("stable", "prerelease"):
        raise ValueError(f"expected 'stable' or 'prerelease', got {text!r}")
    return text


def _split_command(text: str) -> list[str]:
    """A command given as text (an environment variable, ``--set``) split into words."""
    if sys.platform != "win32":
        return shlex.split(text)
    # POSIX rules read each backslash of a Windows path as an escape (C:\srv -> C:srv):
    # only double quotes group words, as on a Windows command line.
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    lexer.escape = ""
    lexer.quotes = '"'
    return list(lexer)


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = _split_command(value)
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) for v in value)
    ):
        raise ValueError('expected a non-empty list of strings such as ["{exe}", "{port}"]')
    if "{port}" not in " ".join(value):
        raise ValueError("must pass {port} to the child, or it cannot know where to listen")
    return tuple(value)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):  # from the environment or --set: a JSON object
        import json

        try:
            value = json.loads(value) if value.strip() else {}
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            raise ValueError('expected a JSON object such as {"LOG_LEVEL": "info"}') from None
    if not isinstance(value, dict):
        raise ValueError('expected a table such as {LOG_LEVEL = "info"}')
    out = []
    for name, text in value.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if not isinstance(text, str) or "\0" in text:
            raise ValueError(f"the value of {name} must be a string without NUL")
        out.append((name, text))
    return tuple(sorted(out))


def _opt_integer(minimum: int, maximum: int) -> Callable[[Any], int | None]:
    parse = _integer(minimum, maximum)

    def opt(value: Any) -> int | None:
        return None if value is None or value == "" else parse(value)

    return opt


def _health_path(value: Any) -> str:
    text = _str(value).strip()
    if not text.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    return text


def _bind(value: Any) -> str:
    text = _str(value).strip()
    if text == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"expected an IP address such as 127.0.0.1, got {text!r}") from None
    return text


def _path(value: Any) -> Path:
    text = _str(value).strip()
    if not text:  # Path("") is the current folder: wherever the app happened to start
        raise ValueError("a folder path cannot be empty")
    if "\0" in text:  # no OS takes it: making the data folder would crash the start
        raise ValueError("a path cannot contain a NUL character")
    return Path(os.path.expanduser(text))


def _opt_pattern(value: Any) -> str | None:
    text = _opt_str(value)
    if text is not None:
        unknown = set(re.findall(r"\{(\w*)\}", text)) - {"os", "arch", "version"}
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; use {{os}} {{arch}} {{version}}"
            )
    return text


@dataclass(frozen=True)
class FieldSpec:
    """One setting: its :class:`~trayupdater.config.Config` field, its [section], its parser."""

    name: str
    section: str
    parse: Callable[[Any], Any]


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("kind", "source", _kind),
    FieldSpec("repo", "source", _repo),
    FieldSpec("api_url", "source", _api_url),
    FieldSpec("token", "source", _opt_str),
    FieldSpec("channel", "source", _channel),
    FieldSpec("check_interval", "source", _number(1, 7 * 24 * 3600)),
    FieldSpec("first_retry", "source", _number(1, 7 * 24 * 3600)),
    FieldSpec("asset_pattern", "source", _opt_pattern),
    FieldSpec("url", "source", _opt_url),
    FieldSpec("metadata_url", "source", _opt_url),
    FieldSpec("targets_url", "source", _opt_url),
    FieldSpec("manual_check_bypasses_rollout", "source", _bool),
    FieldSpec("command", "child", _command),
    FieldSpec("exe_name", "child", _opt_str),
    FieldSpec("health_path", "child", _health_path),
    FieldSpec("health_expect", "child", _opt_str),
    FieldSpec("health_timeout", "child", _number(0.5, 3600)),
    FieldSpec("min_ready_seconds", "child", _number(0, 3600)),
    FieldSpec("probation_seconds", "child", _number(0, 24 * 3600)),
    FieldSpec("crash_loop_exits", "child", _integer(2, 1000)),
    FieldSpec("crash_loop_seconds", "child", _number(1, 7 * 24 * 3600)),
    FieldSpec("env", "child", _env),
    FieldSpec("bind", "proxy", _bind),
    FieldSpec("port", "proxy", _integer(0, 65535)),
    FieldSpec("hold_seconds", "proxy", _number(0, 600)),
    FieldSpec("data_dir", "store", _path),
    FieldSpec("log_dir", "store", _opt_path),  # empty: the default, as for the other paths
    FieldSpec("keep_versions", "store", _integer(2, 100)),
    FieldSpec("max_download_bytes", "store", _integer(1024, 64 * 1024**3)),
    FieldSpec("max_extract_bytes", "store", _opt_integer(1024, 256 * 1024**3)),
    FieldSpec("download_timeout", "store", _number(1, 7 * 24 * 3600)),
    FieldSpec("download_min_rate", "store", _number(0, 1024**3)),
    FieldSpec("download_rate_window", "store", _number(1, 3600)),
    FieldSpec("require_checksum", "security", _bool),
    FieldSpec("public_key", "security", _opt_str),
    FieldSpec("trusted_root", "security", _opt_path),
    FieldSpec("ca_bundle", "network", _opt_path),
    FieldSpec("proxy", "network", _opt_proxy),
    FieldSpec("start_at_login", "app", _bool),
    FieldSpec("self_update_repo", "app", _opt_repo),
    FieldSpec("self_update_asset_pattern", "app", _opt_pattern),
)
SPECS = {spec.name: spec for spec in FIELDS}
