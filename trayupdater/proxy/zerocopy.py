"""Large response bodies of known length, socket to socket without Python copies.

The head goes out with the body bytes already read, in one send, from wherever the request
is; the rest is relayed by a worker. On Linux ``os.splice`` moves the bytes backend socket
-> pipe -> client socket inside the kernel: no ``bytes`` objects, no copy into and out of
the process, and no GIL held while it works, so bodies for several clients move on several
cores at once. Neither side holds the worker when it is slow: a splice from the backend
waits at most a moment (its SO_RCVTIMEO is ``STALL_SECONDS`` meanwhile) and a splice into
the client not at all (client sockets are non-blocking, ``sockets.client_mode``); then the
relay Waits for that side without a thread (:mod:`streams`), and the pipe keeps what it
holds. So a client that reads slowly, or a backend that sends slowly, holds no worker. Pipes
come from a small pool per proxy; one left with bytes in it after an error is closed, never
reused. (Splicing in the dispatcher, without blocking, was measured and lost: its one thread
then did all of the kernel's work in turn.)

Elsewhere, and for bodies too small to be worth it, a worker copies the body through one
reused buffer per thread (:func:`streams.copy_length`).

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

from trayupdater.http11 import BufferedSocket, SinkError, SourceError
from trayupdater.proxy import steps, streams
from trayupdater.proxy.sockets import timeval
from trayupdater.proxy.steps import BLOCK, STALL_SECONDS, Steps

# Below this many bytes still to come, splicing's extra system calls cost more than copying.
SPLICE_MIN = 128 * 1024
PIPE_SIZE = 1024 * 1024  # a larger pipe moves more per call (capped by pipe-max-size)
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "splice")
IDLE_PIPES = 32  # pipes kept for the next bodies (two descriptors each)
_STALL = timeval(STALL_SECONDS)  # the backend side's receive timeout while splicing
_TIMEVAL_SIZE = len(_STALL)

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
    # The rest in a worker: the kernel's work, most of a large body's cost, then runs beside
    # the dispatcher's instead of in turn with it (measured: bench/RESULTS.md).
    yield BLOCK
    if not AVAILABLE or remaining < SPLICE_MIN:
        yield from streams.copy_length(src, remaining, client)
    else:
        yield from splice_length(src.sock, client, remaining, pipes)


def splice_length(
    src: socket.socket, dst: socket.socket, remaining: int, pipes: Pipes
) -> Steps[None]:
    """Move ``remaining`` bytes from socket ``src`` to socket ``dst`` through a pipe, each
    side waited for without a thread when it is slow (see the module doc). A worker's: it
    yields BLOCK after a wait."""
    pipe = pipes.take()
    read_end, write_end = pipe
    src_fd, dst_fd = src.fileno(), dst.fileno()
    # A splice from a blocking socket returns whatever is there, and waits only when nothing
    # is: for a moment, then it is the dispatcher's wait (no GIL given up, unlike a switch to
    # non-blocking and back).
    timeout = src.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL_SIZE)
    src.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _STALL)
    try:
        while remaining:
            size = min(remaining, PIPE_SIZE)
            # Nothing for a moment (BlockingIOError): a backend sending slowly, waited for.
            splice = lambda size=size: os.splice(src_fd, write_end, size)  # noqa: E731
            n = yield from streams.from_backend(src, splice)
            if not n:
                raise SourceError("connection closed before the end of the body")
            remaining -= n
            while n:
                try:
                    n -= os.splice(read_end, dst_fd, n)
                except BlockingIOError:
                    yield from streams.wait_for(dst, write=True)
                except OSError as exc:
                    raise SinkError(str(exc)) from exc
    except BaseException:
        pipes.drop(pipe)  # it may hold bytes of this body: never splice them into another
        raise
    finally:
        with contextlib.suppress(OSError):  # closed by then: nothing to restore
            src.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
    pipes.give(pipe)
