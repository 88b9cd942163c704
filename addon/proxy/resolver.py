"""The DNS resolver of the upstream connection pool: a provider host's answers are checked
when a connection is made, not only at config load (`orchestrator check`)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from addon.config.schema import address_kind


class GuardedResolver(AbstractResolver):
    """DNS answers are checked when a connection is made, not only at config load: a provider
    host that resolves (or re-binds) to a loopback, private or link-local address is refused
    unless that provider is marked `local: true`."""

    def __init__(self, internal_ok: Callable[[str], bool], inner: AbstractResolver | None = None):
        self.internal_ok = internal_ok
        self._inner = inner

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:  # fmt: skip
        """Resolve `host`; refuse internal addresses unless `internal_ok(host)`."""
        if self._inner is None:
            self._inner = ThreadedResolver()
        infos = await self._inner.resolve(host, port, family)
        if self.internal_ok(host):
            return infos
        for info in infos:
            kind = address_kind(info["host"])
            if kind:
                raise OSError(f"{host} resolves to {kind} address {info['host']}; only providers "
                              "marked `local: true` may reach internal addresses")  # fmt: skip
        return infos

    async def close(self) -> None:
        """Close the wrapped resolver."""
        if self._inner is not None:
            await self._inner.close()
