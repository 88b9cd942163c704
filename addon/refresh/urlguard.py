"""Source URL safety for the refresh sidecar.

Two checks, both before any byte is sent:

* ``check_url`` — every URL (the first and each redirect hop) must be https and name a
  host on the allowlist (``allowed_hosts`` in rules/sources.yaml).
* ``GuardedBackend`` — the connection layer resolves the host itself, refuses when any
  DNS answer is private, loopback, link-local or otherwise not global, and connects to
  the address it checked (so a second, different DNS answer cannot slip in).

A ``Guard`` says what one kind of fetch may reach; each kind has its own connection pool.
Public sources get the strict default. A local provider's ``/models`` (a provider marked
``local: true``) may use http and a loopback or private address, but only the hosts of
local providers. ``allow_loopback`` exists for tests
that serve fixtures from 127.0.0.1 over http; nothing in the product sets it.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from addon.errors import UnsafeURLError

Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True, slots=True)
class Guard:
    """What one fetch may reach."""

    allowed_hosts: frozenset[str]
    allow_http: bool = False
    allow_loopback: bool = False
    allow_private: bool = False
    remedy: str = "add it to allowed_hosts in rules/sources.yaml if you trust it"

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.allowed_hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]):
                    return True
            elif host == entry.strip("[]"):
                return True
        return False

    def address_allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            return self.allow_loopback or self.allow_private
        if ip.is_global:
            return True
        return self.allow_private and not (ip.is_multicast or ip.is_unspecified)


def check_url(url: str, guard: Guard) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url`` if the guard allows it; else UnsafeURLError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"{url!r} is not a valid URL ({exc})", "fix it") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower().rstrip(".")
    if scheme not in ("https", "http") or not host:
        raise UnsafeURLError(f"{url} is not an http(s) URL with a host", "use https://host/path")
    if scheme == "http" and not guard.allow_http:
        raise UnsafeURLError(f"{url}: plain http is refused for public sources", "use https://")
    if parts.username or parts.password:
        raise UnsafeURLError(f"{url}: URLs with credentials are refused", "remove user:pass@")
    if not guard.host_allowed(host):
        raise UnsafeURLError(f"{url}: host {host} is not allowed", guard.remedy)
    return scheme, host, port or (443 if scheme == "https" else 80)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), in resolver order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_addresses(host: str, port: int, guard: Guard, resolver: Resolver) -> list[str]:
    """The addresses to connect to; UnsafeURLError if any DNS answer is not allowed."""
    literal = True
    try:
        answers = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        literal = False
        try:
            answers = resolver(host, port)
        except OSError as exc:
            if isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN:
                raise httpcore.ConnectError(f"{host}: DNS lookup failed ({exc})") from None
            raise UnsafeURLError(f"{host}: no such host ({exc})", "check the host name") from None
    if not answers:
        raise UnsafeURLError(f"{host}: DNS returned no address", "check the host name")
    for answer in answers:
        ip = ipaddress.ip_address(answer.split("%")[0])
        if not guard.address_allowed(ip):
            what = (
                f"{ip} is a {_kind(ip)} address"
                if literal
                else (f"{host} resolves to {ip}, a {_kind(ip)} address")
            )
            raise UnsafeURLError(
                f"{what}: refused", "only providers marked local: true may use such addresses"
            )
    return answers


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for name in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    return "non-public"


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves and checks every host at connect time, then connects to a checked address."""

    def __init__(self, guard: Guard, resolver: Resolver) -> None:
        self._guard = guard
        self._resolver = resolver
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = checked_addresses(host, port, self._guard, self._resolver)
        last: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise UnsafeURLError(f"{path}: unix sockets are not used", "use an http(s) URL")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.NetworkError, httpx.NetworkError),
)


def _translate(exc: Exception, request: httpx.Request) -> Exception:
    for core, mapped in _ERRORS:
        if isinstance(exc, core):
            return mapped(str(exc) or type(exc).__name__, request=request)
    return exc


class _Body(httpx.SyncByteStream):
    def __init__(self, response: httpcore.Response, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._response.iter_stream()
        except Exception as exc:
            translated = _translate(exc, self._request)
            if translated is exc:
                raise
            raise translated from exc

    def close(self) -> None:
        self._response.close()


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool that uses ``GuardedBackend``. No proxies."""

    def __init__(self, backend: GuardedBackend, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, network_backend=backend, max_connections=16
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = self._pool.handle_request(core_request)
        except Exception as exc:
            translated = _translate(exc, request)
            if translated is exc:
                raise
            raise translated from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
