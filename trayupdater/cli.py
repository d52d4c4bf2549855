"""Command line: ``trayupdater [global options] COMMAND``.

Each command is a small function taking the parsed arguments; the grammar is
:mod:`cli_parser`'s, the commands that act on a running app (through its control endpoint)
are :mod:`cli_control`'s, the publisher's are :mod:`publish`'s. Expected failures print one
line and exit 1; a traceback is a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trayupdater.cli_control import cmd_status, control_command, running_app
from trayupdater.cli_parser import build_parser, config_from_args, config_path_of, open_store
from trayupdater.config import Config, describe, load_config
from trayupdater.control import ControlClient
from trayupdater.errors import TrayUpdaterError
from trayupdater.launch import run_app, start_failed, tray_here
from trayupdater.publish import run_repo
from trayupdater.shown import LogFormatter
from trayupdater.status import Command
from trayupdater.terminal import print_status, say

log = logging.getLogger("trayupdater")


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
    running = ControlClient.find(config.data_dir) if args.dry_run else running_app(config.data_dir)
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": cmd_check,
    "pick-asset": cmd_pick_asset,
    "config": cmd_config,
    "run": cmd_run,
    "demo": cmd_demo,
    "demo-child": cmd_demo_child,
    "status": cmd_status,
    "rollback": control_command(Command.ROLLBACK),
    "resume": control_command(Command.RESUME),
    "quit": control_command(Command.QUIT),
    "repo": run_repo,
    "skip": control_command(Command.SKIP),
    "allow": control_command(Command.ALLOW),
    "pause": control_command(Command.PAUSE),
    "unpause": control_command(Command.UNPAUSE),
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
