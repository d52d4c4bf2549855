"""A fast HTTP/1.1 test backend for the proxy benchmark.

Routes: ``/`` (and anything else) answers a small text body, ``/big`` 1 MiB, ``/version`` the
``--label``. Keep-alive, Content-Length responses, request bodies are read and ignored.

Two implementations with the same behaviour:
- ``go``: a net/http server (source embedded below, built with ``go build`` into a cache
  folder on first use). Close to the real child (a Go simple-server) and fast enough that the
  proxy, not the backend, is what gets measured.
- ``python``: a single-threaded non-blocking selector loop (no parsing beyond finding the end
  of each head), for machines without Go.

Usage: ``python bench/backend_server.py --port 0 --label v1 [--impl auto|go|python]``.
It prints ``LISTENING <port> <impl>`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

BIG = 1024 * 1024
SMALL_BODY = b"hello from the backend\n"

GO_SOURCE = r"""
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

func main() {
	port, _ := strconv.Atoi(os.Args[1])
	label := os.Args[2]
	big := []byte(strings.Repeat("x", 1<<20))
	small := []byte("hello from the backend\n")
	mux := http.NewServeMux()
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		w.Write(big)
	})
	mux.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, label)
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Transfer-Encoding", "chunked") // the small body, chunked, in one write
		w.Write(small)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(small)))
		w.Write(small)
	})
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTENING %d go\n", ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	http.Serve(ln, mux)
}
"""


# Go's httputil.ReverseProxy with its default transport: the original project's proxy, the
# yardstick the issue sets for ours. Started as ``goproxy LISTEN_PORT BACKEND_PORT``.
GO_PROXY_SOURCE = r"""
package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
)

func main() {
	target, _ := url.Parse("http://127.0.0.1:" + os.Args[2])
	proxy := httputil.NewSingleHostReverseProxy(target)
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTENING %d go-httputil\n", ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	http.Serve(ln, proxy)
}
"""


def go_binary(source: str = GO_SOURCE, name: str = "backend") -> Path | None:
    """Build (once, cached by source hash) and return a Go program, or None without Go."""
    go = shutil.which("go")
    if go is None:
        return None
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"trayupdater-bench-{name}-{digest}"
    exe = folder / (f"{name}.exe" if os.name == "nt" else name)
    if exe.exists():
        return exe
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.go").write_text(source)
    env = {**os.environ, "GOCACHE": str(folder / "cache"), "GO111MODULE": "off"}
    result = subprocess.run(
        [go, "build", "-o", str(exe), "main.go"], cwd=folder, env=env, capture_output=True
    )
    if result.returncode != 0:
        print(result.stderr.decode(errors="replace"), file=sys.stderr)
        return None
    return exe


def _response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class _Conn:
    __slots__ = ("inbuf", "need", "out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.out = bytearray()
        self.need = 0  # request body bytes still to skip


def serve_python(port: int, label: str) -> None:
    responses = {
        b"/big": _response(b"x" * BIG),
        b"/version": _response(label.encode()),
        b"/chunked": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(SMALL_BODY), SMALL_BODY),
    }
    small = _response(SMALL_BODY)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    print(f"LISTENING {listener.getsockname()[1]} python", flush=True)

    def close(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()

    def flush(conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            close(conn)
            return
        del conn.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        sel.modify(conn.sock, events, conn)

    while True:
        for key, mask in sel.select():
            conn = key.data
            if conn is None:
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(sock, selectors.EVENT_READ, _Conn(sock))
                continue
            if mask & selectors.EVENT_WRITE:
                flush(conn)
                continue
            try:
                data = conn.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                close(conn)
                continue
            conn.inbuf += data
            while True:
                if conn.need:
                    skip = min(conn.need, len(conn.inbuf))
                    del conn.inbuf[:skip]
                    conn.need -= skip
                    if conn.need:
                        break
                end = conn.inbuf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = bytes(conn.inbuf[:end])
                del conn.inbuf[: end + 4]
                path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
                conn.out += responses.get(path.split(b"?", 1)[0], small)
                lower = head.lower()
                at = lower.find(b"\r\ncontent-length:")
                if at >= 0:
                    conn.need = int(lower[at + 17 :].split(b"\r\n", 1)[0].strip() or b"0")
            if conn.out:
                flush(conn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--label", default="v1")
    parser.add_argument("--impl", choices=("auto", "go", "python"), default="auto")
    args = parser.parse_args()
    if args.impl in ("auto", "go"):
        exe = go_binary()
        if exe is not None:
            os.execv(str(exe), [str(exe), str(args.port), args.label])
        if args.impl == "go":
            sys.exit("Go backend requested but `go` is not available or the build failed")
    with contextlib.suppress(KeyboardInterrupt):
        serve_python(args.port, args.label)


if __name__ == "__main__":
    main()
