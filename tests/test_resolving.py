"""config.resolving: provider names that resolve to internal addresses are caught at load
time, as the connect-time guard would catch them; slow or failing DNS is not a problem."""

from __future__ import annotations

import threading

import pytest

from addon.config.resolving import internal_names
from addon.config.schema import Provider

PROVIDERS = {
    "good": Provider(base_url="https://api.example.com/v1"),
    "meta": Provider(base_url="https://metadata.example.com/v1"),
    "dev": Provider(base_url="https://dev.example.com/v1"),
    "mine": Provider(base_url="http://gpu.example.com/v1", local=True),
}
DNS = {
    "api.example.com": ["93.184.216.34"],
    "metadata.example.com": ["169.254.169.254"],
    "dev.example.com": ["2606:2800:220:1::1", "127.0.0.1"],
    "gpu.example.com": ["10.0.0.5"],
}


def test_names_resolving_to_internal_addresses_are_problems() -> None:
    seen: list[str] = []

    def resolve(host: str) -> list[str]:
        seen.append(host)
        return DNS[host]

    assert internal_names(PROVIDERS, resolve) == [
        "providers.dev.base_url: dev.example.com resolves to loopback address 127.0.0.1 — the "
        "proxy refuses such connections; fix the name or DNS, or mark your own server "
        "`local: true`",
        "providers.meta.base_url: metadata.example.com resolves to link-local address "
        "169.254.169.254 — the proxy refuses such connections; fix the name or DNS, or mark "
        "your own server `local: true`",
    ]
    assert "gpu.example.com" not in seen  # local providers may reach internal addresses


@pytest.mark.parametrize("fault", ["raise", "hang"])
def test_dns_that_fails_or_hangs_is_not_a_problem(fault: str) -> None:
    release = threading.Event()

    def resolve(host: str) -> list[str]:
        if host != "metadata.example.com":
            return DNS[host]
        if fault == "raise":
            raise OSError("Name or service not known")
        release.wait(10)
        return DNS[host]

    try:
        got = internal_names(PROVIDERS, resolve, timeout_s=0.2)
    finally:
        release.set()
    assert [line.split(":")[0] for line in got] == ["providers.dev.base_url"]


def test_literals_and_no_providers_resolve_nothing() -> None:
    def resolve(host: str) -> list[str]:
        raise AssertionError(f"{host} resolved")

    literal = {"ip": Provider(base_url="https://93.184.216.34/v1")}
    assert internal_names(literal, resolve) == []
    assert internal_names({}, resolve) == []
