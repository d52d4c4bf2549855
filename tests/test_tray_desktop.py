"""The real tray, end to end: Xvfb, a D-Bus session, dunst, trayer and the GTK backend.

tests/tray_harness.py runs TrayApp against a scripted controller; this test clicks the
icon in the tray host with xdotool, walks the native GTK menu with the keyboard and checks
what reached the controller (the harness's events file), the autostart file, the icon's
pixels as the X server shows them, and the Notify calls on the session bus (dbus-monitor).
Screenshots land in test-artifacts/ at the repository root, including the screen as it was
when each test ended (last-*.png): the first thing to look at when one fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).with_name("tray_harness.py")
ARTIFACTS = REPO / "test-artifacts"
CLASS = "trayupdater"  # the icon's WM_CLASS: tray_available() sets it as GLib prgname
TIMEOUT = 30.0  # generous: a loaded 2-core CI machine starts GTK slowly
# The discs of trayupdater.icons' "running" and "error" looks.
RUNNING_GREEN = (46, 158, 79)
ERROR_RED = (217, 59, 59)

TOOLS = ("Xvfb", "xdotool", "trayer", "dbus-daemon", "dbus-monitor", "dbus-send", "dunst", "import")

pytestmark = pytest.mark.desktop

TRAYER = (
    "trayer --edge top --align right --widthtype request --height 32 --SetDockType true"
    " --expand true --transparent false"
)
BARE_BUS_CONFIG = """<busconfig>
  <type>session</type>
  <listen>unix:tmpdir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def _missing() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    probe = "import gi; gi.require_version('Gtk', '3.0'); from gi.repository import Gtk"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0:
        missing.append("PyGObject with GTK 3 (pip install 'PyGObject<3.51' pycairo)")
    try:
        import Xlib.display  # noqa: F401
    except ImportError:
        missing.append("python-xlib")
    return missing


def _appindicator_installed() -> bool:
    probe = (
        "import gi\n"
        "try: gi.require_version('AyatanaAppIndicator3', '0.1')\n"
        "except ValueError: gi.require_version('AppIndicator3', '0.1')"
    )
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def near(colour: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 24 for a, b in zip(colour, expected, strict=True))


WAITS: list[tuple[str, float]] = []  # (what, seconds): where the test's time goes


