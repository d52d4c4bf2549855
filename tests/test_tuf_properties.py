"""Property: a hostile or broken TUF repository gets an error out of the ``tuf`` source, or
releases it truly signed, nothing else; and it leaves nothing behind that the honest
repository cannot get past.

A repository made by the real publisher CLI (versions 1.0.0 and 1.1.0, metadata version 3)
gives the keys and the honest files. Each example is served by a real HTTP server on
loopback (port 0) and played against a :class:`TufSource`, in three stages:

1. optionally, a check against the honest repository (the cache then holds version 3);
2. the hostile stage: what is served is the honest repository with any of
   - metadata files (``timestamp.json``, ``N.snapshot.json``, ``N.targets.json``,
     ``2.root.json``) mutated as bytes (flipped, cut, emptied, padded past ngclient's caps,
     nested 100,000 deep, NUL and lone surrogates, duplicate keys) or as JSON (any value of
     any type at any path, keys deleted, signatures removed, duplicated, made up or of
     another key), older genuine files put back, a file of another role in its place;
   - a re-signing with the publisher's real keys (so ngclient's checks pass and
     trayupdater's own parsing is what is tested): versions going back, equal, forward or
     giant, expired roles, the wrong role's or an attacker's key, lengths and hashes in
     snapshot and timestamp that lie, any JSON value at any path of the signed part, and
     targets whose custom metadata, names and hashes are hostile (any JSON value for
     version, rollout, recalled; names with ``/``, ``..``, NUL, over 255 bytes; 10,001
     targets; hashes that are not SHA-256 hex, lengths that lie);
   - a new ``2.root.json``: garbage, signed by an attacker's key only, genuine (fresh or
     expired), genuine but naming another version;
   - HTTP faults on any file: statuses from 304 to 999 (with and without Retry-After),
     redirects (a loop, to another file, off the machine over plain HTTP), bodies cut
     short, without a length, over every cap, dripped past the deadline, headers never sent;
   then ``check()``, and when a release came back, a download of one of its files (honest,
   flipped, cut, longer, or faulty over HTTP);
3. recovery: the honest repository served again: the same files, or, when the hostile stage
   signed anything with the real keys (which TUF rightly remembers), a legitimately newer
   publish of the same releases above every version signed so far. A check must succeed
   with exactly the honest releases, and their files must download.

Checked for every example: ``check()`` raises only SourceError and its kinds (never
KeyError, TypeError, ValueError, RecursionError, OSError, a tuf or requests exception),
with a one-line message; what it returns satisfies the format's contract
(:mod:`trayupdater.tuf_format`: versions that parse and agree with the folder, plain file
names, SHA-256 in 64 hex, rollouts in range, a newest release that is newest and not
recalled ...) and each asset is a target some genuinely signed targets metadata listed with
that length and hash; a download hands on only bytes matching the signed hash, or fails
with DownloadError, VerificationError or SourceError; every call ends within its
deadlines; nothing connects off the machine. At the end, the property asserts the
situations its invariants are about were reached.

``TRAYUPDATER_TUF_EXAMPLES=N`` runs N random examples instead of the derandomized default.
In about 800 examples it found nothing to fix in the client; it catches a digest, rollout or
file-name check taken out of the format, a download not checked against its signed hash, and
a tuf exception not mapped to a SourceError.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import urllib3.util.connection
from hypothesis import example, given
from hypothesis import strategies as st
from packaging.version import Version
from property_settings import assert_reached, property_settings
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner
from tuf_support import Publisher

from trayupdater.download import Pace
from trayupdater.errors import (
    DownloadError,
    MetadataExpiredError,
    RateLimitedError,
    SourceError,
    UntrustedMetadataError,
    VerificationError,
)
from trayupdater.release_model import Release, parse_version
from trayupdater.sources.base import CheckResult
from trayupdater.sources.github_json import file_name_problem
from trayupdater.sources.tuf_source import TufSource
from trayupdater.tuf_format import LATEST_TIME, MAX_FIELD, MAX_STEP_SECONDS, MAX_STEPS
from trayupdater.tuf_keys import KeyStore

HONEST_VERSION = 3  # init (1) and two publishes
READ_TIMEOUT = 0.25  # connect and each read
DEADLINE = 0.4  # one metadata file, from request to last byte
RETRIES = 1
SLACK = 3.0
HANG = 3.0  # the longest a server thread waits before giving up on its own
DRIP = (8, 0.05)  # bytes, pause: a metadata file takes seconds, past DEADLINE
HUGE = 6 * 1024 * 1024  # past every ngclient cap (root 512 KiB ... targets 5 MB)
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"  # old: conditional requests are used
OFFSITE = "http://192.0.2.1/metadata/timestamp.json"  # TEST-NET: must never be connected to
CHECK_ERRORS = (SourceError,)  # RateLimited, MetadataExpired, UntrustedMetadata are kinds
FETCH_ERRORS = (DownloadError, VerificationError, SourceError)
HEX64 = re.compile(r"[0-9a-f]{64}")
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def when(delta: timedelta) -> str:
    return (NOW + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


FRESH = when(timedelta(days=30))
EXPIRED = when(timedelta(days=-1))


# --- the honest repository and its keys ----------------------------------------------------------


@dataclass
class Honest:
    root: dict[str, Any]  # 1.root.json, as parsed
    root_bytes: bytes
    root_path: Path  # the trusted root a build ships
    signers: dict[str, CryptoSigner]
    targets: dict[str, dict[str, Any]]  # path -> target entry of the honest targets metadata
    files: dict[str, bytes]  # target path -> bytes
    template: dict[str, dict[str, Any]]  # role -> its signed part (a copy to edit)
    old: dict[str, bytes]  # URL path -> genuine files of metadata version 2 (1.0.0 only)
    attacker: CryptoSigner


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Honest:
    publisher = Publisher(tmp_path_factory.mktemp("tufprop")).init()
    publisher.add("1.0.0")
    saved = publisher.save()
    publisher.add("1.1.0")
    md = publisher.metadata
    keys = KeyStore(publisher.keys)
    signers = {role: keys.load(role) for role in ("root", "timestamp", "snapshot", "targets")}
    template = {
        role: json.loads((md / name).read_bytes())["signed"]
        for role, name in (
            ("timestamp", "timestamp.json"),
            ("snapshot", f"{HONEST_VERSION}.snapshot.json"),
            ("targets", f"{HONEST_VERSION}.targets.json"),
        )
    }
    targets = template["targets"]["targets"]
    files = {path: (publisher.dir / "targets" / path).read_bytes() for path in targets}
    old = {
        "/metadata/timestamp.json": saved[md / "timestamp.json"],
        "/metadata/2.snapshot.json": saved[md / "2.snapshot.json"],
        "/metadata/2.targets.json": saved[md / "2.targets.json"],
    }
    root_bytes = publisher.shipped_root.read_bytes()
    return Honest(
        root=json.loads(root_bytes)["signed"],
        root_bytes=root_bytes,
        root_path=publisher.shipped_root,
        signers=signers,
        targets=targets,
        files=files,
        template=template,
        old=old,
        attacker=CryptoSigner.generate_ed25519(),
    )


def envelope(signed: dict[str, Any], signers: list[CryptoSigner]) -> dict[str, Any]:
    payload = encode_canonical(signed).encode("utf-8")  # type: ignore[union-attr]
    return {"signatures": [s.sign(payload).to_dict() for s in signers], "signed": signed}


def dump(doc: Any) -> bytes:
    return json.dumps(doc, indent=1).encode("utf-8", "surrogatepass")


def url_path(target_path: str) -> str:
    return "/targets/" + "/".join(quote(part, safe="") for part in target_path.split("/"))


@dataclass
class Repo:
    """What one stage serves: URL path -> bytes, and what it signed genuinely."""

    files: dict[str, bytes] = field(default_factory=dict)
    signed: list[dict[str, Any]] = field(default_factory=list)  # genuinely signed parts
    versions: dict[str, int] = field(default_factory=dict)  # role -> its file's version
    root2: bytes | None = None  # a genuine 2.root.json served, as signed


def publish(
    honest: Honest,
    version: int,
    *,
    targets: dict[str, dict[str, Any]] | None = None,
    files: dict[str, bytes] | None = None,
    tweak: Callable[[str, dict[str, Any]], None] | None = None,
    signers: Callable[[str], list[CryptoSigner]] | None = None,
) -> Repo:
    """Targets, snapshot and timestamp metadata of ``version``, signed (by the real keys,
    unless ``signers`` says otherwise), ``tweak`` applied to each signed part first."""
    repo = Repo()
    listed = honest.targets if targets is None else targets
    for path, data in (honest.files if files is None else files).items():
        repo.files[url_path(path)] = data
    parts: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    for role in ("targets", "snapshot", "timestamp"):
        signed = copy.deepcopy(honest.template[role])
        signed["version"] = version
        signed["expires"] = FRESH
        if role == "targets":
            signed["targets"] = listed
        elif role == "snapshot":
            signed["meta"] = {"targets.json": {"version": version}}
        else:
            body = repo.files[names["snapshot"]]
            signed["meta"] = {
                "snapshot.json": {
                    "version": version,
                    "length": len(body),
                    "hashes": {"sha256": hashlib.sha256(body).hexdigest()},
                }
            }
        if tweak is not None:
            tweak(role, signed)
        parts[role] = signed
        keys = signers(role) if signers else [honest.signers[role]]
        data = dump(envelope(signed, keys))
        number = signed.get("version")
        name = "timestamp.json" if role == "timestamp" else f"{number}.{role}.json"
        names[role] = f"/metadata/{name}"
        repo.files[names[role]] = data
        repo.versions[role] = number if isinstance(number, int) else version
        if honest.signers[role] in keys:
            repo.signed.append(signed)
    return repo


def honest_repo(honest: Honest, version: int = HONEST_VERSION) -> Repo:
    return publish(honest, version)


def genuine_versions(doc: Any) -> Iterator[int]:
    """Every integer ``version`` in a genuinely signed part (its own, those in meta)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "version" and isinstance(value, int):
                yield int(value)
            else:
                yield from genuine_versions(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from genuine_versions(value)


# --- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: str  # status | redirect | cut | drip | hang | nolength | 304 | huge
    status: int = 0
    retry_after: str | None = None
    location: str = ""
    at: int = 0


class Server:
    """Serves one stage's files; a fault per path makes that path misbehave."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, Fault] = {}
        self.released = threading.Event()
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = _Quiet(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def serve(self, files: dict[str, bytes], faults: dict[str, Fault] | None = None) -> None:
        self.released.set()  # frees handlers still dripping or hanging for the last stage
        self.released = threading.Event()
        self.files = dict(files)
        self.faults = dict(faults or {})

    def close(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-request (a deadline passed): expected here


class _Handler(BaseHTTPRequestHandler):
    owner: Server
    protocol_version = "HTTP/1.1"
    timeout = 5

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.owner
        released = owner.released
        path = self.path.split("?", 1)[0]
        fault = owner.faults.get(path)
        body = owner.files.get(path)
        try:
            if fault is None:
                self._honest(body)
            else:
                self._faulty(fault, body or b"", released)
        except OSError:  # the client gave up: fine
            self.close_connection = True

    def _honest(self, body: bytes | None) -> None:
        if body is None:
            self._send(404, b"not found\n", {})
            return
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self._send(304, b"", {"ETag": etag, "Last-Modified": LAST_MODIFIED})
            return
        self._send(200, body, {"ETag": etag, "Last-Modified": LAST_MODIFIED})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)
        self.wfile.flush()

    def _faulty(self, fault: Fault, body: bytes, released: threading.Event) -> None:
        kind = fault.kind
        if kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._send(fault.status, b"fault\n", headers)
        elif kind == "redirect":
            self._send(302, b"", {"Location": fault.location})
        elif kind == "304":
            self._send(304, b"", {})
        elif kind == "hang":
            released.wait(HANG)
            self.close_connection = True
        elif kind in ("cut", "drip", "huge", "nolength"):
            self.send_response(200)
            if kind == "nolength":
                self.send_header("Connection", "close")
            else:
                size = HUGE if kind == "huge" else len(body)
                self.send_header("Content-Length", str(size))
            self.end_headers()
            if kind == "cut":
                self.wfile.write(body[: fault.at])
            elif kind == "nolength":
                self.wfile.write(body)
            elif kind == "huge":
                block = b" " * 65536
                for _ in range(HUGE // len(block)):
                    self.wfile.write(block)
            else:
                step, pause = DRIP
                for pos in range(0, len(body), step):
                    if pos and released.wait(pause):
                        break
                    self.wfile.write(body[pos : pos + step])
                    self.wfile.flush()
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuses (and records) any connection to a host that is not this machine."""
    attempts: list[str] = []
    real = urllib3.util.connection.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        if address[0] not in ("127.0.0.1", "localhost", "::1"):
            attempts.append(address[0])
            raise OSError(f"test guard: no connection to {address[0]}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return attempts


# --- what can be generated -----------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63, 10**400, 101, 100, 50]),
    st.text(
        alphabet=st.characters(exclude_categories=("Cs",)),
        max_size=12,
    ),
    st.sampled_from(["", "\x00", "1.2.0", "v1.2.0", "2025-01-02T03:04:05Z", "\u202e", "é" * 200]),
)


def json_values(floats: bool) -> st.SearchStrategy[Any]:
    """Any JSON value; without floats (canonical JSON, hence signing, has none)."""
    leaves = st.one_of(SCALARS, st.floats(allow_nan=True)) if floats else SCALARS
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.text(max_size=6), inner, max_size=3),
        ),
        max_leaves=6,
    )


