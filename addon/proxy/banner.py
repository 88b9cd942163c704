"""What the proxy logs once it listens: what it serves, and how apps use it in its mode."""

from __future__ import annotations

from urllib.parse import urlsplit

from addon.config.schema import Settings, default_apis
from addon.proxy.view import View


def startup_lines(view: View, host: str, port: int | str, ca_bundle: str) -> list[str]:
    """What the proxy logs once it listens (`host:port`, the address it bound): what it
    serves, and how to use it in its mode — regular: the HTTPS_PROXY settings; reverse: the
    base URL to point an SDK at; transparent and local: how to confirm that apps' traffic
    is captured."""
    cfg = view.config
    cat = view.catalog
    mode = cfg.settings.mode
    usable = sorted(n for n, p in cat.providers.items() if p.keyless or p.has_env_key)
    where = (f"capturing {_local_scope(mode)}" if mode.startswith("local")
             else f"listening on {_authority(host, port)}")  # fmt: skip
    lines = [
        f"Local AI Orchestrator {cfg.version}: {where}, mode "
        f"{mode}, default profile {cfg.settings.default_profile}, "
        f"{len(cat.candidates)} candidates ({cat.source}), providers usable without a client "
        f"key: {', '.join(usable) or 'none'}, config {cfg.path}"
    ]
    url = f"http://{_authority(_reachable(host), port)}"
    trust = (f"  apps must trust this proxy's CA: export SSL_CERT_FILE={ca_bundle}\n"
             "  (`.venv/bin/orchestrator trust` prints the setting for each runtime)")  # fmt: skip
    if mode.startswith("reverse:"):
        lines.append("Point an SDK at it (no proxy settings):\n" + "\n".join(
            f"  export {line}" for line in _base_urls(cfg.settings, mode, url)))  # fmt: skip
    elif mode == "transparent":
        lines.append(
            "Transparent mode: apps need no proxy settings once their connections are redirected "
            "here.\n  set that up (root): sudo .venv/bin/orchestrator capture install\n"
            "  see its rules and counters: sudo .venv/bin/orchestrator capture status\n"
            "  confirm, as an app's user: .venv/bin/orchestrator doctor\n" + trust
        )
    elif mode.startswith("local"):
        lines.append(
            "Local mode: apps need no proxy settings; mitmproxy's eBPF redirector captures "
            "their connections.\n  confirm, as an app's user: .venv/bin/orchestrator doctor\n"
            + trust
        )
    else:
        lines.append(
            f"Point an app at it:\n  export HTTPS_PROXY={url}\n"
            f"  export SSL_CERT_FILE={ca_bundle}\n  export NO_PROXY=localhost,127.0.0.1\n"
            "(SSL_CERT_FILE = system roots + this proxy's CA; Node: NODE_EXTRA_CA_CERTS)"
        )
    return lines


def _authority(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reachable(host: str) -> str:
    """The address an app on this machine uses for a proxy bound to `host` (every interface:
    loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "*") else host


def _local_scope(mode: str) -> str:
    spec = mode.partition(":")[2]
    return "every local app's connections" if not spec else f"the connections of {spec!r}"


def _base_urls(settings: Settings, mode: str, url: str) -> list[str]:
    """The SDK settings for reverse mode: OpenAI's base URL (with the upstream's API path),
    Anthropic's for an upstream speaking Messages, and the router key with `clients:`."""
    target = urlsplit(mode.removeprefix("reverse:"))
    same = [p for p in settings.providers.values()
            if urlsplit(p.base_url).netloc == target.netloc]  # fmt: skip
    path = urlsplit(same[0].base_url).path if same else ""
    speaks = set(same[0].speaks) if same else set(default_apis(target.hostname or "", local=False))
    out = []
    if speaks - {"messages"}:
        out.append(f"OPENAI_BASE_URL={url}{path or '/v1'}")
        if settings.clients:
            out.append("OPENAI_API_KEY=<your router key>   (clients: it proves who you are)")
    if "messages" in speaks:
        out.append(f"ANTHROPIC_BASE_URL={url}{path.removesuffix('/v1')}")
        if settings.clients:
            out.append("ANTHROPIC_AUTH_TOKEN=<your router key>   (sent as Authorization: Bearer)")
    return out
