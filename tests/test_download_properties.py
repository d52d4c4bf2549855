"""Property: a hostile HTTP server gets an error out of a download or an API check, nothing else.

What the user relies on when the release source, or a host it redirects to, is an attacker:
the download either delivers the asset's exact bytes or fails with one clear error, the token
stays with the API, and nothing hangs. hypothesis writes a script for three loopback servers
(ports A and B on 127.0.0.1, port C on the second loopback address; each port speaks TLS or
plain HTTP, whichever the client starts with, so ``http://`` and ``https://`` on the same
host and port are two origins, and ``localhost`` a third). Every path of an example answers
its visits in turn (the last answer repeats) with:

- any status (1xx to 9xx, interim 100/103 before the real one, garbage status lines);
- redirects whose Location is relative, absolute to another origin, protocol-relative, with
  ``user:pass@``, a fragment, an uppercase scheme, backslashes, spaces, tabs, very long or
  too long for a header line, to the same URL (loops), to a plain-HTTP host off the machine,
  to other schemes, with an unclosed IPv6 bracket, or missing and empty;
- headers that lie: Content-Length too short, too long, duplicated or not a number,
  chunked bodies with bad sizes or no end, Content-Range answers to a resume that start
  elsewhere, end early, state another total or make no sense, 416 totals, Retry-After and
  rate-limit values of every kind, a header line over 64 KiB, more than 100 headers;
- bodies cut short, connections closed, reset or left hanging mid-body, slow drips (tiny).

The download property plays ``GitHubSource.fetch`` (which attaches the token by origin) or
``download()`` given the token in a header directly (Authorization, Cookie,
Proxy-Authorization, or Authorization set on the session), sometimes over a part left by a
cut download or a stale part of another URL, in six mixes (see cases()): honest, hostile,
a redirect loop, an escape off the machine, a resume answered by a lying 206, and a trickle
(a head or body a byte every 0.1 s: within every read timeout, so that only a deadline ends
it). The API property asks for /releases/latest or the release list (answers that may be
rate limits with odd values, a 301 of a renamed repository to another origin, or anything
above), then downloads the asset the release names. Checked for every example:

1. only the documented errors come out (DownloadError from a download, SourceError or
   RateLimitedError from the API): never KeyError, ValueError, OSError, a requests
   exception, RecursionError...;
2. the token (in whatever header it was given) reaches only the origin it is for, judged by
   what each server received (scheme from the handshake, host from Host, port from the
   socket); no other origin gets any Cookie, Proxy-Authorization or Authorization (but the
   Basic requests makes of a Location's own ``user:pass@``); the token is in no exception
   text and no log record at DEBUG; error messages are one line without query string;
3. a success leaves exactly the bytes the script defines as the asset (the prefix a server
   declared, when no size was listed), with the size and SHA-256 returned; a failure leaves
   nothing at the destination, and at most its own ``.part``, holding a true prefix of the
   asset within the limits, never after a size refusal; a stale part of another URL is gone;
4. each call ends within its deadlines plus SLACK seconds;
5. no followed redirect chain is longer than MAX_REDIRECTS hops, none goes from https to
   http, each goes where its Location said, and no plain-HTTP connection is attempted to a
   host that is not loopback (a guard on urllib3's connect refuses and records any
   connection off the machine: the second origin is loopback too, so what is checked is the
   attempt, for Locations such as ``http://192.0.2.1/``, ``http://127.1/`` or
   ``http://0.0.0.0/``);

and for the API: a rate limit is honoured without a request and never lasts over 24 h.
Honest examples (a clean redirect chain, a faithful final answer) must succeed, so refusing
everything would not pass either; and each property asserts at the end that the situations
its invariants are about were reached (the token sent, then a foreign origin asked...).

``TRAYUPDATER_DOWNLOAD_EXAMPLES=N`` runs N random examples per property instead of the
derandomized default set. The regressions at the end are what the property found.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import gzip
import hashlib
import ipaddress
import json
import logging
import random
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import urllib3.connection
from httpfiles import FileServer
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version
from property_settings import assert_reached, property_settings
from raw_server import RawServer
from support import second_loopback_host
from tls import make_ca

from trayupdater.download import Pace, download, part_path
from trayupdater.errors import DownloadError, RateLimitedError, SourceError
from trayupdater.http_client import MAX_REDIRECTS, REDIRECT_STATUSES, HttpClient, HttpRefused
from trayupdater.network import Network
from trayupdater.release_model import Asset, Release
from trayupdater.sources.github import MAX_RATE_LIMIT_WAIT, GitHubSource

TOKEN = "ghp_PROPERTYTOKEN5f0c2a9e71d4"
QUERY_SECRET = "QSECRET8812"  # in every Location's query: no message may show it
BASIC = "Basic " + base64.b64encode(b"user:pass").decode()  # requests' reading of user:pass@
REPO = "acme/app"
NAME = "tool.tar.gz"
READ_TIMEOUT = 0.3  # connect and each read
DEADLINE = 1.0  # a whole download, or a whole API answer
SHORT_DEADLINE = 0.25  # the same, in the examples where a server trickles
SLACK = 2.0  # seconds a call may take beyond its deadlines
HANG = 5.0  # the longest a server thread waits (an example's end releases it at once)
DRIP_PAUSE = 0.001
MAX_DRIPS = 20
TRICKLE = 0.1  # a byte every TRICKLE s: within every read timeout, past any deadline
TRICKLE_FOR = DEADLINE + SLACK + 1  # then it stops: a client without deadline fails, not hangs

# Origin keys: scheme, host ("second": the second loopback address), listening port.
ORIGINS = {
    "A": ("http", "127.0.0.1", "A"),
    "A+": ("https", "127.0.0.1", "A"),
    "Al": ("http", "localhost", "A"),
    "Al+": ("https", "localhost", "A"),
    "B": ("http", "127.0.0.1", "B"),
    "B+": ("https", "127.0.0.1", "B"),
    "C": ("http", "second", "C"),
    "C+": ("https", "second", "C"),  # the certificate does not name it: never verifies
}
VERIFIED_HTTPS = ["A+", "Al+", "B+"]
PLAIN = ["A", "Al", "B", "C"]


def examples(default: int) -> settings:
    return property_settings("TRAYUPDATER_DOWNLOAD_EXAMPLES", default, fixtures=True)


def hostile(forms: list) -> st.SearchStrategy:
    """The first (plain) form half the time, else any: hostile parts mixed into sane ones."""
    return st.one_of(st.just(forms[0]), st.sampled_from(forms))


# --- what the servers answer ---------------------------------------------------------------


@dataclass(frozen=True)
class Loc:
    """A Location header: ``form`` says how it is written, ``to`` which path it names."""

    form: str = "abs"
    origin: str = "A"
    to: int = 0
    variant: int = 0


@dataclass(frozen=True)
class Answer:
    """One answer. ``kind``: full (the resource, 200), range (honours Range, or lies about
    it as ``cr`` says), 416, status (any status, a short page), redirect, garbage."""

    kind: str = "full"
    status: int = 200
    cr: str = "honest"
    shift: int = 1
    framing: str = "length"  # length | chunked | close | http10
    length: str = "honest"  # the Content-Length lie (framing "length")
    chunks: str = "good"  # the chunked lie (framing "chunked")
    cut: float | None = None  # send only this share of the body
    end: str = "keep"  # keep | close | reset | hang
    drip: int = 0  # bytes per write, with a tiny pause between (0: all at once)
    slow: str = ""  # "head" | "body": that part trickles (only a deadline ends it)
    interim: str = ""  # "" | "100" | "103": an answer before the answer
    noise: tuple[str, ...] = ()
    location: Loc | None = None
    trailing: bool = False  # bytes after the body's end (never inside a declared length)
    encoding: str = ""  # "" | gzip-header (raw bytes) | gzip-real | gzip-bad
    content_type: str = "right"  # right | html | missing


NOISE: dict[str, list[tuple[str, str]]] = {
    "retry-0": [("Retry-After", "0")],
    "retry-huge": [("Retry-After", "99999999999")],
    "retry-neg": [("Retry-After", "-5")],
    "retry-date": [("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")],
    "retry-sup": [("Retry-After", "\u00b2")],
    "retry-long": [("Retry-After", "9" * 40)],
    "ratelimit": [("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "99999999999")],
    "ratelimit-odd": [("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "1e9")],
    "ratelimit-past": [("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "5")],
    "big-line": [("X-Big", "a" * 70_000)],
    "many": [(f"X-N{i}", "1") for i in range(120)],
    "latin1": [("X-Odd", "\xff\xfe\xe9")],
    "fold": [("X-Fold", "a\r\n b")],
    "etag": [("ETag", '"abc"')],
    "etag-odd": [("ETag", "\x01" * 300)],
    "conn-close": [("Connection", "close")],
    "te-identity": [("Transfer-Encoding", "identity")],
    "stray-location": [("Location", "http://127.0.0.1:1/stray")],
}
JUNK_LENGTHS = ["abc", "-1", "+5", " 12 ", "1e3", "\u0663", "0x10", "9" * 20, ""]
JUNK_RANGES = ["bytes=0-", "bytes x-y/z", "bytes 5-3/2", "items 0-1/2", "bytes 0-1/2/3", "bytes -"]
GARBAGE = [
    b"",
    b"HTTP/1.1 2OO OK\r\n\r\n",
    b"ICY 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"\x00\xff\r\n\r\n",
    b"HTTP/1.1 1000 Big\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3",  # the head never ends
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LF
    b"HTTP/2 200\r\n\r\n",
]


def location_text(loc: Loc, base: Callable[[str], str], path: str, marker: int) -> str | None:
    """The Location value ``loc`` stands for; ``marker`` (v=) names the answering hit, so the
    request that follows it can be recognised."""
    origin = base(loc.origin)
    scheme, netloc = origin.split("://", 1)
    q = f"?v={marker}&sig={QUERY_SECRET}"
    form, variant = loc.form, loc.variant
    if form == "abs":
        return origin + path + q
    if form == "path":
        return path + q
    if form == "relative":
        return path.rsplit("/", 1)[1] + q
    if form == "dotdot":
        return "../" + path.lstrip("/") + q
    if form == "query":
        return q  # the same path again: a loop
    if form == "proto":
        return f"//{netloc}{path}{q}"
    if form == "userinfo":
        return f"{scheme}://user:pass@{netloc}{path}{q}"
    if form == "fragment":
        return f"{origin}{path}{q}#frag"
    if form == "upper":
        return f"{scheme.upper()}://{netloc}{path}{q}"
    if form == "long":
        return f"{origin}{path}{q}&pad={'p' * 6000}"
    if form == "huge":
        return f"{origin}{path}{q}&pad={'p' * 70_000}"
    if form == "backslash":
        return [
            f"{scheme}:\\\\{netloc}{path}{q}",
            f"/\\{netloc}{path}{q}",
            f"{origin}\\{path}{q}",
            f"{scheme}://{netloc}\\@{base('A').split('://')[1]}{path}{q}",
        ][variant % 4]
    if form == "space":
        return [f"{origin}/ {path}{q}", f"{origin}{path}{q} x", f"{origin}{path}\t{q}"][variant % 3]
    if form == "empty":
        return ""
    if form == "missing":
        return None
    if form == "bad":
        port = base("A").rsplit(":", 1)[1]
        return [
            "http://[::1/x",
            f"//[127.0.0.1:{port}{path}",
            f"http://127.0.0.1:{port}0000{path}",
            f"http://127.0.0.1:abc{path}",
            f"http://[::1]:{port}{path}{q}",  # loopback, but nothing listens on IPv6
            "http:",
            "//",
            "?",
        ][variant % 8]
    if form == "far":  # off the machine: plain HTTP must be refused before connecting
        port = base("A").rsplit(":", 1)[1]
        return [
            f"http://192.0.2.1:{port}{path}",
            f"http://2130706433:{port}{path}",
            f"http://127.1:{port}{path}",
            f"http://localhost.:{port}{path}",
            f"http://0.0.0.0:{port}{path}",
            f"http://[::ffff:127.0.0.1]:{port}{path}",
            f"http://127.0.0.1.nip.io:{port}{path}",
        ][variant % 7]
    if form == "far_https":  # allowed, and stopped by the test's guard
        port = base("A").rsplit(":", 1)[1]
        return ["https://example.invalid/x", f"https://192.0.2.1:{port}{path}"][variant % 2]
    if form == "scheme":
        return ["ftp://127.0.0.1/x", "file:///etc/passwd", "data:,x", "javascript:x", "x:y"][
            variant % 5
        ]
    raise AssertionError(form)


@dataclass
class Reply:
    status: int | None
    head: bytes
    body: bytes
    closes: bool  # the body ends only when the connection does
    location: str | None = None


def compose(
    a: Answer, resource: bytes, asked: int | None, location: str | None, default_type: str
) -> Reply:
    """The bytes of answer ``a`` to a request for ``resource`` from byte ``asked`` on."""
    if a.kind == "garbage":
        return Reply(None, GARBAGE[a.shift % len(GARBAGE)], b"", True)
    n = len(resource)
    headers: list[tuple[str, str]] = []
    if a.kind == "full":
        status, body = 200, resource
        if a.encoding == "gzip-real":
            body = gzip.compress(body)
    elif a.kind == "range":
        status, body, headers = _ranged(a, resource, asked)
    elif a.kind == "416":
        status, body = 416, b""
        headers = _unsatisfied(a, n, asked)
    elif a.kind == "status":
        status, body = a.status, b"<p>no</p>\n"
    else:
        status, body = a.status, b"moved\n"
        if location is not None:
            headers.append(("Location", location))
    if a.encoding == "gzip-bad":
        body = b"\x1f\x8b\x08\x00garbage" + body[:20]
    if a.encoding:
        headers.append(("Content-Encoding", "gzip"))
    if a.content_type == "right":
        headers.append(("Content-Type", default_type))
    elif a.content_type == "html":
        headers.append(("Content-Type", "text/html"))
    wire, closes = _frame(a, body, headers)
    for name in a.noise:
        headers += NOISE[name]
    version = "HTTP/1.0" if a.framing == "http10" else "HTTP/1.1"
    head = f"{version} {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    interim = {
        "": b"",
        "100": b"HTTP/1.1 100 Continue\r\n\r\n",
        "103": b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
    }[a.interim]
    # Latin-1 is how clients read header bytes; what it cannot write goes as UTF-8.
    raw = head.encode("latin-1") if max(map(ord, head)) < 256 else head.encode("utf-8")
    return Reply(status, interim + raw, wire, closes, location)


def _ranged(a: Answer, resource: bytes, asked: int | None) -> tuple[int, bytes, list]:
    n = len(resource)
    if asked is None:
        if a.cr == "always206" and n:
            return 206, resource, [("Content-Range", f"bytes 0-{n - 1}/{n}")]
        return 200, resource, []
    if asked >= n:
        return 416, b"", [("Content-Range", f"bytes */{n}")]
    first, last, total = asked, n - 1, str(n)
    if a.cr == "shift":  # another start, and the bytes that do start there
        first = min(max(asked + a.shift, 0), n - 1)
    elif a.cr == "zero":
        first = 0
    elif a.cr == "total":  # another size of the whole (the body follows what it says)
        size = max(asked + 1, n + a.shift)
        last, total = size - 1, str(size)
    elif a.cr == "star":
        total = "*"
    elif a.cr == "short_end":
        last = max(first, n - 2)
    elif a.cr == "backwards":
        last = first - 1
    header = f"bytes {first}-{last}/{total}"
    if a.cr == "garbage":
        header = JUNK_RANGES[a.shift % len(JUNK_RANGES)]
    body = resource[first : last + 1] if last >= first else b""
    return 206, body, [] if a.cr == "missing" else [("Content-Range", header)]


def _unsatisfied(a: Answer, n: int, asked: int | None) -> list[tuple[str, str]]:
    total = {
        "honest": str(n),
        "asked": str(asked or 0),  # "your part is the whole file"
        "total": str(max(0, n + a.shift)),
        "garbage": "x",
    }.get(a.cr)
    return [] if total is None else [("Content-Range", f"bytes */{total}")]


def _frame(a: Answer, body: bytes, headers: list) -> tuple[bytes, bool]:
    """The body on the wire, adding the framing headers; True if it ends with the close."""
    if a.framing in ("close", "http10"):
        if a.framing == "close":
            headers.append(("Connection", "close"))
        return body, True
    if a.framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        return _chunked(a.chunks, body), a.chunks not in ("good", "ext", "trailer")
    n = len(body)
    values = {
        "honest": [str(n)],
        "short": [str(max(0, n - a.shift))],
        "long": [str(n + a.shift)],
        "dup_same": [str(n), str(n)],
        "dup_diff": [str(n), str(n + 1)],
        "junk": [JUNK_LENGTHS[a.shift % len(JUNK_LENGTHS)]],
    }[a.length]
    headers += [("Content-Length", v) for v in values]
    return body, a.length == "junk"


def _chunked(flaw: str, body: bytes) -> bytes:
    """``body`` chunked; a flawed form stops right after its flaw, so the bytes that follow a
    size line are always the body's own (never framing read as data)."""
    third = max(1, len(body) // 3)
    pieces = [body[i : i + third] for i in range(0, len(body), third)]
    out = b""
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if last and flaw in ("bad_size", "short_last", "huge", "negative", "no_end"):
            size = {
                "bad_size": b"zz",
                "short_last": b"%x" % (len(piece) + 5),
                "huge": b"f" * 20,
                "negative": b"-5",
                "no_end": b"%x" % len(piece),
            }[flaw]
            return out + size + b"\r\n" + piece
        size = b"%x;ext=1" % len(piece) if flaw == "ext" else b"%x" % len(piece)
        out += size + b"\r\n" + piece + b"\r\n"
    if flaw in ("bad_size", "short_last", "huge", "negative", "no_end"):
        return out + b"zz\r\n" if flaw == "bad_size" else out  # no body: no last chunk
    return out + (b"0\r\nX-Trailer: 1\r\n\r\n" if flaw == "trailer" else b"0\r\n\r\n")


# --- the servers -----------------------------------------------------------------------------


@dataclass
class Hit:
    """One request as a server received it."""

    index: int
    scheme: str  # from the connection: https if the client started a TLS handshake
    local: tuple[str, int]  # the address it was sent to
    target: str
    headers: dict[str, list[str]]
    head: bytes
    status: int | None = None
    location: str | None = None

    @property
    def host(self) -> str | None:
        values = self.headers.get("host", [])
        return urlsplit("//" + values[0]).hostname if len(values) == 1 else None

    @property
    def origin(self) -> tuple[str, str | None, int]:
        return self.scheme, self.host, self.local[1]

    @property
    def follows(self) -> int | None:
        """The hit whose redirect this request follows (its marker), if any."""
        marker = parse_qs(urlsplit(self.target).query).get("v", [""])[0]
        return int(marker) if marker.isdigit() else None


@dataclass
class Route:
    answers: tuple[Answer, ...]
    resource: bytes
    content_type: str = "application/octet-stream"
    visits: int = 0


class Servers:
    """Three listening ports (A, B on 127.0.0.1; C on ``second``), each speaking TLS or plain
    HTTP as the client starts, playing the routes installed for the current example."""

    def __init__(self, second: str, tls: ssl.SSLContext, network: Network) -> None:
        self.second = second
        self.tls = tls
        self.network = network  # trusts the servers' certificate
        self.lock = threading.Lock()
        self.epoch = 0
        self.prefix = "e0"
        self.routes: dict[str, Route] = {}
        self.paths: list[str] = []
        self.hits: list[Hit] = []
        self.errors: list[str] = []  # bugs of the servers themselves
        self.released = threading.Event()
        self.conns: list[socket.socket] = []
        self.listeners: dict[str, socket.socket] = {}
        self.ports: dict[str, int] = {}
        for key, host in (("A", "127.0.0.1"), ("B", "127.0.0.1"), ("C", second)):
            listener = socket.socket()
            listener.bind((host, 0))
            listener.listen(64)
            self.listeners[key] = listener
            self.ports[key] = listener.getsockname()[1]
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def base(self, key: str) -> str:
        scheme, host, port = ORIGINS[key]
        return f"{scheme}://{self.second if host == 'second' else host}:{self.ports[port]}"

    def origin(self, key: str) -> tuple[str, str, int]:
        scheme, host, port = ORIGINS[key]
        return scheme, self.second if host == "second" else host, self.ports[port]

    def install(self, paths: list[str], routes: list[Route]) -> None:
        """A new example: fresh paths (so nothing of the last one is reachable)."""
        with self.lock:
            self.paths = paths
            self.routes = dict(zip(paths, routes, strict=True))
            self.hits = []

    def new_prefix(self) -> str:
        with self.lock:
            self.epoch += 1
            self.prefix = f"e{self.epoch}"
            self.released = threading.Event()
            return self.prefix

    def finish(self) -> list[Hit]:
        """End the example: release hanging answers, cut every connection; its hits."""
        with self.lock:
            self.released.set()
            conns, self.conns = self.conns, []
            hits, self.epoch = list(self.hits), self.epoch + 1
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        return hits

    def close(self) -> None:
        self.finish()
        for listener in self.listeners.values():
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            # Head and body go in separate writes: without this, Nagle and delayed ACKs
            # add 40 ms to every answer.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.conns.append(conn)
                args = (conn, self.epoch, self.released)
            threading.Thread(target=self._serve, args=args, daemon=True).start()

    def _serve(self, conn: socket.socket, epoch: int, released: threading.Event) -> None:
        try:
            conn.settimeout(HANG)
            first = conn.recv(1, socket.MSG_PEEK)
            scheme = "http"
            if first[:1] == b"\x16":  # a TLS ClientHello
                conn = self.tls.wrap_socket(conn, server_side=True)
                scheme = "https"
                with self.lock:
                    self.conns.append(conn)
            local = conn.getsockname()[:2]
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data or len(buf) > 1 << 20:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                played = self._request(conn, epoch, released, scheme, local, head)
                if not played:
                    return
        except OSError:
            pass  # the client gave up, or refused the certificate (SSLError)
        except Exception as exc:  # a bug of the test's server: fails the example
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _request(
        self,
        conn: socket.socket,
        epoch: int,
        released: threading.Event,
        scheme: str,
        local: tuple[str, int],
        head: bytes,
    ) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1] if lines[0].count(" ") == 2 else ""
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        with self.lock:
            if epoch != self.epoch:
                return False  # a connection of an earlier example
            hit = Hit(len(self.hits), scheme, local, target, headers, head)
            self.hits.append(hit)
            route = self.routes.get(target.split("?", 1)[0])
            answer, resource, default_type = Answer(kind="status", status=404), b"", "text/plain"
            if route is not None:
                answer = route.answers[min(route.visits, len(route.answers) - 1)]
                route.visits += 1
                resource, default_type = route.resource, route.content_type
            location = None
            if answer.location is not None:
                loc = answer.location
                path = self.paths[loc.to % len(self.paths)]
                location = location_text(loc, self.base, path, hit.index)
        asked = _range_start(headers.get("range", []))
        reply = compose(answer, resource, asked, location, default_type)
        hit.status, hit.location = reply.status, reply.location
        wire = reply.body
        cut = answer.cut is not None
        if cut:
            wire = wire[: int(len(wire) * answer.cut)]
        if answer.slow == "head":  # the head, then the body, a byte at a time
            pause, step, wire = TRICKLE, 1, reply.head + wire
        else:
            conn.sendall(reply.head)
            pause = TRICKLE if answer.slow else DRIP_PAUSE if answer.drip else 0
            step = max(answer.drip, -(-len(wire) // MAX_DRIPS)) if answer.drip else len(wire) or 1
            step = 1 if answer.slow else step
        started = time.monotonic()
        for pos in range(0, len(wire), step):
            if pos and pause and released.wait(pause):
                return False
            if answer.slow and time.monotonic() - started > TRICKLE_FOR:
                return False
            conn.sendall(wire[pos : pos + step])
        if answer.trailing and not cut and not reply.closes:
            conn.sendall(b"\r\n\r\nJUNK AFTER THE END\r\n")
        if answer.end == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if answer.end == "hang" or (answer.end == "keep" and (cut or reply.closes)):
            released.wait(HANG)  # the client's timeout or deadline must end this
            return False
        return answer.end == "keep" and reply.status is not None


def _range_start(values: list[str]) -> int | None:
    if len(values) != 1 or not values[0].startswith("bytes=") or not values[0].endswith("-"):
        return None
    start = values[0][6:-1]
    return int(start) if start.isascii() and start.isdigit() else None


# --- the guard: nothing leaves the machine ---------------------------------------------------


def literal_loopback(host: str) -> bool:
    # Written apart from urls.is_loopback_host on purpose: the guard must not share the
    # judgment of the code it checks.
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    attempts: list[tuple[str, str, int]] = field(default_factory=list)  # scheme, host, port


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Guard:
    """Every connection urllib3 opens is recorded; one off the machine is refused (the
    test must not reach the network) and, when plain HTTP, is a violation checked later."""
    seen = Guard()
    original = urllib3.connection.HTTPConnection._new_conn

    def new_conn(conn: urllib3.connection.HTTPConnection) -> socket.socket:
        https = isinstance(conn, urllib3.connection.HTTPSConnection)
        seen.attempts.append(("https" if https else "http", conn._dns_host, conn.port))
        if not literal_loopback(conn._dns_host):
            raise urllib3.exceptions.NewConnectionError(conn, "off the machine: refused by test")
        return original(conn)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "_new_conn", new_conn)
    # truststore loads the system's CAs again for every TLS connection (50 ms here); the
    # servers' certificate is signed by the CA the Network adds, and nothing else is reached.
    monkeypatch.setattr(ssl.SSLContext, "set_default_verify_paths", lambda self: None)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return seen


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    ca = make_ca(tmp_path_factory.mktemp("ca"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.server_cert, ca.server_key)
    hostile_servers = Servers(second_loopback_host(), context, Network(ca_bundle=ca.cert))
    yield hostile_servers
    hostile_servers.close()


# --- strategies ------------------------------------------------------------------------------

SANE_FORMS = ["abs", "path", "relative", "proto", "dotdot", "fragment", "userinfo", "upper"]
ODD_FORMS = ["query", "long", "huge", "backslash", "space", "empty", "missing", "scheme"]
ELSEWHERE_FORMS = ["far", "far_https", "bad"]  # off the machine, or not parsable
STATUSES = [404, 500, 503, 403, 429, 401, 408, 400, 410, 204, 304, 100, 101, 102, 103, 199]
STATUSES += [201, 203, 299, 300, 305, 306, 309, 399, 418, 451, 502, 599, 600, 999]


def locations(routes: int, lowest: int = 0) -> st.SearchStrategy[Loc]:
    """Locations naming one of the paths ``lowest`` to ``routes - 1``."""
    return st.builds(
        Loc,
        form=st.one_of(*map(st.sampled_from, (SANE_FORMS, ODD_FORMS, ELSEWHERE_FORMS))),
        origin=st.sampled_from(list(ORIGINS)),
        to=st.integers(lowest, routes - 1),
        variant=st.integers(0, 7),
    )


# What an answer may lie about; an answer tells up to three lies, the rest is faithful.
CR_LIES = ["shift", "zero", "total", "star", "short_end", "backwards", "garbage", "missing"]
LIES: dict[str, list] = {
    "cr": [*CR_LIES, "always206"],
    "cr416": ["asked", "total", "garbage", "missing"],
    "length": ["short", "long", "dup_same", "dup_diff", "junk"],
    "chunks": ["bad_size", "short_last", "huge", "negative", "no_end"],
    "cut": [0.0, 0.1, 0.5, 0.999],
    "end": ["reset", "hang", "keep"],  # keep: a body that ends with the close never ends
    "interim": ["100", "103"],
    "trailing": [True],
    "content_type": ["html", "missing"],
    "noise": sorted(NOISE),
    "encoding": [],  # the test's own list
}


@st.composite
def answers(draw: st.DrawFn, routes: int, encodings: list[str], lowest: int = 0) -> Answer:
    kind = draw(st.sampled_from(["full", "range", "range", "redirect", "redirect", "status"]))
    kind = draw(st.sampled_from([kind] * 14 + ["416", "garbage"]))
    lies = draw(st.sets(st.sampled_from(sorted(LIES)), max_size=3))

    def pick(name: str, faithful: object, choices: list | None = None) -> object:
        choices = choices if choices is not None else LIES[name]
        return draw(st.sampled_from(choices)) if name in lies and choices else faithful

    status, location = 200, None
    if kind == "redirect":
        status = draw(st.sampled_from([*sorted(REDIRECT_STATUSES), 300]))
        location = draw(locations(routes, lowest))
    elif kind == "status":
        status = draw(st.sampled_from(STATUSES))
    framing = draw(st.sampled_from(["length", "length", "chunked", "close", "http10"]))
    closes = framing in ("close", "http10")
    return Answer(
        kind=kind,
        status=status,
        cr=pick("cr416", "honest") if kind == "416" else pick("cr", "honest"),
        shift=draw(st.sampled_from([1, 2, 5, -1, -3, 100, 7])),
        framing=framing,
        length=pick("length", "honest"),
        chunks=pick("chunks", draw(st.sampled_from(["good", "ext", "trailer"]))),
        cut=pick("cut", None),
        end=pick("end", "close" if closes else draw(st.sampled_from(["keep", "close"]))),
        drip=draw(st.sampled_from([0, 0, 0, 1, 300])),
        interim=pick("interim", ""),
        noise=tuple(draw(st.lists(st.sampled_from(LIES["noise"]), min_size=1, max_size=2)))
        if "noise" in lies
        else (),
        location=location,
        trailing=pick("trailing", False),
        encoding=pick("encoding", "", encodings),
        content_type=pick("content_type", "right"),
    )


@st.composite
def honest_chain(draw: st.DrawFn, start: str, hops: int, first: int) -> list[tuple[Answer, ...]]:
    """Redirects that break no rule (no downgrade, origins that verify), then a faithful
    answer: a download through them must succeed."""
    chain: list[tuple[Answer, ...]] = []
    current = start
    for i in range(hops):
        https = ORIGINS[current][0] == "https"
        form = draw(st.sampled_from(["abs", "path", "relative", "proto", "dotdot", "fragment"]))
        if form == "abs":  # anywhere that verifies, but never back to plain HTTP
            current = draw(st.sampled_from(VERIFIED_HTTPS if https else PLAIN + VERIFIED_HTTPS))
        elif form == "proto":  # another host, the same scheme
            current = draw(st.sampled_from(VERIFIED_HTTPS if https else PLAIN))
        loc = Loc(form=form, origin=current, to=first + i + 1)
        status = draw(st.sampled_from(sorted(REDIRECT_STATUSES)))
        chain.append((Answer(kind="redirect", status=status, location=loc),))
    framing = draw(st.sampled_from(["length", "chunked", "close", "http10"]))
    final = Answer(
        kind=draw(st.sampled_from(["full", "range"])),
        framing=framing,
        chunks=draw(st.sampled_from(["good", "ext", "trailer"])),
        # A body that ends with the connection needs the close.
        end="close" if framing in ("close", "http10") else draw(st.sampled_from(["keep", "close"])),
        drip=draw(st.sampled_from([0, 0, 1, 300])),
        interim=draw(st.sampled_from(["", "100"])),
        encoding=draw(st.sampled_from(["", "gzip-header"])),
    )
    chain.append((final,))
    return chain


@dataclass(frozen=True)
class Case:
    """One download example."""

    honest: bool
    size: int
    seed: int
    start: str  # origin key of the first path
    routes: tuple[tuple[Answer, ...], ...]
    via: str = "source"  # source (GitHubSource.fetch) | direct (download() with a secret)
    home: str = "A"  # the API's origin (source) / where the secret is given for (direct)
    secret: str = "authorization"  # direct: the header carrying the token
    expected: str = "exact"  # exact | none | more | less: the size the release lists
    limit: str = "plenty"  # plenty | exact | less: max_bytes
    part: str = "none"  # none | prefix | full | stale
    part_at: float = 0.5
    min_rate: bool = False
    deadline: float = DEADLINE

    @property
    def asset(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)


sizes = st.one_of(st.sampled_from([0, 1, 10, 1000, 70_000]), st.integers(0, 3000))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Seven mixes: honest (must succeed), hostile (answers with up to three lies each), a
    size lie (a faithful answer but for one lie about its length, or a cut), a loop (of one
    or two paths, on any origins), an escape (sane hops, then a Location off the machine,
    unparsable or ambiguous), a resume (a part, and a 206 that may lie about where it
    starts, where it ends or the whole's size; then an answer for a restart) and a trickle
    (an answer whose head or body comes a byte at a time: only the deadline, SHORT_DEADLINE
    here, ends it)."""
    mix = draw(
        st.sampled_from(["honest", "honest", "hostile", "hostile", "size", "loop", "escape"])
    )
    mix = draw(st.sampled_from([mix] * 20 + ["resume"] * 4 + ["trickle"]))
    size = draw(sizes)
    via = draw(st.sampled_from(["source", "direct"]))
    home = draw(st.sampled_from(["A", "A+"]))
    start = draw(hostile([home, "A", "A+", "B", "C", "Al", "B+"]))
    if mix == "honest":
        routes = tuple(draw(honest_chain(start, draw(st.integers(0, 4)), 0)))
        return Case(
            honest=True,
            size=size,
            seed=draw(st.integers(0, 2**16)),
            start=start,
            routes=routes,
            via=via,
            home=home,
            secret=draw(st.sampled_from(["authorization", "session", "cookie"])),
            expected=draw(st.sampled_from(["exact", "none"])),
            part=draw(st.sampled_from(["none", "prefix", "full", "stale"])),
            part_at=draw(st.sampled_from([0.0, 0.3, 0.9])),
        )
    if mix == "hostile":
        count = draw(st.integers(1, 5))
        routes = tuple(
            tuple(draw(st.lists(answers(count, ["", "gzip-header"]), min_size=1, max_size=2)))
            for _ in range(count)
        )
    elif mix == "loop":
        count = draw(st.integers(1, 2))
        routes = tuple(
            (
                Answer(
                    kind="redirect",
                    status=draw(st.sampled_from(sorted(REDIRECT_STATUSES))),
                    location=Loc(
                        form=draw(st.sampled_from([*SANE_FORMS, "query"])),
                        origin=draw(st.sampled_from(PLAIN + VERIFIED_HTTPS)),
                        to=(i + 1) % count,
                    ),
                ),
            )
            for i in range(count)
        )
    elif mix == "size":
        chain = draw(honest_chain(start, draw(st.integers(0, 1)), 0))
        final, lie = chain[-1][0], draw(st.sampled_from(["length", "close", "chunks", "cut"]))
        if lie == "length":  # what Content-Length says
            final = replace(final, framing="length", length=draw(st.sampled_from(LIES[lie])))
        elif lie == "close":  # a body that ends with the connection, early
            framing = draw(st.sampled_from(["close", "http10"]))
            final = replace(final, framing=framing, cut=draw(st.sampled_from(LIES["cut"])))
        elif lie == "chunks":
            final = replace(final, framing="chunked", chunks=draw(st.sampled_from(LIES[lie])))
        else:  # a Content-Length that is right, and a body that stops short of it
            end = draw(st.sampled_from(["close", "reset", "hang"]))
            final = replace(final, framing="length", cut=draw(st.sampled_from(LIES[lie])), end=end)
        routes = (*chain[:-1], (final, *chain[-1]))
    elif mix == "trickle":
        chain = draw(honest_chain(start, draw(st.integers(0, 1)), 0))
        final = draw(st.one_of(st.just(chain[-1][0]), answers(len(chain), [""])))
        slow = replace(final, slow=draw(st.sampled_from(["head", "body"])))
        return Case(
            honest=False,
            size=draw(st.integers(20, 3000)),  # a body that takes longer than the deadline
            seed=draw(st.integers(0, 2**16)),
            start=start,
            routes=(*chain[:-1], (slow,)),
            via=via,
            home=home,
            expected=draw(st.sampled_from(["exact", "none"])),
            min_rate=False,
            deadline=SHORT_DEADLINE,
        )
    elif mix == "resume":
        chain = draw(honest_chain(start, draw(st.integers(0, 1)), 0))
        resumed = Answer(
            kind="range",
            cr=draw(st.sampled_from(["honest", *LIES["cr"]])),
            shift=draw(st.sampled_from([1, 2, 5, -1, -3, 100, 7])),
            length=draw(hostile(["honest", *LIES["length"]])),
            end=draw(hostile(["keep", "close", "reset"])),
            cut=draw(hostile([None, *LIES["cut"]])),
        )
        routes = (*chain[:-1], (resumed, *chain[-1]))
        return Case(
            honest=False,
            size=max(size, 2),
            seed=draw(st.integers(0, 2**16)),
            start=start,
            routes=routes,
            via=via,
            home=home,
            expected=draw(st.sampled_from(["exact", "none"])),
            part="prefix",
            part_at=draw(st.sampled_from([0.3, 0.5, 0.9])),
        )
    else:
        hops = draw(st.integers(0, 3))
        chain = draw(honest_chain(start, hops, 0))[:-1]
        escape = Loc(
            form=draw(st.sampled_from([*ELSEWHERE_FORMS, "backslash", "scheme", "space"])),
            origin=draw(st.sampled_from(list(ORIGINS))),
            variant=draw(st.integers(0, 7)),
        )
        status = draw(st.sampled_from(sorted(REDIRECT_STATUSES)))
        framing = draw(st.sampled_from(["length", "chunked", "close"]))
        chunks = draw(hostile(["good", *LIES["chunks"]]))  # a body only discard() reads
        end = "close" if framing == "close" else "keep"
        answer = Answer(
            "redirect", status, framing=framing, chunks=chunks, end=end, location=escape
        )
        routes = (*chain, (answer,))
    return Case(
        honest=False,
        size=size,
        seed=draw(st.integers(0, 2**16)),
        start=start,
        routes=routes,
        via=via,
        home=home,
        secret=draw(st.sampled_from(["authorization", "session", "cookie", "proxy"])),
        expected=draw(hostile(["exact", "none", "more", "less"])),
        limit=draw(hostile(["plenty", "exact", "less"])),
        part=draw(hostile(["none", "prefix", "full", "stale"])),
        part_at=draw(st.sampled_from([0.0, 0.3, 0.9])),
        min_rate=draw(st.booleans()),
    )


# --- what every example checks --------------------------------------------------------------


def parts(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(glob.escape(dest.name) + ".*.part"))


def check_exchange(
    hits: list[Hit], home: tuple[str, str, int] | None, servers: Servers, guard: Guard, since: int
) -> Counter[str]:
    """Invariants 2 and 5 on what went over the wire; returns what happened, for the stats."""
    seen: Counter[str] = Counter()
    assert not servers.errors, servers.errors
    token = TOKEN.encode()
    for hit in hits:
        at_home = home is not None and hit.origin == home
        # The Host header names the address the request went to.
        assert hit.host is not None, hit.head[:200]
        assert (hit.host == "localhost" and hit.local[0] == "127.0.0.1") or (
            hit.host == hit.local[0]
        ), hit
        if token in hit.head:
            assert at_home, f"token sent to {hit.origin}, not {home}: {hit.head[:300]!r}"
            seen["token at home"] += 1
        elif at_home:
            seen["home without token"] += 1
        if not at_home:
            # requests turns a Location's user:pass@ into Basic; nothing of the user's.
            assert all(v == BASIC for v in hit.headers.get("authorization", [])), hit
            assert "cookie" not in hit.headers and "proxy-authorization" not in hit.headers
            if any(token in h.head for h in hits[: hit.index]):
                seen["foreign after token"] += 1
        source = hit.follows
        if source is not None and source < hit.index:
            before = hits[source]
            assert before.status in REDIRECT_STATUSES, (before, hit)
            assert not (before.scheme == "https" and hit.scheme == "http"), (before, hit)
            # It went where the Location said (host and port; requests may re-quote paths).
            told = urljoin(
                f"{before.scheme}://{before.headers['host'][0]}{before.target}", before.location
            )
            assert (urlsplit(told).hostname, urlsplit(told).port) == (hit.host, hit.local[1])
            seen["redirect followed"] += 1
    for hit in hits:  # the longest chain of followed redirects
        depth, at = 0, hit
        while at.follows is not None and at.follows < at.index:
            depth, at = depth + 1, hits[at.follows]
        assert depth <= MAX_REDIRECTS, f"{depth} redirects followed"
        if depth == MAX_REDIRECTS:
            seen["longest chain"] += 1
    for scheme, host, port in guard.attempts[since:]:
        if not literal_loopback(host):
            assert scheme == "https", f"plain HTTP to {host}:{port} was attempted"
            seen["https off the machine"] += 1
    for hit in hits:
        if hit.status in REDIRECT_STATUSES and hit.location:
            with contextlib.suppress(ValueError):
                target = urlsplit(urljoin(f"http://{hit.headers['host'][0]}/", hit.location))
                if target.scheme == "http" and not literal_loopback(target.hostname or ""):
                    seen["plain http elsewhere refused"] += 1
    return seen


def check_texts(exc: BaseException | None, records: list[logging.LogRecord]) -> None:
    if exc is not None:
        text = "".join(traceback.format_exception(exc)) + repr(exc)
        assert TOKEN not in text, text
        assert QUERY_SECRET not in str(exc), str(exc)
        assert "\n" not in str(exc), str(exc)
    for record in records:
        assert TOKEN not in record.getMessage(), record.getMessage()


def check_files(
    case: Case,
    dest: Path,
    own: Path,
    before: dict[Path, bytes],
    result: object,
    error: DownloadError | None,
    expected: int | None,
    max_bytes: int,
    hits: list[Hit],
) -> str:
    """Invariant 3. ``own``: the part of this download; ``before``: the parts the example
    made beside ``dest`` (its own, or one of another URL)."""
    asset = case.asset
    if expected is not None and expected > max_bytes:  # refused before it starts
        assert error is not None and "more than the limit" in str(error), error
        assert not hits and not dest.exists()
        assert {p: p.read_bytes() for p in parts(dest)} == before, "changed without a request"
        return "refused at once"
    if error is None:
        data = dest.read_bytes()
        assert result.size == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
        assert asset.startswith(data), f"{len(data)} bytes that are not the asset's"
        if expected is not None:
            assert len(data) == expected
        assert parts(dest) == []
        return "ok" if data == asset else "ok (a declared prefix)"
    assert not dest.exists(), "a failed download left a file at the destination"
    left = parts(dest)
    assert left in ([], [own]), f"left {left}, of {list(before)}"  # another URL's: removed
    if left:
        kept = own.read_bytes()
        assert asset.startswith(kept), "the part kept is not a prefix of the asset"
        assert len(kept) <= max_bytes and (expected is None or len(kept) <= expected)
        message = str(error)
        # A size refused: nothing to resume.
        for refusal in ("more than the limit", "release lists", "sent more than"):
            assert refusal not in message, message
        return "failed, part kept"
    return "failed"


# --- the download property -------------------------------------------------------------------


def test_downloads_against_hostile_servers(
    servers: Servers, guard: Guard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stats: Counter[str] = Counter()

    @examples(300)
    @given(case=cases())
    def run(case: Case) -> None:
        stats.update(play_download(case, servers, guard, caplog))

    run()
    print(dict(sorted(stats.items())))
    # The dangerous situations were reached (else the invariants held vacuously).
    reached = ["token at home", "foreign after token", "redirect followed", "ok", "honest"]
    reached += ["failed, part kept", "longest chain", "plain http elsewhere refused"]
    assert_reached(stats, reached, "TRAYUPDATER_DOWNLOAD_EXAMPLES")


def play_download(
    case: Case, servers: Servers, guard: Guard, caplog: pytest.LogCaptureFixture
) -> Counter[str]:
    prefix = servers.new_prefix()
    asset = case.asset
    n = len(asset)
    paths = [f"/{prefix}/h{i}" for i in range(len(case.routes))]
    servers.install(paths, [Route(answers, asset) for answers in case.routes])
    url = servers.base(case.start) + paths[0]
    listed = {"exact": n, "none": 0, "more": n + 3, "less": max(0, n - 3)}[case.expected]
    expected = listed or None
    max_bytes = {"plenty": 2 * n + 1000, "exact": max(n, 1), "less": max(1, n // 2)}[case.limit]
    pace = Pace(
        timeout=READ_TIMEOUT,
        deadline=case.deadline,
        min_rate=1000 if case.min_rate else 0,
        rate_window=0.2,
    )
    home = servers.origin(case.home)
    network = servers.network
    caplog.clear()
    since = len(guard.attempts)
    error: DownloadError | None = None
    result = None
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / NAME
        own = part_path(dest, url, expected)
        if case.part in ("prefix", "full"):
            own.write_bytes(asset[: int(n * case.part_at)] if case.part == "prefix" else asset)
        elif case.part == "stale":
            part_path(dest, url + "?older=1", expected).write_bytes(b"of another release")
        before = {p: p.read_bytes() for p in parts(dest)}
        started = time.monotonic()
        if case.via == "source":
            source = GitHubSource(
                REPO,
                api_url=servers.base(case.home),
                token=TOKEN,
                network=network,
                timeout=(READ_TIMEOUT, READ_TIMEOUT),
                answer_deadline=case.deadline,
            )
            client = source.client
            item = Asset(name=NAME, api_url=url, download_url="", size=listed)
            release = Release(tag="v1.0.0", version=Version("1.0.0"), assets=(item,))
            allowed = home  # only the API's origin may see it

            def call() -> object:
                return source.fetch(release, item, dest, max_bytes=max_bytes, pace=pace)

        else:
            client = HttpClient(network=network)
            headers = {"Accept": "application/octet-stream"}
            value = f"Bearer {TOKEN}"
            if case.secret == "session":
                client.session.headers["Authorization"] = value
            else:
                name = {"authorization": "Authorization", "cookie": "Cookie"}.get(case.secret)
                headers[name or "Proxy-Authorization"] = value
            allowed = servers.origin(case.start)  # where it is given for

            def call() -> object:
                return download(
                    client,
                    url,
                    dest,
                    headers=headers,
                    max_bytes=max_bytes,
                    pace=pace,
                    expected_size=expected,
                )

        try:
            result = call()
        except DownloadError as exc:  # anything else fails the example: invariant 1
            error = exc
        finally:
            took = time.monotonic() - started
            client.close()
            hits = servers.finish()
        assert took < case.deadline + SLACK, f"took {took:.1f} s"
        check_texts(error, caplog.records)
        seen = check_exchange(hits, allowed, servers, guard, since)
        outcome = check_files(case, dest, own, before, result, error, expected, max_bytes, hits)
    if case.honest:
        assert error is None, f"an honest server, and yet: {error}"
        assert outcome == "ok", outcome
        seen["honest"] += 1
    seen[outcome] += 1
    if error is not None:
        seen[f"error: {kind_of(error)}"] += 1
    return seen


def kind_of(error: BaseException) -> str:
    """The message without URLs and numbers: what kind of failure, for the statistics."""
    text = re.sub(r"\S+://\S*|'[^']*'|\d+", "#", str(error))
    return text[:70]


# --- the API property ------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCase:
    size: int
    seed: int
    home: str
    token: bool
    prereleases: bool
    retries: int
    latest_pre: bool
    asset_start: str
    listed: str  # exact | none | wrong
    routes: tuple[tuple[Answer, ...], ...]  # latest, list, then the asset's paths
    deadline: float = DEADLINE  # of each answer, and of the download

    @property
    def asset(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)


@st.composite
def api_cases(draw: st.DrawFn) -> ApiCase:
    count = 2 + draw(st.integers(1, 3))
    api = answers(count, ["", "", "gzip-real", "gzip-header", "gzip-bad"])
    first = Answer(encoding=draw(st.sampled_from(["", "gzip-real"])))  # a fine API answer
    limited = st.builds(  # GitHub's rate-limit answers, with odd values
        Answer,
        kind=st.just("status"),
        status=st.sampled_from([403, 429]),
        noise=st.sampled_from([(k,) for k in sorted(NOISE) if k.startswith(("retry", "rate"))]),
    )
    moved = st.builds(  # a renamed repository: GitHub answers 301, 302 or 307 elsewhere
        Answer,
        kind=st.just("redirect"),
        status=st.sampled_from([301, 302, 307]),
        location=st.builds(
            Loc,
            form=st.sampled_from(SANE_FORMS),
            origin=st.sampled_from(list(ORIGINS)),
            to=st.integers(0, 1),
        ),
    )
    routes = [
        tuple(
            draw(st.lists(st.one_of(st.just(first), api, limited, moved), min_size=1, max_size=3))
        )
        for _ in range(2)
    ]
    # The asset's paths send only to each other: an API answer served as the asset when no
    # size is listed is what the server says the asset is (the checksum's job, not ours).
    asset = answers(count, ["", "gzip-header"], lowest=2)
    routes += [tuple(draw(st.lists(asset, min_size=1, max_size=2))) for _ in range(count - 2)]
    deadline = DEADLINE
    if draw(st.sampled_from([False] * 19 + [True])):  # a trickle: only the deadline ends it
        deadline = SHORT_DEADLINE
        path = draw(st.integers(0, len(routes) - 1))
        slow = replace(routes[path][0], slow=draw(st.sampled_from(["head", "body"])))
        routes[path] = (slow, *routes[path][1:])
    home = draw(st.sampled_from(["A", "A+"]))
    return ApiCase(
        size=draw(sizes),
        seed=draw(st.integers(0, 2**16)),
        home=home,
        token=draw(st.booleans()),
        prereleases=draw(st.booleans()),
        retries=draw(hostile([0, 1])),
        latest_pre=draw(hostile([False, True])),
        asset_start=draw(hostile([home, "B", "C", "Al", "A+", "A"])),
        listed=draw(hostile(["exact", "none", "wrong"])),
        routes=tuple(routes),
        deadline=deadline,
    )


def release_json(tag: str, prerelease: bool, url: str, size: int) -> dict:
    asset = {"name": NAME, "url": url, "browser_download_url": url, "size": size}
    return {"tag_name": tag, "draft": False, "prerelease": prerelease, "assets": [asset]}


def test_api_checks_against_hostile_servers(
    servers: Servers, guard: Guard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stats: Counter[str] = Counter()

    @examples(200)
    @given(case=api_cases())
    def run(case: ApiCase) -> None:
        stats.update(play_api(case, servers, guard, caplog))

    run()
    print(dict(sorted(stats.items())))
    reached = ["token at home", "foreign after token", "release", "downloaded", "rate limit"]
    assert_reached(stats, reached, "TRAYUPDATER_DOWNLOAD_EXAMPLES")


def play_api(
    case: ApiCase, servers: Servers, guard: Guard, caplog: pytest.LogCaptureFixture
) -> Counter[str]:
    prefix = servers.new_prefix()
    asset = case.asset
    n = len(asset)
    api = f"/{prefix}/api"
    hops = [f"/{prefix}/h{i}" for i in range(len(case.routes) - 2)]
    paths = [f"{api}/repos/{REPO}/releases/latest", f"{api}/repos/{REPO}/releases", *hops]
    url = servers.base(case.asset_start) + hops[0]
    listed = {"exact": n, "none": 0, "wrong": n + 1}[case.listed]
    latest = release_json("v1.2.0", case.latest_pre, url, listed)
    listing = [release_json("v1.3.0-rc.1", True, url, listed), latest]
    resources = [json.dumps(latest).encode(), json.dumps(listing).encode()]
    routes = [
        Route(answers, body, "application/json")
        for answers, body in zip(case.routes, resources, strict=False)
    ]
    routes += [Route(answers, asset) for answers in case.routes[2:]]
    servers.install(paths, routes)
    home = servers.origin(case.home)
    source = GitHubSource(
        REPO,
        api_url=servers.base(case.home) + api,
        token=TOKEN if case.token else None,
        network=servers.network,
        timeout=(READ_TIMEOUT, READ_TIMEOUT),
        answer_deadline=case.deadline,
        retries=case.retries,
        backoff_base=0.0,
        sleep=lambda seconds: None,
    )
    caplog.clear()
    since = len(guard.attempts)
    seen: Counter[str] = Counter()
    errors: list[BaseException] = []
    # latest, then maybe the list; each answer may be tried retries + 1 times
    check_limit = 2 * (case.retries + 1) * case.deadline + SLACK
    with tempfile.TemporaryDirectory() as tmp:
        try:
            release = None
            started = time.monotonic()
            try:
                release = source.check(include_prereleases=case.prereleases).release
            except SourceError as exc:  # RateLimitedError among them; nothing else: 1.
                errors.append(exc)
                seen["rate limit" if isinstance(exc, RateLimitedError) else "check failed"] += 1
                if isinstance(exc, RateLimitedError):
                    check_rate_limit(source, exc, servers)
            took = time.monotonic() - started
            assert took < check_limit, f"check took {took:.1f} s"
            assert source.blocked_until <= time.time() + MAX_RATE_LIMIT_WAIT + 1
            if release is not None:
                seen["release"] += 1
                assert release.tag in ("v1.2.0", "v1.3.0-rc.1")
                item = release.asset(NAME)
                assert item is not None and item.api_url == url
                dest = Path(tmp) / NAME
                pace = Pace(timeout=READ_TIMEOUT, deadline=case.deadline, min_rate=0)
                started = time.monotonic()
                try:
                    result = source.fetch(release, item, dest, max_bytes=2 * n + 10, pace=pace)
                except DownloadError as exc:
                    errors.append(exc)
                    assert not dest.exists()
                else:
                    data = dest.read_bytes()
                    assert asset.startswith(data) and result.size == len(data)
                    if listed:
                        assert data == asset[:listed] and listed == n
                    seen["downloaded"] += 1
                took = time.monotonic() - started
                assert took < case.deadline + SLACK, f"fetch took {took:.1f} s"
        finally:
            source.close()
            hits = servers.finish()
    for exc in errors:
        check_texts(exc, [])
        seen[f"error: {kind_of(exc)}"] += 1
    check_texts(None, caplog.records)
    seen.update(check_exchange(hits, home if case.token else None, servers, guard, since))
    if case.token:
        # check() asks with it (a followed user:pass@ Location makes it Basic instead).
        api_hits = [h for h in hits if h.target.startswith(api) and h.follows is None]
        assert all(
            h.headers.get("authorization") in ([f"Bearer {TOKEN}"], [BASIC]) for h in api_hits
        )
    return seen


def check_rate_limit(source: GitHubSource, exc: RateLimitedError, servers: Servers) -> None:
    """A rate limit is honoured: no request before it ends (asked again at once here)."""
    assert exc.retry_at == source.blocked_until
    if source.blocked_until > time.time() + 1:
        before = len(servers.hits)
        with pytest.raises(RateLimitedError):
            source.check()
        assert len(servers.hits) == before, "asked again during a rate limit"


# --- regressions: what the properties found --------------------------------------------------


@pytest.mark.parametrize("location", ["http://[::1/x", "//[127.0.0.1/x"])
def test_a_redirect_to_a_location_that_cannot_be_parsed_is_refused(
    tmp_path: Path, location: str
) -> None:
    """A Location with an unclosed IPv6 bracket: requests (preparing Response.next, see the
    next test) and then urljoin raised ValueError, which escaped download() and a GitHub
    check as an internal error instead of a refused redirect."""
    client = HttpClient()
    with FileServer({"/asset": b"x"}) as server:
        server.faults.redirects["/asset"] = location
        with pytest.raises(DownloadError, match="cannot be parsed; refused"):
            download(client, server.url("/asset"), tmp_path / "a", max_bytes=100)
        with pytest.raises(HttpRefused):
            client.get(server.url("/asset"), timeout=5)
        assert len(server.hits) == 2  # nothing was asked after the redirect
    client.close()


def test_a_release_list_answering_404_is_a_source_error() -> None:
    """/releases answers [] for a repository without releases; a 404 there (no such
    repository, or a private one without a token) escaped check() as a bare exception."""
    with FileServer() as server:
        source = GitHubSource(REPO, api_url=server.url(""), retries=0)
        with pytest.raises(SourceError, match="404"):
            source.check(include_prereleases=True)
        source.close()


@pytest.mark.parametrize(
    "location",
    [
        "https:\\\\127.0.0.1:1/blob?sig=SIGSECRET",
        "https:\\\\user:PASSWORD@127.0.0.1:1/?sig=SIGSECRET",
    ],
)
def test_a_refused_location_without_its_slashes_is_shown_without_query_or_password(
    tmp_path: Path, location: str
) -> None:
    """``https:\\\\host/x?sig=...`` has no "://": the redaction of ambiguous URLs split at
    "://" only, so the whole URL, query and user:password included, went into the error."""
    with FileServer() as server:
        server.faults.redirects["/asset"] = location
        client = HttpClient()
        with pytest.raises(DownloadError, match="backslash") as info:
            download(client, server.url("/asset"), tmp_path / "a", max_bytes=100)
        client.close()
    message = str(info.value)
    assert "SIGSECRET" not in message and "PASSWORD" not in message, message
    assert "127.0.0.1:1/" in message  # still says where it was sent


def test_the_body_of_a_redirect_is_not_read_into_memory() -> None:
    """With allow_redirects=False requests still prepared Response.next of a redirect, and
    read the redirect's whole body into memory to do so (stream=True or not) before
    HttpClient could discard it: a 302 with gigabytes of body was a memory bomb, bounded
    only by the deadline (an hour for a download). Found while looking into the ValueError
    that preparation raised for an unparsable Location (the first regression above)."""
    announced = 128 * 1024 * 1024
    sent = [0]

    def handle(conn: socket.socket) -> None:
        if b" /next " in conn.recv(65536):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /next\r\n")
        conn.sendall(b"Content-Length: %d\r\n\r\n" % announced)
        block = bytes(1 << 20)
        while sent[0] < announced:
            conn.sendall(block)
            sent[0] += len(block)

    with RawServer(handle) as server:
        client = HttpClient()
        response = client.get(f"{server.url}/asset", timeout=10)
        assert response.status_code == 200 and response.content == b"ok"
        client.close()
    assert sent[0] < 32 * 1024 * 1024, f"{sent[0] >> 20} MiB of the redirect's body were read"


@pytest.mark.parametrize("status", [302, 500])
def test_a_negative_chunk_size_in_an_answer_not_read_is_no_value_error(status: int) -> None:
    """A chunk size of "-5" makes http.client's read() raise ValueError; discard(), which
    reads what is left of a redirect or an error answer, let it escape download() and
    check() (read1, used for the bodies that are kept, fails with a ProtocolError)."""
    answer = f"HTTP/1.1 {status} X\r\nLocation: /next\r\nTransfer-Encoding: chunked\r\n\r\n"

    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(answer.encode() + b"5\r\nhello\r\n-5\r\nworld")

    with RawServer(handle) as server:
        source = GitHubSource(REPO, api_url=server.url, retries=0, timeout=(2.0, 2.0))
        with pytest.raises(SourceError):
            source.check()
        with tempfile.TemporaryDirectory() as tmp, pytest.raises(DownloadError):
            download(source.client, server.url + "/asset", Path(tmp) / "a", max_bytes=100)
        source.close()
