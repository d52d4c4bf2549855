"""End to end: a publisher uses ``trayupdater repo``, a real static server serves the folder,
and ``trayupdater check`` and ``run --headless`` (real processes) update from it — or, when
the metadata expired or a mirror went stale, keep serving and say why."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from static_server import StaticServer
from support import Instance, Load, alive, wait_for
from tuf_support import Publisher

from trayupdater.children import free_port
from trayupdater.demo import asset_name
from trayupdater.platforms import Platform

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX processes and signals")


@pytest.fixture
def instance(tmp_path: Path, publisher: Publisher, server: StaticServer) -> Iterator[Instance]:
    inst = Instance.tuf(server.url, publisher.shipped_root, tmp_path / "data", free_port())
    yield inst
    inst.kill()


def status(instance: Instance) -> dict[str, object]:
    return json.loads(instance.cli("status", "--json").stdout)


def test_check_installs_and_the_running_app_updates_without_a_failed_request(
    publisher: Publisher, server: StaticServer, instance: Instance
) -> None:
    publisher.add("1.0.0")
    dry = instance.cli("check", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["latest"], report["update_available"]) == ("1.0.0", True)
    done = instance.cli("check")
    assert done.returncode == 0, done.stderr
    assert "installed 1.0.0" in done.stdout

    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", timeout=60, what="serving 1.0.0")
    with Load(("127.0.0.1", instance.port)) as load:
        wait_for(lambda: load.count > 20, what="traffic")
        publisher.add("1.1.0")
        result = instance.cli("check")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Updated to 1.1.0" in result.stdout
        wait_for(lambda: load.seen.get("1.1.0", 0) > 10, what="traffic on 1.1.0")
    assert load.failures == []
    assert instance.version() == "1.1.0"
    target = f"/targets/1.1.0/{asset_name(Platform.current())}"
    assert [h.status for h in server.hits(target)] == [200]  # fetched once, from the server
    assert instance.cli("quit").returncode == 0
    assert proc.wait(timeout=30) == 0


def test_expired_metadata_keeps_serving_and_says_why_until_the_publisher_refreshes(
    publisher: Publisher, server: StaticServer, instance: Instance
) -> None:
    publisher.add("1.0.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", timeout=60, what="serving 1.0.0")
    publisher.add("1.1.0")
    publisher.resign_expired("timestamp")  # the scheduled refresh did not run

    result = instance.cli("check")
    assert result.returncode == 1  # the status carries an error
    assert re.search(r"expired on \d{4}-\d\d-\d\d \d\d:\d\d UTC \(timestamp\.json\)", result.stdout)
    now = status(instance)
    assert now["phase"] == "running" and now["active"] == "1.0.0"
    assert "no new version is installed" in str(now["error"])
    assert "the current version keeps running" in str(now["message"])
    assert instance.version() == "1.0.0" and alive(proc.pid)

    publisher.refresh()
    result = instance.cli("check")
    assert result.returncode == 0, result.stdout
    assert "Updated to 1.1.0" in result.stdout
    assert instance.version() == "1.1.0"


def test_a_stale_mirror_is_refused_while_the_current_version_keeps_serving(
    publisher: Publisher, server: StaticServer, instance: Instance
) -> None:
    publisher.add("1.0.0")
    stale = publisher.save()
    publisher.add("1.1.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.1.0", timeout=60, what="serving 1.1.0")
    for path, data in stale.items():  # the mirror falls back to the state before 1.1.0
        path.write_bytes(data)
    result = instance.cli("check")
    assert result.returncode == 1
    assert "does not verify" in result.stdout and "timestamp version" in result.stdout
    assert instance.version() == "1.1.0" and alive(proc.pid)
    assert status(instance)["active"] == "1.1.0"