def wait_for(what: str, check: Callable[[], object], timeout: float = TIMEOUT) -> object:
    start = time.monotonic()
    deadline = start + timeout
    while True:
        result = check()
        if result:
            WAITS.append((what, round(time.monotonic() - start, 3)))
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Desktop:
    """One throwaway X display with a session bus, a notification daemon and a tray host."""

    def __init__(
        self, workdir: Path, *, notifications: bool = True, tray_host: bool = True
    ) -> None:
        self.workdir = workdir
        self.notifications = notifications
        self.tray_host = tray_host
        self.procs: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYSTRAY_BACKEND",)}
        # Every per-user folder in the temp folder: autostart entries, the icon theme,
        # caches and logs of the apps under test never reach the real home.
        self.env.update(
            NO_AT_BRIDGE="1",
            XDG_CONFIG_HOME=str(workdir / "config"),
            XDG_DATA_HOME=str(workdir / "share"),
            XDG_CACHE_HOME=str(workdir / "cache"),
            XDG_STATE_HOME=str(workdir / "state"),
        )
        self.timings: dict[str, object] = {}

    def _spawn(self, name: str, args: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.STDOUT)
        with (self.workdir / f"{name}.log").open("wb") as log:  # the child keeps its own fd
            kwargs.setdefault("stdout", log)
            proc = subprocess.Popen(args, env=self.env, **kwargs)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        t0 = time.monotonic()
        read_fd, write_fd = os.pipe()
        # -displayfd: Xvfb picks a free display number and tells us, no guessing or races.
        # -noreset: by default the server resets when its last client leaves, and a client
        # connecting during that reset fails ("Cannot open X11 display").
        xvfb = ["Xvfb", "-noreset", "-nolisten", "tcp", "-screen", "0", "800x600x24", "-displayfd"]
        self._spawn("xvfb", [*xvfb, str(write_fd)], pass_fds=(write_fd,))
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        assert number, "Xvfb did not report a display number"
        self.env["DISPLAY"] = f":{number}"
        wait_for("the X server to accept clients", self._x_accepts)

        if self.notifications:
            config = ["--session"]
        else:
            # The stock session bus would start dunst on demand (D-Bus activation): a bus
            # without service files is a desktop that has no notification daemon at all.
            bus_conf = self.workdir / "bus.conf"
            bus_conf.write_text(BARE_BUS_CONFIG.format(dir=self.workdir))
            config = [f"--config-file={bus_conf}"]
        with (self.workdir / "dbus.log").open("wb") as log:
            bus = self._spawn(
                "dbus",
                ["dbus-daemon", *config, "--nofork", "--print-address=1"],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert bus.stdout is not None
        with bus.stdout:
            self.env["DBUS_SESSION_BUS_ADDRESS"] = bus.stdout.readline().decode().strip()
        assert self.env["DBUS_SESSION_BUS_ADDRESS"], "dbus-daemon did not report its address"

        # Every Notify call on the bus, as text: what the tray asked the daemon to show.
        self.bus_log = self.workdir / "notify-calls.log"
        notify_calls = "interface='org.freedesktop.Notifications',member='Notify'"
        self._spawn("notify-calls", ["dbus-monitor", "--session", notify_calls])
        if self.notifications:
            # dunst's context menu goes through "dmenu": a script that picks the line
            # naming self.pick (a notification's button) and records what it was offered.
            self.pick = ""
            picker = self.workdir / "pick-action.sh"
            picker.write_text(
                f'#!/bin/sh\ncd "{self.workdir}"\n'
                'tee -a dmenu-input.txt | grep -m1 -F -- "$(cat pick)"\n'
            )
            picker.chmod(0o755)
            (self.workdir / "pick").write_text("nothing")
            dunstrc = self.workdir / "config" / "dunst" / "dunstrc"
            dunstrc.parent.mkdir(parents=True, exist_ok=True)
            dunstrc.write_text(f"[global]\n    dmenu = {picker}\n")
            self._spawn("dunst", ["dunst"])
        if self.tray_host:
            self._spawn("trayer", TRAYER.split())
            wait_for("trayer to own _NET_SYSTEM_TRAY_S0", self._tray_owned)
        if self.notifications:
            wait_for("dunst on the session bus", self._dunst_ready)
        self.timings["desktop up"] = time.monotonic() - t0

    def _dunst_ready(self) -> bool:
        args = [
            "dbus-send",
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            "string:org.freedesktop.Notifications",
        ]
        return "boolean true" in self._run(args).stdout

    def _x_accepts(self) -> bool:
        from Xlib import display

        try:
            display.Display(self.env["DISPLAY"]).close()
        except Exception:
            return False
        return True

    def _tray_owned(self) -> bool:
        from Xlib import X, display

        try:
            conn = display.Display(self.env["DISPLAY"])
        except Exception:
            return False
        try:
            atom = conn.intern_atom("_NET_SYSTEM_TRAY_S0")
            return conn.get_selection_owner(atom) != X.NONE
        finally:
            conn.close()

    def _run(self, args: list[str]) -> subprocess.CompletedProcess:
        # cwd: ImageMagick's import can leave a stray file in its working directory.
        return subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=TIMEOUT, cwd=self.workdir
        )

    def xdotool(self, *args: str) -> str:
        out = self._run(["xdotool", *args])
        assert out.returncode == 0, f"xdotool {' '.join(args)}: {out.stderr}"
        return out.stdout.strip()

    def windows(self, classname: str) -> list[str]:
        """Visible windows of a class: the icon, plus its menu or tooltip while shown."""
        out = self._run(["xdotool", "search", "--onlyvisible", "--classname", f"^{classname}$"])
        return out.stdout.split()

    def find_window(self, classname: str) -> str | None:
        windows = self.windows(classname)
        return windows[0] if windows else None

    def window_colour(self, window: str) -> tuple[int, int, int]:
        """The most common colour of a window as the X server shows it."""
        from PIL import Image

        shot = self.workdir / f"window-{window}.png"
        out = self._run(["import", "-window", window, str(shot)])
        assert out.returncode == 0, out.stderr
        with Image.open(shot) as image:
            colours = image.convert("RGB").getcolors(maxcolors=1 << 16) or []
        return max(colours)[1]

    def open_menu(self, icon: str) -> None:
        """Right-click the tray icon until its menu is up (clicks may land mid-layout)."""
        # Only the icon may be showing, or a lingering tooltip would pass for the menu.
        wait_for("menu and tooltip to close", lambda: len(self.windows(CLASS)) == 1)
        for _ in range(3):
            # Right-click, then park the pointer away from icon and menu: hovering the
            # icon would bring up its tooltip again once the menu closes.
            self.xdotool(
                "mousemove", "--window", icon, "8", "8", "click", "3", "mousemove", "200", "400"
            )
            try:
                wait_for("the menu", lambda: len(self.windows(CLASS)) >= 2, timeout=5)
                return
            except AssertionError:
                # trayer moves icons while it lays out its panel: a click can miss.
                WAITS.append(("menu did not open; clicking again", 5))
        raise AssertionError("the tray menu did not open after 3 right-clicks")

    def choose(self, icon: str, *keys: str) -> None:
        """Open the menu and pick an entry with the keyboard."""
        self.open_menu(icon)
        self.xdotool("key", "--delay", "60", *keys, "Return")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        start = time.monotonic()
        out = self._run(["import", "-window", "root", str(path)])
        WAITS.append((f"screenshot {name}", round(time.monotonic() - start, 3)))
        assert out.returncode == 0, out.stderr
        return path

    def notified(self, text: str, partial: bool = False) -> bool:
        """Did an app ask the notification daemon to show ``text`` (or a text starting so)?"""
        log = self.bus_log.read_text(encoding="utf-8", errors="replace")
        return (f'string "{text}' if partial else f'string "{text}"') in log

    def press_notification_button(self, label: str) -> None:
        """Invoke a notification's button through dunst itself (its context menu)."""
        (self.workdir / "pick").write_text(label)
        out = self._run(["dunstctl", "context"])
        assert out.returncode == 0, out.stderr

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def make_desktop(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Desktop]]:
    missing = _missing()
    if missing:
        pytest.skip("desktop test needs: " + ", ".join(missing))
    sessions: list[Desktop] = []

    def make(**options: bool) -> Desktop:
        session = Desktop(tmp_path, **options)
        sessions.append(session)
        session.start()
        return session

    try:
        yield make
    finally:
        for session in sessions:
            try:
                session.screenshot(f"last-{request.node.name}")
            except Exception as exc:  # a broken display must not hide the test's own error
                print(f"no final screenshot: {exc}")
            session.close()


