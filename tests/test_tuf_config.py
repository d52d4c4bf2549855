"""Configuring the ``tuf`` source, and where its trust anchor is found."""

from __future__ import annotations

from pathlib import Path

import pytest

from trayupdater.config import Config, load_config
from trayupdater.errors import ConfigError, SourceError
from trayupdater.sources import GitHubSource, make_source
from trayupdater.sources.trusted_root import default_locations, find_trusted_root
from trayupdater.sources.tuf_source import TufSource, cache_dir_for


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_github_stays_the_default_source(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, ""), env={})
    assert config.kind == "github"
    assert isinstance(make_source(config), GitHubSource)


def test_a_tuf_source_from_the_config_file(tmp_path: Path) -> None:
    path = config_file(
        tmp_path,
        '[source]\nkind = "tuf"\nurl = "https://updates.example.com/app"\n'
        '[security]\ntrusted_root = "root.json"\n'
        f'[store]\ndata_dir = "{tmp_path / "data"}"\n',
    )
    config = load_config(path, env={})
    assert config.tuf_metadata_url == "https://updates.example.com/app/metadata/"
    assert config.tuf_targets_url == "https://updates.example.com/app/targets/"
    assert config.trusted_root == path.parent / "root.json"  # beside the file naming it
    source = make_source(config)
    assert isinstance(source, TufSource)
    assert source.cache_dir == cache_dir_for(tmp_path / "data", config.tuf_metadata_url)
    assert source.cache_dir.parent == tmp_path / "data" / "tuf"


def test_metadata_and_targets_can_live_apart(tmp_path: Path) -> None:
    config = load_config(
        config_file(tmp_path, ""),
        env={
            "TRAYUPDATER_KIND": "TUF",
            "TRAYUPDATER_METADATA_URL": "https://owner.github.io/app/metadata",
            "TRAYUPDATER_TARGETS_URL": "https://github.com/owner/app/releases/download/",
        },
    )
    assert config.kind == "tuf"
    assert config.tuf_metadata_url == "https://owner.github.io/app/metadata/"
    assert config.tuf_targets_url == "https://github.com/owner/app/releases/download/"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "tuf"}, "needs url"),
        ({"kind": "tuf", "metadata_url": "https://h/m/"}, "needs url"),
        ({"kind": "s3"}, "expected one of 'github', 'tuf'"),
        ({"kind": "tuf", "url": "http://updates.example.com/"}, "plain http"),
        ({"kind": "tuf", "url": "ftp://updates.example.com/"}, "expected an https URL"),
        ({"targets_url": "http://10.0.0.1/targets/"}, "plain http"),
    ],
)
def test_bad_tuf_settings_are_one_clear_error(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(config_file(tmp_path, ""), env={}, overrides=overrides)


def test_loopback_http_is_allowed_for_local_repositories(tmp_path: Path) -> None:
    config = load_config(
        config_file(tmp_path, ""), env={}, overrides={"kind": "tuf", "url": "http://127.0.0.1:8/"}
    )
    assert config.tuf_metadata_url == "http://127.0.0.1:8/metadata/"


def test_the_shipped_root_is_looked_for_beside_the_executable_then_in_the_bundle() -> None:
    places = default_locations(
        frozen=True,
        executable="/opt/trayupdater/trayupdater",
        bundle="/opt/trayupdater/_internal",
        config_dir=Path("/home/u/.config/trayupdater"),
    )
    assert places == [
        Path("/opt/trayupdater/root.json"),
        Path("/opt/trayupdater/_internal/root.json"),
        Path("/home/u/.config/trayupdater/root.json"),
    ]
    from_source = default_locations(frozen=False, config_dir=Path("/c"))
    assert from_source == [Path("/c/root.json")]


def test_the_first_location_that_exists_wins(tmp_path: Path) -> None:
    places = [tmp_path / "exe" / "root.json", tmp_path / "bundle" / "root.json"]
    places[1].parent.mkdir()
    places[1].write_text("{}")
    assert find_trusted_root(None, places) == places[1]
    places[0].parent.mkdir()
    places[0].write_text("{}")
    assert find_trusted_root(None, places) == places[0]
    with pytest.raises(SourceError, match="not found"):
        find_trusted_root(tmp_path / "configured.json", places)  # configured: no fallback


def test_config_describes_the_new_keys(tmp_path: Path) -> None:
    from trayupdater.config import describe

    shown = describe(Config(kind="tuf", url="https://h/", trusted_root=tmp_path / "r.json"))
    assert shown["kind"] == "tuf" and shown["url"] == "https://h/"
    assert shown["trusted_root"] == str(tmp_path / "r.json")
