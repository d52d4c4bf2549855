"""Readiness for the dispatcher: sockets armed once, delivered once.

Every socket the dispatcher waits on (an idle client, an upstream answer, a body arriving, a
connect completing) is *armed* for one readable (or writable) event; when that event is
delivered the socket is disarmed, so it costs nothing while its owner works with it, and
arming it again is the owner's decision.
The listening socket and the wake-up socket are watched for good instead.

Linux (:class:`EpollPoller`): EPOLLONESHOT does exactly this in the kernel, and re-arming is
one ``epoll_ctl(MOD)``: one system call per wait instead of an add and a remove.
Elsewhere (:class:`SelectorPoller`): a ``selectors`` registration removed on delivery.

The data given with a socket comes back with its event. Only the dispatcher thread calls in.
"""

from __future__ import annotations

import select
import selectors
import socket
from typing import Any, Protocol

HAS_EPOLL = hasattr(select, "epoll")
_ONESHOT = (select.EPOLLIN | select.EPOLLONESHOT) if HAS_EPOLL else 0
_ONESHOT_OUT = (select.EPOLLOUT | select.EPOLLONESHOT) if HAS_EPOLL else 0
_ALWAYS = select.EPOLLIN if HAS_EPOLL else 0


class Poller(Protocol):
    select_based: bool  # select() underneath: a few hundred sockets at most (capacity.py)

    def watch(self, sock: socket.socket, data: Any) -> None:
        """Deliver every readable event of ``sock`` until :meth:`forget`."""

    def arm(self, fd: int, sock: socket.socket, data: Any, write: bool = False) -> bool:
        """Deliver the next readable (``write``: writable) event of ``sock`` (descriptor
        ``fd``) once; False if the socket is closed."""

    def disarm(self, fd: int, sock: socket.socket) -> None:
        """Not interested any more (no error if it was not armed)."""

    def forget(self, sock: socket.socket) -> None:
        """Stop watching a socket given to :meth:`watch`."""

    def poll(self, timeout: float | None) -> list[Any]:
        """Wait up to ``timeout`` seconds (None: for ever); the data of the ready sockets."""

    def armed(self) -> int:
        """How many sockets are armed."""

    def close(self) -> None: ...


class EpollPoller:
    """Linux: EPOLLONESHOT (see the module doc)."""

    select_based = False

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._data: dict[int, Any] = {}  # armed or watched descriptors -> their data
        self._known: set[int] = set()  # descriptors registered (a one-shot one stays, inert)
        self._always: set[int] = set()

    def watch(self, sock: socket.socket, data: Any) -> None:
        fd = sock.fileno()
        self._ep.register(fd, _ALWAYS)
        self._data[fd] = data
        self._always.add(fd)

    def forget(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        self._always.discard(fd)
        self._data.pop(fd, None)
        self._ep.unregister(fd)

    def arm(self, fd: int, sock: socket.socket, data: Any, write: bool = False) -> bool:
        ep = self._ep
        if sock.fileno() < 0:
            return False
        self._data[fd] = data
        events = _ONESHOT_OUT if write else _ONESHOT
        try:
            if fd in self._known:
                try:
                    ep.modify(fd, events)
                except FileNotFoundError:  # closed since, and the number reused: a new socket
                    ep.register(fd, events)
            else:
                ep.register(fd, events)
                self._known.add(fd)
        except OSError:
            self._data.pop(fd, None)
            return False
        return True

    def disarm(self, fd: int, sock: socket.socket) -> None:
        if self._data.pop(fd, None) is not None and sock.fileno() >= 0:
            try:
                self._ep.modify(fd, 0)
            except OSError:
                self._known.discard(fd)

    def poll(self, timeout: float | None) -> list[Any]:
        events = self._ep.poll(-1 if timeout is None else timeout)
        data, always = self._data, self._always
        ready = []
        for fd, _ in events:
            item = data.get(fd) if fd in always else data.pop(fd, None)
            if item is not None:
                ready.append(item)
        return ready

    def armed(self) -> int:
        return len(self._data) - len(self._always)

    def close(self) -> None:
        self._ep.close()


class SelectorPoller:
    """Elsewhere: a registration removed when its event is delivered."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self.select_based = isinstance(self._sel, selectors.SelectSelector)
        self._always: set[int] = set()
        self._armed = 0

    def watch(self, sock: socket.socket, data: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, data)
        self._always.add(sock.fileno())

    def forget(self, sock: socket.socket) -> None:
        self._always.discard(sock.fileno())
        self._sel.unregister(sock)

    def arm(self, fd: int, sock: socket.socket, data: Any, write: bool = False) -> bool:
        try:
            events = selectors.EVENT_WRITE if write else selectors.EVENT_READ
            self._sel.register(sock, events, data)
        except (OSError, ValueError):  # closed
            return False
        self._armed += 1
        return True

    def disarm(self, fd: int, sock: socket.socket) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            return
        self._armed -= 1

    def poll(self, timeout: float | None) -> list[Any]:
        ready = []
        for key, _ in self._sel.select(timeout):
            if key.fd not in self._always:
                self._sel.unregister(key.fileobj)
                self._armed -= 1
            ready.append(key.data)
        return ready

    def armed(self) -> int:
        return self._armed

    def close(self) -> None:
        self._sel.close()


# "epoll" or "selectors"; "auto" takes epoll where there is one. Tests run both on Linux.
KIND = "auto"


def make(kind: str | None = None) -> Poller:
    kind = kind or KIND
    if kind == "epoll" or (kind == "auto" and HAS_EPOLL):
        return EpollPoller()
    if kind in ("selectors", "auto"):
        return SelectorPoller()
    raise ValueError(f"unknown poller {kind!r}")
