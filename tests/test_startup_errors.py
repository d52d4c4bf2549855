"""Failures at start, headless: one clear line naming the port or folder and what to do, exit 1.

(Tray mode shows the same reason in the tray: tests/test_tray_desktop.py.)
Real processes throughout: a real socket holds the port, a real read-only mount holds the
data folder (as root chmod does not stop writes, so root gets a tmpfs mounted read-only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trayupdater.children import free_port


def run(tmp_path: Path, *args: str, config: str = "", data: Path | None = None):
    cfg = tmp_path / "config.toml"
    cfg.write_text(config)
    data = data or tmp_path / "data"
    return subprocess.run(
        [sys.executable, "-m", "trayupdater", "--config", str(cfg), "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TRAYUPDATER_API_URL": "http://127.0.0.1:9"},
    )


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("trayupdater: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def test_port_in_use_is_one_line_naming_the_port_and_the_way_out(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run(tmp_path, "--port", str(port), "run", "--headless")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert f"port {port} on 127.0.0.1 is already in use" in line and "--port" in line
    assert line.count("listen") <= 1 and "proxy cannot listen" not in line  # not doubled


def test_a_config_file_that_does_not_parse_is_one_line(tmp_path):
    result = run(tmp_path, "run", "--headless", config="[proxy\nport = 8080\n")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "config.toml: not valid TOML" in line


def test_an_unreadable_config_file_is_one_line(tmp_path):
    cfg_dir = tmp_path / "config.toml"  # a folder where the file should be: unreadable
    cfg_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "trayupdater", "--config", str(cfg_dir), "run", "--headless"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot read config file" in one_error_line(result.stderr)


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() == 0:
        if shutil.which("mount") is None:
            pytest.skip("running as root without mount(8): cannot make a read-only folder")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)])
        if done.returncode != 0:
            pytest.skip("running as root and mount is not allowed here: no read-only folder")
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=False)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


def test_a_read_only_data_folder_is_one_line_naming_it(tmp_path):
    with read_only_folder(tmp_path / "ro-data") as data:
        result = run(tmp_path, "--port", str(free_port()), "run", "--headless", data=data)
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert f"the data folder {data} is not writable" in line
    assert "--data-dir" in line


def test_a_read_only_log_folder_is_one_line_naming_it(tmp_path):
    with read_only_folder(tmp_path / "ro-logs") as logs:
        result = run(
            tmp_path, "--port", str(free_port()), "--set", f"log_dir={logs}", "run", "--headless"
        )
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert f"cannot write logs to {logs}" in line and "log_dir" in line
