"""TrayApp driven through every menu item with a display-less pystray icon.

The controller here is a small real class holding a Status (the update worker is tested
elsewhere); start-at-login uses the real Autostart on files in tmp_path.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

# pystray_double sets PYSTRAY_BACKEND before pystray is imported (no display needed);
# pystray itself is only ever imported through it in this module.
import pystray_double
import pytest
from pystray_double import RecordingIcon

from trayupdater.autostart import Autostart
from trayupdater.errors import TrayUpdaterError
from trayupdater.icons import ICO_SIZES, Look, app_icon, icon_image, look_for, write_assets
from trayupdater.opener import open_folder
from trayupdater.status import Command, Phase, Status
from trayupdater.tray import TrayApp

TIMEOUT = 20.0


class FakeController:
    def __init__(self, status: Status) -> None:
        self._status = status
        self.commands: list[Command] = []
        self.payloads: list = []
        self._listeners: list = []

    def status(self) -> Status:
        return self._status

    def send(self, command: Command, payload=None) -> None:
        self.commands.append(command)
        self.payloads.append(payload)

    def subscribe(self, callback) -> None:
        self._listeners.append(callback)

    def publish(self, **changes) -> None:
        self._status = replace(self._status, **changes)
        for callback in self._listeners:
            callback(self._status)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, tmp_path: Path, status: Status, icon_class: type = RecordingIcon) -> None:
        self.controller = FakeController(status)
        self.urls: list[str] = []
        self.paths: list[Path] = []
        self.clock = FakeClock()
        self.autostart = Autostart(
            ["/opt/tray updater/trayupdater", "run"],
            platform="linux",
            home=tmp_path / "home",
            env={"XDG_CONFIG_HOME": str(tmp_path / "config")},
        )
        self.logs_dir = tmp_path / "data" / "logs"
        self.app = TrayApp(
            self.controller,
            autostart=self.autostart,
            open_url=self.open_url,
            open_path=self.paths.append,
            logs_dir=self.logs_dir,
            icon_factory=icon_class,
            clock=self.clock,
        )
        self.icon: RecordingIcon = self.app.icon
        self.thread: threading.Thread | None = None
        self.browser_error: Exception | None = None

    def open_url(self, url: str) -> None:
        if self.browser_error is not None:
            raise self.browser_error
        self.urls.append(url)

    def start(self) -> None:
        if self.thread is not None:
            return
        self.thread = threading.Thread(target=self.app.run, daemon=True)
        self.thread.start()
        assert self.icon.ready.wait(TIMEOUT)
        assert self.icon.shown.wait(TIMEOUT)

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "TrayApp.run() did not return"


RUNNING = Status(phase=Phase.RUNNING, active="1.2.0", proxy_url="http://127.0.0.1:18080")


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path, RUNNING)
    harness.start()  # notifications wait until the icon runs, as on a real backend
    yield harness
    harness.app.stop()
    if harness.thread is not None:
        harness.join()


def same_image(a, b) -> bool:
    return a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes()


# --- status line ---


def test_status_line_is_the_headline_and_disabled(h):
    first = h.icon.items()[0]
    assert first.text == "simple-server 1.2.0 — running"
    assert not first.enabled
    assert h.icon.title == "simple-server 1.2.0 — running"


def test_status_line_follows_a_check_to_its_outcome(h):
    h.controller.publish(phase=Phase.CHECKING, message="Checking…")
    assert h.icon.texts()[:2] == ["simple-server 1.2.0 — checking", "Checking…"]
    assert not h.icon.item("Check for updates").enabled  # it would only queue behind itself

    h.controller.publish(phase=Phase.RUNNING, message="Up to date")
    assert h.icon.texts()[:2] == ["simple-server 1.2.0 — running", "Up to date"]
    assert h.icon.item("Check for updates").enabled

    h.controller.publish(active="1.3.0", message="Updated to 1.3.0")
    assert h.icon.texts()[:2] == ["simple-server 1.3.0 — running", "Updated to 1.3.0"]
    assert h.icon.title == "simple-server 1.3.0 — running"


def test_error_is_shown_once_and_long_text_is_clipped(h):
    error = "no installed version could be started " + "x" * 200
    h.controller.publish(phase=Phase.ERROR, error=error, message=error)
    texts = h.icon.texts()
    assert texts[0].startswith("simple-server 1.2.0 — error: no installed version")
    assert texts[0].endswith("…") and len(texts[0]) == 80
    assert texts[1] == "Open"  # the headline already says it: no second line


def test_message_line_is_hidden_when_empty(h):
    assert h.icon.texts()[1] == "Open"
    h.controller.publish(message="Running 1.2.0")
    assert h.icon.texts()[1] == "Running 1.2.0"


# --- actions ---


def test_open_opens_the_proxy_url(h):
    h.icon.click("Open")
    assert h.urls == ["http://127.0.0.1:18080"]
    assert h.icon.item("Open").default  # left click on the icon opens it too


def test_check_for_updates_sends_check(h):
    h.icon.click("Check for updates")
    assert h.controller.commands == [Command.CHECK]


def test_roll_back_is_disabled_with_the_reason(h):
    item = h.icon.item("Roll back")
    assert item.text == "Roll back (nothing to roll back to)"
    assert not item.enabled

    h.controller.publish(previous="1.1.0", phase=Phase.UPDATING)
    item = h.icon.item("Roll back")
    assert item.text == "Roll back (not while updating)"
    assert not item.enabled


def test_roll_back_names_the_version_and_sends_rollback(h):
    h.controller.publish(previous="1.1.0")
    item = h.icon.item("Roll back")
    assert item.text == "Roll back to 1.1.0"
    assert item.enabled
    h.icon.click("Roll back")
    assert h.controller.commands == [Command.ROLLBACK]


def test_start_at_login_toggles_the_real_autostart_file(h, tmp_path):
    entry = tmp_path / "config" / "autostart" / "trayupdater.desktop"
    assert h.icon.item("Start at login").checked is False

    h.icon.click("Start at login")
    assert entry.is_file()
    assert h.autostart.is_enabled()
    assert h.icon.item("Start at login").checked is True
    assert 'Exec="/opt/tray updater/trayupdater" run' in entry.read_text()

    h.icon.click("Start at login")
    assert not entry.exists()
    assert h.icon.item("Start at login").checked is False


def test_start_at_login_reads_the_real_state_each_time(h, tmp_path):
    h.icon.click("Start at login")
    entry = tmp_path / "config" / "autostart" / "trayupdater.desktop"
    # Another tool (a desktop's startup settings) hides the entry behind our back.
    entry.write_text(entry.read_text() + "Hidden=true\n")
    assert h.icon.item("Start at login").checked is False


def test_start_at_login_failure_is_reported_not_raised(h, tmp_path):
    # A file where the autostart folder should be: enabling cannot work.
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "autostart").write_text("not a folder")
    h.icon.click("Start at login")
    assert h.icon.item("Start at login").checked is False
    assert len(h.icon.notifications) == 1
    assert "autostart" in h.icon.notifications[0][0]


def test_open_logs_creates_and_opens_the_logs_folder(h):
    h.icon.click("Open logs")
    assert h.paths == [h.logs_dir]
    assert h.logs_dir.is_dir()


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="xdg-open is the Linux opener")
def test_open_folder_runs_xdg_open_with_the_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "opened.txt"
    opener = bin_dir / "xdg-open"
    opener.write_text(
        f'#!/bin/sh\nprintf "%s" "$1" > "{record}.tmp" && mv "{record}.tmp" "{record}"\n'
    )
    opener.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    folder = tmp_path / "logs with space"
    folder.mkdir()
    open_folder(folder)
    deadline = time.monotonic() + TIMEOUT
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the opener is a separate process; its file is the only signal
    assert record.read_text() == str(folder)


def test_a_failing_action_notifies_instead_of_raising(h):
    h.browser_error = OSError("no browser found")
    h.icon.click("Open")
    assert h.icon.notifications == [("No browser found", "TrayUpdater")]


def test_menu_order(h):
    h.controller.publish(previous="1.1.0", message="Up to date")
    assert h.icon.texts() == [
        "simple-server 1.2.0 — running",
        "Up to date",
        "Open",
        "Check for updates",
        "Roll back to 1.1.0",
        "Start at login",
        "Open logs",
        "Updates",
        "About",
        "Quit (stops simple-server)",
    ]
    assert sum(item is pystray_double._base.Menu.SEPARATOR for item in h.icon.items()) == 4


# --- run / quit / stop ---


def test_quit_sends_quit_and_run_returns(h):
    h.start()
    h.icon.click("Quit")
    h.join()
    assert h.controller.commands == [Command.QUIT]


def test_stop_from_another_thread_ends_run(h):
    h.start()
    threading.Thread(target=h.app.stop).start()  # as the CLI does when the worker stopped
    h.join()
    assert h.controller.commands == []


def test_hide_takes_the_icon_away_but_keeps_running(h):
    """Retired by a self-update: the successor's icon shows; ours goes, and stays quiet,
    while this process watches the successor, without quitting anything."""
    h.app.hide()
    assert not h.icon.shown.is_set() and not h.icon.visible
    h.controller.publish(phase=Phase.RUNNING, active="1.3.0", message="Updated to 1.3.0")
    assert h.icon.notifications == []
    assert h.thread is not None and h.thread.is_alive() and h.controller.commands == []


def test_stop_before_run_makes_run_return_at_once(tmp_path):
    h = Harness(tmp_path, RUNNING)
    h.app.stop()
    h.thread = threading.Thread(target=h.app.run, daemon=True)
    h.thread.start()
    h.join()  # fails if the early stop were lost and run() blocked


class RaisingOnStopIcon(RecordingIcon):
    """Like pystray's GTK backend without a notification daemon: raises on the way out."""

    def _run(self) -> None:
        super()._run()
        raise RuntimeError("GDBus.Error:org.freedesktop.DBus.Error.ServiceUnknown")


