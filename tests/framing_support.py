"""What the two framing property tests share: hostile message parts, the h11 oracles' aids.

``test_proxy_framing_properties`` (requests) and ``test_proxy_response_framing_properties``
(backend answers) build HTTP/1.1 messages from the parts an attacker or a broken peer varies,
and compare what the proxy passes on with what h11 reads. Here: how many examples they run,
how a part is picked (``hostile``, or ``plain_only`` for the valid form), the Content-Length
and chunked-body forms, the proxy's chunk-size leniency, and the end-to-end header fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from hypothesis import settings
from hypothesis import strategies as st
from property_settings import property_settings

# Not end-to-end: the proxy drops, rewrites or adds these (in both directions).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)


def framing_settings(default_examples: int) -> settings:
    """``default_examples`` derandomized (CI), or ``TRAYUPDATER_FRAMING_EXAMPLES`` random."""
    return property_settings("TRAYUPDATER_FRAMING_EXAMPLES", default_examples)


def hostile(forms: list) -> st.SearchStrategy:
    """One of ``forms``: the first (the plain, valid one) half the time, so that valid
    exchanges deep enough to desync are generated as often as hostile parts."""
    return st.one_of(st.just(forms[0]), st.sampled_from(forms))


def plain_only(forms: list) -> st.SearchStrategy:
    """The first (the plain, valid) of ``forms``: ``hostile``'s counterpart."""
    return st.just(forms[0])


@st.composite
def length_fields(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """Content-Length field lines for ``body``, as an attacker writes them."""
    n = max(0, len(body) + draw(st.sampled_from([0, 0, 0, -1, 1, 5])))
    value = draw(
        hostile(
            [
                b"%d" % n,
                b" %d " % n,
                b"\t%d" % n,
                b"0%d" % n,
                b"000000000000000000%d" % n,
                b"+%d" % n,
                b"-%d" % n,
                b"%d,%d" % (n, n),
                b"%d, %d" % (n, n),
                b"%d, %d" % (n, n + 1),
                b"%d,," % n,
                b"0x%x" % n,
                b"%d %d" % (n, n),
                b"%d_0" % n,
                b"99999999999",
                b"99999999999999999999",
                b"\xd9\xa3",  # an Arabic-Indic digit in UTF-8
                b"",
            ]
        )
    )
    name = draw(st.sampled_from([b"Content-Length", b"content-length", b"Content-Length "]))
    lines = [name + b":" + value]
    extra = draw(st.sampled_from([None, None, b"%d" % n, b"%d" % (n + 1), b"0"]))
    if extra is not None:
        lines.append(b"Content-Length: " + extra)
    return lines


@st.composite
def chunked_body(
    draw: st.DrawFn,
    body: bytes,
    pick: Callable[[list], st.SearchStrategy],
    *,
    offsets: st.SearchStrategy[int],
    ends: st.SearchStrategy[bytes],
    lasts: st.SearchStrategy[bytes],
    trailers: st.SearchStrategy[bytes],
    finals: st.SearchStrategy[bytes],
) -> bytes:
    """``body`` in one or two chunks, each size line written as ``pick`` (``hostile`` or
    ``plain_only``) chooses among the forms a sender varies. The other parts are strategies,
    as each test weighs them its own way: ``offsets`` (how far a size is off its data),
    ``ends`` (after each chunk's data), ``lasts`` (the last-chunk line), ``trailers`` and
    ``finals`` (the line that ends the message)."""
    cut = draw(st.integers(0, len(body)))
    pieces = [p for p in (body[:cut], body[cut:]) if p]
    out = b""
    for piece in pieces:
        size = len(piece) + draw(offsets)
        size_text = draw(
            pick(
                [
                    b"%x" % size,
                    b"%X" % size,
                    b"00%x" % size,
                    b"0x%x" % size,
                    b" %x" % size,
                    b"%x " % size,
                    b"%x ;a" % size,
                    b"%x;a=b" % size,
                    b'%x;a="x;y"' % size,
                    b"%x\t" % size,
                    b"-%x" % size,
                    b"%xg" % size,
                    b"0000000000000000%x" % size,
                ]
            )
        )
        out += size_text + b"\r\n" + piece + draw(ends)
    return out + draw(lasts) + b"\r\n" + draw(trailers) + draw(finals)


_CHUNK_LINE = re.compile(rb"(?m)^[ \t]*([0-9A-Fa-f]+)[ \t]*(;[^\r\n]*)?\r$")


def without_chunk_size_blanks(stream: bytes) -> bytes:
    """``stream`` with the blanks around each chunk size dropped: the proxy's leniency
    (RFC 9112 7.1.1 allows BWS before ``;`` only; h11 trailing blanks only)."""
    return _CHUNK_LINE.sub(lambda m: m.group(1) + (m.group(2) or b"") + b"\r", stream)


def end_to_end(
    headers: list[tuple[bytes, bytes]], hop: frozenset[bytes] = HOP_BY_HOP
) -> list[tuple[bytes, bytes]]:
    """The fields of ``headers`` (names lower-cased) but ``hop`` and those ``Connection``
    names."""
    named = {
        t.strip().lower() for n, v in headers if n.lower() == b"connection" for t in v.split(b",")
    }
    return [(n.lower(), v) for n, v in headers if n.lower() not in hop | named]
