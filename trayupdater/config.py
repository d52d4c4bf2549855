"""One validated configuration from a TOML file, ``TRAYUPDATER_*`` variables and CLI flags.

Precedence, lowest first: built-in defaults, the TOML file, the environment, command-line
flags. Every key is declared once, with its TOML section and check, in
:data:`~trayupdater.config_fields.FIELDS`, so the file, the environment and the flags cannot
drift apart. A bad value raises one ``ConfigError`` naming the key and where the value came
from.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from trayupdater import APP_NAME
from trayupdater.config_fields import FIELDS, SPECS
from trayupdater.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "TRAYUPDATER_"
MAX_REASON = 200  # characters of an error's reason shown (it may quote the value)


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


# Checked here, not in config_fields: that module cannot import Config (this one imports it).
assert set(SPECS) == {f.name for f in fields(Config)}, "FIELDS and Config must list the same keys"


def _apply(values: dict[str, Any], raw: Mapping[str, Any], origin: Callable[[str], str]) -> None:
    for name, value in raw.items():
        spec = SPECS.get(name)
        if spec is None:
            raise ConfigError(f"{origin(name)}: unknown setting {name!r}")
        try:
            values[name] = spec.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{origin(name)}: invalid {name}: {_clipped(str(exc))}") from None


def _clipped(reason: str) -> str:
    """A reason that quotes the value, cut short: a 100 kB value is not a 100 kB line."""
    if len(reason) <= MAX_REASON:
        return reason
    return f"{reason[:MAX_REASON]}... ({len(reason)} characters)"


def _shown(text: object) -> str:
    """``text`` as written, or quoted and escaped if it is empty, has spaces around it, a
    line break or another unprintable character (a quoted TOML key may): an error message
    stays one line and shows the key."""
    text = str(text)
    return text if text.isprintable() and text and text == text.strip() else repr(text)


def _starts_with_bom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(3) == b"\xef\xbb\xbf"
    except OSError:
        return False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except ValueError as exc:
        # TOMLDecodeError, and what tomllib lets through: UnicodeDecodeError (bytes that
        # are not UTF-8) and the ValueError of an integer over 4300 digits (whose text tells
        # a programmer to call sys.set_int_max_str_digits(): not for a user).
        reason = str(exc)
        if "integer string conversion" in reason:
            reason = "a number with more than 4300 digits"
        elif _starts_with_bom(path):
            # Windows PowerShell 5.1 and older Notepad write one; no editor shows it.
            reason = "the file starts with a byte order mark (BOM); save it as UTF-8 without BOM"
        raise ConfigError(f"{path}: not valid TOML: {_clipped(reason)}") from None
    except RecursionError:  # tomllib recurses into each nested array or inline table
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
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
                raise ConfigError(
                    f"{path}: unknown setting [{_shown(section)}] {_shown(key)}{where}"
                )
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
    try:
        present = config_path.exists()
    except OSError:  # a name too long, a folder without search rights: _read_toml says so
        present = True
    if present or explicit:
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
    # os.path.isfile, not Path.is_file: that raises for a name too long (ENAMETOOLONG).
    if config.ca_bundle is not None and not os.path.isfile(config.ca_bundle):
        raise ConfigError(f"[network] ca_bundle: {_shown(config.ca_bundle)} is not a file")
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
