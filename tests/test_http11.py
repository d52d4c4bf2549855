"""The HTTP/1.1 head parser on exact inputs: strictness, and cost linear in the head size."""

from __future__ import annotations

import time

import pytest

from trayupdater import http11

SPACES = " " * 64_000
GET = b"GET / HTTP/1.1\r\nHost: x\r\n"
# Each of these was quadratic (or worse) with a lazy value followed by optional whitespace.
HOSTILE_HEADS = {
    "spaces-inside": GET + b"X: a" + SPACES.encode() + b"b\r\n\r\n",
    "spaces-trailing": GET + b"X: a" + SPACES.encode() + b"\r\n\r\n",
    "spaces-leading": GET + b"X:" + SPACES.encode() + b"a\r\n\r\n",
    "tabs-and-spaces": GET + b"X: a" + b" \t" * 32_000 + b"b\r\n\r\n",
    "many-fields": GET + b"X-A:   v   \r\n" * 5_000 + b"\r\n",
}
# Malformed heads take the slow path that explains the error: it must be linear too.
HOSTILE_BAD_HEADS = {
    "control-after-spaces": GET + b"X: a" + SPACES.encode() + b"\x01\r\n\r\n",
    "bare-lf-after-spaces": GET + b"X: a" + SPACES.encode() + b"\nY: b\r\n\r\n",
    "space-before-colon": GET + b"X" + SPACES.encode() + b": a\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADS))
def test_parsing_a_64k_whitespace_head_is_linear(case):
    raw = HOSTILE_HEADS[case]
    started = time.perf_counter()
    head = http11.parse_request_head(raw)
    elapsed = time.perf_counter() - started
    print(f"{case}: {len(raw)} bytes parsed in {elapsed * 1000:.2f} ms")
    assert elapsed < 1.0, f"{elapsed:.2f} s: parsing is not linear in the head size"
    assert head.get("host") == "x"
    value = head.get("x") or head.get("x-a")
    assert value is not None and value == value.strip(" \t"), "optional whitespace trimmed"


@pytest.mark.parametrize("case", sorted(HOSTILE_BAD_HEADS))
def test_refusing_a_64k_malformed_head_is_linear(case):
    started = time.perf_counter()
    with pytest.raises(http11.HttpError) as err:
        http11.parse_request_head(HOSTILE_BAD_HEADS[case])
    elapsed = time.perf_counter() - started
    print(f"{case}: refused in {elapsed * 1000:.2f} ms")
    assert elapsed < 1.0
    assert err.value.status == 400


def test_a_64k_whitespace_trailer_is_linear():
    body = b"3\r\nabc\r\n0\r\nX-T: a" + SPACES.encode() + b"b\r\n\r\n"
    src = http11.BufferedSocket(None)  # type: ignore[arg-type]
    src.buf += body
    started = time.perf_counter()
    whole = http11.decode_in_hand(src, 128 * 1024)
    assert time.perf_counter() - started < 1.0
    assert whole is not None
    data, trailers = whole
    assert data == b"abc"
    assert trailers == ["X-T: a" + SPACES + "b"]


def test_field_values_keep_inner_whitespace_and_lose_the_outer():
    head = http11.parse_request_head(
        b"GET / HTTP/1.1\r\nHost:h\r\nX-A: \t one  two\t \r\nX-Empty:\r\nX-Blank:   \r\n"
        b"x-a: three\r\n\r\n"
    )
    assert head.fields == [
        ("Host", "h"),
        ("X-A", "one  two"),
        ("X-Empty", ""),
        ("X-Blank", ""),
        ("x-a", "three"),
    ]
    assert head.index["x-a"] == ["one  two", "three"]
    assert head.get("x-empty") == ""


@pytest.mark.parametrize(
    "raw",
    [
        GET + b"X-A: 1\r\n  folded\r\n\r\n",  # obs-fold
        GET + b"X-A: 1\r\n\tfolded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n",  # space before colon
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length\t: 5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n",  # bare CR
        GET + b"X-A: a\x00b\r\n\r\n",  # NUL
        GET + b"X-A: a\x7fb\r\n\r\n",  # DEL
        b"GET / HTTP/1.1\r\nHost: x\r\n: no name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n",
        GET + b"X(A): 1\r\n\r\n",  # not a token
    ],
)
def test_smuggling_shapes_are_refused(raw):
    with pytest.raises(http11.HttpError) as err:
        http11.parse_request_head(raw)
    assert err.value.status == 400


def test_framing_conflicts_are_refused():
    def framing(fields: bytes):
        return http11.request_framing(
            http11.parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        )

    for fields in (
        b"Content-Length: 3\r\nContent-Length: 4\r\n",
        b"Content-Length: 3, 4\r\n",
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: +3\r\n",
        b"Content-Length: \xb3\r\n",  # a latin-1 superscript digit
    ):
        with pytest.raises(http11.HttpError):
            framing(fields)
    assert framing(b"Content-Length:  7 \r\n") == (http11.Framing.LENGTH, 7)
    assert framing(b"Transfer-Encoding: chunked\r\n") == (http11.Framing.CHUNKED, 0)


def test_scanning_a_chunked_body_stops_at_its_chunk_budget_and_resumes() -> None:
    """The dispatcher walks a bounded number of chunks per body (a megabyte of one-byte
    chunks is 170,000 of them); the scan says how many it walked and resumes where it
    stopped."""
    body = bytearray(b"1\r\nx\r\n" * 10 + b"0\r\nX-T: 1\r\n\r\n")
    pos, done, walked = http11.scan_chunked(body, 0, 8192, 4)
    assert (pos, done, walked) == (4 * 6, False, 4)
    pos, done, walked = http11.scan_chunked(body, pos, 8192, 100)
    assert (done, walked) == (True, 7), "six chunks and one trailer line"
    assert body[pos:].startswith(b"0\r\n"), "resumes from the last chunk"
    assert http11.scan_chunked(body[:-2], 0, 8192, 100)[1:] == (False, 11), "trailers unfinished"


def test_trailer_lines_count_against_the_chunk_budget() -> None:
    """A trailer section trickled in 3-byte lines is rescanned from the last chunk at every
    read; uncounted, 64 KiB of them cost the dispatcher milliseconds per read, for every
    such client. Counted, the scan stops at the budget and the body goes to a worker."""
    body = bytearray(b"1\r\nx\r\n0\r\n" + b"a:\r\n" * 16_000)
    pos, done, walked = http11.scan_chunked(body, 0, 64 * 1024, 256)
    assert (done, walked) == (False, 256)
    assert body[pos:].startswith(b"0\r\n")


def test_a_chunked_body_in_hand_is_taken_whole_or_not_at_all():
    src = http11.BufferedSocket(None)  # type: ignore[arg-type]
    whole = b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    for cut in range(len(whole)):  # every shorter prefix: more must come, nothing taken
        src.buf = bytearray(whole[:cut])
        assert http11.decode_in_hand(src, 1024) is None
        assert src.buf == whole[:cut]
    src.buf = bytearray(whole + b"GET / HTTP/1.1\r\n")  # and the next request after it
    assert http11.decode_in_hand(src, 1024) == (b"abcde", ["X-T: 1"])
    assert src.buf == b"GET / HTTP/1.1\r\n"
    assert http11.rechunked(b"abcde", ["X-T: 1"]) == b"5\r\nabcde\r\n0\r\nX-T: 1\r\n\r\n"
    assert http11.rechunked(b"", []) == b"0\r\n\r\n"
