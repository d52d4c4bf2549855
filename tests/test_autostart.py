"""Start at login on all three platforms: real files in tmp_path, an in-memory registry."""

from __future__ import annotations

import json
import plistlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trayupdater.autostart import (
    RUN_KEY,
    RUN_VALUE_MAX,
    STARTUP_APPROVED_KEY,
    Autostart,
    AutostartError,
    LoginChoice,
    desktop_exec,
    enable_on_first_run,
    launch_command,
)

TRICKY_ARGS = [
    "with space",
    'double"quote',
    "single'quote",
    "back\\slash",
    "$HOME",
    "`cmd`",
    "100%",
    "%f",
    "semi;colon",
    "tab\there",  # written as the spec's \t escape, never raw
    "para\u2028sep",  # a Unicode line separator: not a line break in a key file
    "plain",
]


def linux(tmp_path: Path, command: list[str], **env: str) -> Autostart:
    return Autostart(command, platform="linux", home=tmp_path / "home", env=env)


# --- Linux: XDG autostart ---


def test_linux_enable_disable_roundtrip(tmp_path):
    auto = linux(tmp_path, ["/usr/bin/trayupdater"], XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    entry = tmp_path / "cfg" / "autostart" / "trayupdater.desktop"
    assert auto.location() == str(entry)
    assert not auto.is_enabled()

    auto.enable()
    assert auto.is_enabled()
    lines = entry.read_text().splitlines()
    assert lines[0] == "[Desktop Entry]"
    for line in (
        "Type=Application",
        "Name=trayupdater",
        "Exec=/usr/bin/trayupdater",
        "Icon=trayupdater",
        "Terminal=false",
        "X-GNOME-Autostart-enabled=true",
    ):
        assert line in lines

    auto.enable()  # idempotent
    assert auto.is_enabled()
    auto.disable()
    assert not entry.exists()
    assert not auto.is_enabled()
    auto.disable()  # disabling twice is fine


def test_linux_defaults_to_dot_config_and_ignores_a_relative_xdg_config_home(tmp_path):
    expected = tmp_path / "home" / ".config" / "autostart" / "trayupdater.desktop"
    assert linux(tmp_path, ["x"]).location() == str(expected)
    assert linux(tmp_path, ["x"], XDG_CONFIG_HOME="relative/cfg").location() == str(expected)


@pytest.mark.parametrize(
    "extra",
    ["Hidden=true", "X-GNOME-Autostart-enabled=false", "Hidden = True"],
)
def test_linux_entry_switched_off_by_the_desktop_counts_as_disabled(tmp_path, extra):
    auto = linux(tmp_path, ["/usr/bin/trayupdater"])
    auto.enable()
    path = Path(auto.location())
    text = path.read_text().replace("X-GNOME-Autostart-enabled=true\n", "")
    path.write_text(text + extra + "\n")
    assert not auto.is_enabled()
    auto.enable()  # enabling again rewrites the entry as ours
    assert auto.is_enabled()


def test_linux_keys_of_other_groups_do_not_count(tmp_path):
    auto = linux(tmp_path, ["/usr/bin/trayupdater"])
    auto.enable()
    path = Path(auto.location())
    path.write_text(path.read_text() + "\n[Desktop Action quit]\nHidden=true\n")
    assert auto.is_enabled()


def test_linux_entry_passes_desktop_file_validate(tmp_path):
    validator = shutil.which("desktop-file-validate")
    if validator is None:
        pytest.skip("desktop-file-validate not installed (apt-get install desktop-file-utils)")
    auto = linux(tmp_path, ["/opt/My Apps/tray updater", *TRICKY_ARGS])
    auto.enable()
    out = subprocess.run([validator, auto.location()], capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_linux_exec_quoting_survives_a_real_launch(tmp_path):
    """GIO launches the entry as a session would: the program must get the exact argv."""
    gi = pytest.importorskip("gi", reason="PyGObject not installed: cannot launch with GIO")
    gi.require_version("Gio", "2.0")
    from gi.repository import Gio

    folder = tmp_path / "dir with space"
    folder.mkdir()
    record = folder / "record argv.py"
    out_file = tmp_path / "argv.json"
    record.write_text(
        f"import json, sys\nopen({str(out_file)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    auto = linux(tmp_path, [sys.executable, str(record), *TRICKY_ARGS])
    auto.enable()

    info = Gio.DesktopAppInfo.new_from_filename(auto.location())
    assert info is not None, "GIO rejected the desktop entry"
    assert info.launch([], None)
    end = time.monotonic() + 30
    while not out_file.exists() and time.monotonic() < end:
        time.sleep(0.05)  # polling a file the launched program writes; no event to wait on
    assert json.loads(out_file.read_text()) == TRICKY_ARGS


def test_desktop_exec_quoting_rules():
    assert desktop_exec(["/usr/bin/app", "run"]) == "/usr/bin/app run"
    assert desktop_exec(["/opt/a b/app"]) == '"/opt/a b/app"'
    assert desktop_exec(["50%"]) == "50%%"
    # Inside quotes: \" \` \$ \\ ; then the file's string escaping doubles each backslash.
    assert desktop_exec(['a"b']) == '"a\\\\"b"'
    assert desktop_exec(["a\\b"]) == '"a\\\\\\\\b"'
    assert desktop_exec([""]) == '""'
    with pytest.raises(AutostartError, match="line break"):
        desktop_exec(["two\nlines"])


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x85"])
def test_linux_control_characters_are_refused_with_a_clear_error(tmp_path, char):
    auto = linux(tmp_path, ["/usr/bin/trayupdater", "--config", f"/home/me/a{char}b.toml"])
    with pytest.raises(AutostartError, match=r"cannot turn on start at login .*control character"):
        auto.enable()
    assert not Path(auto.location()).exists()
    assert not auto.is_enabled()


def test_linux_tab_is_written_as_an_escape():
    # Quoted (a tab separates words), then \t in the file: GLib unescapes it to a tab.
    assert desktop_exec(["/usr/bin/app", "a\tb"]) == '/usr/bin/app "a\\tb"'


def _glib_entry_keys(path: Path) -> set[str] | None:
    """The ``[Desktop Entry]`` keys as GLib (what GNOME's session manager uses) reads them."""
    try:
        import gi

        gi.require_version("GLib", "2.0")
        from gi.repository import GLib
    except (ImportError, ValueError):
        return None
    keyfile = GLib.KeyFile()
    keyfile.load_from_file(str(path), GLib.KeyFileFlags.NONE)
    return set(keyfile.get_keys("Desktop Entry")[0])


@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
def test_linux_unicode_line_separator_in_an_argument_forges_no_key(tmp_path, separator):
    arg = f"/home/me/notes{separator}Hidden=true{separator}/config.toml"
    auto = linux(tmp_path, ["/usr/bin/trayupdater", "--config", arg])
    auto.enable()
    assert auto.is_enabled()  # the tray's checkbox must show the entry that GLib starts
    keys = _glib_entry_keys(Path(auto.location()))
    if keys is not None:
        assert "Hidden" not in keys


def test_linux_entry_lines_end_at_newline_only_as_glib_reads_them(tmp_path):
    auto = linux(tmp_path, ["/usr/bin/trayupdater"])
    auto.enable()
    path = Path(auto.location())
    # A lone CR and a form feed do not end a line for GLib; CRLF does.
    text = path.read_text().replace("Name=trayupdater\n", "Name=a\rHidden=true\x0cHidden=true\r\n")
    path.write_bytes(text.encode())
    assert auto.is_enabled()
    keys = _glib_entry_keys(path)
    if keys is not None:
        assert "Hidden" not in keys and "Name" in keys


def test_linux_write_failure_names_the_path(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "autostart").write_text("a file where the folder should be")
    auto = linux(tmp_path, ["x"], XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    with pytest.raises(AutostartError, match=r"cannot turn on start at login .*autostart"):
        auto.enable()
    assert not auto.is_enabled()


# --- macOS: LaunchAgent ---


def test_macos_launch_agent_roundtrip(tmp_path):
    command = ["/Applications/Tray Updater.app/Contents/MacOS/Tray Updater", "--flag"]
    auto = Autostart(command, platform="darwin", home=tmp_path)
    plist = tmp_path / "Library" / "LaunchAgents" / "io.trayupdater.app.plist"
    assert auto.location() == str(plist)
    assert not auto.is_enabled()

    auto.enable()
    assert auto.is_enabled()
    with plist.open("rb") as fh:
        data = plistlib.load(fh)
    assert data == {
        "Label": "io.trayupdater.app",
        "ProgramArguments": command,
        "RunAtLoad": True,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",
        "AssociatedBundleIdentifiers": ["io.github.trayupdater"],
    }
    auto.disable()
    assert not plist.exists()
    assert not auto.is_enabled()


def test_macos_disabled_or_broken_agent_is_not_enabled(tmp_path):
    auto = Autostart(["/x"], platform="darwin", home=tmp_path)
    auto.enable()
    plist = Path(auto.location())
    data = plistlib.loads(plist.read_bytes())
    plist.write_bytes(plistlib.dumps({**data, "Disabled": True}))
    assert not auto.is_enabled()
    plist.write_bytes(b"<?xml version='1.0'?><plist><dict><key>Label")
    assert not auto.is_enabled()


def test_macos_argument_plist_cannot_hold_is_refused_and_first_run_records_it_off(tmp_path):
    # "\x1b" makes plistlib raise; "\r" would come back as "\n" (another command).
    for arg in ["/Users/me/conf\x1b.toml", "/Users/me/a\rb"]:
        auto = Autostart(
            ["/Applications/T.app/Contents/MacOS/T", arg], platform="darwin", home=tmp_path
        )
        choice = LoginChoice(tmp_path / f"choice-{len(arg)}.json")
        with pytest.raises(
            AutostartError, match=r"cannot turn on start at login .*control character"
        ):
            enable_on_first_run(auto, choice)
        assert not Path(auto.location()).exists() and not auto.is_enabled()
        assert choice.decided()  # reported once, not at every start
        assert json.loads(choice.path.read_text())["enabled"] is False


def test_macos_tab_and_newline_survive_the_plist(tmp_path):
    command = ["/Applications/T.app/Contents/MacOS/T", "--config", "/Users/me/a\tb\nc.toml"]
    auto = Autostart(command, platform="darwin", home=tmp_path)
    auto.enable()
    with open(auto.location(), "rb") as fh:
        assert plistlib.load(fh)["ProgramArguments"] == command
    assert auto.is_enabled()


# --- Windows: Run key ---


class FakeWinreg:
    """The slice of ``winreg`` that Autostart uses, over an in-memory, case-insensitive hive."""

    HKEY_CURRENT_USER = 0x80000001
    KEY_QUERY_VALUE = 0x0001
    KEY_SET_VALUE = 0x0002
    KEY_READ = 0x20019
    KEY_WRITE = 0x20006
    REG_SZ = 1
    REG_BINARY = 3

    def __init__(self) -> None:
        self.keys: dict[tuple[int, str], dict[str, tuple[object, int]]] = {}
        self.open_handles: set[int] = set()
        self._next = 1
        self._handles: dict[int, tuple[tuple[int, str], int]] = {}
        self.read_only = False  # as under a policy that locks the Run key

    def _handle(self, path: tuple[int, str], access: int) -> int:
        handle, self._next = self._next, self._next + 1
        self._handles[handle] = (path, access)
        self.open_handles.add(handle)
        return handle

    def _key(self, handle: int, need: int) -> dict[str, tuple[object, int]]:
        assert handle in self.open_handles, "use of a closed key"
        path, access = self._handles[handle]
        if not access & need:
            raise PermissionError(5, "Access is denied")
        return self.keys[path]

    def OpenKey(self, root, sub_key, reserved=0, access=KEY_READ):
        path = (root, sub_key.lower())
        if path not in self.keys:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return self._handle(path, access)

    def CreateKeyEx(self, root, sub_key, reserved=0, access=KEY_WRITE):
        if self.read_only:
            raise PermissionError(5, "Access is denied")
        path = (root, sub_key.lower())
        self.keys.setdefault(path, {})
        return self._handle(path, access)

    def SetValueEx(self, key, name, reserved, type_, value):
        self._key(key, self.KEY_SET_VALUE)[name.lower()] = (value, type_)

    def QueryValueEx(self, key, name):
        values = self._key(key, self.KEY_QUERY_VALUE)
        if name.lower() not in values:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return values[name.lower()]

    def DeleteValue(self, key, name):
        values = self._key(key, self.KEY_SET_VALUE)
        if name.lower() not in values:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        del values[name.lower()]

    def CloseKey(self, key):
        self.open_handles.discard(key)

    def value(self, sub_key: str, name: str) -> object:
        return self.keys.get((self.HKEY_CURRENT_USER, sub_key.lower()), {}).get(name.lower())


def test_windows_run_key_roundtrip_with_quoted_path():
    reg = FakeWinreg()
    command = [r"C:\Program Files\Tray Updater\trayupdater.exe", "--config", r"C:\My Config\t.toml"]
    auto = Autostart(command, platform="win32", winreg_module=reg)
    assert auto.location() == rf"HKEY_CURRENT_USER\{RUN_KEY}\trayupdater"
    assert not auto.is_enabled()

    auto.enable()
    assert auto.is_enabled()
    assert reg.value(RUN_KEY, "trayupdater") == (
        r'"C:\Program Files\Tray Updater\trayupdater.exe" --config "C:\My Config\t.toml"',
        reg.REG_SZ,
    )
    auto.disable()
    assert reg.value(RUN_KEY, "trayupdater") is None
    assert not auto.is_enabled()
    auto.disable()
    assert reg.open_handles == set(), "a registry key was left open"


def test_windows_task_manager_disable_is_respected_and_undone_by_enable():
    reg = FakeWinreg()
    auto = Autostart([r"C:\t\trayupdater.exe"], platform="win32", winreg_module=reg)
    auto.enable()
    key = reg.CreateKeyEx(reg.HKEY_CURRENT_USER, STARTUP_APPROVED_KEY)
    reg.SetValueEx(key, "trayupdater", 0, reg.REG_BINARY, b"\x03" + bytes(11))
    reg.CloseKey(key)
    assert not auto.is_enabled()

    auto.enable()
    assert auto.is_enabled()
    assert reg.value(STARTUP_APPROVED_KEY, "trayupdater") is None
    assert reg.open_handles == set()


def test_windows_access_denied_is_a_clear_error():
    reg = FakeWinreg()
    reg.read_only = True
    auto = Autostart([r"C:\t\trayupdater.exe"], platform="win32", winreg_module=reg)
    with pytest.raises(AutostartError, match=r"cannot turn on start at login .*\\Run\\trayupdater"):
        auto.enable()
    assert not auto.is_enabled()


def test_windows_run_value_longer_than_260_characters_is_refused():
    reg = FakeWinreg()
    exe = "C:\\T\\trayupdater.exe"
    longest = exe + " " + "x" * (RUN_VALUE_MAX - len(exe) - 1)
    assert len(longest) == RUN_VALUE_MAX == 260
    Autostart(longest.split(" "), platform="win32", winreg_module=reg).enable()
    assert reg.value(RUN_KEY, "trayupdater") == (longest, reg.REG_SZ)

    reg = FakeWinreg()
    auto = Autostart([*longest.split(" "), "y"], platform="win32", winreg_module=reg)
    with pytest.raises(AutostartError, match=r"262 characters long.* at most 260 characters"):
        auto.enable()
    assert reg.value(RUN_KEY, "trayupdater") is None
    assert not auto.is_enabled()
    assert reg.open_handles == set()


def test_windows_without_winreg_is_a_clear_error():
    if sys.platform == "win32":
        pytest.skip("winreg exists here")
    with pytest.raises(AutostartError, match="winreg"):
        Autostart(["x"], platform="win32")


# --- choosing and validating ---


def test_unknown_platform_and_bad_input_are_rejected(tmp_path):
    with pytest.raises(AutostartError, match="not supported on 'plan9'"):
        Autostart(["x"], platform="plan9", home=tmp_path)
    with pytest.raises(AutostartError, match="non-empty strings"):
        Autostart([], platform="linux", home=tmp_path)
    with pytest.raises(AutostartError, match="app_id"):
        Autostart(["x"], app_id="../evil", platform="linux", home=tmp_path)


def test_launch_command_from_source_and_frozen(monkeypatch):
    assert launch_command() == [sys.executable, "-m", "trayupdater"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert launch_command() == [sys.executable]


# --- turning it on by itself: once, never against the user ---


def test_first_run_turns_it_on_once_and_never_after_the_user_turned_it_off(tmp_path):
    auto = linux(tmp_path, ["/usr/bin/trayupdater"], XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    choice = LoginChoice(tmp_path / "cfg" / "trayupdater" / "start-at-login.json")
    assert enable_on_first_run(auto, choice) is True
    assert auto.is_enabled()
    assert json.loads(choice.path.read_text())["by"] == "first run"

    auto.disable()  # the user removes the entry (desktop settings, or the tray's checkbox)
    # A later start, also with another data folder (which used to count as a first run):
    assert enable_on_first_run(auto, choice, legacy_marker=tmp_path / "new-data" / "x") is False
    assert not auto.is_enabled()


def test_a_failed_first_run_is_recorded_as_off_and_not_retried(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "autostart").write_text("a file where the folder should be")
    auto = linux(tmp_path, ["/usr/bin/trayupdater"], XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    choice = LoginChoice(tmp_path / "choice.json")
    with pytest.raises(AutostartError):
        enable_on_first_run(auto, choice)
    assert json.loads(choice.path.read_text()) | {"at": 0} == {
        "enabled": False,
        "by": "first run",
        "at": 0,
    }
    assert enable_on_first_run(auto, choice) is False  # the error was shown once


def test_an_older_versions_first_run_marker_counts_as_decided(tmp_path):
    auto = linux(tmp_path, ["/usr/bin/trayupdater"])
    legacy = tmp_path / "data" / ".first-run-done"
    legacy.parent.mkdir()
    legacy.touch()
    choice = LoginChoice(tmp_path / "c.json")
    assert enable_on_first_run(auto, choice, legacy_marker=legacy) is False
    assert not auto.is_enabled()


def test_the_choice_lives_in_the_users_config_folder(tmp_path, monkeypatch):
    from trayupdater.autostart import choice_path

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    if sys.platform.startswith("linux"):
        assert choice_path() == tmp_path / "cfg" / "trayupdater" / "start-at-login.json"


def test_the_apps_login_item_keeps_its_options_names_the_product_and_has_an_icon(
    tmp_path, monkeypatch
):
    from trayupdater.autostart import login_item

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    if not sys.platform.startswith("linux"):
        pytest.skip("the XDG entry is the Linux login item")
    item = login_item(["--config", "/etc/my app.toml", "--data-dir", "/srv/data"])
    item.enable()
    entry = Path(item.location()).read_text()
    assert "Name=TrayUpdater" in entry
    assert "Exec=" + sys.executable + ' -m trayupdater --config "/etc/my app.toml"' in entry
    assert "--data-dir /srv/data" in entry
    icon = next(line.split("=", 1)[1] for line in entry.splitlines() if line.startswith("Icon="))
    assert icon == str(
        tmp_path / "share" / "icons" / "hicolor" / "256x256" / "apps" / "trayupdater.png"
    )
    assert Path(icon).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the icon resolves to a file
    validator = shutil.which("desktop-file-validate")
    if validator:
        out = subprocess.run([validator, item.location()], capture_output=True, text=True)
        assert out.returncode == 0 and not out.stdout.strip(), out.stdout
