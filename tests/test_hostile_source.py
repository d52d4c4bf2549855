"""A release source that lies, as an attacker would make it: the running app keeps serving.

Real parts throughout: the local GitHub-API feed serving hand-made hostile answers, the
real app with its proxy and child, second servers on other origins recording what reached
them. Each case asserts what a user relies on: the current version keeps answering, the
status says why in one sentence, nothing is installed, the worker goes on working.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from httpfiles import FileServer
from proxy_support import ScriptedBackend
from support import second_loopback_host
from test_runtime import get

from trayupdater.app import App
from trayupdater.config import Config
from trayupdater.demo import DEMO_REPO, child_archive, publish_version
from trayupdater.download import Pace, download
from trayupdater.errors import DownloadError, RateLimitedError, SourceError
from trayupdater.feed import ReleaseFeed
from trayupdater.http_client import HttpClient
from trayupdater.sources.github import GitHubSource
from trayupdater.status import Command, Phase

TOKEN = "ghp_TESTTOKEN_0123456789abcdef"
NAME = child_archive("1.1.0")[0]  # the asset name the picker takes on this machine


def good_release(
    feed: ReleaseFeed, tag: str = "v1.1.0", archive: tuple[str, bytes] | None = None
) -> dict:
    """A well-formed release JSON object the app would install (listing ``archive``)."""
    name, data = archive or child_archive(tag.lstrip("v"))
    feed.publish("other/repo", tag, {name: data})
    return feed.latest_json("other/repo")


def mutated(feed: ReleaseFeed, change: Callable[[dict], None]) -> dict:
    body = good_release(feed)
    change(body)
    return body


def _nest(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


HOSTILE: dict[str, Callable[[ReleaseFeed], object]] = {
    # Each of these stopped the update worker (and so the app) before.
    "200,000 nested [": lambda feed: _nest(200_000),
    "assets nested 100k deep": lambda feed: (
        json.dumps(good_release(feed))
        .encode()
        .replace(b'"assets": [', b'"assets": ' + b"[" * 100_000 + b"[", 1)
        .replace(b"]}", b"]" * 100_000 + b"]}", 1)
    ),
    "digest is a number": lambda feed: mutated(feed, lambda b: b["assets"][0].update(digest=12345)),
    "size is Infinity": lambda feed: json.dumps(
        mutated(feed, lambda b: b["assets"][0].update(size=float("inf")))
    ).encode(),
    "asset name climbs with /..": lambda feed: mutated(
        feed, lambda b: [a.update(name=f"{NAME}/..") for a in b["assets"]]
    ),
    "asset name is ..": lambda feed: mutated(feed, lambda b: b["assets"][0].update(name="..")),
    "asset name has a NUL": lambda feed: mutated(
        feed, lambda b: b["assets"][0].update(name=NAME + "\x00.exe")
    ),
    "assets is a string": lambda feed: mutated(feed, lambda b: b.update(assets="nope")),
    "tag is a list": lambda feed: mutated(feed, lambda b: b.update(tag_name=["v9.0.0"])),
    "prerelease is a string": lambda feed: mutated(feed, lambda b: b.update(prerelease="no")),
    "the answer is a number": lambda feed: b"12345",
    "the answer is null": lambda feed: b"null",
    "a JSON NaN": lambda feed: b'{"tag_name": "v9.0.0", "assets": [], "x": NaN}',
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_malformed_release_is_one_clear_error_and_the_app_goes_on(
    feed: ReleaseFeed, app: App, case: str
) -> None:
    feed.publish_raw(DEMO_REPO, HOSTILE[case](feed))
    status = app.updater.request(Command.CHECK)
    assert status.active == "1.0.0" and status.phase is Phase.RUNNING
    assert status.error, f"{case}: no error shown"
    assert "\n" not in status.error and len(status.error) < 400  # one sentence
    assert "Internal error" not in status.error, status.error  # handled at the boundary
    assert get(app)[:2] == (200, "1.0.0")
    assert app.store.installed() == ["1.0.0"]
    assert not any((app.config.data_dir / "downloads").iterdir())
    # The worker is alive and still does its job once the source behaves again.
    feed._raw.clear()
    publish_version(feed, "1.2.0")
    assert app.updater.request(Command.CHECK).active == "1.2.0"


def test_control_characters_from_a_release_reach_no_terminal_and_forge_no_log_line(
    feed: ReleaseFeed, app: App
) -> None:
    """A tag with escape sequences and a newline, in an error message: it used to reach
    `trayupdater status` raw (retitling, clearing the terminal) and to start a forged line
    of the log file."""
    forged = "2030-01-01 00:00:00,000 INFO trayupdater: updated 1.0.0 -> 9.9.9"
    body = good_release(feed)
    body.update(tag_name=f"v9\x1b]0;PWNED\x07\x1b[2J\n{forged}", draft="no")
    feed.publish_raw(DEMO_REPO, body)
    status = app.updater.request(Command.CHECK)
    assert status.error and "\x1b" not in status.error and "\n" not in status.error
    assert status.active == "1.0.0"
    log_text = (app.config.logs_dir / "trayupdater.log").read_text(errors="replace")
    assert "\x1b" not in log_text
    assert not any(line.startswith(forged[:10]) for line in log_text.splitlines())


def test_a_bug_in_a_check_is_reported_and_the_worker_goes_on(
    app: App, feed: ReleaseFeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever escapes validation (here: a bug planted in the pipeline) must not end the
    worker: logged once, counted as internal, shown, and the next check works."""
    real_plan = app.updater.pipeline.plan

    def broken(state: object) -> object:
        raise KeyError("planted bug")

    monkeypatch.setattr(app.updater.pipeline, "plan", broken)
    status = app.updater.request(Command.CHECK)
    assert status.phase is Phase.RUNNING and status.active == "1.0.0"
    assert status.error and status.error.startswith("Internal error while handling check")
    metrics = app.metrics.render()[0].decode()
    assert 'trayupdater_failures_total{reason="internal"} 1.0' in metrics
    assert get(app)[:2] == (200, "1.0.0")
    monkeypatch.setattr(app.updater.pipeline, "plan", real_plan)
    publish_version(feed, "1.1.0")
    assert app.updater.request(Command.CHECK).active == "1.1.0"


