"""A real certificate authority and HTTPS servers on loopback, made with the openssl CLI.

``make_ca(folder)`` writes a CA and a server certificate for 127.0.0.1 / localhost signed
by it; ``https_server(ca, handler)`` serves ``handler`` with that certificate. A client
trusts it only when told to (``session.verify = ca.cert``): exactly the situation of a
company CA doing TLS inspection.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@dataclass(frozen=True)
class CA:
    cert: Path  # the CA certificate (what a client must trust)
    server_cert: Path  # the server's certificate, signed by the CA
    server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, *, hosts: Sequence[str] = (), server_days: int = 2) -> CA:
    """``hosts``: more DNS names the server certificate is valid for (names a proxy
    resolves, say). ``server_days``: how long it is valid; -1 makes one that expired a day
    ago (as a computer whose clock is a day ahead would see it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=trayupdater test CA", "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    names = "".join(f",DNS:{host}" for host in hosts)
    (folder / "server.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,DNS:localhost{names}\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", str(server_days), "-extfile", "server.ext",
        "-out", "server.pem",
        cwd=folder,
    )  # fmt: skip
    return CA(folder / "ca.pem", folder / "server.pem", folder / "server.key")


@contextlib.contextmanager
def https_server(ca: CA, handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` over TLS on 127.0.0.1; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.server_cert, ca.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
