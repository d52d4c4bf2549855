"""Start at login: an XDG autostart entry, a macOS LaunchAgent or a Windows Run key value.

``Autostart`` picks the mechanism for the platform; every mechanism keeps its state only in
the place the OS itself reads at login, so ``is_enabled`` always tells the truth, also
after the user changed it elsewhere (deleted the file, Task Manager's Startup tab, ...).
"""

from __future__ import annotations

import json
import os
import plistlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from xml.parsers.expat import ExpatError

from trayupdater import APP_NAME
from trayupdater.errors import TrayUpdaterError

RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
# Where Task Manager's Startup tab records "disabled" without touching the Run value.
STARTUP_APPROVED_KEY = r"Software\Microsoft\Windows\CurrentVersion\Explorer\StartupApproved\Run"
# "Run and RunOnce Registry Keys" (learn.microsoft.com): the value is a command line no
# longer than 260 characters. A longer one is refused rather than written to be ignored.
RUN_VALUE_MAX = 260


class AutostartError(TrayUpdaterError):
    reason = "autostart"


class _Backend(Protocol):
    def is_enabled(self) -> bool: ...
    def enable(self) -> None: ...
    def disable(self) -> None: ...
    def location(self) -> str: ...


class Autostart:
    """Start ``command`` at login, with the mechanism of ``platform``."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        app_id: str = "trayupdater",
        platform: str = sys.platform,
        home: Path | None = None,
        env: Mapping[str, str] | None = None,
        winreg_module: Any = None,
        name: str = "trayupdater",
        icon: str | None = None,
        icon_png: Callable[[], bytes] | None = None,
    ) -> None:
        command = list(command)
        if not command or not all(isinstance(arg, str) and arg for arg in command):
            raise AutostartError(f"autostart command must be non-empty strings, got {command!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", app_id):
            raise AutostartError(f"autostart app_id must be a simple file name, got {app_id!r}")
        self.command = command
        home = home if home is not None else Path.home()
        env = os.environ if env is None else env
        self._impl: _Backend
        if platform.startswith("linux") or "bsd" in platform:
            self._impl = _XdgAutostart(
                command, app_id, home, env, name, icon or app_id, icon_png=icon_png
            )
        elif platform == "darwin":
            self._impl = _LaunchAgent(command, f"io.{app_id}.app", home)
        elif platform == "win32":
            self._impl = _RunKey(command, app_id, winreg_module)
        else:
            raise AutostartError(f"start at login is not supported on {platform!r}")

    def is_enabled(self) -> bool:
        return self._impl.is_enabled()

    def enable(self) -> None:
        try:
            self._impl.enable()
        except OSError as exc:
            detail = exc.strerror or str(exc)
        except (AutostartError, ValueError) as exc:
            # A command the mechanism cannot hold (a control character, too long). ValueError
            # is what a serializer such as plistlib raises: it must not become a traceback.
            detail = str(exc)
        else:
            return
        raise AutostartError(f"cannot turn on start at login ({self.location()}): {detail}")

    def disable(self) -> None:
        try:
            self._impl.disable()
        except OSError as exc:
            raise AutostartError(
                f"cannot turn off start at login ({self.location()}): {exc.strerror or exc}"
            ) from None

    def location(self) -> str:
        """Where the setting lives (a file path or a registry value), for messages."""
        return self._impl.location()


PRODUCT_NAME = "TrayUpdater"
BUNDLE_ID = "io.github.trayupdater"  # build.spec's bundle_identifier


def login_item(extra_args: Sequence[str] = ()) -> Autostart:
    """The app's own start-at-login entry: this executable with the options it was started
    with (``--config``, ``--data-dir``), the product name and an icon that resolves."""

    def icon_png() -> bytes:
        import io

        from trayupdater.icons import app_icon

        buffer = io.BytesIO()
        app_icon(256).save(buffer, format="PNG")
        return buffer.getvalue()

    return Autostart([*launch_command(), *extra_args], name=PRODUCT_NAME, icon_png=icon_png)


def launch_command() -> list[str]:
    """How the OS should start this app at login.

    A frozen build (PyInstaller) is its own executable; inside a macOS .app bundle that is
    ``X.app/Contents/MacOS/X``, which ``sys.executable`` already names. From source it is
    the current interpreter with ``-m trayupdater`` (whose default command is ``run``).
    """
    if getattr(sys, "frozen", False):
        return [sys.executable]
    python = Path(sys.executable)
    if sys.platform == "win32" and python.name.lower() == "python.exe":
        # pythonw has no console: a login item must not pop up a terminal window.
        windowless = python.with_name("pythonw.exe")
        if windowless.exists():
            python = windowless
    return [os.fspath(python), "-m", "trayupdater"]


# --- turning it on by itself: once per user, never against the user's choice ---


def choice_path() -> Path:
    """Where the start-at-login decision is recorded: the user's config folder, not the
    data folder, so a fresh ``--data-dir`` (or a deleted data folder) is not a first run."""
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "start-at-login.json"


class LoginChoice:
    """The record of who last decided about start at login (``first run`` or ``user``).

    The app turns start at login on by itself only while no decision is recorded; a user
    who turned it off (in the tray, or by deleting the entry after the first run) is
    never overruled.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else choice_path()

    def decided(self) -> bool:
        return self.path.exists()

    def record(self, *, enabled: bool, by: str) -> None:
        data = {"enabled": enabled, "by": by, "at": time.time()}
        _write_atomically(self.path, json.dumps(data).encode("utf-8"))


