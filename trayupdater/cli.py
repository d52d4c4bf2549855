"""Command line: ``trayupdater [global options] COMMAND``.

Each command is a small function taking the parsed arguments; the ones that act on a
running app go through its control endpoint. Expected failures print one line and exit 1;
a traceback is a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trayupdater import __version__
from trayupdater.config import Config, describe, load_config
from trayupdater.control import ControlClient
from trayupdater.errors import StorageError, TrayUpdaterError
from trayupdater.launch import run_app, start_failed, tray_here
from trayupdater.publish import add_repo_parser, run_repo
from trayupdater.shown import LogFormatter
from trayupdater.status import Command
from trayupdater.terminal import print_controls, print_status, say

if TYPE_CHECKING:
    from trayupdater.store import VersionStore

log = logging.getLogger("trayupdater")

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


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(describe(config_from_args(args)), indent=2))
    return 0


def cmd_pick_asset(args: argparse.Namespace) -> int:
    from trayupdater.platforms import Platform, pick_asset

    try:
        text = sys.stdin.read() if args.release_json == "-" else Path(args.release_json).read_text()
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise TrayUpdaterError(f"cannot read release JSON {args.release_json}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("assets"), list):
        raise TrayUpdaterError(f"{args.release_json}: not a GitHub release object (no assets)")
    names = [str(a.get("name")) for a in data["assets"] if isinstance(a, dict) and a.get("name")]
    repo = _repo_from_release(data)
    try:
        platforms = [Platform.parse(p) for p in args.platform] or [Platform.current()]
    except ValueError as exc:
        raise TrayUpdaterError(str(exc)) from None
    tag = str(data.get("tag_name") or "")
    missing = []
    for platform in platforms:
        chosen = pick_asset(names, platform, repo=repo, version=tag.lstrip("vV") or None)
        print(f"{platform}\t{chosen or '-'}")
        if chosen is None:
            missing.append(str(platform))
    if missing:
        print(f"trayupdater: no asset for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _repo_from_release(data: dict[str, Any]) -> str | None:
    # "url": ".../repos/OWNER/NAME/releases/ID" names the repo, which helps pick between
    # several programs in one release (kubectx vs kubens).
    url = str(data.get("url") or "")
    parts = url.split("/repos/", 1)
    if len(parts) == 2:
        owner_name = parts[1].split("/")[:2]
        if len(owner_name) == 2:
            return "/".join(owner_name)
    return None


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


def cmd_check(args: argparse.Namespace) -> int:
    try:
        return _check(args)
    except TrayUpdaterError as exc:
        if not args.json:
            raise
        # Scripts asked for JSON: they get it for a failure too (and exit 1).
        print(json.dumps({"error": str(exc), "reason": exc.reason}, indent=2))
        return 1


def _check(args: argparse.Namespace) -> int:
    from trayupdater.pipeline import ReleasePipeline

    config = config_from_args(args)
    running = ControlClient.find(config.data_dir)
    if running is not None and not args.dry_run:
        # The running app owns the store: ask it, so it also switches to the new version.
        return print_status(running.command(Command.CHECK), as_json=args.json)
    store = open_store(config.data_dir)
    state = store.load_state()
    progress = None if args.json else _ProgressPrinter()
    pipeline = ReleasePipeline(config, store, progress=progress)
    plan = pipeline.plan(state, manual=True)  # a user's check: it may bypass a rollout
    report: dict[str, Any] = {
        "repo": config.repo,
        "platform": str(pipeline.platform),
        "current": plan.current,
        "latest": plan.latest,
        "tag": plan.release.tag if plan.release else None,
        "asset": plan.asset.name if plan.asset else None,
        "update_available": plan.should_install,
        "blocked": plan.blocked,
        "skipped_tags": plan.skipped_tags,
        "notice": plan.notice,  # the publisher's rollout or recall, in words
        "installed": None,
    }
    if not args.json:
        say(
            f"{config.repo} ({pipeline.platform}): current {plan.current or 'none'}, "
            f"latest {plan.latest or 'none'}"
        )
        for tag in plan.skipped_tags:
            say(f"skipped tag {tag!r}: not a version")
        say(f"asset: {plan.asset.name if plan.asset else '-'}")
        say(plan.summary())
    if plan.should_install and not args.dry_run:
        release, asset = pipeline.require_asset(plan)
        installed = pipeline.install(release, asset)
        report["installed"] = str(installed.executable)
        if not args.json:
            print(f"installed {installed.version}: {installed.executable}")
    elif plan.release is not None and plan.asset is None and plan.newer:
        pipeline.require_asset(plan)  # raises the clear "no asset for this platform" error
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


class _ProgressPrinter:
    """A one-line progress display on stderr, throttled to a few updates per second."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self._last < 0.2 and (total is None or done < total):
            return
        self._last = now
        text = f"{done / 1e6:.1f} MB" + (f" / {total / 1e6:.1f} MB" if total else "")
        end = "\n" if total and done >= total else ""
        print(f"\rdownloading {text}", end=end, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from trayupdater.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before the app's threads start (see memory.py)
    try:
        config = config_from_args(args)
    except TrayUpdaterError as exc:
        if args.headless or not tray_here():
            raise
        from trayupdater.config import default_logs_dir

        return start_failed(
            exc, config=None, config_path=config_path_of(args), logs_dir=default_logs_dir()
        )
    return run_app(
        config,
        headless=args.headless,
        config_path=config_path_of(args),
        launch_args=_launch_args(args, config),
    )


def _launch_args(args: argparse.Namespace, config: Config) -> list[str]:
    """The options a start at login must repeat so that the same instance starts: the
    config file and the data folder this run resolved, however they were given (a flag,
    ``--set``, before or after the command, or the environment); ``config`` is what this run
    resolved from ``args``."""
    import os

    from trayupdater.config import ENV_PREFIX

    extra: list[str] = []
    # TRAYUPDATER_CONFIG and TRAYUPDATER_DATA_DIR become flags too: a login session starts
    # without this shell's environment, and a flag cannot go missing there.
    config_file: Path | None = None
    if args.config is not None or os.environ.get(ENV_PREFIX + "CONFIG"):
        config_file = _real(config_path_of(args))
        extra += ["--config", str(config_file)]
    data_dir = _real(config.data_dir)
    # The data folder is left out only when the config file alone names the same absolute
    # one, so that editing data_dir in that file still takes effect at the next login.
    try:
        from_file: Path | None = load_config(config_file, env={}).data_dir
    except TrayUpdaterError:
        from_file = None
    if from_file is None or not from_file.is_absolute() or _real(from_file) != data_dir:
        extra += ["--data-dir", str(data_dir)]
    return extra


def _real(path: Path) -> Path:
    """``path`` absolute, links resolved. Not Path.resolve(): a symbolic link loop makes it
    raise RuntimeError (Python 3.11) before the app's start can name the folder."""
    import os

    return Path(os.path.realpath(path.expanduser()))


def cmd_demo(args: argparse.Namespace) -> int:
    import platformdirs

    from trayupdater.demo import Demo

    base = config_from_args(args)
    data_dir = (
        Path(args.cfg_data_dir)
        if args.cfg_data_dir
        else Path(platformdirs.user_data_dir("trayupdater-demo", appauthor=False))
    )
    demo = Demo(base, data_dir, publish_after=args.publish_after)
    print(demo.banner(), flush=True)
    try:
        return run_app(
            demo.config,
            headless=args.headless,
            on_started=demo.start_timeline,
            on_app=demo.watch,
            duration=args.duration,
            manage_autostart=False,  # a demo must never register anything to start at login
        )
    finally:
        demo.close()


def cmd_demo_child(args: argparse.Namespace) -> int:
    from trayupdater.demo_server import serve_script

    try:
        return serve_script(args.script, args.port)
    except (OSError, ValueError, SyntaxError) as exc:
        raise TrayUpdaterError(f"demo-child: {exc}") from None


def _client(args: argparse.Namespace) -> ControlClient:
    config = config_from_args(args)
    client = ControlClient.find(config.data_dir)
    if client is None:
        raise TrayUpdaterError(f"trayupdater is not running (data dir {config.data_dir})")
    return client


def cmd_status(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    client = ControlClient.find(config.data_dir)
    if client is None:
        state = open_store(config.data_dir).load_state()
        data = {
            "running": False,
            "active": state.active,
            "previous": state.previous,
            "blocked": state.blocked,
            "last_error": state.last_error,
            "latest": state.latest_seen,
            "last_check": state.last_check,
            "skipped": state.skipped,
            "paused": state.paused,
            "paused_until": state.paused_until,
        }
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            print(f"not running; installed active version: {state.active or 'none'}")
            print_controls(data)
        return 3  # like systemctl status: not running
    return print_status(client.status(), as_json=args.json)


def _command(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        params: dict[str, str] = {}
        client = _client(args)
        if command is Command.SKIP:
            version = args.skip_version or _pending_version(client.status())
            params["version"] = version
        elif command is Command.ALLOW:
            params["version"] = args.allow_version
        elif command is Command.PAUSE and args.pause_for:
            from trayupdater.preferences import PreferenceError, parse_duration

            try:
                params["seconds"] = repr(parse_duration(args.pause_for))
            except PreferenceError as exc:
                raise TrayUpdaterError(str(exc)) from None
        status = client.command(command, wait=command is not Command.QUIT, **params)
        return print_status(status, as_json=False)

    return run


def _pending_version(status: dict[str, Any]) -> str:
    latest, active = status.get("latest"), status.get("active")
    if not latest or latest == active:
        raise TrayUpdaterError(
            "no newer version is available to skip; name one: trayupdater skip VERSION"
        )
    return str(latest)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": cmd_check,
    "pick-asset": cmd_pick_asset,
    "config": cmd_config,
    "run": cmd_run,
    "demo": cmd_demo,
    "demo-child": cmd_demo_child,
    "status": cmd_status,
    "rollback": _command(Command.ROLLBACK),
    "resume": _command(Command.RESUME),
    "quit": _command(Command.QUIT),
    "repo": run_repo,
    "skip": _command(Command.SKIP),
    "allow": _command(Command.ALLOW),
    "pause": _command(Command.PAUSE),
    "unpause": _command(Command.UNPAUSE),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    console.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    command = args.command or "run"
    handler = COMMANDS.get(command)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except TrayUpdaterError as exc:
        say(f"trayupdater: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
