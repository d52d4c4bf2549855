from __future__ import annotations

from pathlib import Path

import pytest

from trayupdater.cli import main
from trayupdater.config import Config, describe, load_config
from trayupdater.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_reproduce_the_original(tmp_path: Path) -> None:
    config = load_config(env={"TRAYUPDATER_CONFIG": str(write(tmp_path, ""))})
    assert config.repo == "jischr/simple-server"
    assert config.port == 8080
    assert config.bind == "127.0.0.1"
    assert config.command == ("{exe}", "{port}")
    assert config.health_path == "/version"
    assert config.require_checksum is True


def test_missing_default_file_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nowhere"))
    assert load_config(env={}).repo == Config().repo


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[source]
repo = "acme/from-file"
channel = "prerelease"
check_interval = 120

[proxy]
port = 9000
""",
    )
    env = {"TRAYUPDATER_PORT": "9100", "TRAYUPDATER_CHECK_INTERVAL": "60"}
    config = load_config(path, env=env, overrides={"check_interval": "30"})
    assert config.repo == "acme/from-file"  # file only
    assert config.channel == "prerelease"
    assert config.port == 9100  # env beats file
    assert config.check_interval == 30  # flag beats env


def test_github_token_fallback_and_config_token_wins(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={"GITHUB_TOKEN": "gh"}).token == "gh"
    both = {"GITHUB_TOKEN": "gh", "TRAYUPDATER_TOKEN": "mine"}
    assert load_config(write(tmp_path, ""), env=both).token == "mine"


def test_token_never_shown(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[source]\ntoken = "s3cret"\n'), env={})
    assert "s3cret" not in repr(config)
    assert describe(config)["token"] == "***"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[proxy]\nport = 70000\n", "[proxy] port"),
        ('[source]\nrepo = "no-slash"\n', "[source] repo"),
        ('[source]\nchannel = "nightly"\n', "[source] channel"),
        ('[source]\napi_url = "http://example.com"\n', "only allowed for loopback"),
        ('[child]\ncommand = ["{exe}"]\n', "{port}"),
        ('[proxy]\nbind = "everywhere"\n', "[proxy] bind"),
        ('[source]\nasset_pattern = "x-{platform}"\n', "unknown placeholder"),
        ('[proxy]\nrepo = "a/b"\n', "belongs in [source]"),
        ("[source]\nnope = 1\n", "unknown setting"),
        ("[source\n", "not valid TOML"),
    ],
)
def test_invalid_values_name_the_key_and_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_env_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRAYUPDATER_PORT"):
        load_config(write(tmp_path, ""), env={"TRAYUPDATER_PORT": "eighty"})


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml", env={})


def test_enterprise_and_loopback_urls(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\napi_url = "https://ghe.example.com/api/v3/"\n')
    assert load_config(path, env={}).api_url == "https://ghe.example.com/api/v3"
    env = {"TRAYUPDATER_API_URL": "http://127.0.0.1:9999"}
    assert load_config(path, env=env).api_url == "http://127.0.0.1:9999"


def test_cli_reports_bad_config_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[proxy]\nport = -1\n")
    assert main(["--config", str(path), "config"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "port" in err and str(path) in err


def test_cli_flags_and_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "")
    code = main(["--config", str(path), "--port", "9001", "--set", "keep_versions=5", "config"])
    assert code == 0
    out = capsys.readouterr().out
    assert '"port": 9001' in out and '"keep_versions": 5' in out


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # Used as Basic auth, and shown in status lines, logs and `trayupdater config`.
        (
            '[source]\napi_url = "https://user:s3cretPW@ghe.example/api/v3"\n',
            "user name or password",
        ),
        (
            '[source]\nmetadata_url = "https://user:s3cretPW@cdn.example/m/"\n',
            "user name or password",
        ),
        # requests reads CORP\jdoe:pw@proxy as the host "corp" and shows the password.
        ('[network]\nproxy = "http://CORP\\\\jdoe:s3cretPW@proxy.example:8080"\n', "CORP%5Cjdoe"),
    ],
)
def test_a_password_in_a_url_is_refused_and_never_shown(
    tmp_path: Path, text: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert fragment in str(info.value)
    assert "s3cretPW" not in str(info.value)


def test_a_huge_bad_value_is_cut_short_in_the_error(tmp_path: Path) -> None:
    """The error quoted the whole value: a 100 kB repo made a 100 kB line."""
    path = tmp_path / "config.toml"
    path.write_text(f'[source]\nrepo = "{"x" * 100_000}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert "invalid repo" in message and "(100" in message and "characters)" in message
    assert len(message) < 500 + len(str(path))


def test_a_number_of_more_than_4300_digits_is_explained_to_a_user(tmp_path: Path) -> None:
    """Python's own text told the user to call sys.set_int_max_str_digits()."""
    path = tmp_path / "config.toml"
    path.write_text(f"check_interval = {'9' * 4301}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "more than 4300 digits" in str(caught.value)
    assert "sys." not in str(caught.value)