def enable_on_first_run(
    autostart: Autostart, choice: LoginChoice, *, legacy_marker: Path | None = None
) -> bool:
    """Turn start at login on if nobody decided yet; True if it was turned on now.

    ``legacy_marker`` is the data folder's ``.first-run-done`` of older versions: a user
    who ran one of those already had the first run.
    """
    if choice.decided() or (legacy_marker is not None and legacy_marker.exists()):
        return False
    # Recorded first: if enabling fails, the user gets the error once, not at every start.
    choice.record(enabled=True, by="first run")
    if autostart.is_enabled():
        return False
    try:
        autostart.enable()
    except Exception:
        # Still decided (no retry at every start), but the record says what is true: no entry.
        choice.record(enabled=False, by="first run")
        raise
    return True


# --- Linux and other XDG desktops ---

# Characters that force quoting in an Exec value (Desktop Entry spec, "The Exec key").
_EXEC_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")
# Control characters (Unicode category Cc): C0, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def desktop_exec(command: Sequence[str]) -> str:
    """``command`` as a desktop-entry ``Exec`` value, escaped for the .desktop file.

    Two layers apply: the Exec quoting rules (double quotes; backslash before ``"`` `` ` ``
    ``$`` ``\\``; ``%`` doubled because it starts field codes) and then the general string
    escaping of the file, which doubles every backslash again and writes a tab as ``\\t``.
    Other control characters have no escape there (desktop-file-validate rejects them raw).
    """
    words = []
    for arg in command:
        if "\n" in arg or "\r" in arg:
            raise AutostartError(f"autostart command argument contains a line break: {arg!r}")
        if _CONTROL.search(arg.replace("\t", "")):
            raise AutostartError(
                f"autostart command argument contains a control character: {arg!r}"
            )
        word = arg.replace("%", "%%")
        if any(ch in _EXEC_RESERVED for ch in arg) or not arg:
            word = '"' + re.sub(r'(["`$\\])', r"\\\1", word) + '"'
        words.append(word)
    # A tab is quoted above (it separates words) and escaped here: the spec's \t.
    return " ".join(words).replace("\\", "\\\\").replace("\t", "\\t")