def mutate_json(doc: Any, steps: list[int], value: Any, delete: bool) -> Any:
    """``doc`` with the value at the path ``steps`` pick replaced by ``value`` (or gone)."""
    node, parent, key = doc, None, None
    for step in steps:
        if isinstance(node, dict) and node:
            key = sorted(node)[step % len(node)]
        elif isinstance(node, list) and node:
            key = step % len(node)
        else:
            break
        parent, node = node, node[key]
    if parent is None:
        return value
    if delete and isinstance(parent, dict):
        del parent[key]
    else:
        parent[key] = value
    return doc


@dataclass(frozen=True)
class Mutation:
    kind: str
    steps: tuple[int, ...] = ()
    value: Any = None
    at: float = 0.5


BYTE_MUTATIONS = [
    "flip",
    "truncate",
    "empty",
    "pad",
    "json",
    "delete",
    "deep",
    "deep value",
    "dup first",
    "dup last",
    "nul",
    "surrogate",
    "no signatures",
    "dup signature",
    "unknown signature",
    "bad signature",
    "other role",
    "old",
]


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    kind = draw(st.sampled_from(BYTE_MUTATIONS))
    steps = tuple(draw(st.lists(st.integers(0, 20), min_size=1, max_size=6)))
    value = draw(json_values(floats=True)) if kind == "json" else None
    return Mutation(kind, steps, value, draw(st.floats(0, 1)))


