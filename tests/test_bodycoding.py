"""A request body's Content-Encoding undone within a limit (`addon.wire.bodycoding`)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard

from addon.errors import BodyEncodingError
from addon.wire.bodycoding import codings, decode

BODY = b'{"model": "gpt-4o", "input": "' + b"say hi " * 400 + b'"}'
LIMIT = 1_000_000


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": _zstd,
}


@pytest.mark.parametrize("coding", list(ENCODERS))
def test_each_coding_is_undone(coding: str) -> None:
    assert decode(ENCODERS[coding](BODY), coding, LIMIT) == BODY
    assert decode(ENCODERS[coding](BODY), coding.upper(), LIMIT) == BODY  # names: any case


def test_raw_deflate_without_the_zlib_wrapper() -> None:
    assert decode(_raw_deflate(BODY), "deflate", LIMIT) == BODY


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_several_members_or_frames(coding: str) -> None:
    enc = ENCODERS[coding]
    assert decode(enc(BODY[:100]) + enc(BODY[100:]), coding, LIMIT) == BODY


def test_a_list_is_undone_last_applied_first() -> None:
    data = brotli.compress(gzip.compress(BODY))
    assert codings("gzip, identity, BR") == ["gzip", "br"]
    assert decode(data, "gzip, br", LIMIT) == BODY


@pytest.mark.parametrize("header", [None, "", "identity", " Identity "])
def test_no_coding_leaves_the_body_alone(header: str | None) -> None:
    assert codings(header) == []
    assert decode(b"not even json", header, 5) == b"not even json"


@pytest.mark.parametrize("coding", list(ENCODERS))
def test_a_bomb_stops_at_the_limit(coding: str) -> None:
    bomb = ENCODERS[coding](b"\0" * 20_000_000)
    assert len(bomb) < 100_000  # the point: small on the wire, huge decoded
    with pytest.raises(BodyEncodingError, match="max_request_bytes") as e:
        decode(bomb, coding, LIMIT)
    assert e.value.too_large


@pytest.mark.parametrize("coding", list(ENCODERS))
def test_exactly_the_limit_is_fine(coding: str) -> None:
    assert decode(ENCODERS[coding](BODY), coding, len(BODY)) == BODY
    with pytest.raises(BodyEncodingError) as e:
        decode(ENCODERS[coding](BODY), coding, len(BODY) - 1)
    assert e.value.too_large


@pytest.mark.parametrize("coding", list(ENCODERS))
def test_cut_data_is_an_error(coding: str) -> None:
    data = ENCODERS[coding](BODY)
    with pytest.raises(BodyEncodingError, match="ends early") as e:
        decode(data[: len(data) // 2], coding, LIMIT)
    assert not e.value.too_large


@pytest.mark.parametrize("coding", list(ENCODERS))
def test_garbage_is_an_error(coding: str) -> None:
    with pytest.raises(BodyEncodingError, match=r"not valid|ends early") as e:
        decode(b"\x8b\x00 plainly not compressed data", coding, LIMIT)
    assert not e.value.too_large


def test_an_unknown_coding_names_what_is_read() -> None:
    with pytest.raises(BodyEncodingError, match="'compress' is not one the router reads"):
        decode(BODY, "compress", LIMIT)


def test_a_zstd_frame_asking_for_a_huge_window_is_refused() -> None:
    # 18 bytes that would make the decoder allocate a 128 MiB window for 1 KB of output
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = c.compress(b"x" * 1000) + c.flush()
    assert zstandard.get_frame_parameters(data).window_size == 1 << 27
    with pytest.raises(BodyEncodingError, match="too much memory"):
        decode(data, "zstd", LIMIT)
    assert decode(data, "zstd", 100_000_000) == b"x" * 1000  # a limit that large allows it
