"""The networks fleets sit behind, with real parts: a CA made with openssl and HTTPS servers
signed by it (a company doing TLS inspection), a real CONNECT proxy on loopback recording
what it saw (tests/forward_proxy.py), a real static server and the GitHub-speaking feed.

The test box sets ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE`` and friends; every test here
starts from an environment where they say what the test means (``net_env``), so a result
never comes from the box's settings. "The system trust store" on Linux is OpenSSL's:
``SSL_CERT_FILE`` names it, exactly as ``update-ca-certificates`` output would be found.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
import truststore
from forward_proxy import ForwardProxy
from raw_server import RawServer
from static_server import StaticServer
from tls import CA, https_server, make_ca
from tuf_support import Publisher, tuf_source

from trayupdater import network
from trayupdater.cancel import CancelledError, Interrupt
from trayupdater.config import describe, load_config
from trayupdater.demo import DEMO_REPO, asset_name, child_archive
from trayupdater.download import Pace, download
from trayupdater.errors import ConfigError, DownloadError, SourceError
from trayupdater.feed import ReleaseFeed
from trayupdater.http_client import HttpClient, HttpFailed, HttpUntrusted
from trayupdater.network import Network, NetworkSettingError
from trayupdater.platforms import Platform
from trayupdater.sources.github import GitHubSource

TOKEN = "ghp_" + "s3cr3t" * 6
PROXY_PASSWORD = "pr0xy-pa55"
SYSTEM_BUNDLE = ssl.get_default_verify_paths().openssl_cafile
ENV_NAMES = (
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY",
)  # fmt: skip


@pytest.fixture
def net_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No CA or proxy variable from the box; the system store is the distribution's."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", SYSTEM_BUNDLE)
    network._tls_context.cache_clear()  # a shared context keeps what it loaded
    yield monkeypatch
    network._tls_context.cache_clear()


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return make_ca(tmp_path / "ca", hosts=["api.github.test", "updates.example.test"])


def system_store_with(ca: CA, folder: Path) -> Path:
    """The system bundle with the company CA added, as IT would install it."""
    bundle = folder / "system-with-company-ca.pem"
    bundle.write_text(Path(SYSTEM_BUNDLE).read_text() + "\n" + ca.cert.read_text())
    return bundle


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def files_handler(folder: Path) -> functools.partial[QuietFiles]:
    return functools.partial(QuietFiles, directory=str(folder))


def get(client: HttpClient, url: str) -> bytes:
    response = client.get(url, timeout=(5, 10))
    body = response.content
    response.close()
    return body


# --- trust: the system store, plus [network] ca_bundle ----------------------------------------


def test_a_company_ca_in_the_system_store_is_trusted_and_requests_env_is_not_what_decides(
    tmp_path: Path, ca: CA, net_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello").write_text("hello")
    with https_server(ca, files_handler(tmp_path / "www")) as base:
        # requests' variable names the company CA, the system store does not: refused.
        net_env.setenv("REQUESTS_CA_BUNDLE", str(ca.cert))
        net_env.setenv("CURL_CA_BUNDLE", str(ca.cert))
        with pytest.raises(HttpUntrusted) as refused:
            get(HttpClient(), base + "/hello")
        message = str(refused.value)
        assert "looks like TLS inspection" in message and "[network] ca_bundle" in message
        assert "not trusted" in message

        # IT installs the CA in the system store: trusted, whatever requests' variable says.
        net_env.setenv("SSL_CERT_FILE", str(system_store_with(ca, tmp_path)))
        net_env.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)
        network._tls_context.cache_clear()
        client = HttpClient()
        assert get(client, base + "/hello") == b"hello"
        pools = client.session.get_adapter(base).poolmanager.pools
        keys = pools.keys()  # a RecentlyUsedContainer: no plain iteration
        assert [type(key.key_ssl_context) for key in keys] == [truststore.SSLContext]


def test_ca_bundle_adds_to_the_system_store_instead_of_replacing_it(
    tmp_path: Path, ca: CA, net_env: pytest.MonkeyPatch
) -> None:
    other = make_ca(tmp_path / "other-ca")
    net_env.setenv("SSL_CERT_FILE", str(system_store_with(other, tmp_path)))
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "x").write_text("x")
    client = HttpClient(network=Network(ca_bundle=ca.cert))
    with https_server(ca, files_handler(tmp_path / "www")) as company:
        assert get(client, company + "/x") == b"x"  # the named bundle's CA
    with https_server(other, files_handler(tmp_path / "www")) as public:
        assert get(client, public + "/x") == b"x"  # and the system store's


def test_a_ca_bundle_that_is_not_pem_or_is_missing_is_a_clear_error(
    tmp_path: Path, net_env: pytest.MonkeyPatch
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(NetworkSettingError, match=r"cannot use \[network\] ca_bundle .*PEM"):
        HttpClient(network=Network(ca_bundle=junk))
    none = tmp_path / "none.toml"
    none.write_text("")
    with pytest.raises(ConfigError, match=r"ca_bundle.*not a file"):
        load_config(none, env={}, overrides={"ca_bundle": str(tmp_path / "missing.pem")})
    config = tmp_path / "c.toml"
    config.write_text('[network]\nca_bundle = "company.pem"\nproxy = "http://u:pw@proxy:3128"\n')
    (tmp_path / "company.pem").write_text("")
    loaded = load_config(config, env={})
    assert loaded.ca_bundle == tmp_path / "company.pem"  # relative: beside the config file
    assert "pw" not in repr(loaded)
    assert describe(loaded)["proxy"] == "http://proxy:3128"  # `trayupdater config`
    with pytest.raises(ConfigError, match="proxy URL") as bad:
        load_config(none, env={}, overrides={"proxy": "socks5://u:pw@proxy:1080"})
    assert "pw" not in str(bad.value)


# --- proxies ------------------------------------------------------------------------------------


@pytest.fixture
def tls_feed(ca: CA) -> Iterator[ReleaseFeed]:
    """The GitHub API at https://api.github.test:PORT, a name only the proxy resolves."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.server_cert, ca.server_key)
    with ReleaseFeed(tls=context, public_host="api.github.test") as feed:
        name, data = child_archive("1.0.0", program="simple-server")
        feed.publish(DEMO_REPO, "v1.0.0", {name: data})
        yield feed


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_the_github_source_goes_through_the_proxy_and_the_token_only_to_the_api(
    tmp_path: Path, ca: CA, tls_feed: ReleaseFeed, net_env: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY with credentials: every request is a CONNECT tunnel; the proxy sees the
    host and its own credentials, never the token, a path or a query; the API gets the
    token, and the client never resolves the name itself (only the proxy can)."""
    net_env.setenv("SSL_CERT_FILE", str(system_store_with(ca, tmp_path)))
    with ForwardProxy(
        hosts={"api.github.test": port_of(tls_feed.url)}, user="fleet", password=PROXY_PASSWORD
    ) as proxy:
        net_env.setenv("HTTPS_PROXY", f"http://fleet:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}")
        source = GitHubSource(DEMO_REPO, api_url=tls_feed.url, token=TOKEN, retries=0)
        result = source.check()
        assert result.release is not None and result.release.version_text == "1.0.0"
        asset = result.release.assets[0]
        fetched = source.fetch(
            result.release, asset, tmp_path / "asset", max_bytes=10**8, pace=Pace()
        )
        assert fetched.size == asset.size > 0

    connects = proxy.connects()
    api = f"api.github.test:{port_of(tls_feed.url)}"
    assert connects and all(s.target == api for s in connects)
    assert all(s.status == 200 and s.first_tunnel_byte == 0x16 for s in connects)  # TLS inside
    assert [s.method for s in proxy.seen] == ["CONNECT"] * len(proxy.seen)
    seen = proxy.everything_seen()
    assert TOKEN.encode() not in seen and b"/repos/" not in seen
    assert all(s.header("Proxy-Authorization") for s in connects)  # the proxy's own login
    assert f"Bearer {TOKEN}" in tls_feed.stats.auth_headers


def test_a_wrong_proxy_password_is_named_without_the_password(
    tmp_path: Path, ca: CA, tls_feed: ReleaseFeed, net_env: pytest.MonkeyPatch
) -> None:
    net_env.setenv("SSL_CERT_FILE", str(system_store_with(ca, tmp_path)))
    with ForwardProxy(
        hosts={"api.github.test": port_of(tls_feed.url)}, user="fleet", password=PROXY_PASSWORD
    ) as proxy:
        wrong = f"http://fleet:wrong-{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
        source = GitHubSource(
            DEMO_REPO, api_url=tls_feed.url, retries=0, network=Network(proxy=wrong)
        )
        with pytest.raises(SourceError) as failed:
            source.check()
    text = str(failed.value)
    assert f"through the proxy http://127.0.0.1:{proxy.port}" in text and "407" in text
    assert PROXY_PASSWORD not in text and "fleet:" not in text
    assert [s.status for s in proxy.seen] == [407]


def test_network_proxy_setting_wins_over_the_environment_and_no_proxy_goes_direct(
    tmp_path: Path, ca: CA, net_env: pytest.MonkeyPatch
) -> None:
    net_env.setenv("SSL_CERT_FILE", str(system_store_with(ca, tmp_path)))
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f").write_text("f")
    with https_server(ca, files_handler(tmp_path / "www")) as base, ForwardProxy() as proxy:
        net_env.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens: would fail
        assert get(HttpClient(network=Network(proxy=proxy.url)), base + "/f") == b"f"
        assert [s.target for s in proxy.connects()] == [base.removeprefix("https://")]

        net_env.setenv("HTTPS_PROXY", proxy.url)
        net_env.setenv("NO_PROXY", "example.com,127.0.0.1")
        before = len(proxy.seen)
        assert get(HttpClient(network=Network(proxy=proxy.url)), base + "/f") == b"f"
        assert get(HttpClient(), base + "/f") == b"f"
        assert len(proxy.seen) == before  # both straight to the server

        net_env.delenv("NO_PROXY")
        net_env.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        with pytest.raises(HttpFailed, match=r"through the proxy http://127\.0\.0\.1:9"):
            get(HttpClient(), base + "/f")


def test_plain_http_to_loopback_never_goes_through_a_proxy(
    tmp_path: Path, net_env: pytest.MonkeyPatch
) -> None:
    """The URL policy allows plain HTTP only to loopback, because it never leaves the
    machine; a proxy would carry it (and any token) over the network in the clear."""
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    with ForwardProxy() as proxy, StaticServer(publisher.dir, tmp_path / "server") as server:
        net_env.setenv("HTTP_PROXY", proxy.url)
        net_env.setenv("HTTPS_PROXY", proxy.url)
        net_env.setenv("ALL_PROXY", proxy.url)
        source = tuf_source(
            server.url, publisher, tmp_path / "cache", network=Network(proxy=proxy.url)
        )
        assert source.check().release is not None
    assert proxy.seen == []


def test_the_tuf_source_updates_through_the_proxy_from_an_https_static_host(
    tmp_path: Path, ca: CA, net_env: pytest.MonkeyPatch
) -> None:
    """``trayupdater check`` as a real process: HTTPS_PROXY from the environment, a company
    CA in the system store, a static host only the proxy can name."""
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    net_env.setenv("SSL_CERT_FILE", str(system_store_with(ca, tmp_path)))
    with (
        https_server(ca, files_handler(publisher.dir)) as base,
        ForwardProxy(hosts={"updates.example.test": port_of(base)}) as proxy,
    ):
        url = f"https://updates.example.test:{port_of(base)}/"
        result = run_check(tmp_path, url, publisher, HTTPS_PROXY=proxy.url)
        assert result.returncode == 0, result.stderr
        assert "installed 1.0.0" in result.stdout
        seen = {s.target for s in proxy.seen}
        assert seen == {f"updates.example.test:{port_of(base)}"}
        assert all(s.method == "CONNECT" and s.status == 200 for s in proxy.seen)

        # Without the company CA in the system store: refused, and the user is told why.
        net_env.setenv("SSL_CERT_FILE", SYSTEM_BUNDLE)
        net_env.setenv("REQUESTS_CA_BUNDLE", str(ca.cert))  # not ours to follow
        refused = run_check(tmp_path, url, publisher, HTTPS_PROXY=proxy.url, data="data2")
        assert refused.returncode == 1
        assert "looks like TLS inspection" in refused.stderr
        assert "[network] ca_bundle" in refused.stderr
        # ... and the option it names fixes it.
        fixed = run_check(
            tmp_path, url, publisher, "--set", f"ca_bundle={ca.cert}",
            HTTPS_PROXY=proxy.url, data="data2",
        )  # fmt: skip
        assert fixed.returncode == 0, fixed.stderr


def run_check(
    tmp_path: Path, url: str, publisher: Publisher, *extra: str, data: str = "data", **env: str
) -> subprocess.CompletedProcess[str]:
    none = tmp_path / "none.toml"
    none.write_text("")
    args = [
        "--config", str(none), "--data-dir", str(tmp_path / data), "--repo", DEMO_REPO,
        "--set", "kind=tuf", "--set", f"url={url}",
        "--set", f"trusted_root={publisher.shipped_root}", *extra,
    ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "trayupdater", *args, "check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_the_asset_installed_through_the_proxy_is_the_published_one(
    tmp_path: Path, ca: CA, net_env: pytest.MonkeyPatch
) -> None:
    """The bytes that came through the tunnel are the signed ones (digest checked)."""
    publisher = Publisher(tmp_path).init()
    archive = publisher.add("1.0.0")
    net_env.setenv("SSL_CERT_FILE", str(system_store_with(ca, tmp_path)))
    with https_server(ca, files_handler(publisher.dir)) as base, ForwardProxy() as proxy:
        net_env.setenv("HTTPS_PROXY", proxy.url)
        source = tuf_source(base, publisher, tmp_path / "cache")
        release = source.check().release
        assert release is not None
        asset = release.asset(asset_name(Platform.current()))
        assert asset is not None
        fetched = source.fetch(release, asset, tmp_path / "a", max_bytes=10**8, pace=Pace())
    assert fetched.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert {s.method for s in proxy.seen} == {"CONNECT"}


# --- GitHub's limit without a token -----------------------------------------------------------


def test_without_a_token_the_app_says_at_start_up_what_the_api_limit_means(
    tmp_path: Path, feed: ReleaseFeed
) -> None:
    from support import Instance, wait_for

    from trayupdater.children import free_port

    name, data = child_archive("1.0.0", program="simple-server")
    feed.publish(DEMO_REPO, "v1.0.0", {name: data})
    said = (
        "GitHub source without a token: the API allows 60 requests/hour per IP, shared by "
        "every machine behind your address; checking every 10 min uses 6 of them per hour "
        "here, so about 10 machines like this one can share an address"
    )
    for token, expected in (("", True), ("ghp_test", False)):
        folder = tmp_path / f"token-{bool(token)}"
        env = {"TRAYUPDATER_CHECK_INTERVAL": "600", "GITHUB_TOKEN": token}
        app = Instance(feed, folder / "data", free_port(), **env)
        app.start()
        try:
            wait_for(lambda app=app: app.version() == "1.0.0", timeout=60, what="serving")
        finally:
            assert app.cli("quit").returncode == 0
            assert app.proc is not None and app.proc.wait(30) == 0
        logged = (folder / "data" / "logs" / "trayupdater.log").read_text()
        assert (said in logged) is expected, logged[:2000]


def test_the_limit_note_follows_the_interval_and_the_self_update() -> None:
    from trayupdater.config import Config
    from trayupdater.sources.github import rate_limit_note

    assert "every 1 h uses 1 of them per hour here, so about 60 machines" in str(
        rate_limit_note(Config())
    )
    assert "every 30 s takes 120 requests/hour, more than the limit for this machine" in str(
        rate_limit_note(Config(check_interval=30))
    )
    both = rate_limit_note(Config(check_interval=600, self_update_repo="me/app"))
    assert "uses 12 of them per hour here, so about 5 machines" in str(both)
    tuf_only = rate_limit_note(Config(kind="tuf", self_update_repo="me/app"))
    assert str(tuf_only).startswith("Self-update from GitHub without a token")
    assert rate_limit_note(Config(kind="tuf")) is None
    assert rate_limit_note(Config(token="t")) is None


def test_a_proxy_variable_that_is_not_an_http_proxy_is_named_by_both_sources(
    tmp_path: Path, net_env: pytest.MonkeyPatch
) -> None:
    net_env.setenv("HTTPS_PROXY", "socks5://user:pw@127.0.0.1:1080")
    github = GitHubSource(DEMO_REPO, api_url="https://127.0.0.1:9", retries=0)
    with pytest.raises(SourceError, match=r"socks5://127\.0\.0\.1:1080 .* HTTPS_PROXY") as one:
        github.check()
    publisher = Publisher(tmp_path).init()
    tuf = tuf_source("https://127.0.0.1:9/", publisher, tmp_path / "cache", retries=0)
    with pytest.raises(SourceError, match=r"not an http:// or https:// proxy URL") as two:
        tuf.check()
    assert "pw" not in str(one.value) + str(two.value)


def test_a_proxy_user_written_with_a_backslash_is_refused_without_showing_it(
    net_env: pytest.MonkeyPatch,
) -> None:
    """``CORP\\jdoe:pw@proxy`` (the Windows way) was read by requests as the host "corp",
    with the password in a path that `trayupdater config` and errors then showed."""
    net_env.setenv("HTTPS_PROXY", f"http://CORP\\jdoe:{PROXY_PASSWORD}@proxy.example:8080")
    with pytest.raises(NetworkSettingError, match=r"CORP%5Cjdoe") as info:
        Network().proxy_for("https://api.github.com/repos/a/b/releases/latest")
    assert PROXY_PASSWORD not in str(info.value)
    assert "proxy.example:8080" in str(info.value)
    assert PROXY_PASSWORD not in network.shown_proxy(f"http://CORP\\jdoe:{PROXY_PASSWORD}@p:1")


def test_an_https_proxy_is_trusted_as_any_server_is(net_env: pytest.MonkeyPatch, ca: CA) -> None:
    """A company proxy spoken to over TLS, its certificate from the CA in ca_bundle: the
    handshake with the proxy used urllib3's default context, and failed ("set ca_bundle")."""
    from http.server import BaseHTTPRequestHandler

    tunnels: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_CONNECT(self) -> None:
            tunnels.append(self.path)
            self.send_response(502)  # the tunnel itself is not what this test is about
            self.send_header("Content-Length", "0")
            self.end_headers()

    with https_server(ca, Proxy) as proxy:
        client = HttpClient(network=Network(ca_bundle=ca.cert, proxy=proxy))
        with pytest.raises(HttpFailed, match="through the proxy"):
            client.get("https://updates.example.com/metadata/timestamp.json", timeout=(5, 5))
    assert tunnels == ["updates.example.com:443"]


# --- a proxy that drips its answer to CONNECT ------------------------------------------------


class DrippingProxy(RawServer):
    """Answers CONNECT with "200" and then header bytes, one every ``pause`` s for ever: each
    within any read timeout (http.client reads a tunnel's header lines without a count limit)."""

    def __init__(self, pause: float = 0.05) -> None:
        self.pause = pause
        self.closed = threading.Event()
        super().__init__(self._drip)

    def _drip(self, conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n")
        while not self.closed.wait(self.pause):
            conn.sendall(b"X")

    def close(self) -> None:
        self.closed.set()
        super().close()


@pytest.fixture
def dripping_proxy() -> Iterator[DrippingProxy]:
    proxy = DrippingProxy()
    yield proxy
    proxy.close()


def in_thread(action: Callable[[], object], seconds: float) -> BaseException | None:
    """What ``action`` raised; fails the test if it is still running after ``seconds``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return outcome[0]


def test_a_proxy_dripping_its_connect_answer_is_cut_at_the_deadline(
    net_env: pytest.MonkeyPatch, dripping_proxy: DrippingProxy, tmp_path: Path
) -> None:
    """The socket was watched only once connect() returned, after the tunnel: the check
    waited on the proxy past its deadline for ever."""
    source = GitHubSource(
        "acme/app",
        api_url="https://api.github.test",
        network=Network(proxy=dripping_proxy.url),
        timeout=(1.0, 1.0),
        answer_deadline=1.0,
        retries=0,
    )
    error = in_thread(source.check, 10)  # the deadline is 1 s
    assert isinstance(error, SourceError) and "too slow" in str(error), error
    pace = Pace(timeout=1.0, deadline=1.0)
    url = "https://updates.example.test/a"
    error = in_thread(
        lambda: download(source.client, url, tmp_path / "a", max_bytes=9, pace=pace), 10
    )
    assert isinstance(error, DownloadError), error
    source.close()


def test_quit_cuts_a_connect_answer_that_drips(
    net_env: pytest.MonkeyPatch, dripping_proxy: DrippingProxy, tmp_path: Path
) -> None:
    interrupt = Interrupt()
    client = HttpClient(interrupt=interrupt, network=Network(proxy=dripping_proxy.url))
    pace = Pace(timeout=1.0, deadline=None)
    url = "https://updates.example.test/a"
    threading.Timer(0.5, interrupt.request, args=("quit",)).start()
    error = in_thread(lambda: download(client, url, tmp_path / "a", max_bytes=9, pace=pace), 10)
    assert isinstance(error, CancelledError), error


def test_a_certificate_outside_its_dates_points_at_the_clock_not_at_tls_inspection(
    tmp_path: Path, net_env: pytest.MonkeyPatch
) -> None:
    """A computer whose clock is wrong (a flat CMOS battery, a restored VM) sees every
    certificate expired or not yet valid: it was told to look for a company proxy and
    name a CA file, which cannot help."""
    expired = make_ca(tmp_path / "ca", server_days=-1)
    (tmp_path / "www").mkdir()
    client = HttpClient(network=Network(ca_bundle=expired.cert))
    with (
        https_server(expired, files_handler(tmp_path / "www")) as base,
        pytest.raises(HttpUntrusted) as refused,
    ):
        get(client, base + "/x")
    message = str(refused.value)
    assert "certificate has expired" in message, message
    assert time.strftime("%Y-%m-%d") in message and "set the right date and time" in message
    assert "TLS inspection" not in message and "ca_bundle" not in message