@pytest.fixture
def desktop(make_desktop: Callable[..., Desktop]) -> Desktop:
    return make_desktop()


class Tray:
    """The harness process and what it reports."""

    def __init__(self, desktop: Desktop, workdir: Path, *extra: str) -> None:
        self.desktop = desktop
        self.events_path = workdir / "events.txt"
        self.events_path.touch()
        self.log = workdir / "harness.log"
        self.proc = desktop._spawn(
            "harness",
            [
                sys.executable,
                str(HARNESS),
                "--events",
                str(self.events_path),
                "--logs-dir",
                str(workdir / "logs"),
                *extra,
            ],
            cwd=desktop.workdir,  # whatever GTK drops in its cwd lands in the temp folder
            stdin=subprocess.PIPE,
        )

    def fail(self) -> None:
        """Make the scripted app fail (see tray_harness.py)."""
        self.say("fail")

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def dump_menu(self) -> list[str]:
        """What the open native menu shows (labels of the real GTK widgets)."""
        done = self.events().count("dumped menu")
        self.say("dump-menu")
        wait_for("the menu dump", lambda: self.events().count("dumped menu") > done)
        lines = self.events()
        ends = [i for i, line in enumerate(lines) if line == "dumped menu"]
        start = ends[-2] + 1 if len(ends) > 1 else 0
        return lines[start : ends[-1]]

    def events(self) -> list[str]:
        return self.events_path.read_text(encoding="utf-8").splitlines()

    def wait_event(self, line: str) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and line not in self.events():
                raise AssertionError(f"harness exited ({self.proc.returncode}) before {line!r}")
            return line in self.events()

        wait_for(repr(line), seen)


