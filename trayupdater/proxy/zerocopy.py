"""Large response bodies of known length, socket to socket without Python copies.

On Linux, ``os.splice`` moves the bytes backend socket -> pipe -> client socket inside the
kernel: no ``bytes`` objects, no copy into and out of the process. The dispatcher does it
itself, without blocking (see :mod:`steps`): both sockets are non-blocking while it splices,
it waits for the backend's next bytes like any other readable socket, and only when the
client does not take what arrived at once does the rest go to a worker, which goes on
blocking, bounded by the sockets' kernel timeouts (SO_RCVTIMEO, SO_SNDTIMEO). Pipes come
from a small pool; one left with bytes in it after an error is closed, never reused.

Elsewhere, and for bodies too small to be worth it, a worker copies the body through one
reused buffer per thread (:func:`trayupdater.http11.copy_length`).

Errors are those of the copy functions in :mod:`trayupdater.http11`: :class:`SourceError`
when the backend fails (closed early, reset, timed out), :class:`SinkError` when the client
does.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import sys

from trayupdater.http11 import BufferedSocket, SinkError, SourceError, copy_length
from trayupdater.proxy import steps
from trayupdater.proxy.steps import BLOCK, Steps

# Below this many bytes still to come, splicing's extra system calls cost more than copying.
SPLICE_MIN = 128 * 1024
PIPE_SIZE = 1024 * 1024  # a larger pipe moves more per call (capped by pipe-max-size)
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "splice")
IDLE_PIPES = 32  # pipes kept for the next bodies (two descriptors each)

Pipe = tuple[int, int]


class Pipes:
    """Empty pipes for splicing, kept for reuse (any thread)."""

    def __init__(self) -> None:
        self._idle: collections.deque[Pipe] = collections.deque()

    def take(self) -> Pipe:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        pipe = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # best effort: 64 KiB otherwise
            import fcntl

            fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        return pipe

    def give(self, pipe: Pipe) -> None:
        """Back for reuse: only a pipe known to be empty."""
        if len(self._idle) < IDLE_PIPES:
            self._idle.append(pipe)
        else:
            _close(pipe)

    def drop(self, pipe: Pipe) -> None:
        """A pipe that may hold bytes of a body: never splice them into another."""
        _close(pipe)

    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        while self._idle:
            _close(self._idle.pop())


def _close(pipe: Pipe) -> None:
    for fd in pipe:
        os.close(fd)


def relay_length(
    src: BufferedSocket, length: int, head: bytes, client: socket.socket, pipes: Pipes
) -> Steps[None]:
    """Send ``head`` and exactly ``length`` body bytes from ``src`` to ``client``.

    The head goes out with the body bytes already read, in one send; the rest is spliced,
    or copied (in a worker) when splicing is not available or not worth it.
    """
    take = min(length, len(src.buf))
    try:
        yield from steps.send(client, head + src.buf[:take])
    except OSError as exc:
        raise SinkError(str(exc)) from exc
    del src.buf[:take]
    remaining = length - take
    if not AVAILABLE or remaining < SPLICE_MIN:
        yield BLOCK
        copy_length(src, remaining, client.sendall)
    else:
        yield from splice_length(src.sock, client, remaining, pipes)


def splice_length(
    src: socket.socket, dst: socket.socket, remaining: int, pipes: Pipes
) -> Steps[None]:
    """Move ``remaining`` bytes from socket ``src`` to socket ``dst`` through a pipe."""
    pipe = pipes.take()
    read_end, write_end = pipe
    src_fd, dst_fd = src.fileno(), dst.fileno()
    waiting = True  # non-blocking: wait for readiness; False once it may block (a worker)
    clean = False
    os.set_blocking(src_fd, False)
    os.set_blocking(dst_fd, False)
    try:
        while remaining:
            try:
                n = os.splice(src_fd, write_end, min(remaining, PIPE_SIZE))
            except BlockingIOError as exc:
                if not waiting:  # SO_RCVTIMEO expired
                    raise SourceError("timed out in the middle of its answer") from exc
                try:
                    yield src  # its next bytes
                except TimeoutError as timeout:
                    raise SourceError("timed out in the middle of its answer") from timeout
                continue
            except OSError as exc:
                raise SourceError(f"reading a body: {exc}") from exc
            if not n:
                raise SourceError("connection closed before the end of the body")
            remaining -= n
            while n:
                try:
                    n -= os.splice(read_end, dst_fd, n)
                except BlockingIOError as exc:
                    if not waiting:  # SO_SNDTIMEO expired
                        raise SinkError("timed out sending a body") from exc
                    # The client does not take it all at once: go on blocking, in a worker.
                    waiting = False
                    os.set_blocking(src_fd, True)
                    os.set_blocking(dst_fd, True)
                    yield BLOCK
                except OSError as exc:
                    raise SinkError(str(exc)) from exc
        clean = True
    finally:
        if waiting:  # both back to blocking, as every other user of them expects
            for fd in (src_fd, dst_fd):
                with contextlib.suppress(OSError):
                    os.set_blocking(fd, True)
        if clean:
            pipes.give(pipe)
        else:
            pipes.drop(pipe)
