"""``trayupdater repo …``: publish releases as a TUF repository that any static host can serve.

One line per step of a release workflow::

    trayupdater repo init DIR [--keys KEYDIR] [--expires DURATION]
    trayupdater repo add DIR --version V FILE... [--percent P | --schedule 1,5,25,100 --every 24h]
    trayupdater repo rollout DIR --version V (--percent P | --schedule … --every … [--from-now])
    trayupdater repo recall DIR --version V [--undo]
    trayupdater repo refresh DIR [--keys KEYDIR] [--expires DURATION]
    trayupdater repo rotate-key DIR --role ROLE [--keys KEYDIR]

``DIR/metadata/`` and ``DIR/targets/`` are what gets uploaded; the keys live in ``KEYDIR``
(default ``keys/`` beside ``DIR``, never inside it). ``--expires`` is the lifetime of the
new timestamp and snapshot (``7d``, ``12h``, ``30s``; default 7 days): a scheduled
``refresh`` must run well within it. The format is :mod:`trayupdater.tuf_format`, the
signing :mod:`trayupdater.tuf_repository`, rollout and recall :mod:`trayupdater.tuf_rollout`
(what installations make of them: :mod:`trayupdater.rollout`); ``packaging/TRUST.md`` is the
publisher's guide.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trayupdater.tuf_format import ROLES

if TYPE_CHECKING:
    from trayupdater.tuf_repository import Outcome
    from trayupdater.tuf_rollout import RolloutRequest

MAX_DURATION = timedelta(days=10 * 365)
_DURATION = re.compile(r"^\s*(\d{1,9})\s*([dhms])\s*$", re.IGNORECASE)
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``30s`` -> timedelta (more than zero, at most ten years)."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 7d, 12h or 30s")
    value = timedelta(**{_UNITS[match.group(2).lower()]: int(match.group(1))})
    if not timedelta(0) < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 10 years")
    return value


def parse_percent(text: str) -> float:
    """A whole percent: TUF signs canonical JSON, which has no fractions (12.5 could be
    written in no targets metadata: the signing failed with a traceback)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percent such as 25") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"a percent is from 0 to 100, not {text}")
    if not value.is_integer():
        raise argparse.ArgumentTypeError(
            f"a percent is a whole number (TUF metadata has no fractions), not {text}"
        )
    return value


def parse_schedule(text: str) -> tuple[float, ...]:
    """``1,5,25,100`` -> percents that never go down."""
    steps = tuple(parse_percent(part.strip()) for part in text.split(","))
    if len(steps) < 2 or list(steps) != sorted(steps):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a schedule is two or more percents that never go down, e.g. 1,5,25,100"
        )
    return steps


def _rollout_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--percent", type=parse_percent, metavar="P", help="share of installations (0 halts)"
    )
    group.add_argument(
        "--schedule",
        type=parse_schedule,
        metavar="P1,P2,…",
        help="percents that follow each other every --every (from the publish time)",
    )
    parser.add_argument(
        "--every", type=parse_duration, metavar="DURATION", help="how long a step lasts (24h)"
    )


def _rollout_request(args: argparse.Namespace, parser: Any) -> RolloutRequest | None:
    from trayupdater.tuf_rollout import RolloutRequest

    if args.schedule is not None:
        if args.every is None:
            parser.error("--schedule needs --every (how long each step lasts, e.g. 24h)")
        seconds = args.every.total_seconds()
        return RolloutRequest(args.schedule, seconds, getattr(args, "from_now", False))
    if args.every is not None:
        parser.error("--every goes with --schedule")
    if args.percent is not None:
        return RolloutRequest((args.percent,))
    return None


