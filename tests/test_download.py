"""download(): real HTTP on loopback, with a server that misbehaves on purpose."""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from httpfiles import FileServer
from support import second_loopback_host

from trayupdater.download import (
    DownloadResult,
    download,
    part_path,
    redact_url,
)
from trayupdater.errors import DownloadError

PAYLOAD = os.urandom(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
MAX = 10 * 1024 * 1024
TOKEN = "ghp_SECRETTOKEN0123456789"


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer({"/asset": PAYLOAD}) as srv:
        yield srv


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False  # no proxy or netrc from the environment for loopback tests
    yield s
    s.close()


def parts(dest: Path) -> list[Path]:
    """The unfinished downloads beside ``dest``, whatever they are parts of."""
    return sorted(dest.parent.glob(glob.escape(dest.name) + ".*.part"))


def the_part(dest: Path) -> Path:
    (part,) = parts(dest)
    return part


def fetch(session: requests.Session, url: str, dest: Path, **kwargs: object) -> DownloadResult:
    kwargs.setdefault("max_bytes", MAX)
    kwargs.setdefault("timeout", 10.0)
    return download(session, url, dest, **kwargs)  # type: ignore[arg-type]


def test_plain_download_hashes_and_reports_progress(server, session, tmp_path):
    seen: list[tuple[int, int | None]] = []
    dest = tmp_path / "asset.tar.gz"
    result = fetch(
        session,
        server.url("/asset"),
        dest,
        progress=lambda done, total: seen.append((done, total)),
        expected_size=len(PAYLOAD),
    )
    assert result == DownloadResult(path=dest, size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD
    assert not parts(dest)
    assert seen[0] == (0, len(PAYLOAD))
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    (hit,) = server.hits
    assert "range" not in hit.headers
    assert hit.headers["accept-encoding"] == "identity"


def test_cut_connection_keeps_part_and_next_call_resumes(server, session, tmp_path):
    dest = tmp_path / "asset"
    server.faults.cut_after = 200_000
    with pytest.raises(DownloadError, match=r"kept to resume|connection ended"):
        fetch(session, server.url("/asset"), dest, expected_size=len(PAYLOAD))
    kept = the_part(dest).stat().st_size
    assert 0 < kept <= 200_000
    assert the_part(dest).read_bytes() == PAYLOAD[:kept]
    assert not dest.exists()

    server.faults.cut_after = None
    result = fetch(session, server.url("/asset"), dest, expected_size=len(PAYLOAD))
    assert result.sha256 == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    resumed = server.hits[-1]
    assert resumed.headers["range"] == f"bytes={kept}-"
    assert resumed.status == 206
    assert resumed.body_sent == len(PAYLOAD) - kept


def test_a_cut_download_is_never_continued_with_another_releases_bytes(server, session, tmp_path):
    """Asset names carry no version (``simple-server_Linux_x86_64.tar.gz``): a part cut
    while fetching 1.1.0 must not be resumed with 1.2.0's tail when 1.2.0 comes out."""
    newer = bytes(reversed(PAYLOAD))
    server.files["/v1.2.0/asset"] = newer
    dest = tmp_path / "asset"
    server.faults.cut_after = 100_000
    with pytest.raises(DownloadError):
        fetch(session, server.url("/asset"), dest, expected_size=len(PAYLOAD))
    server.faults.cut_after = None
    result = fetch(session, server.url("/v1.2.0/asset"), dest, expected_size=len(newer))
    assert dest.read_bytes() == newer
    assert result.sha256 == hashlib.sha256(newer).hexdigest()
    assert "range" not in server.hits[-1].headers
    assert parts(dest) == []  # the older release's part is gone too


def test_chunked_body_cut_before_its_end_is_an_error_and_resumable(server, session, tmp_path):
    dest = tmp_path / "asset"
    server.faults.chunked = True
    server.faults.cut_after = 100_000
    with pytest.raises(DownloadError):
        fetch(session, server.url("/asset"), dest)
    assert parts(dest)
    server.faults.cut_after = None
    assert fetch(session, server.url("/asset"), dest).sha256 == PAYLOAD_SHA


def test_close_delimited_206_that_ends_early_is_caught_and_resumed(server, session, tmp_path):
    # No Content-Length: only the Content-Range total tells that bytes are missing.
    dest = tmp_path / "asset"
    part_path(dest, server.url("/asset")).write_bytes(PAYLOAD[:50_000])
    server.faults.no_length = True
    server.faults.cut_after = 100_000
    with pytest.raises(DownloadError, match="ended after 150000 of 300000 bytes"):
        fetch(session, server.url("/asset"), dest)
    assert the_part(dest).read_bytes() == PAYLOAD[:150_000]
    server.faults.cut_after = None
    assert fetch(session, server.url("/asset"), dest).sha256 == PAYLOAD_SHA
    assert server.hits[-1].headers["range"] == "bytes=150000-"


def test_close_delimited_body_shorter_than_release_size_keeps_part(server, session, tmp_path):
    dest = tmp_path / "asset"
    server.faults.no_length = True
    server.faults.cut_after = 100_000
    seen: list[tuple[int, int | None]] = []
    with pytest.raises(DownloadError, match="ended after 100000 of 300000 bytes"):
        fetch(
            session,
            server.url("/asset"),
            dest,
            expected_size=len(PAYLOAD),
            progress=lambda d, t: seen.append((d, t)),
        )
    assert the_part(dest).stat().st_size == 100_000
    assert seen[-1] == (100_000, len(PAYLOAD))  # the release's size serves as the total


def test_close_delimited_body_without_any_size_is_accepted(server, session, tmp_path):
    server.faults.no_length = True
    seen: list[tuple[int, int | None]] = []
    result = fetch(
        session, server.url("/asset"), tmp_path / "a", progress=lambda d, t: seen.append((d, t))
    )
    assert result.sha256 == PAYLOAD_SHA
    assert seen[-1] == (len(PAYLOAD), None)


def test_server_ignoring_range_restarts_from_zero(server, session, tmp_path):
    dest = tmp_path / "asset"
    part_path(dest, server.url("/asset")).write_bytes(PAYLOAD[:50_000])
    server.faults.ignore_range = True
    result = fetch(session, server.url("/asset"), dest)
    assert result.sha256 == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    (hit,) = server.hits
    assert hit.headers["range"] == "bytes=50000-"
    assert hit.status == 200


def test_stale_part_with_wrong_bytes_is_replaced_when_server_sends_whole_file(
    server, session, tmp_path
):
    dest = tmp_path / "asset"
    part_path(dest, server.url("/asset")).write_bytes(b"X" * 1000)  # not a prefix of the file
    server.faults.ignore_range = True
    assert fetch(session, server.url("/asset"), dest).sha256 == PAYLOAD_SHA


@pytest.mark.parametrize("wrong_start", [0, 60_000])
def test_wrong_content_range_is_not_trusted(server, session, tmp_path, wrong_start):
    dest = tmp_path / "asset"
    part_path(dest, server.url("/asset")).write_bytes(PAYLOAD[:50_000])
    server.faults.range_start = wrong_start
    result = fetch(session, server.url("/asset"), dest)
    assert result.sha256 == PAYLOAD_SHA
    first, second = server.hits
    assert first.status == 206 and first.headers["range"] == "bytes=50000-"
    assert "range" not in second.headers  # started again from zero
    assert second.status == 200


def test_complete_part_answered_416_is_accepted_when_size_matches(server, session, tmp_path):
    dest = tmp_path / "asset"
    part_path(dest, server.url("/asset"), len(PAYLOAD)).write_bytes(PAYLOAD)
    seen: list[tuple[int, int | None]] = []
    result = fetch(
        session,
        server.url("/asset"),
        dest,
        expected_size=len(PAYLOAD),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert result.sha256 == PAYLOAD_SHA and result.size == len(PAYLOAD)
    assert seen == [(len(PAYLOAD), len(PAYLOAD))]
    (hit,) = server.hits
    assert hit.status == 416 and hit.body_sent == 0


def test_complete_part_without_expected_size_uses_416_total(server, session, tmp_path):
    dest = tmp_path / "asset"
    part_path(dest, server.url("/asset")).write_bytes(PAYLOAD)
    assert fetch(session, server.url("/asset"), dest).sha256 == PAYLOAD_SHA
    assert [h.status for h in server.hits] == [416]


def test_overlong_part_answered_416_restarts(server, session, tmp_path):
    dest = tmp_path / "asset"
    part_path(dest, server.url("/asset")).write_bytes(PAYLOAD + b"trailing junk")
    assert fetch(session, server.url("/asset"), dest).sha256 == PAYLOAD_SHA
    assert [h.status for h in server.hits] == [416, 200]


def test_part_longer_than_expected_size_is_dropped_before_asking(server, session, tmp_path):
    dest = tmp_path / "asset"
    part_path(dest, server.url("/asset"), len(PAYLOAD)).write_bytes(PAYLOAD + b"junk")
    fetch(session, server.url("/asset"), dest, expected_size=len(PAYLOAD))
    (hit,) = server.hits
    assert "range" not in hit.headers


def test_content_length_over_limit_is_refused_before_the_body(server, session, tmp_path):
    dest = tmp_path / "asset"
    with pytest.raises(DownloadError, match="more than the limit of 100000 bytes"):
        fetch(session, server.url("/asset"), dest, max_bytes=100_000)
    assert not parts(dest) and not dest.exists()


def test_streamed_bytes_over_limit_are_refused_and_part_deleted(server, session, tmp_path):
    dest = tmp_path / "asset"
    server.faults.chunked = True  # no Content-Length to refuse on up front
    with pytest.raises(DownloadError, match="more than 100000 bytes"):
        fetch(session, server.url("/asset"), dest, max_bytes=100_000)
    assert not parts(dest) and not dest.exists()


def test_expected_size_over_limit_is_refused_without_a_request(server, session, tmp_path):
    with pytest.raises(DownloadError, match="limit"):
        fetch(session, server.url("/asset"), tmp_path / "a", max_bytes=1000, expected_size=5000)
    assert server.hits == []


def test_size_other_than_the_release_lists_is_an_error(server, session, tmp_path):
    dest = tmp_path / "asset"
    with pytest.raises(DownloadError, match="release lists 1234 bytes"):
        fetch(session, server.url("/asset"), dest, expected_size=1234)
    assert not parts(dest) and not dest.exists()


def test_stalled_body_times_out_and_keeps_part(server, session, tmp_path):
    dest = tmp_path / "asset"
    server.faults.hang_after = 100_000
    started = time.monotonic()
    with pytest.raises(DownloadError, match="kept to resume"):
        fetch(session, server.url("/asset"), dest, timeout=0.5)
    assert time.monotonic() - started < 15
    assert parts(dest)


def test_no_answer_at_all_times_out(session, tmp_path):
    # A listening socket nobody accepts on: the connection is made, no reply ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/asset"
        started = time.monotonic()
        with pytest.raises(DownloadError, match="request failed"):
            fetch(session, url, tmp_path / "asset", timeout=0.5)
        assert time.monotonic() - started < 15


def test_refused_connection_message_hides_query_and_token(session, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/asset?X-Amz-Signature=SIGSECRET"
    with pytest.raises(DownloadError) as info:
        fetch(session, url, tmp_path / "a", headers={"Authorization": f"token {TOKEN}"})
    assert f"127.0.0.1:{port}/asset" in str(info.value)
    assert "SIGSECRET" not in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.parametrize("status", [404, 500, 403])
def test_error_status_names_status_and_url_but_not_secrets(server, session, tmp_path, status):
    dest = tmp_path / "asset"
    part_path(dest, server.url("/asset") + "?sig=QUERYSECRET").write_bytes(PAYLOAD[:1000])
    server.faults.status = status
    url = server.url("/asset") + "?sig=QUERYSECRET"
    with pytest.raises(DownloadError) as info:
        fetch(session, url, dest, headers={"Authorization": f"token {TOKEN}"})
    message = str(info.value)
    assert f"HTTP {status}" in message and server.url("/asset") in message
    assert TOKEN not in message and "QUERYSECRET" not in message
    assert the_part(dest).read_bytes() == PAYLOAD[:1000]  # kept for a later resume


def test_missing_file_is_404(server, session, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(session, server.url("/nothing"), tmp_path / "x")


def test_error_after_redirect_names_both_urls(server, session, tmp_path):
    server.faults.redirects["/asset"] = server.url("/gone") + "?sig=abc"
    with pytest.raises(DownloadError) as info:
        fetch(session, server.url("/asset"), tmp_path / "x")
    gone, asset = server.url("/gone"), server.url("/asset")
    assert str(info.value) == f"{gone} (redirected from {asset}) answered HTTP 404 Not Found"


@pytest.mark.parametrize("target_host", ["127.0.0.2", "localhost"])
@pytest.mark.parametrize("token_in", ["headers", "session"])
def test_cross_host_redirect_does_not_forward_the_token(session, tmp_path, target_host, token_in):
    bind = second_loopback_host() if target_host == "127.0.0.2" else "127.0.0.1"
    with FileServer(host="127.0.0.1") as api, FileServer({"/blob": PAYLOAD}, host=bind) as storage:
        api.faults.redirects["/asset"] = storage.url("/blob", host=target_host) + "?sig=abc"
        auth = {"Authorization": f"token {TOKEN}", "Accept": "application/octet-stream"}
        if token_in == "session":
            session.headers.update(auth)
            result = fetch(session, api.url("/asset"), tmp_path / "a")
        else:
            result = fetch(session, api.url("/asset"), tmp_path / "a", headers=auth)
        assert result.sha256 == PAYLOAD_SHA
        (asked,) = api.hits
        (served,) = storage.hits
        assert asked.headers["authorization"] == f"token {TOKEN}"  # the capture works
        assert "authorization" not in served.headers
        assert TOKEN not in str(served.headers)


def test_same_host_redirect_keeps_the_token_and_resume_range(server, session, tmp_path):
    # The control case for the test above: the same host may see the token again.
    server.files["/blob"] = PAYLOAD
    server.faults.redirects["/asset"] = server.url("/blob")
    dest = tmp_path / "a"
    part_path(dest, server.url("/asset")).write_bytes(PAYLOAD[:1000])
    fetch(session, server.url("/asset"), dest, headers={"Authorization": f"token {TOKEN}"})
    assert dest.read_bytes() == PAYLOAD
    redirect, blob = server.hits
    assert redirect.status == 302
    assert blob.headers["authorization"] == f"token {TOKEN}"
    assert blob.headers["range"] == "bytes=1000-" and blob.status == 206


def test_cross_host_redirect_carries_range_for_resume(session, tmp_path):
    host = second_loopback_host()
    with FileServer() as api, FileServer({"/blob": PAYLOAD}, host=host) as storage:
        api.faults.redirects["/asset"] = storage.url("/blob")
        dest = tmp_path / "a"
        part_path(dest, api.url("/asset")).write_bytes(PAYLOAD[:70_000])
        result = fetch(session, api.url("/asset"), dest, headers={"Authorization": TOKEN})
        assert result.sha256 == PAYLOAD_SHA
        (served,) = storage.hits
        assert served.headers["range"] == "bytes=70000-"
        assert served.body_sent == len(PAYLOAD) - 70_000


def test_redact_url_drops_credentials_and_query():
    assert redact_url("https://u:p@example.test:8443/a/b?x=1#f") == "https://example.test:8443/a/b"


@pytest.mark.parametrize(
    "url", ["http://example.com/tool.tar.gz", "ftp://example.com/tool.tar.gz", "file:///etc/passwd"]
)
def test_only_https_or_loopback_urls_are_fetched(tmp_path: Path, url: str) -> None:
    """Checked before any request is sent: an asset URL in a release must not leak a token
    over plain HTTP or read local files."""
    session = requests.Session()
    session.get = None  # type: ignore[method-assign]  # proves nothing was sent
    with pytest.raises(DownloadError, match="refused"):
        download(
            session, url, tmp_path / "x", headers={"Authorization": "Bearer t"}, max_bytes=1000
        )
