"""Size and start-up time of the PyInstaller builds: onefile vs onedir, with and without GTK.

    python bench/exe_size_startup.py                  # build the variants, measure, print
    python bench/exe_size_startup.py --runs 10 --json bench-exe.json
    python bench/exe_size_startup.py --variants onefile-headless,onedir-gtk
    python bench/exe_size_startup.py --reuse DIR      # measure builds already in DIR/<variant>

For each variant it reports the build time, the size on disk (a onedir folder counted
file by file, symlinks not followed) and two start-up times, as the median of ``--runs``:
``--version`` (bootloader, unpacking, interpreter and imports: what every CLI call pays)
and ``run --headless`` until the proxy answers on its port (what a login start pays
before it serves; no child is configured, so the proxy answers 503 quickly).
GTK variants need PyGObject importable (see DESKTOP-TESTING.md); they are skipped if not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "onefile-headless": {"TRAYUPDATER_BUILD_MODE": "onefile", "TRAYUPDATER_BUILD_GUI": "0"},
    "onedir-headless": {"TRAYUPDATER_BUILD_MODE": "onedir", "TRAYUPDATER_BUILD_GUI": "0"},
    "onefile-gtk": {"TRAYUPDATER_BUILD_MODE": "onefile", "TRAYUPDATER_BUILD_GUI": "1"},
    "onedir-gtk": {"TRAYUPDATER_BUILD_MODE": "onedir", "TRAYUPDATER_BUILD_GUI": "1"},
}


def gtk_available() -> bool:
    probe = "import gi; gi.require_version('Gtk', '3.0'); from gi.repository import Gtk"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def executable(dist: Path) -> Path:
    onedir = dist / "trayupdater" / "trayupdater"
    return onedir if onedir.is_file() else dist / "trayupdater"


def build(name: str, out: Path) -> float:
    env = {**os.environ, **VARIANTS[name], "TRAYUPDATER_BUILD_VERSION": "0.0.0"}
    started = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "ERROR"),
            *("--workpath", str(out / "work" / name), "--distpath", str(out / name)),
            str(ROOT / "build.spec"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"{name}: build failed\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.monotonic() - started


def size_of(dist: Path) -> tuple[int, int]:
    """Bytes and file count of a build (the folder for onedir, the file for onefile)."""
    folder = dist / "trayupdater"
    if folder.is_dir():
        files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
        return sum(p.stat().st_size for p in files), len(files)
    return (dist / "trayupdater").stat().st_size, 1


def time_version(exe: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(exe), "--version"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_serving(exe: Path, runs: int) -> list[float]:
    """Seconds from exec to the proxy accepting and answering on its port."""
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            config = Path(tmp) / "none.toml"
            config.write_text("")
            argv = [
                *(str(exe), "--config", str(config), "--data-dir", tmp, "--port", str(port)),
                # Nothing to fetch: an unused loopback port answers "connection refused".
                *("--api-url", f"http://127.0.0.1:{free_port()}", "run", "--headless"),
            ]
            started = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"{exe} exited with {proc.returncode} before serving")
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                            if s.recv(12).startswith(b"HTTP/1.1"):
                                break
                    except OSError:
                        time.sleep(0.005)
                times.append(time.perf_counter() - started)
            finally:
                proc.terminate()
                proc.wait(30)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reuse", type=Path, help="measure existing builds in DIR/<variant>")
    parser.add_argument("--keep", type=Path, help="build into DIR and keep the builds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if not args.reuse and any(n.endswith("gtk") for n in names) and not gtk_available():
        print("PyGObject/GTK not importable: skipping the GTK variants", file=sys.stderr)
        names = [n for n in names if not n.endswith("gtk")]

    out = args.reuse or args.keep or Path(tempfile.mkdtemp(prefix="tu-bench-"))
    results = []
    try:
        for name in names:
            seconds = None if args.reuse else build(name, out)
            exe = executable(out / name)
            size, files = size_of(out / name)
            version = time_version(exe, args.runs)
            serving = time_serving(exe, args.runs)
            results.append(
                {
                    "variant": name,
                    "build_seconds": round(seconds, 1) if seconds is not None else None,
                    "size_mb": round(size / 1e6, 1),
                    "files": files,
                    "version_median_s": round(statistics.median(version), 3),
                    "serving_median_s": round(statistics.median(serving), 3),
                    "runs": args.runs,
                }
            )
            print(f"measured {name}", file=sys.stderr, flush=True)
    finally:
        if not (args.reuse or args.keep):
            shutil.rmtree(out, ignore_errors=True)

    print("| variant | build s | size MB | files | --version s | serving s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['variant']} | {r['build_seconds'] or '-'} | {r['size_mb']} | {r['files']} "
            f"| {r['version_median_s']} | {r['serving_median_s']} |"
        )
    if args.json:
        meta = {"python": sys.version.split()[0], "platform": sys.platform, "cpus": os.cpu_count()}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
