"""Reading an answer's body: capped after decoding, or discarded so the connection is reused.

Decoded here, with zlib's ``max_length``, not by urllib3: a chunk of a gzip bomb may expand a
thousandfold, and only a decoder told how much room is left stays small.
"""

from __future__ import annotations

import contextlib
import zlib

import requests
import urllib3

from trayupdater.cancel import Interrupt
from trayupdater.errors import TrayUpdaterError
from trayupdater.failure_reasons import describe

READ_SIZE = 64 * 1024
# What reading an answer can raise besides our own errors.
NETWORK_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException, OSError)


def discard(response: requests.Response, limit: int = 64 * 1024) -> None:
    """Done with an answer we do not read (a redirect, an error): read a small body to its
    end, so the connection can be reused instead of being reset."""
    # ValueError: http.client's read() takes a chunk size of "-5" as a length to read.
    with contextlib.suppress(*NETWORK_ERRORS, ValueError):
        response.raw.read(limit, decode_content=False)
    response.close()


def read_capped(
    response: requests.Response,
    cap: int,
    *,
    error: type[TrayUpdaterError],
    what: str,
    interrupt: Interrupt | None = None,
) -> bytes:
    """The decoded body of ``response``, or ``error`` once it passes ``cap`` bytes. (How long
    it may take is the caller's :meth:`~trayupdater.http_client.HttpClient.deadline`.)"""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in ("gzip", "x-gzip", "deflate"):
        decoder = _Inflater()
    else:
        response.close()
        raise error(f"{what} uses the unsupported Content-Encoding {encoding[:30]!r}")
    out = bytearray()
    try:
        while True:
            if interrupt is not None:
                interrupt.check()
            # read1: what has arrived, so an interrupt is noticed between drips.
            raw = response.raw.read1(READ_SIZE, decode_content=False)
            if not raw:
                break
            if decoder is None:
                out += raw
            while raw and decoder is not None:
                decoded, raw = decoder.inflate(raw, cap + 1 - len(out))  # room is always >= 1
                out += decoded
                if len(out) > cap:
                    break
            if len(out) > cap:
                raise error(f"{what} is larger than {cap} bytes; refused")
        if decoder is not None:
            out += decoder.flush()
            if len(out) > cap:
                raise error(f"{what} is larger than {cap} bytes; refused")
    except zlib.error as exc:
        raise error(f"{what} is not valid {encoding} ({exc})") from None
    except NETWORK_ERRORS as exc:
        if interrupt is not None:
            interrupt.check()
        raise error(f"{what}: reading the answer failed ({describe(exc)})") from None
    finally:
        response.close()
    return bytes(out)


class _Inflater:
    """gzip or zlib data (the header tells), decoded with a cap on each call's output.

    A gzip body may be several members one after another (RFC 1952 2.2; what a server
    compressing as it streams sends): each is decoded in turn, as urllib3 and browsers do.
    Only the first one is not a guess: bytes after a complete member that do not decode are
    ignored, as there too.
    """

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(32 + zlib.MAX_WBITS)
        self._members = 0  # complete members so far
        self._ignoring = False

    def inflate(self, data: bytes, room: int) -> tuple[bytes, bytes]:
        """At most ``room`` decoded bytes from ``data``, and the input still to feed."""
        if self._ignoring:
            return b"", b""
        try:
            decoded = self._zlib.decompress(data, room)
        except zlib.error:
            if not self._members:
                raise
            self._ignoring = True
            return b"", b""
        rest = self._zlib.unconsumed_tail
        if self._zlib.eof:
            self._members += 1
            rest = self._zlib.unused_data + rest
            self._zlib = zlib.decompressobj(32 + zlib.MAX_WBITS)
        return decoded, rest

    def flush(self) -> bytes:
        return b"" if self._ignoring else self._zlib.flush()
