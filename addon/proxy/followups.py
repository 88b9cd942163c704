"""Calls about a stored Responses answer, sent where it lives.

`GET /responses/{id}` (retrieve), `GET /responses/{id}/input_items`, `DELETE
/responses/{id}` and `POST /responses/{id}/cancel` only make sense at the provider that
produced `{id}`. When the router sent that turn to another provider than the host the
client addressed (it remembers each response id's home: `addon.state.response_homes`), the
call goes to that provider, with that provider's key — never the client's, which belongs to
the host it addressed — and its answer is returned as it came (status, JSON body). An id the
router does not know, or whose home is the addressed host, is forwarded untouched.

The answer is read whole (at most `MAX_BODY_BYTES`): these calls return one JSON object. A
home the router cannot use (no key, gone from the config, unreachable) gets an error in the
Responses error format naming the reason, never a silent detour to a host without the id.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp

from addon.proxy import apis
from addon.proxy.exchange import Canned, Incoming
from addon.proxy.outbound import outbound_headers
from addon.proxy.upstream import Engine
from addon.proxy.view import View
from addon.state.response_homes import ResponseHomes, well_formed

MAX_BODY_BYTES = 32 * 1024 * 1024
FOLLOWUP = re.compile(r"/responses/(?P<id>[^/]+)(?P<rest>/input_items|/cancel)?/?$")


def followup(inc: Incoming) -> tuple[str, str] | None:
    """`(response id, the rest of the path)` when `inc` is a call about a stored response
    (see the module docstring), else None."""
    path = inc.path.split("?", 1)[0]
    m = FOLLOWUP.search(path)
    if m is None or not well_formed(m["id"]):
        return None
    rest = m["rest"] or ""
    allowed = {"": ("GET", "DELETE"), "/input_items": ("GET",), "/cancel": ("POST",)}[rest]
    return (m["id"], rest) if inc.method in allowed else None


def _error(status: int, message: str, code: str) -> Canned:
    body = apis.error_body("responses", status, message, type_="invalid_request_error"
                           if status < 500 else "service_unavailable", code=code)  # fmt: skip
    return Canned(status, [("content-type", "application/json")], body)


async def answer(view: View, engine: Engine, homes: ResponseHomes, inc: Incoming,
                 now: float) -> Canned | None:  # fmt: skip
    """The home provider's answer to a call about a stored response, or None to forward
    the call as sent (not such a call, an unknown id, or the addressed host is its home)."""
    found = followup(inc)
    if found is None:
        return None
    rid, rest = found
    home = await homes.home(rid, now)
    if home is None:
        return None
    prov = view.catalog.providers.get(home)
    if prov is None:
        return _error(503, f"response {rid} was produced by provider {home!r}, which is no "
                      "longer configured", "response_home_unavailable")  # fmt: skip
    if prov.host == inc.host:
        return None
    key = view.keys.get(home)
    if key is None and not prov.keyless:
        return _error(503, f"response {rid} lives at provider {home!r}, and its key "
                      f"${prov.api_key_env} is not set", "response_home_unavailable")  # fmt: skip
    query = inc.path.partition("?")[2]
    url = f"{prov.base_url}/responses/{rid}{rest}" + (f"?{query}" if query else "")
    headers = outbound_headers(inc.headers, same_host=False, provider_headers=prov.headers,
                               provider_key=key, api="responses")  # fmt: skip
    timeout_s = view.config.settings.resilience.first_token_timeout_ms / 1000
    try:
        async with asyncio.timeout(timeout_s):
            resp = await engine.client().request(inc.method, url, headers=list(headers),
                                                 data=inc.body or None,
                                                 allow_redirects=False)  # fmt: skip
            try:
                body = await resp.content.read(MAX_BODY_BYTES + 1)
                status = resp.status
                ctype = resp.headers.get("content-type", "application/json")
            finally:
                resp.release()
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
        return _error(502, f"response {rid} lives at provider {home!r}, which did not answer "
                      f"({type(e).__name__})", "response_home_unreachable")  # fmt: skip
    if len(body) > MAX_BODY_BYTES:
        return _error(502, f"the answer of provider {home!r} about response {rid} is over "
                      f"{MAX_BODY_BYTES} bytes", "response_too_large")  # fmt: skip
    return Canned(status, [("content-type", ctype), ("x-orchestrator-provider", home)], body)
