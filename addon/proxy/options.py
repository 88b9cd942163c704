"""What `orchestrator.yaml`'s settings ask of mitmproxy: its options, the log levels, and
where it may listen.

Plain functions over `Settings`; the adapter applies them (at load and on reload), and
`addon.proxy.process.Listeners` applies `listen:`/`mode:` and the loopback rule.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable
from typing import Any

from addon.config.schema import Settings, address_kind

# libraries whose info lines would drown the router's own
QUIET = ("httpx", "hpack", "aiohttp", "aiohttp.access", "asyncio")
# mitmproxy's per-connection lines ("client connect", "Streaming response from …") cost as
# much as a routed request's own work: shown only at debug
PER_CONNECTION = "mitmproxy.proxy.server"


def allow_hosts_for(intercept: list[str]) -> list[str]:
    """mitmproxy `allow_hosts` regexes: only these hosts are TLS-intercepted (an entry
    without a port matches it on any port)."""
    out = []
    for entry in intercept:
        if re.search(r":\d+$", entry):
            out.append("^" + re.escape(entry) + "$")
        else:
            out.append("^" + re.escape(entry) + r":\d+$")
    return out


def mitm_options(settings: Settings) -> dict[str, Any]:
    """mitmproxy options for these settings: `lazy` connections in every mode (eager opens
    the original host before any hook runs), and outside reverse mode `allow_hosts` from
    the intercept list so unrelated traffic is tunneled untouched. mitmproxy's terminal log
    shows debug lines only when `log_level: debug` asks for them."""
    out: dict[str, Any] = {
        "connection_strategy": "lazy",
        "termlog_verbosity": "debug" if settings.log_level == "debug" else "info",
    }
    if not settings.mode.startswith("reverse:"):
        out["allow_hosts"] = allow_hosts_for(list(settings.intercept))
    return out


def log_levels(log_level: str) -> dict[str, int | str]:
    """Logger name -> level: the router's own at `log_level`, noisy libraries at warning."""
    levels: dict[str, int | str] = dict.fromkeys(QUIET, logging.WARNING)
    levels["orchestrator"] = log_level.upper()
    levels[PER_CONNECTION] = logging.DEBUG if log_level == "debug" else logging.WARNING
    return levels


LAUNCH_OPTIONS = ("listen_host", "listen_port", "mode")


def launch_options(settings: Settings, *, explicit: Collection[str]) -> dict[str, Any]:
    """mitmproxy's `listen_host`, `listen_port` and `mode` from `listen:` and `mode:`, but
    for those in `explicit` (set by the operator: on the command line, with `--set`, by
    `orchestrator run`): plain `mitmdump -s addon/entry.py` then listens where
    `orchestrator run` would."""
    wanted: dict[str, Any] = {
        "listen_host": settings.listen_host,
        "listen_port": settings.listen_port,
        "mode": [settings.mode],
    }
    return {k: v for k, v in wanted.items() if k not in explicit}


def exposed(listeners: Iterable[tuple[str, int | None]], *, has_clients: bool,
            config_name: str) -> str | None:  # fmt: skip
    """The refusal for the first (host, port) mitmproxy would listen on that other machines
    reach ("" is every interface) while no `clients:` are configured; None when every one
    is loopback, or clients must prove a key. The rule and words of `listen:` in the file."""
    if has_clients:
        return None
    for host, port in listeners:
        if address_kind(host) != "loopback":
            where = f"[{host}]" if ":" in host else (host or "0.0.0.0")
            return (
                f"listening on {where}:{port} (mitmproxy's listen_host / --listen-host, or the "
                "mode's @address) is reachable from other machines and no `clients:` are "
                f"configured in {config_name}, so anyone there could spend your provider keys "
                "— add `clients:` (README: Security) or listen on 127.0.0.1"
            )
    return None
