"""The child is a program we download: it must never see the token, under any name.

Read from where an attacker's child would read it: ``/proc/<child>/environ`` of the real
child of a real ``trayupdater run --headless``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import Instance, recorded_child_pid, wait_for

from trayupdater.child_command import child_environment
from trayupdater.children import free_port
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed

TOKEN = "ghp_CHILDMUSTNOTSEE0123456789"


def child_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_token_never_reaches_the_child(feed: ReleaseFeed, tmp_path: Path) -> None:
    publish_version(feed, "1.0.0")
    config = tmp_path / "config.toml"
    config.write_text('[child]\nenv = {LOG_LEVEL = "debug", LEAK = "x' + TOKEN + '"}\n')
    instance = Instance(
        feed,
        tmp_path / "data",
        free_port(),
        GITHUB_TOKEN=TOKEN,
        GH_TOKEN=TOKEN,
        TRAYUPDATER_TOKEN=TOKEN,
        GITHUB_ENTERPRISE_TOKEN=TOKEN,
        SOME_OTHER_NAME=f"prefix-{TOKEN}",  # the same secret under a name we cannot guess
        HARMLESS="kept",
    )
    instance.args[instance.args.index("--config") + 1] = str(config)
    try:
        instance.start()
        wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
        pid = recorded_child_pid(instance.data)
        env = child_environ(pid)
        leaked = {k: v for k, v in env.items() if TOKEN in v}
        assert leaked == {}, f"the child sees the token in {sorted(leaked)}"
        for name in ("GITHUB_TOKEN", "GH_TOKEN", "GITHUB_ENTERPRISE_TOKEN"):
            assert name not in env
        assert not [k for k in env if k.startswith("TRAYUPDATER_")]
        assert env["HARMLESS"] == "kept"  # the rest of the environment is passed on
        assert env["LOG_LEVEL"] == "debug"  # [child] env: what the publisher passes on purpose
        assert "LEAK" not in env  # ... unless it carries the token
    finally:
        instance.kill()


def test_child_environment_rules() -> None:
    env = child_environment(
        {"PATH": "/bin", "GH_TOKEN": "t", "TRAYUPDATER_HANDOVER": "1:x", "X": "has-s3cret-in"},
        {"A": "1", "B": "s3cret"},
        secrets=["s3cret"],
    )
    assert env == {"PATH": "/bin", "A": "1"}