@pytest.mark.parametrize(
    "backend",
    [
        # What tray_available() picks on an XEmbed tray: pystray's GtkStatusIcon backend.
        "gtk",
        # Forced: pystray's AppIndicator backend. Without a StatusNotifierWatcher,
        # libayatana-appindicator falls back to an XEmbed icon, so trayer shows it too.
        "appindicator",
    ],
)
def test_menu_items_fire_in_the_real_tray(desktop: Desktop, tmp_path: Path, backend: str) -> None:
    WAITS.clear()
    if backend != "gtk":
        if not _appindicator_installed():
            pytest.skip(
                "AppIndicator typelib missing (apt-get install gir1.2-ayatanaappindicator3-0.1)"
            )
        desktop.env["PYSTRAY_BACKEND"] = backend
    t0 = time.monotonic()
    tray = Tray(desktop, tmp_path)
    icon = wait_for("the tray icon window", lambda: desktop.find_window(CLASS))
    desktop.timings["icon shown"] = time.monotonic() - t0
    assert f"backend pystray backend {backend}" in tray.events()
    # What the tray host paints is the "running" icon (its green disc), not a placeholder.
    wait_for("the green icon", lambda: near(desktop.window_colour(icon), RUNNING_GREEN))

    if backend == "gtk":  # AppIndicator has no tooltips
        # Hovering shows the headline as tooltip: one more visible window of the app.
        desktop.xdotool("mousemove", "--window", icon, "8", "8")
        wait_for("the tooltip", lambda: len(desktop.windows(CLASS)) >= 2)
        desktop.screenshot(f"tray-{backend}-tooltip")
        desktop.xdotool("mousemove", "200", "400")

    # Keyboard focus skips insensitive entries (status lines, a disabled Roll back):
    # Open, Check for updates, [Roll back to X], Start at login, Open logs, Quit.
    desktop.choose(icon, "Down")
    tray.wait_event("open_url http://127.0.0.1:18080")

    desktop.choose(icon, "Down", "Down")
    tray.wait_event("command check")
    tray.wait_event("status simple-server 1.1.0 — running")
    # The notification carries the first line of the release notes, and its buttons.
    wait_for(
        "the update notification",
        lambda: desktop.notified("Updated to 1.1.0: Faster start-up"),
    )
    for button in ("Open", "Roll back", "What's new"):
        assert desktop.notified(button), button
    assert desktop.notified("TrayUpdater")  # the Notify call's app_name
    desktop.screenshot(f"tray-{backend}-notification-updated")

    desktop.open_menu(icon)
    desktop.screenshot(f"tray-{backend}-menu-1.1.0")
    desktop.xdotool("key", "--delay", "60", "Down", "Down", "Down", "Return")
    tray.wait_event("command rollback")
    tray.wait_event("status simple-server 1.0.0 — running")
    wait_for("the rollback notification", lambda: desktop.notified("Rolled back to 1.0.0"))

    desktop.choose(icon, "Down", "Down", "Down")  # Roll back is insensitive again: Start at login
    entry = tmp_path / "config" / "autostart" / "trayupdater.desktop"
    wait_for("the autostart entry", entry.is_file)

    desktop.choose(icon, "Down", "Down", "Down", "Down")
    tray.wait_event(f"open_path {tmp_path / 'logs'}")

    # Open, Check, Start at login, Open logs, What's new in 1.1.0: the release page.
    desktop.choose(icon, *["Down"] * 5)
    tray.wait_event("open_url https://example.org/demo/releases/tag/v1.1.0")

    # Updates ▸ Skip 1.1.0, Pause updates for 1 hour, ...: pause for an hour.
    desktop.choose(icon, *["Down"] * 6, "Right", "Down")
    tray.wait_event("command pause 3600.0")

    if backend == "gtk":
        # About ▸ shows the versions; read back from the open submenu's widgets.
        desktop.open_menu(icon)
        desktop.xdotool("key", "--delay", "60", *["Down"] * 7, "Right")
        wait_for("the About submenu", lambda: "sub trayupdater" in " ".join(tray.dump_menu()))
        about = [line[4:] for line in tray.dump_menu() if line.startswith("sub ")]
        import trayupdater

        assert about[0] == f"trayupdater {trayupdater.__version__}"
        assert about[1] == "simple-server 1.0.0 — running"
        assert about[2] == "Latest available: 1.1.0"
        desktop.screenshot(f"tray-{backend}-menu-about")
        desktop.xdotool("key", "Escape", "Escape")

        # Live progress: the menu stays open while the download advances.
        desktop.open_menu(icon)
        tray.say("progress 0.1")
        wait_for("10% in the open menu", lambda: "downloading 1.2.0 10%" in tray.dump_menu()[0])
        tray.say("progress 0.4")
        wait_for("40% in the open menu", lambda: "40%" in tray.dump_menu()[0])
        shown = tray.dump_menu()
        assert shown[0] == "menu simple-server 1.0.0 — downloading 1.2.0 40% (2.5 / 6.3 MB)"
        assert "menu-visible True" in shown  # the same open menu, refreshed in place
        desktop.screenshot(f"tray-{backend}-menu-live-progress")
        desktop.xdotool("key", "Escape")
        tray.say("idle")

    # A failure: the icon turns red and a notification says what happened.
    tray.fail()
    wait_for("the red icon", lambda: near(desktop.window_colour(icon), ERROR_RED))
    wait_for(
        "the failure notification", lambda: desktop.notified("1.0.0 exited (code 1)", partial=True)
    )

    desktop.open_menu(icon)
    desktop.screenshot(f"tray-{backend}-menu-error")
    desktop.xdotool("key", "--delay", "60", "Up", "Return")  # Up from the top: the last, Quit
    start = time.monotonic()
    assert tray.proc.wait(TIMEOUT) == 0
    WAITS.append(("harness exit after Quit", round(time.monotonic() - start, 3)))
    assert "exit 0" in tray.events()
    assert "command quit" in tray.events()
    assert tray.events().count("command check") == 1  # no click fired twice

    desktop.timings["tray session"] = time.monotonic() - t0
    desktop.timings["slowest waits"] = sorted(WAITS, key=lambda w: -w[1])[:5]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"tray-{backend}-timings.json").write_text(json.dumps(desktop.timings, indent=1))


