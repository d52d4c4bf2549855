from __future__ import annotations

import argparse
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
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "linux-x86_64\tgitleaks_8.30.0_linux_x64.tar.gz"
    assert lines[1] == "darwin-arm64\tgitleaks_8.30.0_darwin_arm64.tar.gz"
    assert lines[2].startswith("windows-aarch64\t")
    # gitleaks ships no Windows arm64 build: that is a non-zero exit for scripts.
    assert code == (1 if lines[2].endswith("\t-") else 0)


def test_pick_asset_from_stdin_and_no_match(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {
        "tag_name": "v1.0.0",
        "assets": [{"name": "tool_Linux_x86_64.tar.gz"}, {"name": "checksums.txt"}],
    }
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(body)))
    # A requested platform without an asset: every line is printed, and the exit is 1.
    assert main(["pick-asset", "-", "--platform", "linux-amd64", "--platform", "darwin-arm64"]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == ["linux-x86_64\ttool_Linux_x86_64.tar.gz", "darwin-arm64\t-"]
    assert "no asset for darwin-arm64" in out.err


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


# --- options, help, JSON errors ---


def test_global_options_are_accepted_after_the_command(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    data = tmp_path / "d"
    # `status --data-dir X` failed with "unrecognized arguments" before.
    assert main(["status", "--config", str(cfg), "--data-dir", str(data)]) == 3
    assert "not running" in capsys.readouterr().out
    assert main(["--port", "1234", "config", "--config", str(cfg), "--set", "keep_versions=5"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["port"] == 1234 and shown["keep_versions"] == 5  # before and after both count


def test_every_option_has_help_and_no_raw_metavar(capsys) -> None:
    from trayupdater.cli_parser import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("", parser), *subparsers.choices.items()]:
        if name == "demo-child":
            continue  # hidden
        text = sub.format_help()
        assert "CFG_" not in text, (name, text)
        for action in sub._actions:
            assert action.help, (name, action.option_strings or action.dest)


def test_check_json_reports_an_error_as_json(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    code = main(
        [
            "check",
            "--json",
            "--config",
            str(cfg),
            "--data-dir",
            str(tmp_path / "d"),
            "--api-url",
            "http://127.0.0.1:9",
        ]  # nothing listens on the discard port
    )
    assert code == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["reason"] == "source" and "cannot reach" in answer["error"]


def test_logs_go_to_the_os_log_folder_or_the_chosen_data_folder(tmp_path, monkeypatch):
    from trayupdater.config import load_config

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    monkeypatch.delenv("TRAYUPDATER_DATA_DIR", raising=False)
    none = tmp_path / "none.toml"
    none.write_text("")
    import sys

    if sys.platform.startswith("linux"):
        assert load_config(none).logs_dir == tmp_path / "state" / "trayupdater" / "log"
    chosen = load_config(none, overrides={"data_dir": str(tmp_path / "inst")})
    assert chosen.logs_dir == tmp_path / "inst" / "logs"  # a self-contained instance
    explicit = load_config(none, overrides={"data_dir": "/x", "log_dir": str(tmp_path / "L")})
    assert explicit.logs_dir == tmp_path / "L"


# --- the start-at-login entry starts the same instance ---


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No TRAYUPDATER_* variables, the default config and data folders inside tmp_path."""
    import os

    for name in [n for n in os.environ if n.startswith("TRAYUPDATER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _login_instance(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    """The login arguments of a run with ``argv``, and the data folder they start with in a
    login session, which has none of this shell's TRAYUPDATER_* variables."""
    import os

    from trayupdater.cli import _launch_args
    from trayupdater.cli_parser import build_parser, config_from_args

    args = build_parser().parse_args(argv)
    login = _launch_args(args, config_from_args(args))
    for name in [n for n in os.environ if n.startswith("TRAYUPDATER_")]:
        monkeypatch.delenv(name)
    return login, config_from_args(build_parser().parse_args([*login, "run"])).data_dir


@pytest.mark.parametrize(
    "argv",
    [
        ["--set", "data_dir=inst", "run"],
        ["run", "--set", "data_dir=inst"],
        ["--data-dir", "inst", "run"],
        ["run", "--data-dir", "inst"],
        ["--set", "data-dir=inst", "run"],
    ],
)
def test_login_entry_repeats_the_data_folder_however_it_was_given(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    login, data_dir = _login_instance(argv, monkeypatch)
    assert login == ["--data-dir", str(clean_env / "inst")]  # absolute: login has another cwd
    assert data_dir == clean_env / "inst"


def test_login_entry_turns_the_environment_into_flags(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = clean_env / "my.toml"
    cfg.write_text("[proxy]\nport = 26161\n")
    monkeypatch.setenv("TRAYUPDATER_CONFIG", str(cfg))
    monkeypatch.setenv("TRAYUPDATER_DATA_DIR", str(clean_env / "env-data"))
    login, data_dir = _login_instance(["run"], monkeypatch)
    assert login == ["--config", str(cfg), "--data-dir", str(clean_env / "env-data")]
    assert data_dir == clean_env / "env-data"


def test_login_entry_leaves_out_what_the_config_file_already_says(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _login_instance(["run"], monkeypatch)[0] == []  # all defaults: nothing to repeat
    cfg = clean_env / "my.toml"
    cfg.write_text(f"[store]\ndata_dir = {str(clean_env / 'from-file')!r}\n")
    # Editing data_dir in the file must still count at the next login: no --data-dir.
    assert _login_instance(["--config", str(cfg), "run"], monkeypatch) == (
        ["--config", str(cfg)],
        clean_env / "from-file",
    )
    # A flag that overrides the file is repeated, also when it names the default folder.
    from trayupdater.config import default_data_dir

    login, data_dir = _login_instance(
        ["run", "--config", str(cfg), "--data-dir", str(default_data_dir())], monkeypatch
    )
    assert login == ["--config", str(cfg), "--data-dir", str(default_data_dir())]
    assert data_dir == default_data_dir()


def test_status_text_from_a_server_cannot_drive_the_terminal(capsys) -> None:
    """An error message holding a release's tag was printed raw: its escape sequences
    retitled and cleared the terminal of whoever ran `trayupdater status`."""
    from trayupdater.terminal import print_status

    hostile = "v9\x1b]0;PWNED\x07\x1b[2J\x9b31m"
    code = print_status(
        {"headline": "simple-server 1.0.0 — running", "message": hostile, "error": hostile},
        as_json=False,
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "v9\\x1b]0;PWNED\\x07" in out  # shown, escaped
