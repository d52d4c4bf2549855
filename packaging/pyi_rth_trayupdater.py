"""PyInstaller runtime hook: apply the build facts that build.spec baked into the bundle.

Runs before the app's first import. ``trayupdater_build.json`` (written by build.spec from
``TRAYUPDATER_BUILD_VERSION`` and friends) carries the version of this build, so one
source tree can produce 0.1.0 and 0.2.0 executables without editing
``trayupdater/__init__.py``; every module that reads ``trayupdater.__version__`` after this
hook sees the baked value. ``broken`` exists for the self-update end-to-end test only: a
build that dies at start, the way a bad release would.

On Windows the build is windowed (no console window for a tray app), which leaves
``sys.stdout``/``sys.stderr`` as None; started from a terminal (``trayupdater.exe status``)
it attaches to that terminal's console so the CLI's answers are seen.
"""


def _apply_build_info() -> None:
    import json
    import os
    import sys

    path = os.path.join(getattr(sys, "_MEIPASS", ""), "trayupdater_build.json")
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return  # not built by build.spec: the source version stands
    import trayupdater

    version = info.get("version")
    if isinstance(version, str) and version:
        trayupdater.__version__ = version
    trayupdater.BUILD_INFO = info  # type: ignore[attr-defined]
    if info.get("broken"):
        sys.stderr.write(f"trayupdater {version}: deliberately broken test build, exiting\n")
        sys.stderr.flush()
        os._exit(1)


def _attach_parent_console() -> None:
    import sys

    if sys.platform != "win32" or sys.stdout is not None:
        return
    import ctypes

    if not ctypes.windll.kernel32.AttachConsole(-1):  # ATTACH_PARENT_PROCESS; none: Explorer
        return
    try:
        sys.stdout = open("CONOUT$", "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        sys.stderr = open("CONOUT$", "w", encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        sys.stdout = sys.stderr = None


_apply_build_info()
_attach_parent_console()