def test_quit_works_without_a_notification_daemon(make_desktop, tmp_path: Path) -> None:
    """Notifications fail (no daemon), and pystray's exit path raises ServiceUnknown:
    the tray must keep working and still exit cleanly."""
    desktop = make_desktop(notifications=False)
    tray = Tray(desktop, tmp_path)
    icon = wait_for("the tray icon window", lambda: desktop.find_window(CLASS))

    wait_for("the green icon", lambda: near(desktop.window_colour(icon), RUNNING_GREEN))

    desktop.choose(
        icon, "Down", "Down"
    )  # Check for updates: ends in a notification that cannot be shown
    tray.wait_event("status simple-server 1.1.0 — running")
    # desktop-notifier asks the bus for the notification service first and is refused.
    wait_for(
        "the attempt to notify",
        lambda: "org.freedesktop.Notifications was not provided" in tray.log.read_text(),
    )
    wait_for("the menu to close", lambda: len(desktop.windows(CLASS)) == 1)
    desktop.choose(icon, "Up")  # Quit
    assert tray.proc.wait(TIMEOUT) == 0
    assert "exit 0" in tray.events()
    log = tray.log.read_text()
    assert "ServiceUnknown" in log and "raised while stopping" in log, log


def test_no_tray_host_means_no_tray(make_desktop, tmp_path: Path) -> None:
    """A display without any tray (GNOME without the AppIndicator extension, a bare X
    session): tray_available() says so, and the CLI runs headless instead of showing an
    icon nobody can see or click."""
    desktop = make_desktop(tray_host=False)
    tray = Tray(desktop, tmp_path, "--host-timeout", "1")
    assert tray.proc.wait(TIMEOUT) == 3
    assert "no system tray host found" in tray.log.read_text()


