"""A local HTTP server that speaks the subset of GitHub's REST API that trayupdater uses.

It backs the offline ``demo`` and the end-to-end tests: releases are published into it at
run time, assets are served through the API URL (302 to a download URL, as GitHub does)
with Range support, and faults can be queued to prove that the client survives them.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from trayupdater.http_server import ThreadingServer

# Faults a test can queue for the next matching request.
FAULTS = ("500", "html", "truncated", "ratelimit", "retry_after", "hang", "cut", "corrupt")


@dataclass
class _Asset:
    id: int
    name: str
    data: bytes
    digest: bool


@dataclass
class _Release:
    id: int
    tag: str
    prerelease: bool
    draft: bool
    assets: list[_Asset]
    published_at: str
    notes: str = ""


@dataclass
class FeedStats:
    api_requests: int = 0
    not_modified: int = 0
    downloads: int = 0
    range_requests: int = 0
    auth_headers: list[str | None] = field(default_factory=list)


class ReleaseFeed:
    """Holds releases for one or more repositories and serves them over HTTP on loopback."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        public_host: str | None = None,
    ) -> None:
        """``tls``: serve HTTPS with this server context; ``public_host``: the name the URLs
        it hands out use (one that a proxy resolves to this server, say)."""
        self._lock = threading.Lock()
        self._scheme = "https" if tls is not None else "http"
        self._public_host = public_host
        self._repos: dict[str, list[_Release]] = {}
        self._raw: dict[str, Any] = {}  # repo -> verbatim release JSON served as "latest"
        self._faults: deque[tuple[str, str]] = deque()  # (path substring, fault)
        self._next_id = 1000
        self.stats = FeedStats()
        self.hang_seconds = 30.0
        self.download_delay = 0.0  # seconds per 64 KiB, to make progress visible in the demo
        handler = type("Handler", (_Handler,), {"feed": self})
        self._server = ThreadingServer((host, port), handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{self._public_host or host}:{port}"

    def start(self) -> ReleaseFeed:
        self._thread = threading.Thread(target=self._server.serve, name="release-feed", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.stop()
        self._server.server_close()

    def __enter__(self) -> ReleaseFeed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- publishing ---

    def publish(
        self,
        repo: str,
        tag: str,
        assets: dict[str, bytes],
        *,
        prerelease: bool = False,
        draft: bool = False,
        digests: bool = True,
        checksums: bool = True,
        notes: str = "",
    ) -> None:
        """Add a release; ``checksums`` adds a goreleaser-style ``checksums.txt``."""
        files = dict(assets)
        if checksums:
            files["checksums.txt"] = "".join(
                f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in assets.items()
            ).encode()
        with self._lock:
            release = _Release(
                id=self._new_id(),
                tag=tag,
                prerelease=prerelease,
                draft=draft,
                assets=[_Asset(self._new_id(), n, d, digests) for n, d in files.items()],
                published_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                notes=notes,
            )
            self._repos.setdefault(repo, []).append(release)

    def replace_asset(self, repo: str, tag: str, name: str, data: bytes) -> None:
        """Swap an asset's bytes after publishing (a tampered mirror), keeping old digests."""
        with self._lock:
            for release in self._repos.get(repo, []):
                if release.tag == tag:
                    for asset in release.assets:
                        if asset.name == name:
                            asset.data = data
                            return
        raise KeyError(f"{repo} {tag} {name}")

    def publish_raw(self, repo: str, body: Any) -> None:
        """Serve a verbatim GitHub release JSON as "latest" (assets get no bytes); ``bytes``
        are served exactly as given, for answers no JSON encoder would write."""
        with self._lock:
            self._raw[repo] = body

    def inject(self, fault: str, path_contains: str = "", times: int = 1) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        with self._lock:
            for _ in range(times):
                self._faults.append((path_contains, fault))

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # --- what the handler asks ---

    def _take_fault(self, path: str) -> str | None:
        with self._lock:
            for i, (needle, fault) in enumerate(self._faults):
                if needle in path:
                    del self._faults[i]
                    return fault
        return None

    def _release_json(self, repo: str, release: _Release) -> dict[str, Any]:
        base = self.url
        return {
            "url": f"{base}/repos/{repo}/releases/{release.id}",
            "html_url": f"{base}/{repo}/releases/tag/{release.tag}",
            "id": release.id,
            "tag_name": release.tag,
            "name": release.tag,
            "draft": release.draft,
            "prerelease": release.prerelease,
            "published_at": release.published_at,
            "body": release.notes,
            "assets": [
                {
                    "url": f"{base}/repos/{repo}/releases/assets/{a.id}",
                    "id": a.id,
                    "name": a.name,
                    "size": len(a.data),
                    "state": "uploaded",
                    "content_type": "application/octet-stream",
                    "digest": f"sha256:{hashlib.sha256(a.data).hexdigest()}" if a.digest else None,
                    "browser_download_url": f"{base}/download/{a.id}/{a.name}",
                }
                for a in release.assets
            ],
        }

    def _visible(self, repo: str) -> list[_Release]:
        return [r for r in self._repos.get(repo, []) if not r.draft]

    def latest_json(self, repo: str) -> Any | None:
        with self._lock:
            if repo in self._raw:
                return self._raw[repo]
            stable = [r for r in self._visible(repo) if not r.prerelease]
            return self._release_json(repo, stable[-1]) if stable else None

    def list_json(self, repo: str) -> list[Any]:
        with self._lock:
            if repo in self._raw:
                return [self._raw[repo]]
            return [self._release_json(repo, r) for r in reversed(self._visible(repo))]

    def asset(self, asset_id: int) -> _Asset | None:
        with self._lock:
            for releases in self._repos.values():
                for release in releases:
                    for asset in release.assets:
                        if asset.id == asset_id:
                            return asset
        return None


class _Handler(BaseHTTPRequestHandler):
    feed: ReleaseFeed
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and the demo print what matters themselves

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        fault = self.feed._take_fault(self.path)
        if fault == "hang":
            time.sleep(self.feed.hang_seconds)
            self.close_connection = True
            return
        if fault == "500":
            return self._send(500, b'{"message":"Server Error"}', "application/json")
        if fault == "html":
            return self._send(200, b"<html><body>Unicorn!</body></html>", "text/html")
        if fault in ("ratelimit", "retry_after"):
            headers = {
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(time.time()) + 60),
            }
            if fault == "retry_after":
                headers = {"Retry-After": "30"}
            return self._send(
                403, b'{"message":"API rate limit exceeded"}', "application/json", headers
            )

        parts = path.strip("/").split("/")
        if path.startswith("/download/") and len(parts) >= 3:
            return self._download(int(parts[1]) if parts[1].isdigit() else -1, fault)
        if len(parts) >= 4 and parts[0] == "repos" and parts[3] == "releases":
            repo = f"{parts[1]}/{parts[2]}"
            self.feed.stats.api_requests += 1
            self.feed.stats.auth_headers.append(self.headers.get("Authorization"))
            if len(parts) == 5 and parts[4] == "latest":
                body = self.feed.latest_json(repo)
                if body is None:
                    return self._send(404, b'{"message":"Not Found"}', "application/json")
                return self._json(body, fault)
            if len(parts) == 4:
                return self._json(self.feed.list_json(repo), fault)
            if len(parts) == 6 and parts[4] == "assets" and parts[5].isdigit():
                asset = self.feed.asset(int(parts[5]))
                if asset is None:
                    return self._send(404, b'{"message":"Not Found"}', "application/json")
                # GitHub answers the asset API URL with a redirect to its storage host.
                location = f"{self.feed.url}/download/{asset.id}/{asset.name}"
                return self._send(302, b"", "text/plain", {"Location": location})
        self._send(404, b'{"message":"Not Found"}', "application/json")

    def _json(self, body: Any, fault: str | None) -> None:
        if isinstance(body, list) and len(body) == 1 and isinstance(body[0], bytes):
            body = body[0]  # a raw answer asked for as a list: the same bytes
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        if fault is None and self.headers.get("If-None-Match") == etag:
            self.feed.stats.not_modified += 1
            return self._send(304, b"", None, {"ETag": etag})
        if fault == "truncated":
            data = data[: len(data) // 2]
        self._send(200, data, "application/json; charset=utf-8", {"ETag": etag})

    def _download(self, asset_id: int, fault: str | None) -> None:
        asset = self.feed.asset(asset_id)
        if asset is None:
            return self._send(404, b"Not Found", "text/plain")
        self.feed.stats.downloads += 1
        data = asset.data
        if fault == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"x"
        start = 0
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes=") and range_header.endswith("-"):
            self.feed.stats.range_requests += 1
            start = int(range_header[6:-1] or 0)
        if start >= len(data) and start:
            return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if fault == "cut":
            body = body[: len(body) // 2]
            self.close_connection = True
        for offset in range(0, len(body), 65536):
            if self.feed.download_delay:
                time.sleep(self.feed.download_delay)
            self.wfile.write(body[offset : offset + 65536])

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Date", formatdate(usegmt=True))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
