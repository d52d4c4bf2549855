"""Tunnels: after a 101 (a WebSocket), bytes both ways until both sides are done sending.

Where sends take MSG_DONTWAIT a tunnel is steps the dispatcher runs (:func:`both_ways`): it
waits for either side with an :class:`~steps.Either`, and on each wake-up reads each side at
most once (64 KiB) and sends it on, so a flood through one tunnel cannot keep the dispatcher
from everyone else. A side that does not take what it is sent is waited for (a Wait, with
its timeout) and the other side is not read meanwhile: the backpressure reaches the sender.
So an open WebSocket costs two poller entries, not a thread, and does not count against the
requests in flight. When the proxy closes, tunnels end (they have no request to finish).

A side that closes its write side (EOF) is passed on as such (``shutdown(SHUT_WR)`` of the
other socket) and the other direction goes on: a client that half-closes after its last
bytes still gets the rest of the answer (``docker attach``-style streams do this). Ending the
tunnel at the first EOF dropped what the backend sent after it. Once half-closed, the
remaining sender is waited for within its peer timeout.

Elsewhere (Windows) a worker runs the tunnel blocking (:func:`blocking`), as before.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable

from trayupdater import http11
from trayupdater.proxy import steps
from trayupdater.proxy.sockets import DONTWAIT
from trayupdater.proxy.steps import Either, Steps, Wait


def both_ways(
    client: socket.socket, upstream: socket.socket, closing: Callable[[], bool]
) -> Steps[None]:
    """The tunnel as steps (see the module doc); returns when it is over."""
    pairs = [(client, upstream), (upstream, client)]
    while not closing():
        for src, dst in list(pairs):
            try:
                data = src.recv(http11.RECV_SIZE, DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                # A half-close: the side done sending may still read (a client that shuts
                # its write side waits for the rest of the answer). Pass the end on and
                # keep the other direction open until it ends too.
                pairs.remove((src, dst))
                if not pairs or not _shut_write(dst):
                    return
                continue
            try:
                yield from steps.send(dst, data)
            except OSError:  # gone, or took nothing for its whole timeout
                return
        if len(pairs) == 2:
            yield Either(client, upstream)
        else:
            # One direction left: wait for its sender alone (the other one is at EOF, always
            # readable), within that peer's timeout: a half-open tunnel does not last for ever.
            try:
                yield Wait(pairs[0][0])
            except TimeoutError:
                return


def _shut_write(sock: socket.socket) -> bool:
    """Tell ``sock``'s peer that nothing more comes; False if it is gone."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    return True


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
                        continue
                except OSError:
                    return
                # A half-close (see both_ways): pass it on, keep the other direction.
                sel.unregister(src)
                if not sel.get_map() or not _shut_write(peers[src]):
                    return
