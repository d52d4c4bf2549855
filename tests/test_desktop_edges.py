"""What a real user's machine presents at the desktop and installation edges.

Each test is a bug that was found by trying it: a program folder with ``%`` in its name, a
desktop entry switched off the way GLib and KDE also spell it, a Windows path in a
``command`` given as text, a config path the file system cannot hold, an empty folder
setting, a file where the data folder should be. Real files, real processes and GLib as the
desktop reads entries; only the Windows platform is simulated (for the command line split).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from trayupdater.autostart import Autostart
from trayupdater.config import load_config
from trayupdater.config_fields import SPECS
from trayupdater.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


def linux(tmp_path: Path, command: list[str]) -> Autostart:
    return Autostart(command, platform="linux", home=tmp_path / "home", env={})


def _gio() -> tuple[Any, Any]:
    """GLib's Gio and GLib modules, or a skip."""
    gi = pytest.importorskip("gi", reason="PyGObject not installed: cannot read entries as GLib")
    gi.require_version("Gio", "2.0")
    gi.require_version("GLib", "2.0")
    from gi.repository import Gio, GLib

    return Gio, GLib


def _isolated_env(tmp_path: Path) -> dict[str, str]:
    """This environment without TRAYUPDATER_* and with the user's folders inside tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAYUPDATER_")}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
        XDG_DATA_HOME=str(tmp_path / "share"),
        XDG_STATE_HOME=str(tmp_path / "state"),
        TRAYUPDATER_API_URL="http://127.0.0.1:9",  # nothing may reach the internet
        # The code under test, also from another working folder (cwd is tmp_path).
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "trayupdater", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or _isolated_env(tmp_path),
        cwd=tmp_path,
    )


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("trayupdater: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- Linux: the autostart entry as the desktop reads it ---------------------------------------


def test_linux_entry_of_a_program_in_a_folder_with_percent_is_loaded_and_started_by_glib(
    tmp_path: Path,
) -> None:
    """GLib looks the Exec program up on disk *before* it expands ``%%``: an app unpacked
    into ``~/Apps/100% tools/`` got an entry GLib (gnome-session) refuses to load, so it
    never started at login while the tray's checkbox said it would."""
    Gio, _ = _gio()
    folder = tmp_path / "100% tools"
    folder.mkdir()
    program = folder / "python 3"
    program.symlink_to(sys.executable)
    out_file = tmp_path / "argv.json"
    record = folder / "record.py"
    record.write_text(
        f"import json, sys\nopen({str(out_file)!r}, 'w').write(json.dumps(sys.argv))\n"
    )
    args = ["--data-dir", "/home/me/50% share", "%u"]
    auto = linux(tmp_path, [str(program), str(record), *args])
    auto.enable()
    assert auto.is_enabled()
    validator = shutil.which("desktop-file-validate")
    if validator:
        out = subprocess.run([validator, auto.location()], capture_output=True, text=True)
        assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr

    try:
        info = Gio.DesktopAppInfo.new_from_filename(auto.location())
    except TypeError:  # PyGObject: "constructor returned NULL"
        info = None
    assert info is not None, "GLib refuses the entry: the session would never start it"
    assert info.launch([], None)
    end = time.monotonic() + 30
    while not out_file.exists() and time.monotonic() < end:
        time.sleep(0.05)  # polling a file the launched program writes; no event to wait on
    assert json.loads(out_file.read_text())[1:] == args


@pytest.mark.parametrize(
    "line",
    ["Hidden=1", "X-GNOME-Autostart-enabled=0"],
)
def test_linux_entry_switched_off_with_a_numeric_boolean_counts_as_disabled(
    tmp_path: Path, line: str
) -> None:
    """GLib (g_key_file_get_boolean) and KDE's KConfig read 1 and 0 as true and false: an
    entry a tool or the user switched off so showed "Start at login" checked."""
    auto = linux(tmp_path, ["/usr/bin/trayupdater"])
    auto.enable()
    path = Path(auto.location())
    text = path.read_text().replace("X-GNOME-Autostart-enabled=true\n", "")
    path.write_text(text + line + "\n")
    try:
        _, GLib = _gio()
    except pytest.skip.Exception:
        GLib = None
    if GLib is not None:  # the oracle: what gnome-session reads
        keyfile = GLib.KeyFile()
        keyfile.load_from_file(str(path), GLib.KeyFileFlags.NONE)
        key, _, value = line.partition("=")
        assert keyfile.get_boolean("Desktop Entry", key) is (value == "1")
    assert not auto.is_enabled()


# --- a command given as text on Windows ---------------------------------------------------------