def _exec_command(command: list[str]) -> list[str]:
    """``command`` as an Exec line runs it: a program whose path holds ``%`` through sh.

    GLib looks the Exec program up on disk before it expands ``%%`` to ``%``, finds no
    ``.../100%%/app`` and refuses the whole entry (gnome-session never starts it). ``sh``
    is found in PATH; it runs ``$0`` with the arguments exactly as given.
    """
    if "%" in command[0]:
        return ["sh", "-c", 'exec "$0" "$@"', *command]
    return command


def _desktop_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


class _XdgAutostart:
    def __init__(
        self,
        command: list[str],
        app_id: str,
        home: Path,
        env: Mapping[str, str],
        name: str,
        icon: str,
        *,
        icon_png: Callable[[], bytes] | None = None,
    ) -> None:
        config_home = env.get("XDG_CONFIG_HOME", "")
        # The spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
        base = Path(config_home) if os.path.isabs(config_home) else home / ".config"
        self.path = base / "autostart" / f"{app_id}.desktop"
        self.command = command
        self.name = name
        self.icon = icon
        self._icon_png = icon_png
        data_home = env.get("XDG_DATA_HOME", "")
        data = Path(data_home) if os.path.isabs(data_home) else home / ".local" / "share"
        # The icon theme folder desktops look names up in; Icon= names the file itself,
        # so it resolves without an icon cache update.
        self.icon_path = data / "icons" / "hicolor" / "256x256" / "apps" / f"{app_id}.png"

    def location(self) -> str:
        return os.fspath(self.path)

    def is_enabled(self) -> bool:
        try:
            # Bytes, not read_text(): its universal newlines would split at a lone "\r" too.
            text = self.path.read_bytes().decode("utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return False
        except (OSError, UnicodeDecodeError):
            return False  # unreadable: the session manager cannot use it either
        entry = _desktop_entry_group(text)
        # GLib (gnome-session) and KDE also read 1 and 0 as booleans.
        if entry.get("Hidden", "false").strip().lower() in ("true", "1"):
            return False
        return entry.get("X-GNOME-Autostart-enabled", "true").strip().lower() not in ("false", "0")

    def enable(self) -> None:
        icon = self.icon
        if self._icon_png is not None:
            if not self.icon_path.is_file():
                _write_atomically(self.icon_path, self._icon_png())
            icon = os.fspath(self.icon_path)
        text = "\n".join(
            [
                "[Desktop Entry]",
                "Type=Application",
                f"Name={_desktop_string(self.name)}",
                "Comment=Keeps a server program running and up to date",
                f"Exec={desktop_exec(_exec_command(self.command))}",
                f"Icon={_desktop_string(icon)}",
                "Terminal=false",
                "X-GNOME-Autostart-enabled=true",
                "",
            ]
        )
        _write_atomically(self.path, text.encode("utf-8"))

    def disable(self) -> None:
        # Removing beats Hidden=true here: no system-wide entry of ours exists to shadow.
        self.path.unlink(missing_ok=True)


_ASCII_SPACE = " \t\r\n\v\f"  # what GLib strips (g_ascii_isspace), not Unicode spaces


def _desktop_entry_group(text: str) -> dict[str, str]:
    """Keys of the ``[Desktop Entry]`` group (later groups, comments and locales ignored)."""
    values: dict[str, str] = {}
    in_entry = False
    # Lines end at "\n" only, as GLib reads them: str.splitlines() would also split at
    # U+2028, \x85, \x0c..., so an argument holding one could forge a key GLib never sees.
    for raw in text.split("\n"):
        line = raw.strip(_ASCII_SPACE)
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            in_entry = line == "[Desktop Entry]"
            continue
        if in_entry and "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(_ASCII_SPACE), value.strip(_ASCII_SPACE))
    return values


# --- macOS ---


class _LaunchAgent:
    def __init__(self, command: list[str], label: str, home: Path) -> None:
        self.path = home / "Library" / "LaunchAgents" / f"{label}.plist"
        self.command = command
        self.label = label

    def location(self) -> str:
        return os.fspath(self.path)

    def is_enabled(self) -> bool:
        try:
            with self.path.open("rb") as fh:
                data = plistlib.load(fh)
        except FileNotFoundError:
            return False
        except (OSError, plistlib.InvalidFileException, ValueError, ExpatError):
            return False  # launchd would reject it too
        return (
            isinstance(data, dict)
            and data.get("RunAtLoad") is True
            and data.get("Disabled") is not True
        )

    def enable(self) -> None:
        for arg in self.command:
            # XML cannot hold most control characters (plistlib raises) and turns "\r" into
            # "\n": launchd would run another command than the one shown. Refuse instead.
            try:
                same = plistlib.loads(plistlib.dumps([arg])) == [arg]
            except ValueError:
                same = False
            if not same:
                raise AutostartError(
                    f"autostart command argument contains a control character: {arg!r}"
                )
        agent = {
            "Label": self.label,
            "ProgramArguments": self.command,
            "RunAtLoad": True,
            # A GUI app: no background throttling, and only in the user's graphical session.
            "ProcessType": "Interactive",
            "LimitLoadToSessionType": "Aqua",
            # Login Items settings show the app's name and icon instead of a bare path.
            "AssociatedBundleIdentifiers": [BUNDLE_ID],
        }
        _write_atomically(self.path, plistlib.dumps(agent, fmt=plistlib.FMT_XML))

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)