def apply_mutation(m: Mutation, data: bytes, role: str, repo: Repo, honest: Honest) -> bytes:
    n = len(data)
    at = min(int(n * m.at), max(n - 1, 0))
    if m.kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 + int(m.at * 254))]) + data[at + 1 :] if n else b"x"
    if m.kind == "truncate":
        return data[:at]
    if m.kind == "empty":
        return b""
    if m.kind == "pad":
        return data + b" " * (int(m.at * 40_000))
    if m.kind == "deep":
        return b"[" * 100_000 + b"]" * 100_000
    if m.kind == "old":
        return honest.old.get(f"/metadata/{role}.json", honest.old["/metadata/timestamp.json"])
    if m.kind == "other role":
        others = [v for k, v in repo.files.items() if k.startswith("/metadata/") and v != data]
        return others[int(m.at * (len(others) - 1))] if others else honest.root_bytes
    try:
        doc = json.loads(data)
    except ValueError:
        return data
    if not isinstance(doc, dict):
        return data
    text = data.decode("utf-8", "surrogatepass")
    if m.kind in ("json", "delete"):
        return dump(mutate_json(doc, list(m.steps), m.value, m.kind == "delete"))
    if m.kind == "deep value":
        deep = json.loads("[" * 900 + "]" * 900)
        return dump(mutate_json(doc, list(m.steps), deep, False))
    if m.kind == "dup first":
        return text.replace('"signed": {', '"signed": {"version": 1, "_type": "x", ', 1).encode()
    if m.kind == "dup last":
        return (
            text.rstrip().removesuffix("}").rstrip().removesuffix("}") + ', "version": 7}}'
        ).encode()
    if m.kind == "nul":
        return text.replace('"expires": "', '"expires": "\\u0000', 1).encode()
    if m.kind == "surrogate":
        return text.replace('"_type": "', '"_type": "\\ud800', 1).encode()
    signatures = doc.get("signatures")
    if not isinstance(signatures, list):
        return data
    if m.kind == "no signatures":
        doc["signatures"] = []
    elif m.kind == "dup signature":
        doc["signatures"] = signatures + signatures
    elif m.kind == "unknown signature":
        doc["signatures"] = [*signatures, {"keyid": "ab" * 32, "sig": "00" * 64}]
    elif m.kind == "bad signature" and signatures:
        doc["signatures"] = [{**signatures[0], "sig": "11" * 64}]
    return dump(doc)