def test_windows_command_text_keeps_the_backslashes_of_its_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``TRAYUPDATER_COMMAND`` or ``--set command=...`` is split into words; POSIX shell rules
    read each backslash as an escape, so ``C:\\srv\\app.exe`` became ``C:srvapp.exe``."""
    monkeypatch.setattr(sys, "platform", "win32")
    parse = SPECS["command"].parse
    assert parse(r"C:\srv\wrap.exe {exe} --port {port}") == (
        r"C:\srv\wrap.exe",
        "{exe}",
        "--port",
        "{port}",
    )
    assert parse(r'"C:\Program Files\Wrap\wrap.exe" {exe} {port}') == (
        r"C:\Program Files\Wrap\wrap.exe",
        "{exe}",
        "{port}",
    )
    assert parse(r"{exe} --data \\server\share\it's {port}") == (
        "{exe}",
        "--data",
        r"\\server\share\it's",
        "{port}",
    )


def test_posix_command_text_still_follows_the_shell_rules() -> None:
    if sys.platform == "win32":
        pytest.skip("the Windows rules apply here")
    assert SPECS["command"].parse(r"'/opt/my app/srv' a\ b {port}") == (
        "/opt/my app/srv",
        "a b",
        "{port}",
    )


# --- config file paths and folder settings ------------------------------------------------------


def test_a_config_path_too_long_for_the_file_system_is_one_line(tmp_path: Path) -> None:
    """``Path.exists()`` raises for a name longer than NAME_MAX (and for a folder without
    search rights): a traceback instead of the one-line error naming the file."""
    long_path = tmp_path / ("c" * 300 + ".toml")
    with pytest.raises(ConfigError, match="cannot read config file") as caught:
        load_config(long_path, env={})
    assert str(long_path) in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(env={"TRAYUPDATER_CONFIG": str(long_path)})

    env = _isolated_env(tmp_path)
    env["TRAYUPDATER_CONFIG"] = str(long_path)
    result = _cli(tmp_path, "config", env=env)
    assert result.returncode == 1
    assert "cannot read config file" in _one_error_line(result.stderr)


@pytest.mark.parametrize("where", ["file", "env"])
def test_an_empty_data_dir_is_refused_not_taken_as_the_current_folder(
    tmp_path: Path, where: str
) -> None:
    """``data_dir = ""`` (or ``TRAYUPDATER_DATA_DIR=`` from a script whose variable was
    unset) put versions, state and logs into whatever folder the app was started in."""
    cfg = tmp_path / "config.toml"
    cfg.write_text('[store]\ndata_dir = ""\n' if where == "file" else "")
    env = {"TRAYUPDATER_DATA_DIR": ""} if where == "env" else {}
    with pytest.raises(ConfigError, match="data_dir") as caught:
        load_config(cfg, env=env)
    assert "empty" in str(caught.value)


def test_an_empty_log_dir_means_the_default_log_folder(tmp_path: Path) -> None:
    """``log_dir = ""`` wrote the logs into the current folder; an empty value of the other
    optional paths (ca_bundle, trusted_root) already means "not set"."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\nlog_dir = ""\n')
    config = load_config(cfg, env={})
    assert config.log_dir is None
    assert config.logs_dir == tmp_path / "data" / "logs"
    config = load_config(cfg, env={"TRAYUPDATER_LOG_DIR": " "})
    assert config.logs_dir == tmp_path / "data" / "logs"


@pytest.mark.parametrize("command", [["status"], ["check", "--dry-run"]])
def test_a_file_where_the_data_folder_should_be_is_one_line_not_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    """``status`` and ``check`` open the store themselves; only ``run`` turned a data
    folder that cannot be made into a sentence."""
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data folder should be")
    result = _cli(tmp_path, *command, "--data-dir", str(not_a_folder))
    assert result.returncode == 1, result.stdout + result.stderr
    line = _one_error_line(result.stderr)
    assert str(not_a_folder) in line and "--data-dir" in line


def test_a_data_folder_that_is_a_symlink_loop_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """``run`` works out the login entry's ``--data-dir`` with Path.resolve(), which raises
    RuntimeError for a link loop: a traceback before the app could say which folder."""
    loop = tmp_path / "data"
    loop.symlink_to("data")  # e.g. a moved data folder linked back to itself
    result = _cli(tmp_path, "--data-dir", str(loop), "run", "--headless")
    assert result.returncode == 1, result.stdout + result.stderr
    line = _one_error_line(result.stderr)
    assert str(loop) in line and "--data-dir" in line


def test_a_config_file_saved_with_a_byte_order_mark_is_explained(tmp_path: Path) -> None:
    """Windows PowerShell 5.1 (``Out-File -Encoding utf8``) and older Notepad start the file
    with a BOM, which TOML does not allow: the error said only "Invalid statement (at line
    1, column 1)" about a file that looks right in every editor."""
    cfg = tmp_path / "config.toml"
    cfg.write_bytes(b"\xef\xbb\xbf[proxy]\r\nport = 9000\r\n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(cfg, env={})
    message = str(caught.value)
    assert str(cfg) in message and "byte order mark" in message and "without BOM" in message