# --- the token stays with the API's origin -------------------------------------------------------


def test_token_is_not_sent_to_an_asset_url_on_another_origin(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """A release whose asset API URL names another host must not collect the token."""
    name, data = child_archive("1.1.0")
    with FileServer({"/asset": data}, host=second_loopback_host()) as elsewhere:
        # The same bytes the release lists: two archives built a second apart differ in size.
        body = good_release(feed, archive=(name, data))
        for asset in body["assets"]:
            asset["url"] = elsewhere.url("/asset")
        feed.publish_raw("acme/app", body)
        source = GitHubSource("acme/app", api_url=feed.url, token=TOKEN)
        release = source.check().release
        assert feed.stats.auth_headers[-1] == f"Bearer {TOKEN}"  # the API itself gets it
        asset = release.asset(name)
        _url, headers = source.download_headers(asset)
        assert "Authorization" not in headers
        result = source.fetch(release, asset, tmp_path / "asset", max_bytes=10**8, pace=Pace())
        assert result.size == len(data)
        (hit,) = elsewhere.hits
        assert "authorization" not in hit.headers and TOKEN not in str(hit.headers)


def test_same_port_other_scheme_or_port_is_another_origin(feed: ReleaseFeed) -> None:
    from trayupdater.http_client import origin

    assert origin("https://api.github.com/x") == origin("https://API.github.com:443/y")
    assert origin("https://api.github.com/x") != origin("http://api.github.com/x")
    assert origin("https://api.github.com/x") != origin("https://api.github.com:8443/x")
    assert origin("https://api.github.com/x") != origin("https://uploads.github.com/x")


def test_browser_download_url_never_gets_the_token(feed: ReleaseFeed) -> None:
    body = good_release(feed)
    for asset in body["assets"]:
        asset["url"] = ""  # no API URL: only the public browser_download_url is left
    feed.publish_raw("acme/app", body)
    source = GitHubSource("acme/app", api_url=feed.url, token=TOKEN)
    release = source.check().release
    url, headers = source.download_headers(release.assets[0])
    assert "/download/" in url and headers == {}


# --- every redirect hop is checked before a byte is sent to it ---------------------------------


def _non_loopback_address() -> str:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
        address = probe.getsockname()[0]
    except OSError:
        address = ""
    finally:
        probe.close()
    if not address or address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")
    return address


def _download_with_token(client: HttpClient, url: str, tmp_path: Path) -> None:
    """An asset download as the app makes one: ``url`` with the token."""
    download(
        client,
        url,
        tmp_path / "a",
        headers={"Authorization": f"Bearer {TOKEN}"},
        max_bytes=10_000,
    )


def test_redirect_to_plain_http_elsewhere_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    """Plain HTTP is only for loopback: a 302 to a plain-http host on the network must be
    refused without one byte going to it (it would see the Range, the path, maybe more)."""
    with (
        FileServer(host=_non_loopback_address()) as elsewhere,
        FileServer({"/asset": b"x" * 1000}) as api,
    ):
        elsewhere.files["/blob"] = b"evil"
        api.faults.redirects["/asset"] = elsewhere.url("/blob")
        with pytest.raises(DownloadError, match="plain http is only allowed for loopback"):
            _download_with_token(HttpClient(), api.url("/asset"), tmp_path)
        assert elsewhere.hits == []  # refused before it was asked
        assert len(api.hits) == 1


def test_a_redirect_loop_ends_after_ten_hops(tmp_path: Path) -> None:
    with FileServer() as server:
        for i in range(20):
            server.faults.redirects[f"/r{i}"] = server.url(f"/r{i + 1}")
        with pytest.raises(DownloadError, match="more than 10 redirects"):
            download(HttpClient(), server.url("/r0"), tmp_path / "a", max_bytes=10_000)
        assert len(server.hits) == 11  # the first request and ten hops, no more


# --- answers are read with a cap after decoding ------------------------------------------------


class _BombHandler(http.server.BaseHTTPRequestHandler):
    body = gzip.compress(b"\0" * (400 * 1024 * 1024), compresslevel=9)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


def test_a_gzip_bomb_api_answer_is_refused_without_using_the_memory(tmp_path: Path) -> None:
    """0.4 MB of gzip that expands to 400 MB: refused at the cap, in a process whose peak
    memory we can read on its own."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BombHandler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        config = tmp_path / "none.toml"
        config.write_text("")
        started = time.monotonic()
        # The CLI in a process of its own, reporting its own peak (VmHWM starts afresh at
        # exec; ru_maxrss would include the forking test process).
        wrapper = (
            "import sys; from trayupdater.cli import main; code = main(sys.argv[1:]); "
            "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')), "
            "file=sys.stderr); sys.exit(code)"
        )
        args = ["--config", str(config), "--api-url", api, "--repo", "acme/app"]
        args += ["--data-dir", str(tmp_path / "data"), "check", "--dry-run"]
        result = subprocess.run(
            [sys.executable, "-c", wrapper, *args], capture_output=True, text=True, timeout=120
        )
        took = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1, result.stderr
    assert "larger than 8388608 bytes; refused" in result.stderr
    peak_mib = int(result.stderr.split("VmHWM:")[1].split()[0]) / 1024  # kB
    print(f"gzip bomb: refused after {took:.2f} s, peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 150  # before the cap it grew to 1.6 GB


def test_source_answer_cap_applies_to_the_text_assets_too(feed: ReleaseFeed) -> None:
    with FileServer({"/sums": b"a" * (2 * 1024 * 1024)}) as files:
        body = good_release(feed)
        body["assets"].append(
            {
                "name": "SHA256SUMS",
                "url": files.url("/sums"),
                "size": 1,
                "browser_download_url": files.url("/sums"),
            }
        )
        feed.publish_raw("acme/app", body)
        source = GitHubSource("acme/app", api_url=feed.url)
        release = source.check().release
        with pytest.raises(SourceError, match="larger than"):
            source.fetch_text(release.asset("SHA256SUMS"))


# --- archive bombs are refused as soon as they pass the limit ---------------------------------


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _tar_bomb(name: str, size: int) -> bytes:
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as packed,
        tarfile.open(fileobj=packed, mode="w|") as tar,
    ):
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o755
        tar.addfile(info, io.BufferedReader(_Zeros(size), 1 << 20))
    return out.getvalue()


def test_an_archive_bomb_is_refused_at_the_derived_limit_and_the_space_freed(
    feed: ReleaseFeed, app: App
) -> None:
    """600 MiB of zeros in a 0.6 MB archive: with the default limit (64 x the archive, at
    least 256 MiB) it is refused once 256 MiB are written, not after 2 GiB."""
    name = child_archive("1.1.0")[0]
    bomb = _tar_bomb("simple-server", 600 * 1024 * 1024)
    feed.publish(DEMO_REPO, "v1.1.0", {name: bomb})
    started = time.monotonic()
    status = app.updater.request(Command.CHECK)
    took = time.monotonic() - started
    assert status.active == "1.0.0" and status.phase is Phase.RUNNING
    assert status.error and "more than 268435456 bytes (a bomb?)" in status.error
    print(f"archive bomb of {len(bomb)} bytes refused after {took:.1f} s")
    assert get(app)[:2] == (200, "1.0.0")
    versions = app.config.data_dir / "versions"
    assert sorted(p.name for p in versions.iterdir()) == ["1.0.0"]  # no half-unpacked folder
    assert not any((app.config.data_dir / "downloads").iterdir())


def test_extract_limit_follows_the_config() -> None:
    config = Config(max_download_bytes=1024**3)
    assert config.extract_limit(10 * 1024**2) == 640 * 1024**2  # 64 x the archive
    assert config.extract_limit(1024) == 256 * 1024**2  # the floor for small archives
    assert config.extract_limit(100 * 1024**2) == 4 * 1024**3  # capped at 4 x the download cap
    assert Config(max_extract_bytes=5000).extract_limit(10**9) == 5000  # explicit wins


def test_https_redirected_to_plain_http_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    """A real TLS server answering 302 to plain HTTP (loopback, which alone would be
    allowed): the downgrade is refused and the plain server never sees the request."""
    from http.server import BaseHTTPRequestHandler

    from tls import https_server, make_ca

    ca = make_ca(tmp_path / "ca")
    with FileServer({"/blob": b"plain"}) as plain:

        class Redirect(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", plain.url("/blob"))
                self.send_header("Content-Length", "0")
                self.end_headers()

        with https_server(ca, Redirect) as base:
            client = HttpClient(verify=str(ca.cert))
            with pytest.raises(DownloadError, match="redirected to plain HTTP; refused"):
                _download_with_token(client, base + "/asset", tmp_path)
        assert plain.hits == []


# --- one URL, one host: what the policy checks is where the request goes ---------------------


def _ambiguous(elsewhere: str, home: str, path: str) -> str:
    """``http://ELSEWHERE\\@HOME/path``: urllib.parse reads HOME (the host after the last
    ``@``), while requests/urllib3, which connect, stop the host at the backslash."""
    return f"http://{elsewhere}\\@{home}{path}"


def test_an_asset_url_with_a_backslash_before_the_api_host_never_gets_the_token(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    name, data = child_archive("1.1.0")
    with FileServer({"/asset": data}) as elsewhere:
        body = good_release(feed, archive=(name, data))
        api_host = feed.url.split("://", 1)[1].rstrip("/")
        for asset in body["assets"]:
            asset["url"] = _ambiguous(
                f"127.0.0.1:{elsewhere.port}", api_host, "/repos/acme/app/releases/assets/1"
            )
        feed.publish_raw("acme/app", body)
        source = GitHubSource("acme/app", api_url=feed.url, token=TOKEN, retries=0)
        release = source.check().release
        with pytest.raises(DownloadError, match="backslash"):
            source.fetch(
                release, release.asset(name), tmp_path / "asset", max_bytes=10**8, pace=Pace()
            )
        assert elsewhere.hits == []  # refused before anything was sent


def test_a_redirect_back_to_the_api_host_behind_a_backslash_does_not_collect_the_token(
    tmp_path: Path,
) -> None:
    """API -> storage (token dropped) -> ``http://STORAGE\\@API/x``: judged by the host that
    would be connected to, that hop is not the API's origin either; it is refused."""
    with FileServer({"/x": b"evil"}) as storage, FileServer({"/asset": b"x" * 100}) as api:
        storage_host, api_host = f"127.0.0.1:{storage.port}", f"127.0.0.1:{api.port}"
        api.faults.redirects["/asset"] = storage.url("/blob")
        storage.faults.redirects["/blob"] = _ambiguous(storage_host, api_host, "/x")
        with pytest.raises(DownloadError, match="backslash"):
            _download_with_token(HttpClient(), api.url("/asset"), tmp_path)
        assert [h.path for h in storage.hits] == ["/blob"]
        assert all(TOKEN not in str(h.headers) for h in storage.hits)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com\\@127.0.0.1/x",  # plain HTTP to example.com, read as loopback
        "https://example.com\\@127.0.0.1/x",
        "http://127.0.0.1/a b",
        "http://127.0.0.1/\x00",
        "http://127.0.0.1\t.example.com/x",
    ],
)
def test_urls_whose_host_parsers_may_disagree_on_are_refused(url: str) -> None:
    from trayupdater.urls import insecure_reason

    assert insecure_reason(url)