def http_faults(room: int) -> st.SearchStrategy[Fault]:
    return st.one_of(
        st.builds(
            Fault,
            kind=st.just("status"),
            status=st.sampled_from(
                [304, 400, 403, 404, 408, 410, 429, 429, 500, 502, 503, 503, 999]
            ),
            retry_after=st.sampled_from([None, "0", "5", "99999999999", "soon", "-1", ""]),
        ),
        st.builds(
            Fault, kind=st.just("redirect"), location=st.sampled_from(["self", "other", OFFSITE])
        ),
        st.builds(Fault, kind=st.just("cut"), at=st.integers(0, room)),
        st.sampled_from(
            [
                Fault("status", 429, "5"),
                Fault("drip"),
                Fault("hang"),
                Fault("nolength"),
                Fault("304"),
                Fault("huge"),
            ]
        ),
    )


FOLDERS = [
    "1.2.0", "v1.3.0", "2.0.0rc1", "1.0.0", "..", ".", "", "a/b", "1.2.0\x00", " 1.2.0",
    "1.2.0\n", "9" * 250, "1." + "0" * 300, "nightly", "\uff11.\uff12.\uff10", "v" + "1" * 255,
]  # fmt: skip
NAMES = [
    "app.tar.gz", "..", ".", "", "a\\b", "nul\x00.tgz", "x" * 300, "é" * 128, " ", "CON",
    "a.minisig", "%41 #?.zip",
]  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One target of a hostile but genuinely signed targets metadata."""

    folder: str
    name: str
    custom: Any
    content: bytes
    hashes: str  # true | lie | not hex | upper | none | extra
    length: str  # true | more | less | zero | bool | giant


def rollouts() -> st.SearchStrategy[Any]:
    valid = st.one_of(
        st.builds(lambda p: {"percent": p}, st.integers(0, 100)),
        st.builds(
            lambda steps, every, start: {
                "schedule": sorted(steps),
                "every": every,
                "start": start,
            },
            st.lists(st.integers(0, 100), min_size=1, max_size=5),
            st.integers(1, MAX_STEP_SECONDS),
            st.sampled_from(
                ["2025-01-02T03:04:05Z", "1970-01-01T00:00:00Z", "8999-01-01T00:00:00Z"]
            ),
        ),
    )
    hostile = st.one_of(
        json_values(floats=False),
        st.fixed_dictionaries(
            {"schedule": st.lists(SCALARS, max_size=60), "every": SCALARS, "start": SCALARS}
        ),
        st.fixed_dictionaries({"percent": SCALARS}),
        st.just(
            {"schedule": list(range(MAX_STEPS + 1)), "every": 1, "start": "2025-01-02T03:04:05Z"}
        ),
        st.just({"schedule": [1, 100], "every": MAX_STEP_SECONDS, "start": "8999-12-31T00:00:00Z"}),
    )
    return st.one_of(st.none(), valid, hostile)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    folder = draw(st.one_of(st.sampled_from(FOLDERS), st.text(max_size=8)))
    name = draw(st.one_of(st.sampled_from(NAMES), st.text(max_size=8)))
    version = parse_version(folder) if len(folder) < 300 and "\x00" not in folder else None
    ours: dict[str, Any] = {
        "version": draw(st.one_of(st.just(str(version or folder)), json_values(floats=False))),
    }
    if draw(st.booleans()):
        ours["published"] = draw(st.one_of(st.just("2025-01-02T03:04:05Z"), SCALARS))
    rollout = draw(rollouts())
    if rollout is not None:
        ours["rollout"] = rollout
    if draw(st.booleans()):
        ours["recalled"] = draw(st.one_of(st.booleans(), SCALARS))
    custom = draw(
        st.one_of(
            st.just({"trayupdater": ours}),
            st.just({"trayupdater": ours, "other": {"x": [1, 2]}}),
            json_values(floats=False),
        )
    )
    return Entry(
        folder,
        name,
        custom,
        draw(st.binary(max_size=64)),
        draw(st.sampled_from(["true", "true", "lie", "not hex", "upper", "none", "extra"])),
        draw(st.sampled_from(["true", "true", "more", "less", "zero", "bool", "giant"])),
    )


def target_entry(e: Entry) -> tuple[dict[str, Any], bytes]:
    digest = hashlib.sha256(e.content).hexdigest()
    hashes = {
        "true": {"sha256": digest},
        "lie": {"sha256": hashlib.sha256(e.content + b"!").hexdigest()},
        "not hex": {"sha256": "z" * 64},
        "upper": {"sha256": digest.upper()},
        "none": {"sha512": hashlib.sha512(e.content).hexdigest()},
        "extra": {"sha256": digest, "md5": "x"},
    }[e.hashes]
    n = len(e.content)
    length = {
        "true": n,
        "more": n + 5,
        "less": max(n - 1, 0),
        "zero": 0,
        "bool": True,
        "giant": 10**20,
    }[e.length]
    return {"length": length, "hashes": hashes, "custom": e.custom}, e.content


@dataclass(frozen=True)
class SignedPlan:
    """A re-signing with the real keys (of targets, snapshot, timestamp)."""

    offsets: tuple[int, int, int]  # targets, snapshot, timestamp versions: HONEST_VERSION + x
    expired: str | None
    entries: tuple[Entry, ...]
    keep_honest: bool  # the honest targets stay listed beside the hostile ones
    many: bool  # 10,001 more targets
    snapshot_lie: str  # none | version | length | hash
    timestamp_lie: str  # none | version | length | hash
    keys: tuple[tuple[str, str], ...]  # role -> wrong | attacker | none | twice | extra
    signed_mutation: tuple[str, tuple[int, ...], Any, bool] | None


@st.composite
def signed_plans(draw: st.DrawFn) -> SignedPlan:
    """Half the time a clean publish of hostile targets (so what trayupdater makes of them
    is what is tested), else with one or more of the ways the signing itself goes wrong."""
    entries_drawn = tuple(draw(st.lists(entries(), max_size=6)))
    keep_honest = draw(st.booleans())
    many = draw(st.integers(0, 80)) == 0
    if draw(st.booleans()):
        return SignedPlan(
            (1, 1, 1), None, entries_drawn, keep_honest, many, "none", "none", (), None
        )
    offset = st.sampled_from([1, 1, 1, 0, -1, 2, 10**12])
    return SignedPlan(
        offsets=(draw(offset), draw(offset), draw(offset)),
        expired=draw(st.sampled_from([None, None, None, "targets", "snapshot", "timestamp"])),
        entries=entries_drawn,
        keep_honest=keep_honest,
        many=many,
        snapshot_lie=draw(st.sampled_from(["none"] * 5 + ["version", "length", "hash"])),
        timestamp_lie=draw(st.sampled_from(["none"] * 5 + ["version", "length", "hash"])),
        keys=tuple(
            draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(["targets", "snapshot", "timestamp"]),
                        st.sampled_from(["wrong", "attacker", "none", "twice", "extra"]),
                    ),
                    max_size=1,
                )
            )
        ),
        signed_mutation=draw(
            st.one_of(
                st.none(),
                st.tuples(
                    st.sampled_from(["targets", "snapshot", "timestamp"]),
                    st.tuples(*[st.integers(0, 20)] * 4),
                    json_values(floats=False),
                    st.booleans(),
                ),
            )
        ),
    )


@dataclass(frozen=True)
class Case:
    primed: bool
    plan: SignedPlan | None
    root2: str  # none | garbage | attacker | genuine | genuine expired | genuine as 3
    mutated: tuple[tuple[str, Mutation], ...]  # role -> mutation of its served bytes
    faults: tuple[tuple[str, Fault], ...]  # role -> HTTP fault
    fetch: str  # none | honest | flip | cut | longer | fault
    fetch_fault: Fault | None
    pick: int

    @property
    def honest(self) -> bool:
        return self.plan is None and self.root2 == "none" and not self.mutated and not self.faults


METADATA_ROLES = ["timestamp", "snapshot", "targets", "root2"]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    mix = draw(st.sampled_from(["honest", "bytes", "signed", "http", "root", "all"]))
    plan = None
    if mix in ("signed", "all"):
        plan = draw(signed_plans())
    root2 = "none"
    if mix in ("root", "all") or draw(st.integers(0, 9)) == 0:
        root2 = draw(
            st.sampled_from(["garbage", "attacker", "genuine", "genuine expired", "genuine as 3"])
        )
    mutated: list[tuple[str, Mutation]] = []
    if mix in ("bytes", "all", "root"):
        mutated = draw(
            st.lists(
                st.tuples(st.sampled_from(METADATA_ROLES), mutations()), min_size=1, max_size=2
            )
        )
    faults: list[tuple[str, Fault]] = []
    if mix in ("http", "all"):
        faults = draw(
            st.lists(
                st.tuples(st.sampled_from(METADATA_ROLES), http_faults(1500)),
                min_size=1,
                max_size=2,
            )
        )
    fetch = draw(st.sampled_from(["none", "honest", "honest", "flip", "cut", "longer", "fault"]))
    return Case(
        primed=draw(st.booleans()),
        plan=plan,
        root2=root2,
        mutated=tuple(mutated),
        faults=tuple(faults),
        fetch=fetch,
        fetch_fault=draw(http_faults(100)) if fetch == "fault" else None,
        pick=draw(st.integers(0, 100)),
    )


# --- building a stage ----------------------------------------------------------------------------


def hostile_repo(case: Case, honest: Honest) -> Repo:
    plan = case.plan
    repo = honest_repo(honest) if plan is None else signed_repo(plan, honest)
    root = root2(case.root2, honest)
    if root is not None:
        repo.files["/metadata/2.root.json"], genuine = root
        if genuine is not None:
            repo.signed.append(genuine)
            repo.root2 = repo.files["/metadata/2.root.json"]
    paths = role_paths(repo)
    for role, m in case.mutated:
        path = paths[role]
        repo.files[path] = apply_mutation(m, repo.files.get(path, b"{}"), role, repo, honest)
    return repo


def role_paths(repo: Repo) -> dict[str, str]:
    return {
        "timestamp": "/metadata/timestamp.json",
        "snapshot": f"/metadata/{repo.versions.get('snapshot', HONEST_VERSION)}.snapshot.json",
        "targets": f"/metadata/{repo.versions.get('targets', HONEST_VERSION)}.targets.json",
        "root2": "/metadata/2.root.json",
    }


def root2(kind: str, honest: Honest) -> tuple[bytes, dict[str, Any] | None] | None:
    if kind == "none":
        return None
    if kind == "garbage":
        return b'{"signed": {"_type": "root"', None
    signed = copy.deepcopy(honest.root)
    signed["version"] = 3 if kind == "genuine as 3" else 2
    signed["expires"] = EXPIRED if kind == "genuine expired" else FRESH
    if kind == "attacker":
        key = honest.attacker.public_key
        signed["keys"][key.keyid] = key.to_dict()
        signed["roles"]["root"]["keyids"] = [key.keyid]
        return dump(envelope(signed, [honest.attacker])), None
    return dump(envelope(signed, [honest.signers["root"]])), signed


def signed_repo(plan: SignedPlan, honest: Honest) -> Repo:
    targets: dict[str, dict[str, Any]] = dict(honest.targets) if plan.keep_honest else {}
    files: dict[str, bytes] = dict(honest.files) if plan.keep_honest else {}
    for e in plan.entries:
        path = f"{e.folder}/{e.name}"
        targets[path], files[path] = target_entry(e)
    if plan.many:
        for i in range(10_001):
            targets[f"3.{i}.0/f"] = {
                "length": 1,
                "hashes": {"sha256": hashlib.sha256(b"x").hexdigest()},
                "custom": {"trayupdater": {"version": f"3.{i}.0"}},
            }
    wrong = dict(plan.keys)
    versions = dict(zip(("targets", "snapshot", "timestamp"), plan.offsets, strict=True))

    def tweak(role: str, signed: dict[str, Any]) -> None:
        signed["version"] = HONEST_VERSION + versions[role]
        if plan.expired == role:
            signed["expires"] = EXPIRED
        if role == "snapshot":
            meta = signed["meta"]["targets.json"]
            meta["version"] = HONEST_VERSION + versions["targets"]
            lie(plan.snapshot_lie, meta, None)
        if role == "timestamp":
            meta = signed["meta"]["snapshot.json"]
            meta["version"] = HONEST_VERSION + versions["snapshot"]
            lie(plan.timestamp_lie, meta, meta.get("length"))
        if plan.signed_mutation and plan.signed_mutation[0] == role:
            _, steps, value, delete = plan.signed_mutation
            mutate_json(signed, list(steps), value, delete)

    def lie(how: str, meta: dict[str, Any], length: int | None) -> None:
        if how == "version":
            meta["version"] += 1
        elif how == "length":
            meta["length"] = max((length or 100) - 10, 0)
        elif how == "hash":
            meta["hashes"] = {"sha256": "0" * 64}

    def signers(role: str) -> list[CryptoSigner]:
        right = honest.signers[role]
        how = wrong.get(role)
        if how == "wrong":
            return [honest.signers["root" if role == "targets" else "targets"]]
        if how == "attacker":
            return [honest.attacker]
        if how == "none":
            return []
        if how == "twice":
            return [right, right]
        if how == "extra":
            return [right, honest.attacker]
        return [right]

    return publish(
        honest, HONEST_VERSION, targets=targets, files=files, tweak=tweak, signers=signers
    )


# --- checking what came out ----------------------------------------------------------------------


@dataclass
class Seen:
    """Every target any genuinely signed targets metadata of this example listed."""

    targets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, repo: Repo) -> None:
        for signed in repo.signed:
            listed = signed.get("targets")
            if signed.get("_type") == "targets" and isinstance(listed, dict):
                for path, entry in listed.items():
                    self.targets.setdefault(path, []).append(entry)

    def add_old(self, honest: Honest) -> None:
        old = json.loads(honest.old["/metadata/2.targets.json"])["signed"]["targets"]
        for path, entry in old.items():
            self.targets.setdefault(path, []).append(entry)


def one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text, repr(text)
    assert len(text) < 2000, text[:200]


def check_release(release: Release, targets_url: str, seen: Seen) -> None:
    assert isinstance(release.version, Version)
    assert file_name_problem(release.tag) is None, release.tag
    assert len(release.tag) <= MAX_FIELD
    assert parse_version(release.tag) == release.version, (release.tag, release.version)
    assert Version(release.version_text) == release.version
    assert release.prerelease == release.version.is_prerelease
    assert type(release.recalled) is bool
    assert isinstance(release.published_at, str) and len(release.published_at) <= MAX_FIELD
    assert release.assets, release
    names = [a.name for a in release.assets]
    assert len(set(names)) == len(names), names
    for asset in release.assets:
        assert file_name_problem(asset.name) is None, asset.name
        assert asset.sha256 is not None and HEX64.fullmatch(asset.sha256), asset.digest
        assert type(asset.size) is int and asset.size >= 0, asset.size
        path = f"{release.tag}/{asset.name}"
        assert asset.download_url == targets_url + "/".join(
            quote(part, safe="") for part in path.split("/")
        )
        signed = [
            e
            for e in seen.targets.get(path, [])
            if e.get("length") == asset.size and e["hashes"].get("sha256") == asset.sha256
        ]
        assert signed, f"{path} ({asset.size} bytes, {asset.sha256}) was never signed so"
        customs = [e.get("custom", {}).get("trayupdater", {}) for e in signed]
        assert any(parse_version(str(c.get("version"))) == release.version for c in customs)
    rollout = release.rollout
    if rollout is not None:
        steps = rollout.steps
        assert 1 <= len(steps) <= MAX_STEPS
        assert all(type(s) in (int, float) and 0 <= s <= 100 for s in steps), steps
        assert list(steps) == sorted(steps), steps
        if rollout.is_schedule:
            assert 1 <= rollout.every <= MAX_STEP_SECONDS, rollout
            assert math.isfinite(rollout.start), rollout
            assert rollout.start + (len(steps) - 1) * rollout.every < LATEST_TIME, rollout


def check_result(result: CheckResult, targets_url: str, seen: Seen, prereleases: bool) -> None:
    releases = list(result.releases)
    for release in releases:
        check_release(release, targets_url, seen)
    versions = [r.version for r in releases]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    usable = [r for r in releases if not r.recalled and (prereleases or not r.prerelease)]
    if result.release is None:
        assert not usable
    else:
        assert result.release in releases and not result.release.recalled
        assert result.release.version == max(r.version for r in usable)
    assert all(isinstance(tag, str) for tag in result.skipped_tags)


def honest_releases(honest: Honest) -> set[tuple[str, str, int, str]]:
    return {
        (path.split("/")[0], path.split("/")[1], e["length"], e["hashes"]["sha256"])
        for path, e in honest.targets.items()
    }


def released(result: CheckResult) -> set[tuple[str, str, int, str]]:
    return {(r.tag, a.name, a.size, a.sha256 or "") for r in result.releases for a in r.assets}


# --- playing one example -------------------------------------------------------------------------


def new_source(server: Server, honest: Honest, cache: Path) -> TufSource:
    source = TufSource(
        metadata_url=server.url + "/metadata/",
        targets_url=server.url + "/targets/",
        cache_dir=cache,
        trusted_root=honest.root_path,
        timeout=(READ_TIMEOUT, READ_TIMEOUT),
        retries=RETRIES,
        sleep=lambda _s: None,
    )
    source.fetcher.deadline = DEADLINE
    return source


CHECK_BOUND = (RETRIES + 1) * 4 * (DEADLINE + READ_TIMEOUT) + SLACK
FETCH_BOUND = 2 * DEADLINE + READ_TIMEOUT + SLACK


def timed(call: Callable[[], Any], bound: float) -> tuple[Any, BaseException | None]:
    started = time.monotonic()
    try:
        return call(), None
    except Exception as exc:  # sorted out by the caller: only documented ones pass
        return None, exc
    finally:
        took = time.monotonic() - started
        assert took < bound, f"took {took:.1f} s (bound {bound:.1f} s)"


def fetch_and_check(
    source: TufSource,
    release: Release,
    pick: int,
    server: Server,
    mode: str,
    fault: Fault | None,
    seen: Seen,
    work: Path,
) -> str:
    """Download one asset of ``release`` with the server doing ``mode``; the invariants."""
    asset = release.assets[pick % len(release.assets)]
    path = f"{release.tag}/{asset.name}"
    where = url_path(path)
    body = server.files.get(where, b"")
    if mode == "flip" and body:
        server.files[where] = bytes([body[0] ^ 1]) + body[1:]
    elif mode == "cut":
        server.faults[where] = Fault("cut", at=len(body) // 2)
    elif mode == "longer":
        server.files[where] = body + b"more"
    elif mode == "fault" and fault is not None:
        server.faults[where] = fault_at(fault, where, server)
    assert source.expected_digest(release, asset).sha256 == asset.sha256  # type: ignore[union-attr]
    dest = work / f"dest-{time.monotonic_ns()}"
    pace = Pace(timeout=READ_TIMEOUT, deadline=DEADLINE, min_rate=0)
    result, error = timed(
        lambda: source.fetch(release, asset, dest, max_bytes=1 << 20, pace=pace), FETCH_BOUND
    )
    if error is not None:
        assert isinstance(error, FETCH_ERRORS), f"{type(error).__name__}: {error}"
        one_line(error)
        assert not dest.exists() or dest.read_bytes() == b"", "a refused file was left"
        return "fetch refused"
    data = result.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert digest == asset.sha256 == result.sha256, "a file not matching its signed hash"
    assert any(
        e["hashes"].get("sha256") == digest and e.get("length") == len(data)
        for e in seen.targets.get(path, [])
    )
    result.path.unlink()
    return "fetch ok"


def fault_at(fault: Fault, path: str, server: Server) -> Fault:
    if fault.kind != "redirect":
        return fault
    location = {"self": server.url + path, "other": server.url + "/metadata/1.root.json"}
    return Fault("redirect", location=location.get(fault.location, fault.location))


def play(case: Case, honest: Honest, server: Server, guard: list[str]) -> Counter[str]:
    seen_counts: Counter[str] = Counter()
    seen = Seen()
    good = honest_repo(honest)
    seen.add(good)
    seen.add_old(honest)
    want = honest_releases(honest)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache"
        source = new_source(server, honest, cache)
        try:
            if case.primed:
                server.serve(good.files)
                result, error = timed(source.check, CHECK_BOUND)
                assert error is None, f"the honest repository: {error!r}"
                assert released(result) == want

            # The hostile stage.
            hostile = hostile_repo(case, honest)
            seen.add(hostile)
            paths = role_paths(hostile)
            faults = {
                paths[role]: fault_at(fault, paths[role], server) for role, fault in case.faults
            }
            server.serve(hostile.files, faults)
            since = len(guard)
            result, error = timed(source.check, CHECK_BOUND)
            assert len(guard) == since, f"connected off the machine: {guard[since:]}"
            if error is not None:
                assert isinstance(error, CHECK_ERRORS), f"{type(error).__name__}: {error!r}"
                one_line(error)
                seen_counts[outcome_of(error)] += 1
                assert not case.honest, f"an honest repository, and yet: {error}"
            else:
                check_result(result, source.targets_url, seen, prereleases=False)
                seen_counts["check ok"] += 1
                if case.honest:
                    assert released(result) == want
                    seen_counts["honest"] += 1
                if released(result) - want:
                    seen_counts["hostile release accepted"] += 1
                if result.skipped_tags:
                    seen_counts["skipped"] += 1
                if any(r.rollout and r.rollout.is_schedule for r in result.releases):
                    seen_counts["schedule accepted"] += 1
                if any(r.recalled for r in result.releases):
                    seen_counts["recalled"] += 1
                if result.releases and case.fetch != "none":
                    release = result.release or result.releases[0]
                    fetched = fetch_and_check(
                        source, release, case.pick, server, case.fetch, case.fetch_fault, seen, work
                    )
                    seen_counts[fetched] += 1
            server.released.set()

            # Recovery: the honest repository again, newer than anything signed genuinely.
            versions = [v for signed in hostile.signed for v in genuine_versions(signed)]
            newer = case.plan is not None or case.root2.startswith("genuine")
            top = max([HONEST_VERSION, *versions])
            again = honest_repo(honest, top + 1) if newer else good
            if case.root2 in ("genuine", "genuine expired"):
                again.files["/metadata/2.root.json"] = hostile.root2 or b""
                third = copy.deepcopy(honest.root)
                third.update(version=3, expires=FRESH)
                again.files["/metadata/3.root.json"] = dump(
                    envelope(third, [honest.signers["root"]])
                )
            seen.add(again)
            server.serve(again.files)
            if isinstance(error, RateLimitedError):
                source.close()
                source = new_source(server, honest, cache)  # a restart: no wait remembered
            result, error = timed(source.check, CHECK_BOUND)
            assert error is None, f"the honest repository after the hostile one: {error!r}"
            assert released(result) == want, "the honest releases are back"
            seen_counts["recovered newer" if newer else "recovered same"] += 1
            release = result.release
            assert release is not None and release.version_text == "1.1.0"
            if case.pick % 4 == 0:
                assert (
                    fetch_and_check(source, release, 0, server, "honest", None, seen, work)
                    == "fetch ok"
                )
        finally:
            source.close()
            server.released.set()
    return seen_counts


def outcome_of(error: BaseException) -> str:
    if isinstance(error, MetadataExpiredError):
        return "expired"
    if isinstance(error, UntrustedMetadataError):
        return "untrusted"
    if isinstance(error, RateLimitedError):
        return "rate limited"
    return "source error"


# Always played (the derandomized set may miss them): a rate limit; a clean publish of
# targets some of which follow the format (a schedule, a recall) and some not.
RATE_LIMITED = Case(
    primed=True,
    plan=None,
    root2="none",
    mutated=(),
    faults=(("timestamp", Fault("status", 429, "5")),),
    fetch="none",
    fetch_fault=None,
    pick=0,
)
TAMPERED_TARGET = Case(True, None, "none", (), (), "flip", None, 0)  # same length, other bytes
EXPIRED_ROOT = Case(False, None, "genuine expired", (), (), "none", None, 0)
_SCHEDULE = {"schedule": [5, 50, 100], "every": 3600, "start": "2025-01-02T03:04:05Z"}
HOSTILE_TARGETS = Case(
    primed=False,
    plan=SignedPlan(
        offsets=(1, 1, 1),
        expired=None,
        entries=(
            Entry(
                "2.0.0",
                "app.tar.gz",
                {"trayupdater": {"version": "2.0.0", "rollout": _SCHEDULE}},
                b"new",
                "true",
                "true",
            ),
            Entry(
                "2.1.0",
                "app.tar.gz",
                {"trayupdater": {"version": "2.1.0", "recalled": True}},
                b"bad",
                "true",
                "true",
            ),
            Entry("..", "app.tar.gz", {"trayupdater": {"version": ".."}}, b"x", "true", "true"),
            Entry("3.0.0", "nul\x00", {"trayupdater": {"version": "3.0.0"}}, b"x", "true", "true"),
            Entry(
                "4.0.0",
                "a",
                {"trayupdater": {"version": "4.0.0", "rollout": {"percent": 101}}},
                b"x",
                "true",
                "true",
            ),
            Entry("5.0.0", "a", {"trayupdater": {"version": "5.0.0"}}, b"x", "not hex", "true"),
        ),
        keep_honest=True,
        many=False,
        snapshot_lie="none",
        timestamp_lie="none",
        keys=(),
        signed_mutation=None,
    ),
    root2="none",
    mutated=(),
    faults=(),
    fetch="honest",
    fetch_fault=None,
    pick=0,
)


def test_tuf_source_against_hostile_repositories(
    honest: Honest, server: Server, guard: list[str]
) -> None:
    stats: Counter[str] = Counter()

    @property_settings("TRAYUPDATER_TUF_EXAMPLES", 50, fixtures=True)
    @given(case=cases())
    @example(case=RATE_LIMITED)
    @example(case=EXPIRED_ROOT)
    @example(case=TAMPERED_TARGET)
    @example(case=HOSTILE_TARGETS)
    def run(case: Case) -> None:
        stats.update(play(case, honest, server, guard))

    run()
    print(dict(sorted(stats.items())))
    reached = ["honest", "check ok", "untrusted", "expired", "source error", "rate limited"]
    reached += ["hostile release accepted", "skipped", "fetch ok", "fetch refused"]
    reached += ["recovered newer", "recovered same"]
    assert_reached(stats, reached, "TRAYUPDATER_TUF_EXAMPLES")
