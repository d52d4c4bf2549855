"""The ``tuf`` source against a real static server (nginx, else ``http.server``) serving a
repository made by the real publisher CLI. Every attack is staged by editing what is served."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from static_server import NGINX, StaticServer
from tuf.api.metadata import Metadata, Root
from tuf_support import Publisher, pipeline, tuf_config, tuf_source

from trayupdater.demo import asset_name
from trayupdater.errors import (
    DownloadError,
    MetadataExpiredError,
    RateLimitedError,
    SourceError,
    UntrustedMetadataError,
    VerificationError,
)
from trayupdater.platforms import Platform
from trayupdater.sources.tuf_source import TufSource
from trayupdater.store import State, VersionStore

ASSET = asset_name(Platform.current())


# --- what a user gets ------------------------------------------------------------------------


def test_check_offers_the_newest_version_and_installs_it(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    archive = publisher.add("1.1.0")
    config = tuf_config(server.url, publisher, tmp_path / "data")
    p = pipeline(config)
    plan = p.plan(State())
    assert (plan.latest, plan.should_install) == ("1.1.0", True)
    assert plan.asset is not None and plan.asset.name == ASSET
    assert plan.asset.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()

    installed = p.install(*p.require_asset(plan))
    assert installed.version == "1.1.0"
    assert installed.executable.is_file()
    assert "1.1.0" in installed.executable.read_text()  # the demo child answers its version
    assert [h.status for h in server.hits(f"/targets/1.1.0/{ASSET}")] == [200]
    assert not list((config.data_dir / "downloads").glob("*"))  # nothing left behind


def test_prereleases_are_offered_on_the_prerelease_channel_only(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    publisher.add("1.1.0rc1")
    stable = tuf_config(server.url, publisher, tmp_path / "a")
    assert pipeline(stable).plan(State()).latest == "1.0.0"
    early = tuf_config(server.url, publisher, tmp_path / "b", channel="prerelease")
    assert pipeline(early).plan(State()).latest == "1.1.0rc1"


def test_repeated_checks_are_conditional_requests(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    publisher.age(60)  # published a minute ago: its validators can be trusted (see tuf_fetcher)
    source = tuf_source(server.url, publisher, tmp_path / "cache")
    first = source.check()
    second = source.check()
    assert first.release is not None and second.release is not None
    assert (first.not_modified, second.not_modified) == (False, True)
    assert second.release.version_text == "1.0.0"
    answers = [h.status for h in server.hits("/metadata/timestamp.json")]
    assert answers == [200, 304]
    if server.kind == "nginx":
        assert server.hits("/metadata/timestamp.json")[1].if_none_match == source.etag
    # Snapshot and targets metadata come once: after that the cache has them.
    assert len(server.hits("/metadata/2.targets.json")) == 1

    publisher.add("1.1.0")
    third = source.check()
    assert third.release is not None and third.release.version_text == "1.1.0"
    assert not third.not_modified


def test_a_file_changed_within_the_same_second_is_not_taken_for_unchanged(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    """Static servers make ETag and Last-Modified from the mtime in whole seconds: a
    timestamp.json replaced within that second by one of the same size keeps them."""
    publisher.add("1.0.0")
    path = publisher.metadata / "timestamp.json"
    stamp = time.time()
    os.utime(path, (stamp, stamp))
    source = tuf_source(server.url, publisher, tmp_path / "cache")
    assert source.check().release.version_text == "1.0.0"  # type: ignore[union-attr]
    size = path.stat().st_size
    publisher.add("1.1.0")
    assert path.stat().st_size == size  # same size ...
    os.utime(path, (stamp, stamp))  # ... and, to the server, the same second
    result = source.check()
    assert result.release is not None and result.release.version_text == "1.1.0"
    assert [h.status for h in server.hits("/metadata/timestamp.json")] == [200, 200]


def test_a_target_that_does_not_follow_the_format_is_skipped(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    repository = publisher.library()
    stray = publisher.dir / "targets" / "nightly" / ASSET
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not ours")
    from tuf.api.metadata import TargetFile

    with repository.edit_targets() as targets:  # signed, but not in trayupdater's format
        targets.targets["nightly/" + ASSET] = TargetFile.from_file(f"nightly/{ASSET}", str(stray))
    repository.do_snapshot()
    repository.do_timestamp()
    result = tuf_source(server.url, publisher, tmp_path / "cache").check()
    assert result.release is not None and result.release.version_text == "1.0.0"
    assert result.skipped_tags == ["nightly"]


def test_a_target_whose_signed_length_is_true_is_skipped(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    """tuf checks a length only for "< 0": ``true`` was taken as a size of 1 (a float
    cannot be signed: canonical JSON has none)."""
    publisher.add("1.0.0")
    publisher.add("1.1.0")
    repository = publisher.library()
    with repository.edit_targets() as targets:
        (path,) = [p for p in targets.targets if p.startswith("1.1.0/")]
        targets.targets[path].length = True
    repository.do_snapshot()
    repository.do_timestamp()
    result = tuf_source(server.url, publisher, tmp_path / "cache").check()
    assert result.release is not None and result.release.version_text == "1.0.0"
    assert result.skipped_tags == ["1.1.0"]


# --- rollback: an older timestamp, snapshot or targets served ---------------------------------


def test_an_older_timestamp_is_refused(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    old = publisher.save()
    publisher.add("1.1.0")
    source = tuf_source(server.url, publisher, tmp_path / "cache")
    assert source.check().release.version_text == "1.1.0"  # type: ignore[union-attr]
    # A stale mirror serves the repository as it was before 1.1.0 (all validly signed).
    for path, data in old.items():
        path.write_bytes(data)
    with pytest.raises(UntrustedMetadataError, match="timestamp version"):
        source.check()
    # The refusal is remembered across restarts: the cache holds the newest timestamp.
    with pytest.raises(UntrustedMetadataError):
        tuf_source(server.url, publisher, tmp_path / "cache").check()


def test_an_older_snapshot_is_refused(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    source = tuf_source(server.url, publisher, tmp_path / "cache")
    source.check()
    publisher.refresh()  # timestamp v3 -> snapshot v3
    old_snapshot = (publisher.metadata / "2.snapshot.json").read_bytes()
    (publisher.metadata / "3.snapshot.json").write_bytes(old_snapshot)
    with pytest.raises(UntrustedMetadataError, match="does not verify"):
        source.check()


def test_an_older_targets_is_refused(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    publisher.add("1.1.0")  # targets v3 lists both
    (publisher.metadata / "3.targets.json").write_bytes(
        (publisher.metadata / "2.targets.json").read_bytes()  # v2: only 1.0.0
    )
    with pytest.raises(UntrustedMetadataError, match=r"Expected targets v3, got v2"):
        tuf_source(server.url, publisher, tmp_path / "cache").check()


def test_metadata_edited_without_its_key_is_refused(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    path = publisher.metadata / "timestamp.json"
    data = json.loads(path.read_text())
    data["signed"]["expires"] = "2099-01-01T00:00:00Z"  # a freeze made to look fresh
    path.write_text(json.dumps(data))
    with pytest.raises(UntrustedMetadataError, match="signed by 0/1 keys"):
        tuf_source(server.url, publisher, tmp_path / "cache").check()


def test_an_endless_metadata_file_is_cut_off(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    (publisher.metadata / "timestamp.json").write_bytes(b" " * (2 * 1024 * 1024))
    with pytest.raises(UntrustedMetadataError, match="longer than"):
        tuf_source(server.url, publisher, tmp_path / "cache").check()


# --- expiry: no new installs, keep serving, say why --------------------------------------------


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets", "root"])
def test_expired_metadata_is_one_clear_error_with_its_date(
    tmp_path: Path, publisher: Publisher, server: StaticServer, role: str
) -> None:
    publisher.add("1.0.0")
    config = tuf_config(server.url, publisher, tmp_path / "data")
    p = pipeline(config)
    assert p.plan(State()).latest == "1.0.0"
    publisher.add("1.1.0")
    publisher.resign_expired(role)
    with pytest.raises(MetadataExpiredError) as caught:
        p.plan(State())
    message = str(caught.value)
    expired = datetime.fromisoformat(caught.value.expired_at or "")
    assert expired < datetime.now(timezone.utc)
    assert expired.strftime("%Y-%m-%d %H:%M UTC") in message
    assert f"({role}.json)" in message
    assert "the current version keeps running" in message
    assert caught.value.reason == "metadata_expired"
    assert VersionStore(config.data_dir).installed() == []  # nothing new installed


# --- targets: tampered bytes are refused ---------------------------------------------------------


@pytest.mark.parametrize("change", ["same length", "longer"])
def test_a_tampered_target_is_refused(
    tmp_path: Path, publisher: Publisher, server: StaticServer, change: str
) -> None:
    publisher.add("1.0.0")
    target = publisher.dir / "targets" / "1.0.0" / ASSET
    good = target.read_bytes()
    bad = bytes(b ^ 0xFF for b in good) if change == "same length" else good + b"extra"
    target.write_bytes(bad)
    config = tuf_config(server.url, publisher, tmp_path / "data")
    p = pipeline(config)
    plan = p.plan(State())
    error = VerificationError if change == "same length" else DownloadError
    with pytest.raises(error, match="signed TUF metadata" if change == "same length" else "bytes"):
        p.install(*p.require_asset(plan))
    assert VersionStore(config.data_dir).installed() == []
    assert not list((config.data_dir / "downloads").glob("*"))


# --- root rotation -------------------------------------------------------------------------------


def test_a_rotated_root_key_is_followed_along_the_chain(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    source = tuf_source(server.url, publisher, tmp_path / "cache")
    assert source.check().release.version_text == "1.0.0"  # type: ignore[union-attr]
    old_root_key = publisher.keys / "root.pem"
    old_keyid = publisher.library().root().roles["root"].keyids[0]
    publisher.repo("rotate-key", str(publisher.dir), "--role", "root")
    publisher.repo("rotate-key", str(publisher.dir), "--role", "timestamp")
    publisher.add("1.1.0")
    assert old_root_key.exists()  # the new key took its place
    assert (publisher.keys / "retired").is_dir()
    # A client that only ships root v1 walks 2.root.json and 3.root.json.
    fresh = tuf_source(server.url, publisher, tmp_path / "fresh-cache")
    assert fresh.check().release.version_text == "1.1.0"  # type: ignore[union-attr]
    assert source.check().release.version_text == "1.1.0"  # type: ignore[union-attr]
    assert [h.status for h in server.hits("/metadata/4.root.json")][-1] == 404
    newest = Metadata[Root].from_file(str(publisher.metadata / "root.json")).signed
    assert newest.version == 3 and old_keyid not in newest.roles["root"].keyids


def test_a_new_root_not_signed_by_the_old_root_key_is_refused(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    publisher.repo("rotate-key", str(publisher.dir), "--role", "root")
    path = publisher.metadata / "2.root.json"
    md = Metadata[Root].from_file(str(path))
    new_keyid = md.signed.roles["root"].keyids[0]
    md.signatures = {k: v for k, v in md.signatures.items() if k == new_keyid}
    md.to_file(str(path))  # what an attacker holding only a key of their own could make
    with pytest.raises(UntrustedMetadataError, match="root"):
        tuf_source(server.url, publisher, tmp_path / "cache").check()


def test_a_retired_key_can_no_longer_sign(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    retired_dir = publisher.keys / "retired"
    publisher.repo("rotate-key", str(publisher.dir), "--role", "timestamp")
    source = tuf_source(server.url, publisher, tmp_path / "cache")
    source.check()
    # Whoever leaked the old timestamp key signs a "newer" timestamp with it.
    from tuf.api.metadata import Timestamp

    from trayupdater.tuf_keys import KeyStore

    (old_key,) = retired_dir.glob("timestamp-*.pem")
    thief = KeyStore(retired_dir)
    signer = thief.load(old_key.name.removesuffix(".pem"))
    path = publisher.metadata / "timestamp.json"
    md = Metadata[Timestamp].from_file(str(path))
    md.signed.version += 1
    md.signatures.clear()
    md.sign(signer)
    md.to_file(str(path))
    with pytest.raises(UntrustedMetadataError, match="signed by 0/1 keys"):
        source.check()


# --- downgrades ----------------------------------------------------------------------------------


def test_a_downgrade_is_never_offered(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    publisher.add("1.1.0")
    config = tuf_config(server.url, publisher, tmp_path / "data")
    p = pipeline(config)
    p.install(*p.require_asset(p.plan(State())))
    state = State(active="1.1.0")
    # The publisher withdraws 1.1.0 (properly signed): what is left is older than what runs.
    repository = publisher.library()
    with repository.edit_targets() as targets:
        del targets.targets[f"1.1.0/{ASSET}"]
    repository.do_snapshot()
    repository.do_timestamp()
    plan = p.plan(state)
    assert plan.latest == "1.0.0"
    assert not plan.newer and not plan.should_install
    assert plan.summary() == "up to date (1.1.0)"


# --- the network: same policy as every request ---------------------------------------------


def test_a_redirect_to_a_plain_http_host_is_not_followed(
    tmp_path: Path, publisher: Publisher
) -> None:
    extra = "location = /metadata/timestamp.json { return 302 http://updates.example.com/t.json; }"
    with (
        StaticServer(publisher.dir, tmp_path / "server", extra=extra) as server,
        pytest.raises(SourceError, match="plain http is only allowed for loopback"),
    ):
        tuf_source(server.url, publisher, tmp_path / "cache").check()


def test_too_many_requests_pauses_checks_without_asking(
    tmp_path: Path, publisher: Publisher
) -> None:
    extra = "location = /metadata/timestamp.json { add_header Retry-After 120 always; return 429; }"
    with StaticServer(publisher.dir, tmp_path / "server", extra=extra) as server:
        source = tuf_source(server.url, publisher, tmp_path / "cache")
        with pytest.raises(RateLimitedError) as caught:
            source.check()
        assert 100 < caught.value.retry_at - time.time() <= 121
        with pytest.raises(RateLimitedError):
            source.check()
        assert len(server.hits("/metadata/timestamp.json")) == 1  # the second one sent nothing


def test_server_errors_are_retried_with_back_off(tmp_path: Path, publisher: Publisher) -> None:
    extra = "location = /metadata/timestamp.json { return 502; }"
    waits: list[float] = []
    with StaticServer(publisher.dir, tmp_path / "server", extra=extra) as server:
        source = tuf_source(server.url, publisher, tmp_path / "cache", sleep=waits.append)
        with pytest.raises(SourceError, match="HTTP 502"):
            source.check()
        assert len(server.hits("/metadata/timestamp.json")) == 3
    # Exponential back-off with ±50 % jitter around 0.5 s and 1 s (TufSource's defaults).
    assert len(waits) == 2
    assert 0.25 <= waits[0] <= 0.75 and 0.5 <= waits[1] <= 1.5


def test_a_wrong_metadata_url_says_so(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    source = TufSource(
        metadata_url=server.url + "meta/",
        targets_url=server.url + "targets/",
        cache_dir=tmp_path / "cache",
        trusted_root=publisher.shipped_root,
    )
    with pytest.raises(SourceError, match=r"HTTP 404: is metadata_url"):
        source.check()


def test_an_unreachable_repository_is_a_source_error(tmp_path: Path, publisher: Publisher) -> None:
    from trayupdater.children import free_port

    source = TufSource(
        metadata_url=f"http://127.0.0.1:{free_port()}/metadata/",
        targets_url="http://127.0.0.1:1/targets/",
        cache_dir=tmp_path / "cache",
        trusted_root=publisher.shipped_root,
        sleep=lambda _s: None,
    )
    with pytest.raises(SourceError, match="cannot reach"):
        source.check()


# --- the trust anchor ----------------------------------------------------------------------------


def test_without_a_trusted_root_the_check_says_where_it_looked(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    source = tuf_source(server.url, publisher, tmp_path / "cache")
    source.trusted_root = None
    source.root_locations = [tmp_path / "nowhere" / "root.json"]
    with pytest.raises(SourceError, match=re.escape(str(tmp_path / "nowhere" / "root.json"))):
        source.check()
    assert server.hits() == []  # nothing was asked without a trust anchor


def test_a_trusted_root_that_is_not_root_metadata_is_refused(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    fake = tmp_path / "root.json"
    fake.write_bytes((publisher.metadata / "timestamp.json").read_bytes())
    source = tuf_source(server.url, publisher, tmp_path / "cache")
    source.trusted_root = fake
    with pytest.raises(SourceError, match="not valid TUF root metadata"):
        source.check()


def test_nginx_is_what_serves_here_when_installed(server: StaticServer) -> None:
    assert server.kind == ("nginx" if NGINX else "http.server")


# --- minisign on top, when a key is configured ---------------------------------------------------


@pytest.mark.parametrize("signer", ["publisher", "someone else"])
def test_a_configured_minisign_key_is_checked_over_tuf_targets(
    tmp_path: Path, publisher: Publisher, server: StaticServer, signer: str
) -> None:
    from minisign_tool import generate_keypair, public_key_line, sign

    secret, key_id, _ = generate_keypair()
    archive = publisher.archive("1.0.0")
    other, other_id, _ = generate_keypair()
    key, kid = (secret, key_id) if signer == "publisher" else (other, other_id)
    signature = archive.with_name(archive.name + ".minisig")
    signature.write_text(sign(archive.read_bytes(), key, kid))
    publisher.add("1.0.0", files=[archive, signature])
    config = tuf_config(
        server.url, publisher, tmp_path / "data", public_key=public_key_line(secret, key_id)
    )
    p = pipeline(config)
    plan = p.plan(State())
    assert plan.asset is not None and plan.asset.name == ASSET  # not the .minisig
    if signer == "publisher":
        assert p.install(*p.require_asset(plan)).version == "1.0.0"
        assert [h.status for h in server.hits(f"/targets/1.0.0/{ASSET}.minisig")] == [200]
    else:
        with pytest.raises(VerificationError):
            p.install(*p.require_asset(plan))
        assert VersionStore(config.data_dir).installed() == []


def test_two_checks_on_one_cache_at_once_do_not_trip_over_each_other(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    """``check --dry-run`` beside a running app: two users of one metadata cache."""
    import threading

    publisher.add("1.0.0")
    errors: list[BaseException] = []

    def checks() -> None:
        source = tuf_source(server.url, publisher, tmp_path / "cache")
        for _ in range(30):
            try:
                assert source.check().release is not None
            except BaseException as exc:  # collected: an assert in a thread is lost
                errors.append(exc)

    threads = [threading.Thread(target=checks) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
