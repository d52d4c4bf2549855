"""Large response bodies of known length, socket to socket without Python copies.

On Linux, ``os.splice`` moves the bytes backend socket -> pipe -> client socket inside the
kernel: no ``bytes`` objects, no copy into and out of the process. Each worker thread keeps
one pipe for this (two descriptors per worker). The sockets' kernel timeouts (SO_RCVTIMEO,
SO_SNDTIMEO) bound each splice as they bound recv and send. Elsewhere, and for bodies too
small to be worth it, :func:`trayupdater.http11.copy_length` copies through one reused
buffer per thread.

Errors are those of the copy functions in :mod:`trayupdater.http11`: :class:`SourceError`
when the backend fails (closed early, reset, timed out), :class:`SinkError` when the client
does. A pipe left with bytes in it after an error is closed, never reused.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from trayupdater.http11 import (
    BufferedSocket,
    SinkError,
    SourceError,
    Write,
    copy_length,
    write_to_sink,
)

# Below this many bytes still to come, splicing's extra system calls cost more than copying.
SPLICE_MIN = 128 * 1024
PIPE_SIZE = 1024 * 1024  # a larger pipe moves more per call (capped by pipe-max-size)
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "splice")

_local = threading.local()


def _pipe() -> tuple[int, int]:
    pipe: tuple[int, int] | None = getattr(_local, "pipe", None)
    if pipe is None:
        pipe = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # best effort: 64 KiB otherwise
            import fcntl

            fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        _local.pipe = pipe
    return pipe


def release() -> None:
    """Close the calling thread's pipe, if it has one: after an error that may have left
    bytes in it, and when a worker thread ends (thread-locals are not closed for us, and
    each pipe is two descriptors)."""
    pipe = getattr(_local, "pipe", None)
    _local.pipe = None
    if pipe is not None:
        for fd in pipe:
            os.close(fd)


def relay_length(src: BufferedSocket, length: int, head: bytes, client: Write, dst_fd: int) -> None:
    """Send ``head`` and exactly ``length`` body bytes from ``src`` to the client.

    The head goes out with the body bytes already read, in one send; the rest is spliced,
    or copied when splicing is not available or not worth it. ``client`` is the client
    socket's ``sendall`` and ``dst_fd`` its descriptor.
    """
    take = min(length, len(src.buf))
    write_to_sink(client, head + src.buf[:take])
    del src.buf[:take]
    remaining = length - take
    if not AVAILABLE or remaining < SPLICE_MIN:
        copy_length(src, remaining, client)
    else:
        splice_length(src.sock.fileno(), dst_fd, remaining)


def splice_length(src_fd: int, dst_fd: int, remaining: int) -> None:
    """Move ``remaining`` bytes from socket ``src_fd`` to socket ``dst_fd`` via this thread's
    pipe. SourceError / SinkError as the copy functions raise them."""
    read_end, write_end = _pipe()
    try:
        while remaining:
            try:
                n = os.splice(src_fd, write_end, min(remaining, PIPE_SIZE))
            except OSError as exc:
                raise SourceError(f"reading a body: {exc}") from exc
            if not n:
                raise SourceError("connection closed before the end of the body")
            remaining -= n
            while n:
                try:
                    sent = os.splice(read_end, dst_fd, n)
                except OSError as exc:
                    raise SinkError(str(exc)) from exc
                n -= sent
    except BaseException:
        release()  # it may hold bytes of this body: never splice them into another
        raise
