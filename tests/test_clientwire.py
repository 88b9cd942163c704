"""`addon.proxy.clientwire.ClientWire`: the bytes a body chunk becomes on the client's
connection — HTTP/1 chunk framing, and TLS records the client can decrypt."""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from addon.proxy.clientwire import ClientWire


class _Watchdog:
    def __init__(self) -> None:
        self.activity = 0

    def register_activity(self) -> None:
        self.activity += 1


class _Stream:
    """Just what `ClientWire.ready` reads of an HttpStream."""

    def __init__(self, streaming: bool) -> None:
        self.server_state = self.state_stream_response_body if streaming else self.other

    def state_stream_response_body(self) -> None: ...

    def other(self) -> None: ...


class _Layer:
    def __init__(self, paused: object | None) -> None:
        self._paused = paused


def _wire(tls: Any = None, chunked: bool = True, streaming: bool = True,
          paused: object | None = None) -> tuple[ClientWire, _Watchdog]:  # fmt: skip
    dog = _Watchdog()
    chain: Any = [_Layer(None), _Layer(paused)]
    return ClientWire(_Stream(streaming), chain, tls, chunked, dog), dog  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "chunked", "wire"),
    [
        (b"data: {}\n\n", True, b"a\r\ndata: {}\n\n\r\n"),
        (b"x" * 300, True, b"12c\r\n" + b"x" * 300 + b"\r\n"),
        (b"data: {}\n\n", False, b"data: {}\n\n"),  # read-until-close answers: raw bytes
    ],
)
def test_plain_client_gets_the_chunk_framing_only(data: bytes, chunked: bool, wire: bytes) -> None:
    w, dog = _wire(chunked=chunked)
    assert w.encode(data) == wire
    assert dog.activity == 1  # the idle-connection watchdog sees the traffic


@pytest.mark.parametrize(
    ("streaming", "paused", "ready"),
    [(True, None, True), (False, None, False), (True, object(), False)],
)
def test_ready_only_once_the_headers_are_out_and_nothing_is_queued(
    streaming: bool, paused: object | None, ready: bool
) -> None:
    w, _ = _wire(streaming=streaming, paused=paused)
    assert w.ready is ready


def _tls_pair() -> tuple[SSL.Connection, SSL.Connection]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    server_ctx.use_privatekey(key)
    server_ctx.use_certificate(cert)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    client.set_connect_state()
    for _ in range(10):  # shuttle the handshake between the two memory BIOs
        for a, b in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                a.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65535))
    return server, client


def test_tls_client_decrypts_exactly_the_framed_chunk() -> None:
    server, client = _tls_pair()
    w, _ = _wire(tls=server)
    records = w.encode(b'data: {"x": 1}\n\n')
    assert b"data:" not in records  # encrypted on the wire
    client.bio_write(records)
    assert client.recv(65535) == b'10\r\ndata: {"x": 1}\n\n\r\n'
