"""A request body's `Content-Encoding`, undone within a size limit.

HTTP clients may compress what they send: Codex CLI compresses its Responses requests with
zstd for some backends, other SDKs gzip large bodies. The router must read the JSON to
route it, and a provider elsewhere must get a body it can read, so a routed request is
decoded here and sent on as identity (`outbound` never forwards `Content-Encoding`).
Decoding stops one byte past `limit` (`max_request_bytes`): a few kilobytes of compressed
zeros cannot grow into gigabytes in the router's memory (nor can a zstd frame make it
allocate a window larger than such a body needs).

Codings read: gzip (x-gzip; several members), deflate (zlib-wrapped, or raw as some clients
send it), br, zstd (several frames), identity; a list (`gzip, br`) is undone last one first.
Pure: zlib, brotli and zstandard, no I/O.
"""

from __future__ import annotations

import io
import zlib

import brotli
import zstandard

from addon.errors import BodyEncodingError

READ = ("gzip", "deflate", "br", "zstd")  # for messages; x-gzip and identity too
_CHUNK = 64 * 1024


def codings(header: str | None) -> list[str]:
    """The codings a `Content-Encoding` value names, in the order they were applied
    (identity left out, names lowercased)."""
    names = (c.strip().lower() for c in (header or "").split(","))
    return [c for c in names if c and c != "identity"]


def decode(body: bytes, header: str | None, limit: int) -> bytes:
    """`body` with every coding `header` names undone, last applied first. Raises
    BodyEncodingError for a coding not read here, data that is not valid in its coding or
    ends early, and (`too_large`) a result over `limit` bytes."""
    out = body
    for coding in reversed(codings(header)):
        step = _DECODERS.get(coding)
        if step is None:
            raise BodyEncodingError(f"Content-Encoding {coding!r} is not one the router reads "
                                    f"({', '.join(READ)}); send the body uncompressed or in "
                                    "one of those")  # fmt: skip
        try:
            out = step(out, limit)
        except BodyEncodingError:
            raise
        except (zlib.error, brotli.error, zstandard.ZstdError, EOFError) as e:
            raise BodyEncodingError(f"the request body is not valid {coding} data ({e}); "
                                    "send it uncompressed") from None  # fmt: skip
    return out


def _too_large(coding: str, limit: int) -> BodyEncodingError:
    return BodyEncodingError(f"the request body decodes ({coding}) to more than "
                             f"max_request_bytes ({limit}); send a smaller request or raise "
                             "`max_request_bytes` in orchestrator.yaml", too_large=True)  # fmt: skip


def _cut(coding: str) -> BodyEncodingError:
    return BodyEncodingError(f"the request body's {coding} data ends early; send the whole body")


def _zlib(data: bytes, limit: int, wbits: int, coding: str) -> bytes:
    """Every member of a zlib-family stream (gzip bodies may hold several)."""
    parts: list[bytes] = []
    size = 0
    rest = data
    while True:
        d = zlib.decompressobj(wbits)
        part = d.decompress(rest, limit - size + 1)
        size += len(part)
        if size > limit or d.unconsumed_tail:
            raise _too_large(coding, limit)
        if not d.eof:
            raise _cut(coding)
        parts.append(part)
        rest = d.unused_data
        if not rest.strip(b"\0"):  # some writers pad the end with zeros
            return b"".join(parts)


def _gzip(data: bytes, limit: int) -> bytes:
    return _zlib(data, limit, 16 + zlib.MAX_WBITS, "gzip")


def _deflate(data: bytes, limit: int) -> bytes:
    try:
        return _zlib(data, limit, zlib.MAX_WBITS, "deflate")
    except zlib.error:  # raw deflate, without the zlib wrapper some clients leave off
        return _zlib(data, limit, -zlib.MAX_WBITS, "deflate")


def _br(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out = d.process(data, output_buffer_limit=limit + 1)
    if len(out) > limit or not d.can_accept_more_data():
        raise _too_large("br", limit)
    if not d.is_finished():
        raise _cut("br")
    return bytes(out)


def _zstd(data: bytes, limit: int) -> bytes:
    # a bounded read first (the reader stops at `limit`), then, knowing the output fits,
    # frame by frame to see that each one ends (the reader says nothing of a cut frame)
    # and a window no larger than the body may be: a frame can declare 2 GiB of window,
    # which the decoder would allocate whatever the frame holds
    zd = zstandard.ZstdDecompressor(max_window_size=_window(limit))
    size = 0
    with zd.stream_reader(io.BytesIO(data), read_across_frames=True) as r:
        while chunk := r.read(min(_CHUNK, limit - size + 1)):
            size += len(chunk)
            if size > limit:
                raise _too_large("zstd", limit)
    parts: list[bytes] = []
    rest = data
    while rest:
        d = zd.decompressobj()
        parts.append(d.decompress(rest))
        if not d.eof:
            raise _cut("zstd")
        rest = d.unused_data
    return b"".join(parts)


def _window(limit: int) -> int:
    """The largest zstd window a body of at most `limit` bytes needs: the power of two
    covering it, 8 MiB at least (what zstd's high levels use), 128 MiB at most."""
    return 1 << max(23, min(27, limit.bit_length()))


_DECODERS = {"gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "br": _br, "zstd": _zstd}