# --- a server that sends a byte now and then is cut off by a deadline ---------------------------


def test_an_api_answer_that_trickles_is_given_up_at_its_deadline(feed: ReleaseFeed) -> None:
    """One byte every 0.2 s keeps every read inside its timeout; only a deadline for the
    whole answer stops it (before, the check ran for as long as the server liked)."""
    body = json.dumps(good_release(feed)).encode()
    with FileServer({"/repos/acme/app/releases/latest": body}) as slow:
        slow.faults.content_type = "application/json"
        slow.faults.drip = (1, 0.2)
        source = GitHubSource("acme/app", api_url=slow.url(""), retries=0, answer_deadline=1.0)
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"took more than 1 s to arrive"):
            source.check()
        assert time.monotonic() - started < 5


# --- numbers in headers: ASCII digits or nothing -----------------------------------------------


def _canned(answer: bytes) -> ScriptedBackend:
    """A loopback server answering every request with the same raw bytes, then closing."""

    def script(conn: socket.socket, requests: Callable[[], bytes | None]) -> None:
        if requests() is not None:
            conn.sendall(answer)

    return ScriptedBackend(script)


def _url(server: ScriptedBackend) -> str:
    return f"http://127.0.0.1:{server.backend.port}"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: \xb2\r\n",  # a superscript two
        b"HTTP/1.1 403 Forbidden\r\nX-RateLimit-Remaining: 0\r\nX-RateLimit-Reset: \xb9\xb2\r\n",
    ],
)
def test_a_rate_limit_header_with_non_ascii_digits_is_still_a_rate_limit(answer: bytes) -> None:
    """``"²".isdigit()`` is True and ``int("²")`` raises: that ValueError used to escape as
    an "internal error", and the back-off was skipped."""
    server = _canned(answer + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    try:
        source = GitHubSource("acme/app", api_url=_url(server), retries=0)
        with pytest.raises(RateLimitedError, match="rate limit reached"):
            source.check()
        assert source.blocked_until > time.time() + 30  # the one-minute fallback applies
    finally:
        server.close()


def test_a_download_content_length_with_non_ascii_digits_is_not_a_length(tmp_path: Path) -> None:
    server = _canned(b"HTTP/1.1 200 OK\r\nContent-Length: \xb3\r\nConnection: close\r\n\r\nabc")
    try:
        result = download(HttpClient(), _url(server) + "/asset", tmp_path / "a", max_bytes=1000)
        assert result.size == 3  # the body ends with the connection, as without a length
    finally:
        server.close()


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        ({"draft": True}, "answered a draft"),
        ({"draft": "false"}, "malformed release"),
        ({"prerelease": True}, None),  # not for the stable channel: nothing newer
    ],
)
def test_latest_answering_a_draft_or_prerelease_installs_nothing(
    feed: ReleaseFeed, flags: dict, error: str | None
) -> None:
    """GitHub's /releases/latest never answers drafts or pre-releases; a server that does
    is checked as the release list is, instead of being installed from."""
    body = good_release(feed)
    body.update(flags)
    feed.publish_raw("acme/app", body)
    source = GitHubSource("acme/app", api_url=feed.url, retries=0)
    if error is None:
        assert source.check().release is None
    else:
        with pytest.raises(SourceError, match=error):
            source.check()


