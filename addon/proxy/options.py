"""What `orchestrator.yaml`'s settings ask of mitmproxy: its options and the log levels.

Plain functions over `Settings`; the adapter applies them (at load and on reload).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from addon.config.schema import Settings

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
