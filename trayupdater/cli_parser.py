"""The command line's grammar: global options (before or after the command), the commands
and their arguments, and the config a run resolves from them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trayupdater import __version__
from trayupdater.config import Config, load_config
from trayupdater.errors import StorageError, TrayUpdaterError
from trayupdater.publish import add_repo_parser

if TYPE_CHECKING:
    from trayupdater.store import VersionStore

# Flags that map straight onto config keys (the rest go through --set KEY=VALUE):
# key -> (metavar, help).
CONFIG_FLAGS: dict[str, tuple[str, str]] = {
    "repo": ("OWNER/NAME", "the child's GitHub repository (default jischr/simple-server)"),
    "api_url": ("URL", "GitHub API base (GitHub Enterprise: https://HOST/api/v3)"),
    "channel": ("CHANNEL", "stable or prerelease"),
    "check_interval": ("SECONDS", "seconds between checks (default 3600)"),
    "port": ("PORT", "proxy port (default 8080)"),
    "bind": ("ADDRESS", "proxy bind address (default 127.0.0.1)"),
    "data_dir": ("DIR", "where versions and state live (and logs, when given)"),
    "asset_pattern": ("PATTERN", "asset name pattern with {os} {arch} {version}"),
}


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The global options; also accepted after the command (``status --data-dir X``).

    After the command their defaults are SUPPRESS, so an option given only before the
    command is not reset by the sub-parser; ``--set`` after it collects separately.
    """
    default: Any = argparse.SUPPRESS if after_command else None
    parser.add_argument(
        "--config", type=Path, metavar="PATH", default=default, help="config file (TOML)"
    )
    for key, (metavar, text) in CONFIG_FLAGS.items():
        parser.add_argument(
            "--" + key.replace("_", "-"),
            dest=f"cfg_{key}",
            metavar=metavar,
            default=default,
            help=text,
        )
    parser.add_argument(
        "--set",
        action="append",
        dest="set_after" if after_command else "set",
        default=argparse.SUPPRESS if after_command else [],
        metavar="KEY=VALUE",
        help="any config key, e.g. --set probation_seconds=60 (repeatable)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if after_command else False,
        help="debug logging on the terminal",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trayupdater",
        description="Keep a server program running and up to date from GitHub Releases.",
    )
    parser.add_argument("--version", action="version", version=f"trayupdater {__version__}")
    _add_global_options(parser, after_command=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, after_command=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="default: run")

    def command(name: str, text: str | None) -> argparse.ArgumentParser:
        kwargs: dict[str, Any] = {"parents": [common]}
        if text is not None:
            kwargs.update(help=text, description=text[:1].upper() + text[1:] + ".")
        return sub.add_parser(name, **kwargs)

    p = command("check", "ask for a newer release and install it")
    p.add_argument("--dry-run", action="store_true", help="only report, install nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output, errors too")

    p = command("pick-asset", "which asset of a release JSON fits each platform")
    p.add_argument("release_json", metavar="RELEASE_JSON", help="GitHub release JSON file, or -")
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS-ARCH",
        help="e.g. linux-x86_64, darwin-arm64 (repeatable; default: this machine)",
    )

    command("config", "print the effective configuration")

    p = command("run", "run the app (tray; headless without a desktop)")
    p.add_argument("--headless", action="store_true", help="no tray icon; stop with SIGINT/SIGTERM")

    p = command("demo", "offline demo: a local release feed and an update to watch")
    p.add_argument("--headless", action="store_true", help="no tray icon")
    p.add_argument(
        "--duration", type=float, default=0, metavar="SECONDS", help="stop after this long"
    )
    p.add_argument(
        "--publish-after",
        type=float,
        default=12.0,
        metavar="SECONDS",
        help="seconds until 1.1.0 appears (default 12)",
    )

    # Hidden: how a frozen build runs the demo's child (it has no Python for the script).
    p = command("demo-child", None)
    p.add_argument("script", type=Path, help="the demo child script from a demo release")
    p.add_argument("port", type=int, help="port to listen on (loopback)")

    p = command("status", "what the running app is doing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_repo_parser(sub)
    for name, text in (
        ("rollback", "roll the running app back to the previous version"),
        ("resume", "allow updates to every version that was rolled back from"),
        ("unpause", "end a pause of updates"),
        ("quit", "stop the running app"),
    ):
        command(name, text)
    p = command("skip", "never install this version (default: the latest available)")
    p.add_argument("skip_version", nargs="?", metavar="VERSION", help="e.g. 1.2.0")
    p = command("allow", "allow a rolled-back or skipped version again")
    p.add_argument("allow_version", metavar="VERSION", help="e.g. 1.2.0")
    p = command("pause", "install no updates for a while (checks go on)")
    p.add_argument(
        "--for",
        dest="pause_for",
        metavar="DURATION",
        help="e.g. 30m, 1h, 2d (default: until `trayupdater unpause`)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for key in CONFIG_FLAGS:
        value = getattr(args, f"cfg_{key}", None)
        if value is not None:
            overrides[key] = value
    for item in [*args.set, *getattr(args, "set_after", [])]:
        key, sep, value = item.partition("=")
        if not sep:
            raise TrayUpdaterError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip().replace("-", "_")] = value
    return load_config(args.config, overrides=overrides)


def config_path_of(args: argparse.Namespace) -> Path:
    """The config file this run reads (or would read: the default may not exist)."""
    import os

    from trayupdater.config import ENV_PREFIX, default_config_path

    return args.config or Path(os.environ.get(ENV_PREFIX + "CONFIG") or default_config_path())


def open_store(data_dir: Path) -> VersionStore:
    """The data folder's store, or one sentence if the folder cannot be made or used (a file
    in its place, a read-only mount): what ``run`` says too, never a traceback."""
    from trayupdater.store import VersionStore

    try:
        return VersionStore(data_dir)
    except OSError as exc:
        raise StorageError(
            f"cannot use the data folder {data_dir} ({exc.strerror or exc}): make it "
            "writable, or choose another folder with --data-dir or [store] data_dir"
        ) from None