def test_run_swallows_the_error_raised_while_stopping(tmp_path, caplog):
    harness = Harness(tmp_path, RUNNING, RaisingOnStopIcon)
    harness.start()
    with caplog.at_level(logging.WARNING):
        harness.icon.click("Quit")
        harness.join()
    assert "raised while stopping" in caplog.text


def test_run_raises_an_error_that_is_not_part_of_stopping(tmp_path):
    harness = Harness(tmp_path, RUNNING, RaisingOnStopIcon)
    harness.icon.stopped.set()  # the loop ends without anyone asking: a real failure
    with pytest.raises(RuntimeError, match="ServiceUnknown"):
        harness.app.run()


# --- icon image ---


def test_icon_image_follows_the_phase(h):
    h.start()
    assert same_image(h.icon.icon, icon_image(Phase.RUNNING))
    for phase in (Phase.CHECKING, Phase.ERROR, Phase.NO_VERSION, Phase.RUNNING):
        h.controller.publish(phase=phase)
        assert same_image(h.icon.icon, icon_image(phase)), phase
        assert same_image(h.icon.images[-1], icon_image(phase)), "backend was not told"
    assert not same_image(icon_image(Phase.RUNNING), icon_image(Phase.ERROR))


def test_a_failure_while_serving_adds_a_badge(h):
    h.controller.publish(error="cannot reach GitHub", message="cannot reach GitHub")
    assert same_image(h.icon.icon, icon_image(Phase.RUNNING, warning=True))
    h.controller.publish(error=None, message="Up to date")
    assert same_image(h.icon.icon, icon_image(Phase.RUNNING))


