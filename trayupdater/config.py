"""One validated configuration from a TOML file, ``TRAYUPDATER_*`` variables and CLI flags.

Precedence, lowest first: built-in defaults, the TOML file, the environment, command-line
flags. Every key is declared once in ``FIELDS`` with its TOML section, type and check, so
the file, the environment and the flags cannot drift apart. A bad value raises one
``ConfigError`` naming the key and where the value came from.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from trayupdater import APP_NAME
from trayupdater.errors import ConfigError
from trayupdater.urls import insecure_reason, odd_characters, redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "TRAYUPDATER_"
SOURCE_KINDS = ("github", "tuf")
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_logs_dir() -> Path:
    """The OS log folder: ~/.local/state/trayupdater/log, ~/Library/Logs/trayupdater,
    %LOCALAPPDATA%\\trayupdater\\Logs."""
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True)
class Config:
    # [source]
    kind: str = "github"  # where releases come from: "github" (the REST API) or "tuf"
    repo: str = "jischr/simple-server"  # with kind = "tuf" too: it names the program
    api_url: str = "https://api.github.com"
    token: str | None = field(default=None, repr=False)  # never printed: repr=False
    channel: str = "stable"
    check_interval: float = 3600.0
    first_retry: float = 30.0  # after a failed check; doubles up to check_interval
    asset_pattern: str | None = None
    url: str | None = None  # tuf: metadata at URL/metadata/, targets at URL/targets/
    metadata_url: str | None = None  # tuf: when metadata and targets live apart
    targets_url: str | None = None
    # A user-started check (tray item, `trayupdater check`) may take a version the publisher's
    # phased rollout has not reached this machine with yet; the timer never does.
    manual_check_bypasses_rollout: bool = True
    # [child]
    command: tuple[str, ...] = ("{exe}", "{port}")
    exe_name: str | None = None
    health_path: str = "/version"
    health_expect: str | None = None  # None: the release's version
    health_timeout: float = 30.0
    min_ready_seconds: float = 5.0  # healthy this long after the first good answer: traffic
    probation_seconds: float = 30.0
    crash_loop_exits: int = 3  # this many exits within crash_loop_seconds: roll back
    crash_loop_seconds: float = 600.0
    env: tuple[tuple[str, str], ...] = ()  # extra variables for the child, on purpose
    # [proxy]
    bind: str = "127.0.0.1"
    port: int = 8080
    hold_seconds: float = 10.0  # requests wait this long for a restarting child, then 503
    # [store]
    data_dir: Path = field(default_factory=default_data_dir)
    # None: the OS log folder, or data_dir/logs for a data folder other than the default.
    log_dir: Path | None = None
    keep_versions: int = 3
    max_download_bytes: int = 1024 * 1024 * 1024
    max_extract_bytes: int | None = None  # None: derived from the archive (extract_limit)
    download_timeout: float = 3600.0  # a whole download, resumes included
    download_min_rate: float = 1024.0  # bytes/s over download_rate_window, else it is cut
    download_rate_window: float = 30.0
    # [security]
    require_checksum: bool = True
    public_key: str | None = None  # minisign public key (base64 line); required signatures
    trusted_root: Path | None = None  # tuf: the publisher's root.json (None: the shipped one)
    # [network]
    ca_bundle: Path | None = None  # PEM CAs trusted on top of the system store (TLS inspection)
    proxy: str | None = field(default=None, repr=False)  # may carry a password: repr=False
    # [app]
    start_at_login: bool = True
    self_update_repo: str | None = None
    self_update_asset_pattern: str | None = None

    @property
    def tuf_metadata_url(self) -> str:
        return self.metadata_url or _join(self.url or "", "metadata/")

    @property
    def tuf_targets_url(self) -> str:
        return self.targets_url or _join(self.url or "", "targets/")

    @property
    def repo_name(self) -> str:
        return self.repo.split("/", 1)[1]

    def extract_limit(self, archive_size: int) -> int:
        """Bytes an archive of ``archive_size`` may unpack to; past this it is a bomb and
        refused at once. Default: 64 times the archive (programs compress 2-5 times; bombs
        a thousandfold), at least 256 MiB, at most 4 times max_download_bytes."""
        if self.max_extract_bytes:
            return self.max_extract_bytes
        derived = max(256 * 1024**2, 64 * archive_size)
        return min(derived, 4 * self.max_download_bytes)

    @property
    def versions_dir(self) -> Path:
        return self.data_dir / "versions"

    @property
    def logs_dir(self) -> Path:
        """Where the app's and the children's logs go.

        A data folder other than the default is a self-contained instance (a demo, a test,
        a second app side by side): its logs stay with it rather than mix into one file.
        """
        if self.log_dir is not None:
            return self.log_dir
        if self.data_dir != default_data_dir():
            return self.data_dir / "logs"
        return default_logs_dir()


def _join(base: str, folder: str) -> str:
    return (base if base.endswith("/") else base + "/") + folder


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


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        import shlex

        value = shlex.split(value)
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
        except ValueError:
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
    return Path(os.path.expanduser(_str(value).strip()))


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
    FieldSpec("log_dir", "store", _path),
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
assert set(SPECS) == {f.name for f in fields(Config)}, "FIELDS and Config must list the same keys"


def _apply(values: dict[str, Any], raw: Mapping[str, Any], origin: Callable[[str], str]) -> None:
    for name, value in raw.items():
        spec = SPECS.get(name)
        if spec is None:
            raise ConfigError(f"{origin(name)}: unknown setting {name!r}")
        try:
            values[name] = spec.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{origin(name)}: invalid {name}: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    flat: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section!r} must be a [section] table")
        for key, value in table.items():
            spec = SPECS.get(key)
            if spec is None or spec.section != section:
                where = f" (it belongs in [{spec.section}])" if spec else ""
                raise ConfigError(f"{path}: unknown setting [{section}] {key}{where}")
            flat[key] = value
    return flat


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective Config: defaults < TOML file < environment < ``overrides`` (flags).

    ``path`` None means the platform's default location, which may be absent; an explicitly
    given path must exist.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}

    explicit = path is not None or bool(env.get(ENV_PREFIX + "CONFIG"))
    config_path = path or Path(env.get(ENV_PREFIX + "CONFIG") or default_config_path())
    if config_path.exists() or explicit:
        file_values = _read_toml(config_path)
        _apply(
            values,
            file_values,
            lambda key: (
                f"{config_path} [{SPECS[key].section}] {key}" if key in SPECS else str(config_path)
            ),
        )
        for key in ("trusted_root", "ca_bundle"):
            named = values.get(key)
            if named is not None and not named.is_absolute():
                values[key] = config_path.parent / named  # beside the file naming it

    env_values = {
        spec.name: env[ENV_PREFIX + spec.name.upper()]
        for spec in FIELDS
        if ENV_PREFIX + spec.name.upper() in env
    }
    _apply(values, env_values, lambda key: f"environment {ENV_PREFIX}{key.upper()}")

    if "token" not in values and env.get("GITHUB_TOKEN"):
        values["token"] = env["GITHUB_TOKEN"]

    _apply(values, dict(overrides or {}), lambda key: f"command line --{key.replace('_', '-')}")
    config = replace(Config(), **values)
    _check_source(config)
    if config.ca_bundle is not None and not config.ca_bundle.is_file():
        raise ConfigError(f"[network] ca_bundle: {config.ca_bundle} is not a file")
    return config


def _check_source(config: Config) -> None:
    """Settings that only make sense together."""
    if config.kind == "tuf" and not config.url and not (config.metadata_url and config.targets_url):
        raise ConfigError('[source] kind = "tuf" needs url (or both metadata_url and targets_url)')


def describe(config: Config) -> dict[str, Any]:
    """The config as plain data for `trayupdater config`, with the token masked."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "token" and value:
            value = "***"
        elif f.name == "log_dir":
            value = str(config.logs_dir)
        elif f.name == "proxy" and value:
            from trayupdater.network import shown_proxy

            value = shown_proxy(value)
        elif isinstance(value, Path):
            value = str(value)
        elif f.name == "env":
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
