"""quicksend.sendall: a small send keeps the GIL, and otherwise acts as socket.sendall.

Whether a call lets go of the GIL is seen from another thread. With a switch interval far
longer than the test, the GIL changes hands only when its holder lets go of it; a thread
that counts, letting go after each step (sleep(0)), counts only while the sender has let go.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from trayupdater.proxy import quicksend

needs_libc = pytest.mark.skipif(quicksend._send is None, reason="no libc send() to call")


@pytest.fixture
def no_forced_switches() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    yield
    sys.setswitchinterval(before)


@needs_libc
def test_a_small_send_keeps_the_gil(no_forced_switches) -> None:
    a, b = socket.socketpair()
    count = 0
    stop = threading.Event()

    def counter() -> None:
        nonlocal count
        while not stop.is_set():
            count += 1
            time.sleep(0)  # lets go of the GIL: the sender gets it back

    thread = threading.Thread(target=counter)
    thread.start()
    while count < 10:  # it runs
        time.sleep(0.001)
    before = count
    for _ in range(200):
        quicksend.sendall(a, b"x" * 100)  # 20 KB: fits in the buffer, never blocks
    during = count - before  # nothing above let go of the GIL (sock.sendall would)
    stop.set()
    thread.join()
    a.close()
    b.close()
    assert during == 0


def test_what_does_not_fit_at_once_is_sent_all_the_same() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * (quicksend.QUICK_MAX // 256)  # far more than the buffer
    received = bytearray()

    def read() -> None:
        while len(received) < len(data):
            time.sleep(0.001)  # slowly: the sender finds its buffer full
            received.extend(b.recv(4096))

    reader = threading.Thread(target=read)
    reader.start()
    quicksend.sendall(a, data)
    reader.join(10)
    assert bytes(received) == data
    a.close()
    b.close()


def test_errors_are_raised_as_sendall_raises_them() -> None:
    a, b = socket.socketpair()
    b.close()
    with pytest.raises(OSError):  # BrokenPipeError here: the peer is gone
        quicksend.sendall(a, b"hello")
    a.close()
    with pytest.raises(OSError):  # EBADF: a closed socket
        quicksend.sendall(a, b"hello")