def test_download_progress_does_not_rebuild_the_menu_for_every_chunk(h):
    h.controller.publish(phase=Phase.DOWNLOADING, latest="1.3.0", progress=0.5)
    before = h.icon.menu_updates
    images = len(h.icon.images)
    h.controller.publish(progress=0.501)  # same whole percent: nothing visible changes
    assert h.icon.menu_updates == before
    h.controller.publish(progress=0.52, download_done=3_276_800, download_total=6_300_000)
    assert h.icon.menu_updates == before + 1
    assert h.icon.texts()[0] == "simple-server 1.2.0 — downloading 1.3.0 52% (3.3 / 6.3 MB)"
    # The icon draws progress in eighths: 50% and 52% are the same picture ...
    assert len(h.icon.images) == images
    h.controller.publish(progress=0.63)  # ... 63% is the next step
    assert len(h.icon.images) == images + 1
    assert same_image(h.icon.icon, icon_image(Phase.DOWNLOADING, progress=0.625))
    assert not same_image(h.icon.icon, icon_image(Phase.DOWNLOADING, progress=0.5))
    h.controller.publish(phase=Phase.UPDATING, progress=None)
    assert same_image(h.icon.icon, icon_image(Phase.UPDATING))  # no ring once downloaded


# --- icons.py ---


