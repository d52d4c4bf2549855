"""The commands that act on a running app, through its control endpoint: status, rollback,
pause, skip, quit... A folder held by an app that does not answer is said so, not taken for
"not running" (the CLI would then work on the store that app owns)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trayupdater.cli_parser import config_from_args, open_store
from trayupdater.control import ControlClient
from trayupdater.errors import TrayUpdaterError
from trayupdater.instance_lock import held_by_anyone
from trayupdater.status import Command
from trayupdater.terminal import print_controls, print_status


def running_app(data_dir: Path) -> ControlClient | None:
    """The app running on ``data_dir``; None if none runs; an error if one holds the folder
    but does not answer (starting, stopping or hung): "not running" would be untrue, and
    the CLI would then work on the store that app owns."""
    client = ControlClient.find(data_dir)
    if client is None and held_by_anyone(data_dir):
        raise TrayUpdaterError(
            f"trayupdater runs on the data folder {data_dir} but does not answer "
            "(starting, stopping or hung); try again in a moment"
        )
    return client


def _client(args: argparse.Namespace) -> ControlClient:
    config = config_from_args(args)
    client = running_app(config.data_dir)
    if client is None:
        raise TrayUpdaterError(f"trayupdater is not running (data dir {config.data_dir})")
    return client


def cmd_status(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    client = running_app(config.data_dir)
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


def control_command(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        params: dict[str, str] = {}
        client = _client(args)
        # "Not given" is None: an empty value (`skip "$V"` with V unset) is checked like
        # any other, not taken for the latest version or for "pause until resumed".
        if command is Command.SKIP:
            version = args.skip_version
            if version is None:
                version = _pending_version(client.status())
            params["version"] = version
        elif command is Command.ALLOW:
            params["version"] = args.allow_version
        elif command is Command.PAUSE and args.pause_for is not None:
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
