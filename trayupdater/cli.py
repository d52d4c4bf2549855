"""Command line: ``trayupdater [global options] COMMAND``.

Each command is a small function taking the parsed arguments; the ones that act on a
running app go through its control endpoint. Expected failures print one line and exit 1;
a traceback is a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trayupdater import __version__
from trayupdater.config import Config, describe, load_config
from trayupdater.control import ControlClient
from trayupdater.errors import TrayUpdaterError
from trayupdater.publish import add_repo_parser, run_repo
from trayupdater.status import Command

log = logging.getLogger("trayupdater")

# Flags that map straight onto config keys (the rest go through --set KEY=VALUE).
CONFIG_FLAGS: dict[str, str] = {
    "repo": "owner/name of the child's GitHub repository",
    "api_url": "GitHub API base (GitHub Enterprise: https://HOST/api/v3)",
    "channel": "stable or prerelease",
    "check_interval": "seconds between checks",
    "port": "proxy port",
    "bind": "proxy bind address (default 127.0.0.1)",
    "data_dir": "where versions, state and logs live",
    "asset_pattern": "asset name pattern with {os} {arch} {version}",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trayupdater",
        description="Keep a server program running and up to date from GitHub Releases.",
    )
    parser.add_argument("--version", action="version", version=f"trayupdater {__version__}")
    parser.add_argument("--config", type=Path, help="config file (TOML)")
    for key, text in CONFIG_FLAGS.items():
        parser.add_argument("--" + key.replace("_", "-"), dest=f"cfg_{key}", help=text)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config key"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="ask for a newer release and install it")
    p.add_argument("--dry-run", action="store_true", help="only report, install nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("pick-asset", help="which asset of a release JSON fits each platform")
    p.add_argument("release_json", help="GitHub release JSON file, or - for stdin")
    p.add_argument("--platform", action="append", default=[], metavar="OS-ARCH")

    sub.add_parser("config", help="print the effective configuration")

    p = sub.add_parser("run", help="run the app (tray; headless without a desktop)")
    p.add_argument("--headless", action="store_true", help="no tray icon; stop with SIGINT/SIGTERM")

    p = sub.add_parser("demo", help="offline demo: a local release feed and an update to watch")
    p.add_argument("--headless", action="store_true", help="no tray icon")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds")
    p.add_argument("--publish-after", type=float, default=12.0, help="seconds until 1.1.0 appears")

    p = sub.add_parser("status", help="what the running app is doing")
    p.add_argument("--json", action="store_true")
    add_repo_parser(sub)
    for name, text in (
        ("rollback", "roll the running app back to the previous version"),
        ("resume", "allow updates to versions that were rolled back from"),
        ("quit", "stop the running app"),
    ):
        sub.add_parser(name, help=text)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for key in CONFIG_FLAGS:
        value = getattr(args, f"cfg_{key}", None)
        if value is not None:
            overrides[key] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise TrayUpdaterError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip().replace("-", "_")] = value
    return load_config(args.config, overrides=overrides)


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
    for platform in platforms:
        chosen = pick_asset(names, platform, repo=repo, version=tag.lstrip("vV") or None)
        print(f"{platform}\t{chosen or '-'}")
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


def cmd_check(args: argparse.Namespace) -> int:
    from trayupdater.pipeline import ReleasePipeline
    from trayupdater.store import VersionStore

    config = config_from_args(args)
    running = ControlClient.find(config.data_dir)
    if running is not None and not args.dry_run:
        # The running app owns the store: ask it, so it also switches to the new version.
        return _print_status(running.command(Command.CHECK), as_json=args.json)
    store = VersionStore(config.data_dir)
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
        print(
            f"{config.repo} ({pipeline.platform}): current {plan.current or 'none'}, "
            f"latest {plan.latest or 'none'}"
        )
        for tag in plan.skipped_tags:
            print(f"skipped tag {tag!r}: not a version")
        print(f"asset: {plan.asset.name if plan.asset else '-'}")
        print(plan.summary())
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
    return _run_app(config_from_args(args), headless=args.headless)


def _run_app(
    config: Config,
    *,
    headless: bool,
    on_started: Callable[[], None] | None = None,
    duration: float = 0,
) -> int:
    from trayupdater.app import AlreadyRunningError, App
    from trayupdater.handover import is_successor

    # Single instance: a second launch asks the first to check for updates and exits.
    # Checked before the tray is shown, so a second icon never appears, even briefly.
    # A self-update's successor starts while its predecessor still answers: not a second launch.
    running = None if is_successor() else ControlClient.find(config.data_dir)
    if running is not None:
        running.command(Command.CHECK, wait=False)
        print(
            f"trayupdater is already running (pid {running.pid}); asked it to check for updates",
            file=sys.stderr,
        )
        return 0
    app = App(config)
    use_tray = False
    if not headless:
        from trayupdater.tray import tray_available

        use_tray, why = tray_available()
        if not use_tray:
            print(f"trayupdater: no system tray here ({why}); running headless", file=sys.stderr)
    if duration:
        _after(duration, app.quit)
    try:
        if use_tray:
            return _run_tray(app, on_started)
        if on_started:
            _after(0.5, on_started)
        return app.run_headless()
    except AlreadyRunningError as exc:  # lost a start-up race with another launch
        exc.client.command(Command.CHECK, wait=False)
        print(f"{exc}; asked it to check for updates", file=sys.stderr)
        return 0


def _after(seconds: float, action: Callable[[], None]) -> None:
    """Run ``action`` later without keeping the process alive for it once the app stops."""
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()


def _run_tray(app: Any, on_started: Callable[[], None] | None) -> int:
    from trayupdater.autostart import Autostart, launch_command
    from trayupdater.tray import TrayApp

    autostart = Autostart(launch_command())
    if app.config.start_at_login and _first_run(app.config) and not autostart.is_enabled():
        autostart.enable()
    tray = TrayApp(app.updater, autostart=autostart, logs_dir=app.config.logs_dir)
    app.start()

    # Quit from anywhere (menu, `trayupdater quit`, logout) ends the worker; the icon follows.
    def close_tray_when_worker_ends() -> None:
        app.updater.wait()
        tray.stop()

    threading.Thread(target=close_tray_when_worker_ends, name="tray-closer", daemon=True).start()
    if on_started:
        on_started()
    # Logging out sends SIGTERM (SIGHUP from a closing terminal): quit as from the menu,
    # so the children are stopped and the state saved, rather than dying mid-step.
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda signum, frame: app.quit())
    try:
        tray.run()
    finally:
        app.stop()
    return 0


def _first_run(config: Config) -> bool:
    marker = config.data_dir / ".first-run-done"
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return True


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
        return _run_app(
            demo.config,
            headless=args.headless,
            on_started=demo.start_timeline,
            duration=args.duration,
        )
    finally:
        demo.close()


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
        from trayupdater.store import VersionStore

        state = VersionStore(config.data_dir).load_state()
        data = {
            "running": False,
            "active": state.active,
            "previous": state.previous,
            "blocked": state.blocked,
            "last_error": state.last_error,
        }
        print(
            json.dumps(data, indent=2)
            if args.json
            else f"not running; installed active version: {state.active or 'none'}"
        )
        return 3  # like systemctl status: not running
    return _print_status(client.status(), as_json=args.json)


def _command(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        status = _client(args).command(command, wait=command is not Command.QUIT)
        return _print_status(status, as_json=False)

    return run


def _print_status(status: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    print(status.get("headline", ""))
    if status.get("message"):
        print(status["message"])
    notice = status.get("notice")
    if notice and notice not in (status.get("message") or ""):
        print(notice)
    if status.get("blocked"):
        print("blocked versions: " + ", ".join(status["blocked"]))
    return 1 if status.get("error") else 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": cmd_check,
    "pick-asset": cmd_pick_asset,
    "config": cmd_config,
    "run": cmd_run,
    "demo": cmd_demo,
    "status": cmd_status,
    "rollback": _command(Command.ROLLBACK),
    "resume": _command(Command.RESUME),
    "quit": _command(Command.QUIT),
    "repo": run_repo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
        print(f"trayupdater: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