def test_every_phase_has_a_look_and_the_looks_differ():
    assert {look_for(phase) for phase in Phase} == set(Look)
    assert look_for("paused") is Look.IDLE  # unknown phases do not crash the tray
    images = [
        icon_image(phase).tobytes()
        for phase in (Phase.RUNNING, Phase.CHECKING, Phase.ERROR, Phase.NO_VERSION)
    ]
    assert len(set(images)) == 4
    assert same_image(icon_image(Phase.DOWNLOADING), icon_image(Phase.UPDATING))


def test_icons_are_drawn_per_size_with_transparent_corners():
    for size in (16, 22, 32, 64):
        image = icon_image(Phase.RUNNING, size)
        assert image.size == (size, size) and image.mode == "RGBA"
        assert image.getpixel((0, 0))[3] == 0  # round icon: corners see the panel through
        assert image.getpixel((size // 2, 2))[3] > 0
    with pytest.raises(TrayUpdaterError, match="icon size"):
        icon_image(Phase.RUNNING, 4)


def test_write_assets_regenerates_the_committed_assets(tmp_path):
    from PIL import Image

    written = {path.name for path in write_assets(tmp_path)}
    assert written == {
        "trayupdater.png",
        "trayupdater.ico",
        "trayupdater.icns",
        *(f"tray-{look.value}.png" for look in Look),
        "tray-template.png",
    }
    with Image.open(tmp_path / "trayupdater.ico") as ico:
        assert ico.info["sizes"] == {(s, s) for s in ICO_SIZES}
        ico.size = (16, 16)
        assert same_image(ico.convert("RGBA"), app_icon(16))  # drawn at 16, not scaled
    with Image.open(tmp_path / "trayupdater.icns") as icns:
        assert icns.size == (1024, 1024)
    # The files in assets/ must be what the code draws: regenerate them after a change
    # with `python -m trayupdater.icons assets` (pixels compared, not encoder bytes).
    assets = Path(__file__).resolve().parents[1] / "assets"
    for name in sorted(written - {"trayupdater.ico", "trayupdater.icns"}):
        with Image.open(assets / name) as committed, Image.open(tmp_path / name) as fresh:
            assert same_image(committed.convert("RGBA"), fresh.convert("RGBA")), name


# --- notifications ---


def test_update_done_is_notified_once(h):
    h.controller.publish(phase=Phase.CHECKING, message="Checking…")
    h.controller.publish(phase=Phase.UPDATING, message="Starting 1.3.0…")
    assert h.icon.notifications == []
    h.controller.publish(phase=Phase.RUNNING, active="1.3.0", message="Updated to 1.3.0")
    h.controller.publish(last_check=123.0)  # an unrelated change repeats nothing
    assert h.icon.notifications == [("Updated to 1.3.0", "TrayUpdater: simple-server updated")]


def test_text_from_a_release_is_shown_as_text_in_a_notification(h):
    """freedesktop servers read a notification body as markup: release notes with an
    <a href> became a clickable link, <img> a fetch; an escape sequence went through."""
    link = '<a href="https://evil.example/">re-enter your token</a>'
    note = f"Updated to 1.3.0: Fixes {link} & \x1b[2J"
    h.controller.publish(phase=Phase.RUNNING, active="1.3.0", message=note)
    ((body, _title),) = h.icon.notifications
    if sys.platform.startswith("linux"):
        assert body == (
            'Updated to 1.3.0: Fixes &lt;a href="https://evil.example/"&gt;re-enter your '
            "token&lt;/a&gt; &amp; \\x1b[2J"
        )
    assert "\x1b" not in body


def test_manual_and_automatic_rollbacks_are_notified(h):
    h.controller.publish(active="1.1.0", message="Rolled back to 1.1.0")
    h.controller.publish(
        active="1.0.0", message="Automatically rolled back to 1.0.0: 1.1.0 exited during probation"
    )
    assert [n[0] for n in h.icon.notifications] == [
        "Rolled back to 1.1.0",
        "Automatically rolled back to 1.0.0: 1.1.0 exited during probation",
    ]


def test_a_failure_is_notified_on_its_start_only(h):
    def failing_check(error: str) -> None:
        h.controller.publish(phase=Phase.CHECKING, message="Checking…", error=None)
        h.controller.publish(phase=Phase.RUNNING, message=error, error=error)

    failing_check("cannot reach api.github.com")
    failing_check("cannot reach api.github.com")  # the next poll fails the same way
    assert h.icon.notifications == [
        ("Cannot reach api.github.com", "TrayUpdater: simple-server: problem")
    ]

    failing_check("checksum mismatch for 1.3.0")  # a different failure is news
    assert len(h.icon.notifications) == 2


def test_a_crash_loop_is_one_notification_until_recovered_for_a_while(h):
    for delay in (1, 2, 4):
        h.controller.publish(
            phase=Phase.RESTARTING, error=f"1.2.0 exited (code 1); restarting in {delay} s"
        )
        h.controller.publish(phase=Phase.RUNNING, error=None, message="Restarted 1.2.0")
    assert len(h.icon.notifications) == 1

    h.clock.now += 301  # recovered, and long enough ago: the same failure is news again
    h.controller.publish(phase=Phase.RESTARTING, error="1.2.0 exited (code 1); restarting in 1 s")
    assert len(h.icon.notifications) == 2


def test_unsupported_notifications_do_not_crash(h, caplog):
    h.icon.notify_error = NotImplementedError()
    with caplog.at_level(logging.WARNING):
        h.controller.publish(active="1.3.0", message="Updated to 1.3.0")
    assert "could not show notification" in caplog.text
    assert h.icon.texts()[0] == "simple-server 1.3.0 — running"  # the rest still happened


# --- tray_available ---


def _tray_available_in(env_changes: dict[str, str | None]) -> str:
    env = dict(os.environ)
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND"):
        env.pop(key, None)
    for key, value in env_changes.items():
        if value is not None:
            env[key] = value
    code = "from trayupdater.tray import tray_available; print(tray_available(host_timeout=0))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_tray_is_unavailable_without_a_display():
    assert _tray_available_in({}) == (
        "(False, 'no display (DISPLAY and WAYLAND_DISPLAY are not set)')"
    )


def test_tray_is_unavailable_with_the_menuless_xorg_backend():
    out = _tray_available_in({"DISPLAY": ":0", "PYSTRAY_BACKEND": "xorg"})
    assert out == "(False, 'PYSTRAY_BACKEND=xorg has no usable menu')"


def test_tray_is_unavailable_when_the_display_cannot_be_opened():
    out = _tray_available_in({"DISPLAY": ":93"})  # nothing listens there
    assert out.startswith("(False, ")
    assert "GTK cannot open the display" in out or "PyGObject" in out


# --- start at login: the user's choice is recorded; the demo offers none ---


def test_turning_start_at_login_off_records_the_users_choice(tmp_path):
    import json

    from trayupdater.autostart import LoginChoice

    harness = Harness(tmp_path, RUNNING)
    choice = LoginChoice(tmp_path / "choice.json")
    harness.app._login_choice = choice
    harness.autostart.enable()
    harness.icon.click("Start at login")
    assert not harness.autostart.is_enabled()
    assert json.loads(choice.path.read_text())["by"] == "user"
    assert json.loads(choice.path.read_text())["enabled"] is False


def test_without_autostart_the_item_is_disabled_and_touches_nothing(tmp_path):
    controller = FakeController(RUNNING)
    app = TrayApp(
        controller,
        autostart=None,
        open_url=lambda url: None,
        open_path=lambda path: None,
        logs_dir=tmp_path / "logs",
        icon_factory=RecordingIcon,
    )
    item = app.icon.item("Start at login")
    assert item.text == "Start at login (not for the demo)"
    assert not item.enabled and item.checked is False
    assert not (tmp_path / "config").exists()


def test_macos_template_icons_are_monochrome_and_marked():
    from trayupdater.icons import template_image
    from trayupdater.tray_backend import mark_template

    image = template_image(Phase.RUNNING, 32)
    assert image.info["template"] is True
    pixels = [image.getpixel((x, y)) for x in range(32) for y in range(32)]
    colours = {pixel[:3] for pixel in pixels if pixel[3] > 0}
    assert colours == {(0, 0, 0)}  # AppKit tints it; colour would be ignored
    assert image.getpixel((16, 16))[3] < image.getpixel((16, 3))[3]  # the glyph is cut out

    class NSImage:  # what AppKit would be told (AppKit itself exists on macOS only)
        template = False

        def setTemplate_(self, value):
            self.template = value

    native = NSImage()
    mark_template(native, image)
    assert native.template is True
    plain = NSImage()
    mark_template(plain, icon_image(Phase.ERROR))
    assert plain.template is False  # the red error icon keeps its colour


# --- the truth: red when nothing serves, one-sentence notices, feedback for every click ---


def test_a_failed_first_install_and_a_crash_loop_are_red(h):
    h.controller.publish(phase=Phase.NO_VERSION, active=None, error="cannot reach the feed")
    assert same_image(h.icon.icon, icon_image(Look.ERROR))  # was the grey pause
    h.controller.publish(phase=Phase.RESTARTING, active="1.2.0", error="1.2.0 exited (code 1)")
    assert same_image(h.icon.icon, icon_image(Look.ERROR))
    h.controller.publish(phase=Phase.NO_VERSION, error=None)
    assert same_image(h.icon.icon, icon_image(Look.IDLE))  # nothing yet, nothing wrong


def test_the_tooltip_says_the_error(h):
    h.controller.publish(error="cannot reach api.github.com: timed out")
    assert h.icon.title == ("simple-server 1.2.0 — running\nCannot reach api.github.com: timed out")


def test_failure_notices_are_one_sentence_without_pids_ports_or_log_tails(h):
    error = (
        "simple-server 1.3.0 (pid 4242, port 39113) exited with code 3 before it became "
        "healthy; its log ends with:\nTraceback (most recent call last):\n  boom"
    )
    h.controller.publish(phase=Phase.RUNNING, error=error, message=error)
    assert h.icon.notifications == [
        (
            "Simple-server 1.3.0 exited with code 3 before it became healthy",
            "TrayUpdater: simple-server: problem",
        )
    ]
    assert h.icon.item("Show error details…").enabled


def test_a_first_install_says_installed_and_an_update_carries_its_notes(h):
    h.controller.publish(active="1.0.0", message="Installed 1.0.0")
    h.controller.publish(
        active="1.1.0",
        latest="1.1.0",
        previous="1.0.0",
        release_notes="Faster start-up",
        release_url="https://example.org/r/v1.1.0",
        message="Updated to 1.1.0",
    )
    assert [n[0] for n in h.icon.notifications] == [
        "Installed 1.0.0",
        "Updated to 1.1.0: Faster start-up",
    ]


def test_notices_name_their_actions():
    from trayupdater.announce import Announcer

    announcer = Announcer(RUNNING)
    update = replace(
        RUNNING,
        active="1.3.0",
        latest="1.3.0",
        previous="1.2.0",
        release_url="https://example.org/r",
        message="Updated to 1.3.0",
    )
    (notice,) = announcer.notices(update)
    assert notice.actions == ("open", "rollback", "whats_new")
    (failure,) = announcer.notices(replace(update, error="it broke"))
    assert failure.actions == ("details", "rollback")


def test_a_check_the_user_asked_for_always_ends_in_a_notice(h):
    h.icon.click("Check for updates")
    h.controller.publish(phase=Phase.CHECKING, message="Checking…")
    h.controller.publish(phase=Phase.RUNNING, message="Up to date (1.2.0)", last_check=time.time())
    ((message, title),) = h.icon.notifications
    assert message.startswith("Up to date (1.2.0) — checked ") and title.endswith("simple-server")
    # A timer's check that finds nothing says nothing.
    h.controller.publish(phase=Phase.CHECKING, message="Checking…")
    h.controller.publish(phase=Phase.RUNNING, message="Up to date (1.2.0)")
    assert len(h.icon.notifications) == 1


def test_a_double_click_opens_the_page_once(h):
    h.icon.click("Open")
    h.clock.now += 0.3
    h.icon.click("Open")
    assert h.urls == ["http://127.0.0.1:18080"]
    h.clock.now += 2
    h.icon.click("Open")
    assert len(h.urls) == 2


def test_whats_new_opens_the_release_page(h):
    assert all(not text.startswith("What's new") for text in h.icon.texts())
    h.controller.publish(latest="1.3.0", release_url="https://example.org/releases/tag/v1.3.0")
    h.icon.click("What's new in 1.3.0")
    assert h.urls == ["https://example.org/releases/tag/v1.3.0"]


def _submenu(h, name):
    return [item for item in h.icon.item(name).submenu if item.text]


def test_update_controls_in_the_tray(h):
    h.controller.publish(latest="1.3.0", blocked=("1.1.0",))
    items = {item.text: item for item in _submenu(h, "Updates")}
    assert list(items) == [
        "Skip 1.3.0",
        "Allow 1.1.0 again",
        "Pause updates for 1 hour",
        "Pause updates until resumed",
    ]
    for text in items:
        items[text](h.icon)
    assert list(zip(h.controller.commands, h.controller.payloads, strict=True)) == [
        (Command.SKIP, "1.3.0"),
        (Command.ALLOW, "1.1.0"),
        (Command.PAUSE, 3600.0),
        (Command.PAUSE, None),
    ]
    h.controller.publish(paused=True, paused_until=None, skipped="1.3.0")
    texts = [item.text for item in _submenu(h, "Updates")]
    assert texts == [
        "Allow 1.1.0 again",
        "Allow 1.3.0 again",
        "Resume updates (paused until resumed)",
    ]


def test_the_newest_blocked_versions_are_offered_again(h):
    """Seven releases rolled back from over the years: the five newest are offered, newest
    first (the oldest were offered before, long gone from every feed)."""
    blocked = tuple(f"1.0.{n}" for n in range(1, 8))  # oldest first, as state.json keeps them
    h.controller.publish(blocked=blocked, skipped="1.2.0")
    texts = [item.text for item in _submenu(h, "Updates") if item.text.startswith("Allow")]
    assert texts == [f"Allow {v} again" for v in ("1.0.7", "1.0.6", "1.0.5", "1.0.4", "1.0.3")] + [
        "Allow 1.2.0 again"
    ]


def test_about_tells_versions_and_the_last_check(h):
    import trayupdater

    h.controller.publish(latest="1.3.0", last_check=time.time())
    lines = [item.text for item in _submenu(h, "About")]
    assert lines[0] == f"trayupdater {trayupdater.__version__}"
    assert lines[1] == "simple-server 1.2.0 — running"
    assert lines[2] == "Latest available: 1.3.0"
    assert lines[3].startswith("Last check: ") and ":" in lines[3][12:]
    assert not any(item.enabled for item in h.icon.item("About").submenu)


def test_a_second_launch_is_answered_with_where_the_app_is(h):
    h.app.say_already_running()
    assert h.icon.notifications == [("Already running — it is in the tray", "TrayUpdater")]


def test_quit_says_it_stops_the_server(h):
    assert h.icon.item("Quit").text == "Quit (stops simple-server)"


def test_error_state_offers_details_and_config(tmp_path):
    harness = Harness(tmp_path, RUNNING)
    harness.app._config_path = tmp_path / "cfg" / "config.toml"
    harness.start()
    harness.controller.publish(phase=Phase.ERROR, error="no installed version could be started")
    harness.icon.click("Open config")  # no config file yet: its folder is shown
    harness.icon.click("Show error details…")  # no log yet either: the logs folder
    assert harness.paths == [tmp_path / "cfg", harness.logs_dir]
    harness.app.stop()
    harness.join()


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="xdg-open is the Linux opener")
def test_an_opener_that_finds_nothing_is_reported_with_the_path(tmp_path, monkeypatch):
    """xdg-open without a handler exits 3 and shows nothing: the tray must say so."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    opener = bin_dir / "xdg-open"
    opener.write_text("#!/bin/sh\necho 'xdg-open: no method available for opening' >&2\nexit 3\n")
    opener.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    controller = FakeController(RUNNING)
    app = TrayApp(
        controller,
        autostart=None,
        logs_dir=tmp_path / "logs",
        icon_factory=RecordingIcon,
    )
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    assert app.icon.ready.wait(TIMEOUT)
    app.icon.click("Open logs")
    deadline = time.monotonic() + TIMEOUT
    while not app.icon.notifications and time.monotonic() < deadline:
        time.sleep(0.02)  # the opener is a separate process; its exit is the signal
    ((message, _),) = app.icon.notifications
    assert message.startswith(f"Could not open {tmp_path / 'logs'}: xdg-open found no program")
    app.stop()
    thread.join(TIMEOUT)
