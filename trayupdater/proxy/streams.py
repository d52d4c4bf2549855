"""Response bodies relayed as they arrive, waiting on either side without holding a thread.

A body whose end is not in hand (chunked and still arriving, delimited by the backend's
close, or the rest of a large one) is relayed by a worker: the copies and the chunk decoding
are Python work of no fixed size, which the dispatcher must not do. But waiting is not work.
When the backend has sent nothing more yet (an event stream between events), or the client's
socket is full (a client that reads slowly, or not at all), the relay yields a
:class:`~steps.Wait`: the worker waits a moment (``STALL_SECONDS``), then gives the task back
to the dispatcher, which arms the socket; when it is ready the task runs on and yields BLOCK
to be a worker's again. So a thousand open event streams or stalled downloads cost a poller
entry each, not a thread, and they do not count against the requests in flight.

The waits are bounded as a blocking read or send was: ``backend_timeout`` for the backend's
next bytes, ``client_idle_timeout`` for the client to take any (the dispatcher throws
TimeoutError into the task then). Without MSG_DONTWAIT (Windows) reads and sends block in the
worker, as before.

Errors: :class:`SourceError` when the backend fails (closed early, reset, silent too long),
:class:`SinkError` when the client does (gone, or took nothing for too long).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

from trayupdater import http11
from trayupdater.http11 import BufferedSocket, SinkError, SourceError
from trayupdater.proxy import steps
from trayupdater.proxy.sockets import DONTWAIT, reason
from trayupdater.proxy.steps import BLOCK, Steps, Wait


def send_to(sock: socket.socket, data: bytes | bytearray | memoryview) -> Steps[None]:
    """Send ``data`` as the receiver takes it; a worker's again after any wait. Its failure
    (gone, or took nothing for its whole timeout) is a SinkError.

    ``data`` may be a thread's reused buffer: what is left after a partial send is copied.
    """
    try:
        waited = yield from steps.send(sock, data)
    except OSError as exc:  # TimeoutError too
        raise SinkError(reason(exc)) from exc
    if waited:
        yield BLOCK


def wait_for(sock: socket.socket, *, write: bool = False) -> Steps[None]:
    """Wait for ``sock`` to be readable (or writable) without a thread, then be a worker's
    again. Past the peer's timeout: SourceError for a sender, SinkError for a receiver."""
    try:
        yield Wait(sock, write=write)
    except TimeoutError as exc:
        if write:
            raise SinkError("took nothing for too long") from exc
        raise SourceError("reading a body: timed out") from exc
    yield BLOCK


def fill(up: BufferedSocket) -> Steps[bool]:
    """Read the backend's next bytes into ``up.buf``, waiting for them without a thread;
    False at EOF."""
    if not DONTWAIT:
        try:
            return up.fill()
        except OSError as exc:
            raise SourceError(f"reading a body: {reason(exc)}") from exc
    data = yield from from_backend(up.sock, lambda: up.sock.recv(http11.RECV_SIZE, DONTWAIT))
    up.buf += data
    return bool(data)


T = TypeVar("T")


def from_backend(sock: socket.socket, read: Callable[[], T]) -> Steps[T]:
    """What ``read()`` returns: a read of the backend that does not wait (or waits only a
    moment), tried again after waiting without a thread while the backend has sent nothing
    yet. Its failure is a SourceError."""
    while True:
        try:
            return read()
        except BlockingIOError:
            yield from wait_for(sock)
        except OSError as exc:
            raise SourceError(f"reading a body: {reason(exc)}") from exc


Fill = Callable[[], Steps[bool]]  # the source's next bytes into its buffer; False at EOF


def relay_chunked(
    src: BufferedSocket, more: Fill, dst: socket.socket, chunked_out: bool, max_trailer_bytes: int
) -> Steps[None]:
    """Decode a chunked body from ``src`` as ``more`` brings it and pass it on to ``dst``:
    re-chunked (``chunked_out``), or as bare data (for a client that cannot take chunks: it
    then ends with the close)."""
    pieces = http11.decode_chunked(src, max_trailer_bytes)
    while True:
        try:
            piece = next(pieces)
        except StopIteration as end:
            trailers: list[str] = end.value
            break
        if piece is None:
            if not (yield from more()):
                raise SourceError("connection closed inside a chunked body")
        else:
            yield from send_to(dst, http11.chunk(piece) if chunked_out else piece)
    if chunked_out:
        yield from send_to(dst, http11.last_chunk(trailers))


def relay_until_close(up: BufferedSocket, client: socket.socket, chunked_out: bool) -> Steps[None]:
    """Pass on everything until the backend closes (a response without a length)."""
    while True:
        if up.buf:
            data = bytes(up.buf)
            up.buf.clear()
            yield from send_to(client, http11.chunk(data) if chunked_out else data)
        if not (yield from fill(up)):
            break
    if chunked_out:
        yield from send_to(client, http11.last_chunk([]))


def copy_length(up: BufferedSocket, length: int, client: socket.socket) -> Steps[None]:
    """Pass on exactly ``length`` body bytes, read straight into this thread's scratch
    buffer (no bytes object per read); either side waited for without a thread."""
    remaining = length
    if up.buf:
        take = min(remaining, len(up.buf))
        data = bytes(up.buf[:take])
        del up.buf[:take]
        remaining -= take
        yield from send_to(client, data)
    while remaining:
        size = min(remaining, http11.RECV_SIZE)
        # This thread's buffer, taken when it reads: a wait may move the task to another.
        n = yield from from_backend(
            up.sock, lambda size=size: up.sock.recv_into(http11.scratch(), size, DONTWAIT)
        )
        if not n:
            raise SourceError("connection closed before the end of the body")
        remaining -= n
        yield from send_to(client, http11.scratch()[:n])  # copied if it must wait