def add_repo_parser(sub: Any) -> None:
    """Register ``repo`` and its actions on the main parser's sub-commands."""
    parser = sub.add_parser("repo", help="publish releases as a TUF repository (see repo -h)")
    actions = parser.add_subparsers(
        dest="repo_action", metavar="ACTION", required=True, help="what to do with DIR"
    )

    def action(name: str, text: str, *, expires: bool = True) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=text, description=text)
        p.set_defaults(repo_parser=p)
        p.add_argument("dir", type=Path, metavar="DIR", help="the repository folder")
        p.add_argument("--keys", type=Path, metavar="KEYDIR", help="default: keys/ beside DIR")
        if expires:
            p.add_argument(
                "--expires",
                type=parse_duration,
                metavar="DURATION",
                help="lifetime of the new timestamp and snapshot (default 7d)",
            )
        return p

    action("init", "create a repository and its keys")
    p = action("add", "publish files as a new version")
    p.add_argument("--version", required=True, metavar="V", help="1.2.0, or a tag such as v1.2.0")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _rollout_options(p, required=False)
    p = action("rollout", "set which share of installations may take a version", expires=False)
    p.add_argument("--version", required=True, metavar="V")
    _rollout_options(p, required=True)
    p.add_argument(
        "--from-now", action="store_true", help="a schedule counts from now, not from publishing"
    )
    p = action("recall", "pull a version back: installations running it roll back", expires=False)
    p.add_argument("--version", required=True, metavar="V")
    p.add_argument("--undo", action="store_true", help="lift the recall")
    action("refresh", "re-sign timestamp and snapshot (and what else is close to expiry)")
    p = action("rotate-key", "replace a role's key (the root key signs the change)", expires=False)
    p.add_argument("--role", required=True, choices=ROLES)


def run_repo(args: argparse.Namespace) -> int:
    """Carry out one ``repo`` action; PublishError (a TrayUpdaterError) when it cannot."""
    # Imported here: signing libraries load only for publishers, not at every start.
    from trayupdater.tuf_keys import KeyStore, check_outside
    from trayupdater.tuf_repository import FolderRepository, PublishError

    folder: Path = args.dir
    keys_dir: Path = args.keys or folder.resolve().parent / "keys"
    check_outside(keys_dir, folder)
    lifetimes = {}
    if getattr(args, "expires", None) is not None:
        lifetimes = {"timestamp": args.expires, "snapshot": args.expires}
    repository = FolderRepository(folder, KeyStore(keys_dir), lifetimes=lifetimes)
    action = args.repo_action
    if action == "init":
        outcome = repository.initialise()
    elif action == "add":
        rollout = _rollout_request(args, args.repo_parser)
        outcome = repository.add_version(args.version, args.files, rollout=rollout)
    elif action in ("rollout", "recall"):
        from trayupdater.tuf_rollout import set_recalled, set_rollout

        if action == "recall":
            outcome = set_recalled(repository, args.version, not args.undo)
        else:
            request = _rollout_request(args, args.repo_parser)
            assert request is not None  # the option group is required
            outcome = set_rollout(repository, args.version, request)
    elif action == "refresh":
        outcome = repository.refresh()
    else:
        outcome = repository.rotate_key(args.role)
    problems = repository.verify()
    if problems:
        raise PublishError("the repository does not verify: " + "; ".join(problems))
    _print(outcome)
    if action == "init":
        root = (repository.metadata_dir / "root.json").resolve()
        print(f"repository created in {folder}; keys in {keys_dir} (keep them private)")
        print(f"ship this file with the app as its trusted root: {root}")
        print(
            f'  ([security] trusted_root = "{root}", or TRAYUPDATER_TRUSTED_ROOT={root} '
            "pyinstaller build.spec)"
        )
    if action == "rotate-key" and args.role == "root":
        print(f"new builds should ship {repository.metadata_dir / 'root.json'}")
    print(f"upload {repository.metadata_dir}/ and {repository.targets_dir}/ (timestamp.json last)")
    return 0


def _print(outcome: Outcome) -> None:
    for line in outcome.lines:
        print(line)
    for line in outcome.warnings:
        print(f"warning: {line}", file=sys.stderr)
