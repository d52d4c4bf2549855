"""What a child is started with: its argv from the command template, and an environment
without the app's secrets.

A child is a program we download: it must never see the token, under any name, nor the
app's own configuration.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_COMMAND: tuple[str, ...] = ("{exe}", "{port}")
PLACEHOLDERS = ("exe", "port", "version", "host")

_WINDOWS = os.name == "nt"


def render_command(
    template: Sequence[str],
    *,
    exe: Path,
    port: int,
    version: str,
    host: str = "127.0.0.1",
) -> list[str]:
    """The child's argv: ``template`` with ``{exe} {port} {version} {host}`` filled in.

    ``{{`` and ``}}`` stand for literal braces. Raises ConfigError for anything else in braces.
    """
    if isinstance(template, (str, bytes)):
        raise ConfigError(
            f"child command must be a list of arguments, not one string: {template!r}"
        )
    if not template:
        raise ConfigError("child command is empty; the default is ['{exe}', '{port}']")
    values = {"exe": str(exe), "port": str(port), "version": version, "host": host}
    argv = []
    for arg in template:
        try:
            argv.append(str(arg).format_map(values))
        except KeyError as exc:
            raise ConfigError(
                f"child command {list(template)!r}: unknown placeholder {{{exc.args[0]}}} "
                f"in {arg!r}; known: " + " ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            ) from None
        except (ValueError, IndexError, AttributeError) as exc:
            raise ConfigError(
                f"child command {list(template)!r}: bad placeholder in {arg!r} ({exc}); "
                "write {{ and }} for literal braces"
            ) from None
    return argv


# Variables that hold a token under a name someone may use (the app reads GITHUB_TOKEN).
SECRET_VARIABLES = frozenset(
    {"GITHUB_TOKEN", "GH_TOKEN", "GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN"}
)


def child_environment(
    base: Mapping[str, str], extra: Mapping[str, str], secrets: Sequence[str] = ()
) -> dict[str, str]:
    """What a child gets: ``base`` without secrets, plus ``extra`` (also without secrets).

    Removed: GITHUB_TOKEN, GH_TOKEN and the Enterprise names, every ``TRAYUPDATER_*``
    variable (the app's configuration, the self-update handover token) and any variable
    whose value contains one of ``secrets``. A child is a program we download: it must
    never see the token, under any name.
    """
    secret_values = [s for s in secrets if s]

    def leaks(name: str, value: str) -> bool:
        return (
            name.upper() in SECRET_VARIABLES
            or name.upper().startswith("TRAYUPDATER_")
            or any(secret in value for secret in secret_values)
        )

    env = {k: v for k, v in base.items() if not leaks(k, v)}
    if getattr(sys, "frozen", False) and not _WINDOWS:
        # PyInstaller's bootloader points LD_LIBRARY_PATH at the app's bundled libraries
        # and keeps the user's value in *_ORIG; the child must get the user's.
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if original is None:
            env.pop("LD_LIBRARY_PATH", None)
        else:
            env["LD_LIBRARY_PATH"] = original
    for name, value in extra.items():
        if any(secret in value for secret in secret_values):
            logger.warning("[child] env %s holds the token; not passed to the child", name)
            continue
        env[name] = value
    return env
