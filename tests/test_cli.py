from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from trayupdater.cli import main


def test_pick_asset_per_platform(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    release = shared_data / "releases" / "release-gitleaks-gitleaks-v8.30.0.json"
    code = main(
        [
            "pick-asset",
            str(release),
            "--platform",
            "linux-x86_64",
            "--platform",
            "darwin-arm64",
            "--platform",
            "windows-aarch64",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "linux-x86_64\tgitleaks_8.30.0_linux_x64.tar.gz"
    assert lines[1] == "darwin-arm64\tgitleaks_8.30.0_darwin_arm64.tar.gz"
    assert lines[2].startswith("windows-aarch64\t")


def test_pick_asset_from_stdin_and_no_match(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {
        "tag_name": "v1.0.0",
        "assets": [{"name": "tool_Linux_x86_64.tar.gz"}, {"name": "checksums.txt"}],
    }
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(body)))
    assert main(["pick-asset", "-", "--platform", "linux-amd64", "--platform", "darwin-arm64"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "linux-x86_64\ttool_Linux_x86_64.tar.gz",
        "darwin-arm64\t-",
    ]


def test_pick_asset_without_platform_uses_this_machine(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trayupdater.platforms import Platform

    release = shared_data / "releases" / "release-zyedidia-micro-latest.json"
    assert main(["pick-asset", str(release)]) == 0
    assert capsys.readouterr().out.startswith(f"{Platform.current()}\t")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pick-asset", "/nonexistent.json"], "cannot read release JSON"),
        (["pick-asset", "{release}", "--platform", "amiga-m68k"], "amiga"),
    ],
)
def test_pick_asset_errors(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    release = tmp_path / "r.json"
    release.write_text('{"assets": [{"name": "x_linux_amd64"}]}')
    assert main([a.replace("{release}", str(release)) for a in args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
