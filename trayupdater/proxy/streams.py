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

from trayupdater import http11
from trayupdater.http11 import BufferedSocket, SinkError, SourceError
from trayupdater.proxy import steps
from trayupdater.proxy.sockets import DONTWAIT, reason
from trayupdater.proxy.steps import BLOCK, Steps, Wait


def to_client(client: socket.socket, data: bytes | bytearray | memoryview) -> Steps[None]:
    """Send ``data`` to the client as it takes it; a worker's again after any wait.

    ``data`` may be a thread's reused buffer: what is left after a partial send is copied.
    """
    try:
        waited = yield from steps.send(client, data)
    except OSError as exc:  # TimeoutError too: the client took nothing for its whole timeout
        raise SinkError(reason(exc)) from exc
    if waited:
        yield BLOCK


def fill(up: BufferedSocket) -> Steps[bool]:
    """Read the backend's next bytes into ``up.buf``, waiting for them without a thread;
    False at EOF."""
    if not DONTWAIT:
        try:
            return up.fill()
        except OSError as exc:
            raise SourceError(f"reading a body: {reason(exc)}") from exc
    while True:
        try:
            data = up.sock.recv(http11.RECV_SIZE, DONTWAIT)
        except BlockingIOError:
            try:
                yield Wait(up.sock)
            except TimeoutError as exc:
                raise SourceError("reading a body: timed out") from exc
            yield BLOCK
            continue
        except OSError as exc:
            raise SourceError(f"reading a body: {reason(exc)}") from exc
        if not data:
            return False
        up.buf += data
        return True


def relay_chunked(
    up: BufferedSocket, client: socket.socket, chunked_out: bool, max_trailer_bytes: int
) -> Steps[None]:
    """Decode a chunked body as it arrives and pass it on: re-chunked (``chunked_out``), or
    as bare data for a client that cannot take chunks (it then ends with the close)."""
    pieces = http11.decode_chunked(up, max_trailer_bytes)
    while True:
        try:
            piece = next(pieces)
        except StopIteration as end:
            trailers: list[str] = end.value
            break
        if piece is None:
            if not (yield from fill(up)):
                raise SourceError("connection closed inside a chunked body")
        else:
            yield from to_client(client, http11.chunk(piece) if chunked_out else piece)
    if chunked_out:
        yield from to_client(client, http11.last_chunk(trailers))


def relay_until_close(up: BufferedSocket, client: socket.socket, chunked_out: bool) -> Steps[None]:
    """Pass on everything until the backend closes (a response without a length)."""
    while True:
        if up.buf:
            data = bytes(up.buf)
            up.buf.clear()
            yield from to_client(client, http11.chunk(data) if chunked_out else data)
        if not (yield from fill(up)):
            break
    if chunked_out:
        yield from to_client(client, http11.last_chunk([]))


def copy_length(up: BufferedSocket, length: int, client: socket.socket) -> Steps[None]:
    """Pass on exactly ``length`` body bytes, read straight into this thread's scratch
    buffer (no bytes object per read); either side waited for without a thread."""
    remaining = length
    if up.buf:
        take = min(remaining, len(up.buf))
        data = bytes(up.buf[:take])
        del up.buf[:take]
        remaining -= take
        yield from to_client(client, data)
    while remaining:
        view = http11.scratch()  # this thread's: the task may have moved to another worker
        try:
            n = up.sock.recv_into(view, min(remaining, len(view)), DONTWAIT)
        except BlockingIOError:
            try:
                yield Wait(up.sock)
            except TimeoutError as exc:
                raise SourceError("reading a body: timed out") from exc
            yield BLOCK
            continue
        except OSError as exc:
            raise SourceError(f"reading a body: {reason(exc)}") from exc
        if not n:
            raise SourceError("connection closed before the end of the body")
        remaining -= n
        yield from to_client(client, view[:n])