def test_real_app_updates_and_rolls_back_from_the_real_tray(
    desktop: Desktop, tmp_path: Path
) -> None:
    """The shipped `trayupdater run` (no harness): a local release feed, real child
    processes, the proxy on a real port; Check for updates, Roll back and Quit are chosen
    in the native tray menu and their effects are read from the proxy."""
    from support import Instance, served_version

    from trayupdater.children import free_port
    from trayupdater.demo import publish_version
    from trayupdater.feed import ReleaseFeed

    def served() -> str | None:
        return served_version(port)

    port = free_port()
    data = tmp_path / "data"
    desktop.env.update(TRAYUPDATER_PROBATION_SECONDS="0.5", TRAYUPDATER_CHECK_INTERVAL="3600")
    with ReleaseFeed() as feed:
        publish_version(feed, "1.0.0")
        args = [sys.executable, "-m", "trayupdater", *Instance(feed, data, port).args]
        app = desktop._spawn("app", [*args, "run"], cwd=tmp_path)
        icon = wait_for("the tray icon window", lambda: desktop.find_window(CLASS))
        wait_for("1.0.0 served", lambda: served() == "1.0.0")
        wait_for("the green icon", lambda: near(desktop.window_colour(icon), RUNNING_GREEN))
        # First run enables start at login (the default), in the test's XDG_CONFIG_HOME.
        assert (tmp_path / "config" / "autostart" / "trayupdater.desktop").is_file()

        # ... with the product's name, the options it was started with and a real icon.
        entry = (tmp_path / "config" / "autostart" / "trayupdater.desktop").read_text()
        assert "Name=TrayUpdater" in entry
        assert f"--data-dir {data}" in entry and "--config " in entry
        icon_file = tmp_path / "share" / "icons" / "hicolor" / "256x256" / "apps"
        assert f"Icon={icon_file / 'trayupdater.png'}" in entry
        assert (icon_file / "trayupdater.png").is_file()

        # A second launch does not start a second app: it asks the first to check, and
        # the running one says where it is.
        second = subprocess.run(
            [*args, "run"], env=desktop.env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 0 and "already running" in second.stderr
        wait_for(
            "the already-running notice",
            lambda: desktop.notified("Already running — it is in the tray"),
        )
        desktop.screenshot("real-app-already-running")

        publish_version(feed, "1.1.0")
        desktop.choose(icon, "Down", "Down")  # Open, Check for updates
        wait_for("1.1.0 served", lambda: served() == "1.1.0")
        wait_for("the update notification", lambda: desktop.notified("Updated to 1.1.0"))
        desktop.open_menu(icon)
        desktop.screenshot("real-app-menu-1.1.0")
        time.sleep(0.6)  # probation over, so Roll back is a plain manual rollback
        desktop.xdotool("key", "--delay", "60", "Down", "Down", "Down", "Return")
        wait_for("1.0.0 served again", lambda: served() == "1.0.0")
        wait_for("the rollback notification", lambda: desktop.notified("Rolled back to 1.0.0"))
        desktop.screenshot("real-app-rolled-back")

        desktop.choose(desktop.find_window(CLASS) or icon, "Up")  # Quit
        assert app.wait(TIMEOUT) == 0
        assert served() is None  # proxy closed with the app
        from trayupdater.store import VersionStore

        state = VersionStore(data).load_state()
        assert state.active == "1.0.0" and "1.1.0" in state.blocked and state.child_pid is None


def test_logout_sigterm_stops_the_tray_app_cleanly(desktop: Desktop, tmp_path: Path) -> None:
    """A session ending sends SIGTERM: the tray app stops its child, saves state, exits 0."""
    import signal as signals

    from support import Instance, alive, recorded_child_pid, served_version

    from trayupdater.children import free_port
    from trayupdater.demo import publish_version
    from trayupdater.feed import ReleaseFeed
    from trayupdater.store import VersionStore

    port = free_port()
    data = tmp_path / "data"
    with ReleaseFeed() as feed:
        publish_version(feed, "1.0.0")
        args = [sys.executable, "-m", "trayupdater", *Instance(feed, data, port).args, "run"]
        app = desktop._spawn("app", args, cwd=tmp_path)
        wait_for("the tray icon window", lambda: desktop.find_window(CLASS))
        wait_for("1.0.0 served", lambda: served_version(port) == "1.0.0")
        child = recorded_child_pid(data)
        app.send_signal(signals.SIGTERM)
        assert app.wait(TIMEOUT) == 0
        assert not alive(child)
        state = VersionStore(data).load_state()
        assert state.active == "1.0.0" and state.child_pid is None


def _fake_opener(desktop: Desktop, tmp_path: Path) -> Path:
    """An xdg-open that records what it was asked to open (no desktop handlers here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "opened.txt"
    opener = bin_dir / "xdg-open"
    opener.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{record}"\n')
    opener.chmod(0o755)
    desktop.env["PATH"] = f"{bin_dir}{os.pathsep}{desktop.env['PATH']}"
    return record


def test_a_start_failure_shows_in_the_tray(desktop: Desktop, tmp_path: Path) -> None:
    """A login start whose port is taken: the icon turns red with the reason, a
    notification says it, the menu offers Open config / Open logs; Quit exits 1."""
    import socket

    from support import Instance

    from trayupdater.feed import ReleaseFeed

    opened = _fake_opener(desktop, tmp_path)
    with socket.socket() as holder, ReleaseFeed() as feed:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        instance = Instance(feed, tmp_path / "data", port)
        app = desktop._spawn(
            "app", [sys.executable, "-m", "trayupdater", *instance.args, "run"], cwd=tmp_path
        )
        icon = wait_for("the tray icon window", lambda: desktop.find_window(CLASS))
        wait_for("the red icon", lambda: near(desktop.window_colour(icon), ERROR_RED))
        reason = f"Port {port} on 127.0.0.1 is already in use"
        wait_for("the failure notification", lambda: desktop.notified(reason, partial=True))
        assert desktop.notified("TrayUpdater could not start")
        desktop.screenshot("start-failure-notification")
        desktop.open_menu(icon)
        desktop.screenshot("start-failure-menu")
        # Focusable: Open logs, Show error details…, Open config, About, Quit.
        desktop.xdotool("key", "--delay", "60", "Down", "Down", "Down", "Return")
        config = instance.args[instance.args.index("--config") + 1]
        wait_for("Open config", lambda: opened.is_file() and config in opened.read_text())
        desktop.choose(icon, "Down")  # Open logs
        wait_for("Open logs", lambda: str(tmp_path / "data" / "logs") in opened.read_text())
        desktop.choose(icon, "Up")  # Quit
        assert app.wait(TIMEOUT) == 1
    log = (tmp_path / "app.log").read_text()
    assert f"port {port} on 127.0.0.1 is already in use" in log and "Traceback" not in log


def test_the_demo_in_the_tray_is_safe_and_tells_its_story(desktop: Desktop, tmp_path: Path):
    """`trayupdater demo` in a real tray: it never touches start at login, its update
    notification has buttons (Roll back pressed through dunst itself), and its terminal
    says what happens, one line per event."""
    from support import served_version

    from trayupdater.children import free_port

    port = free_port()
    (tmp_path / "none.toml").write_text("")
    args = [sys.executable, "-m", "trayupdater", "--config", str(tmp_path / "none.toml")]
    args += ["--port", str(port), "--data-dir", str(tmp_path / "demo")]
    demo = desktop._spawn(
        "demo", [*args, "demo", "--publish-after", "1", "--duration", "120"], cwd=tmp_path
    )
    icon = wait_for("the tray icon window", lambda: desktop.find_window(CLASS))
    wait_for("1.0.0 served", lambda: served_version(port) == "1.0.0")
    wait_for("1.1.0 served", lambda: served_version(port) == "1.1.0")
    notes = "Updated to 1.1.0: Faster start-up and a friendlier front page"
    wait_for("the update notification with its notes", lambda: desktop.notified(notes))
    desktop.screenshot("demo-notification-with-buttons")

    desktop.press_notification_button("Roll back")
    wait_for("1.0.0 served again", lambda: served_version(port) == "1.0.0")
    offered = (tmp_path / "dmenu-input.txt").read_text()
    assert "Roll back" in offered and "What's new" in offered, offered  # dunst's own list
    wait_for("the rollback notification", lambda: desktop.notified("Rolled back to 1.0.0"))

    desktop.open_menu(desktop.find_window(CLASS) or icon)
    desktop.screenshot("demo-menu")  # "Start at login (not for the demo)", greyed out
    desktop.xdotool("key", "--delay", "60", "Up", "Return")  # Quit
    assert demo.wait(TIMEOUT) == 0
    assert not (tmp_path / "config" / "autostart").exists(), "the demo registered a login item"
    assert not (tmp_path / "config" / "trayupdater" / "start-at-login.json").exists()

    story = [
        line
        for line in (tmp_path / "demo.log").read_text().splitlines()
        if line.startswith("demo: ") and not line.startswith("demo: release feed")
    ]
    expected = [
        "installed 1.0.0",
        "published 1.1.0",
        "downloading 1.1.0",
        "switched to 1.1.0",
        "rolled back to 1.0.0",
    ]
    positions = [next(i for i, line in enumerate(story) if want in line) for want in expected]
    assert positions == sorted(positions), story