def _dripping_head() -> ScriptedBackend:
    """Answers with a status line, then a header a byte every 0.2 s, never finishing it:
    every read comes within its timeout."""

    def script(conn: socket.socket, requests: Callable[[], bytes | None]) -> None:
        if requests() is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(300):
                conn.sendall(b"x")
                time.sleep(0.2)

    return ScriptedBackend(script)


def test_an_api_answer_whose_headers_drip_is_given_up_at_its_deadline() -> None:
    server = _dripping_head()
    try:
        source = GitHubSource(
            "acme/app", api_url=_url(server), retries=0, timeout=(5.0, 5.0), answer_deadline=1.0
        )
        started = time.monotonic()
        with pytest.raises(SourceError, match="took more than 1 s"):
            source.check()
        assert time.monotonic() - started < 4
    finally:
        server.close()


def test_a_download_whose_headers_drip_ends_at_its_deadline(tmp_path: Path) -> None:
    server = _dripping_head()
    try:
        started = time.monotonic()
        with pytest.raises(DownloadError, match="not finished after 1 s"):
            download(
                HttpClient(),
                _url(server) + "/asset",
                tmp_path / "a",
                max_bytes=1000,
                pace=Pace(timeout=5.0, deadline=1.0, min_rate=0),
            )
        assert time.monotonic() - started < 4
    finally:
        server.close()
