"""Provider host names checked the way the connect-time guard checks them: a provider not
marked `local: true` whose name resolves to a loopback, private or link-local address is a
configuration problem (the proxy would refuse every connection to it anyway).

Used by `orchestrator check` and once at `orchestrator run` startup, never on the request
path. Names that do not resolve (offline, air-gapped, a DNS outage) are not problems here:
the connect-time guard still checks every address they resolve to later.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from urllib.parse import urlsplit

from addon.config.schema import Provider, address_kind

Resolver = Callable[[str], list[str]]


def system_resolver(host: str) -> list[str]:
    """Every address `host` resolves to (A and AAAA), as the proxy's connections would."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)]


def internal_names(
    providers: Mapping[str, Provider],
    resolve: Resolver = system_resolver,
    timeout_s: float = 2.0,
) -> list[str]:
    """One line per non-local provider whose host name resolves to an internal address:
    `providers.NAME.base_url: HOST resolves to KIND address ADDR — remedy`. Names are
    resolved in parallel; any not answered within `timeout_s` are skipped."""
    names = {
        name: host
        for name, p in providers.items()
        if not p.local and (host := urlsplit(p.base_url).hostname or "")
        and address_kind(host) is None and not _is_literal(host)
    }  # fmt: skip
    if not names:
        return []
    pool = ThreadPoolExecutor(max_workers=min(8, len(names)), thread_name_prefix="resolve")
    try:
        futures = {pool.submit(resolve, host): name for name, host in names.items()}
        done, _ = wait(futures, timeout=timeout_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    out = []
    for future in done:
        name = futures[future]
        if future.exception() is not None:
            continue
        out.extend(_problems(name, names[name], future.result()))
    return sorted(out)


def _problems(name: str, host: str, addresses: Iterable[str]) -> list[str]:
    for addr in addresses:
        kind = address_kind(addr.split("%", 1)[0])
        if kind is not None:
            return [f"providers.{name}.base_url: {host} resolves to {kind} address {addr} — "
                    "the proxy refuses such connections; fix the name or DNS, or mark your own "
                    "server `local: true`"]  # fmt: skip
    return []


def _is_literal(host: str) -> bool:
    return host.replace(".", "").isdigit() or ":" in host
