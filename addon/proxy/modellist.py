"""`GET …/models` on an intercepted host (and in reverse mode): the list an app sees.

An app (or SDK) that lists models before it calls one gets an OpenAI-format list,
``{"object": "list", "data": [{"id", "object": "model", "owned_by"}, …]}``, in this order:

1. the host's own answer, when it gives one: the request goes on to the host the client
   addressed, with the client's headers (as `addon.proxy.outbound` allows for that host) and
   the configured provider's key there when the client sent none; an error, a timeout or a
   body that is no list leaves this part out;
2. every model a provider that speaks chat and has a usable key serves (its canonical id,
   `owned_by` the first such provider by name), not already listed;
3. the router's aliases: `auto` and `orchestrator/<profile>` for every profile.

A request carrying `anthropic-version` (the anthropic SDK's, whose list has another shape)
is left alone: mitmproxy forwards it as sent.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from addon.proxy.exchange import Canned, Incoming
from addon.proxy.outbound import has_client_key, outbound_headers
from addon.proxy.upstream import Engine
from addon.proxy.view import View
from addon.routing.decide import ALIAS_PREFIX, AUTO

MAX_LIST_BYTES = 8 * 1024 * 1024  # a host's own list larger than this is left out
FETCH_TIMEOUT_S = 10.0  # at most; the config's first-token timeout when shorter


def is_listing(inc: Incoming) -> bool:
    """Whether the request is an OpenAI-style model listing (`GET …/models`)."""
    return (
        inc.method == "GET"
        and inc.path.split("?", 1)[0].rstrip("/").endswith("/models")
        and not any(k.lower() == "anthropic-version" for k, _ in inc.headers)
    )


def entries(
    view: View, own: list[dict[str, Any]], client_key_host: str | None
) -> list[dict[str, Any]]:
    """The merged list (see the module docstring): `own` (the host's entries), then the
    catalog's chat models at providers usable for this request, then the aliases."""
    out = list(own)
    seen = {e["id"] for e in own}
    keyed = view.keyed(client_key_host, "chat")
    for c in sorted(view.catalog.candidates, key=lambda c: (c.model_id, c.provider)):
        if c.provider in keyed and c.model_id not in seen:
            seen.add(c.model_id)
            out.append({"id": c.model_id, "object": "model", "owned_by": c.provider})
    aliases = [AUTO, *(ALIAS_PREFIX + p for p in sorted(view.config.profiles))]
    out.extend({"id": a, "object": "model", "owned_by": "orchestrator"} for a in aliases
               if a not in seen)  # fmt: skip
    return out


def own_entries(body: bytes) -> list[dict[str, Any]] | None:
    """The entries of a host's own list (each a dict with a string `id`); None when the
    body is no OpenAI-format list."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        return None
    return [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]


async def fetch_own(engine: Engine, url: str, headers: tuple[tuple[str, str], ...],
                    timeout_s: float) -> list[dict[str, Any]] | None:  # fmt: skip
    """The host's own list at `url`, None when it does not give one in time."""
    try:
        async with asyncio.timeout(timeout_s):
            resp = await engine.client().get(url, headers=list(headers), allow_redirects=False)
            try:
                if resp.status != 200:
                    return None
                body = await resp.content.read(MAX_LIST_BYTES + 1)
            finally:
                resp.release()
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None
    return own_entries(body) if len(body) <= MAX_LIST_BYTES else None


async def answer(view: View, engine: Engine, inc: Incoming) -> Canned:
    """The router's answer to a model listing `inc` (see the module docstring)."""
    prov = next((p for p in view.catalog.providers.values() if p.host == inc.host), None)
    headers = outbound_headers(
        inc.headers,
        same_host=True,
        provider_headers=prov.headers if prov else (),
        provider_key=view.keys.get(prov.name) if prov else None,
    )
    res = view.config.settings.resilience
    timeout = min(FETCH_TIMEOUT_S, res.first_token_timeout_ms / 1000)
    own = await fetch_own(engine, f"{inc.scheme}://{inc.host}{inc.path}", headers, timeout)
    data = entries(view, own or [], inc.host if has_client_key(inc.headers) else None)
    source = "host+router" if own is not None else "router"
    body = json.dumps({"object": "list", "data": data}).encode()
    return Canned(200, [("content-type", "application/json"),
                        ("x-orchestrator-models", source)], body)  # fmt: skip