# --- Windows ---


class _RunKey:
    def __init__(self, command: list[str], value_name: str, winreg_module: Any) -> None:
        if winreg_module is None:
            try:
                import winreg as winreg_module  # only exists on Windows
            except ImportError:
                raise AutostartError("the winreg module is only available on Windows") from None
        self.winreg = winreg_module
        self.value_name = value_name
        self.command_line = subprocess.list2cmdline(command)

    def location(self) -> str:
        return rf"HKEY_CURRENT_USER\{RUN_KEY}\{self.value_name}"

    def _query(self, subkey: str) -> Any:
        reg = self.winreg
        try:
            key = reg.OpenKey(reg.HKEY_CURRENT_USER, subkey, 0, reg.KEY_QUERY_VALUE)
        except FileNotFoundError:
            return None
        try:
            return reg.QueryValueEx(key, self.value_name)[0]
        except FileNotFoundError:
            return None
        finally:
            reg.CloseKey(key)

    def is_enabled(self) -> bool:
        if not self._query(RUN_KEY):
            return False
        approved = self._query(STARTUP_APPROVED_KEY)
        # Task Manager writes 12 bytes; an odd first byte (0x03, 0x07) means "disabled".
        return not (isinstance(approved, bytes) and approved and approved[0] & 1)

    def enable(self) -> None:
        if len(self.command_line) > RUN_VALUE_MAX:
            raise AutostartError(
                f"the command line is {len(self.command_line)} characters long, but Windows "
                f"runs a Run key command of at most {RUN_VALUE_MAX} characters"
            )
        reg = self.winreg
        key = reg.CreateKeyEx(reg.HKEY_CURRENT_USER, RUN_KEY, 0, reg.KEY_SET_VALUE)
        try:
            reg.SetValueEx(key, self.value_name, 0, reg.REG_SZ, self.command_line)
        finally:
            reg.CloseKey(key)
        # Undo a "Disabled" from Task Manager, or our value would stay ignored.
        self._delete(STARTUP_APPROVED_KEY)

    def disable(self) -> None:
        self._delete(RUN_KEY)

    def _delete(self, subkey: str) -> None:
        reg = self.winreg
        try:
            key = reg.OpenKey(reg.HKEY_CURRENT_USER, subkey, 0, reg.KEY_SET_VALUE)
        except FileNotFoundError:
            return
        try:
            reg.DeleteValue(key, self.value_name)
        except FileNotFoundError:
            pass
        finally:
            reg.CloseKey(key)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` in one step: a session starting now sees the old or the new entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
