"""Tunnels: after a 101 (a WebSocket), bytes both ways until either side closes.

Where sends take MSG_DONTWAIT a tunnel is steps the dispatcher runs (:func:`both_ways`): it
waits for either side with an :class:`~steps.Either`, and on each wake-up reads each side at
most once (64 KiB) and sends it on, so a flood through one tunnel cannot keep the dispatcher
from everyone else. A side that does not take what it is sent is waited for (a Wait, with
its timeout) and the other side is not read meanwhile: the backpressure reaches the sender.
So an open WebSocket costs two poller entries, not a thread, and does not count against the
requests in flight. When the proxy closes, tunnels end (they have no request to finish).

Elsewhere (Windows) a worker runs the tunnel blocking (:func:`blocking`), as before.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable

from trayupdater import http11
from trayupdater.proxy import steps
from trayupdater.proxy.sockets import DONTWAIT
from trayupdater.proxy.steps import Either, Steps


def both_ways(
    client: socket.socket, upstream: socket.socket, closing: Callable[[], bool]
) -> Steps[None]:
    """The tunnel as steps (see the module doc); returns when it is over."""
    pairs = ((client, upstream), (upstream, client))
    while not closing():
        for src, dst in pairs:
            try:
                data = src.recv(http11.RECV_SIZE, DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                yield from steps.send(dst, data)
            except OSError:  # gone, or took nothing for its whole timeout
                return
        yield Either(client, upstream)


def blocking(client: socket.socket, upstream: socket.socket, closing: Callable[[], bool]) -> None:
    """The tunnel in a worker, where sends cannot be tried without blocking (client sockets
    are blocking there, each call bounded by its kernel timeout)."""
    peers = {client: upstream, upstream: client}
    with selectors.DefaultSelector() as sel:
        sel.register(client, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)
        while not closing():
            for key, _ in sel.select(0.5):
                src = key.fileobj
                assert isinstance(src, socket.socket)
                try:
                    data = src.recv(http11.RECV_SIZE)
                    if data:
                        peers[src].sendall(data)
                except OSError:
                    data = b""
                if not data:
                    return
