"""What an upstream attempt sends: which client headers go along, whose key, which URL.

Plain functions over header pairs. The rules (README: Security): the client's own API key
goes only to the host it was meant for; any other provider gets the key from its
`api_key_env`; headers naming the client's account at its provider never go elsewhere; proxy
credentials, hop-by-hop framing and the router's own `x-orchestrator-*` headers never leave.
"""

from __future__ import annotations

from collections.abc import Sequence

# Framing and proxy headers: never forwarded either way (the attempt engine sets its own).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "proxy-connection",
    }
)
# Where a client puts its own API key (OpenAI, Azure, Anthropic spellings).
CLIENT_KEY_HEADERS = ("authorization", "api-key", "x-api-key")
# Headers that identify the client's account at its own provider: never sent elsewhere.
ACCOUNT_HEADERS = ("openai-organization", "openai-project", "cookie")
ROUTER_PREFIX = "x-orchestrator-"

Pairs = Sequence[tuple[str, str]]


def has_client_key(headers: Pairs) -> bool:
    """Whether the client sent an API key of its own (usable only at the host it addressed)."""
    return any(k.lower() in CLIENT_KEY_HEADERS for k, _ in headers)


def outbound_headers(
    client: Pairs,
    *,
    same_host: bool,
    provider_headers: Pairs = (),
    provider_key: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """The headers of one attempt, in order: the client's forwardable headers (account
    headers only when `same_host`, i.e. the target is the host the client addressed), the
    provider's configured `headers:`, then credentials — the client's own key headers when
    `same_host` and it sent one, else `Authorization: Bearer <provider_key>` if the provider
    has a key — and `Accept-Encoding: identity` (answers are read as they stream)."""
    out: list[tuple[str, str]] = []
    own_key = False
    for k, v in client:
        lk = k.lower()
        if lk in CLIENT_KEY_HEADERS:
            own_key = True
            continue
        if lk in HOP_BY_HOP or lk.startswith(ROUTER_PREFIX):
            continue
        if lk in ACCOUNT_HEADERS and not same_host:
            continue
        out.append((k, v))
    out.extend(provider_headers)
    if same_host and own_key:
        out.extend((k, v) for k, v in client if k.lower() in CLIENT_KEY_HEADERS)
    elif provider_key is not None:
        out.append(("Authorization", f"Bearer {provider_key}"))
    out.append(("Accept-Encoding", "identity"))
    return tuple(out)


def upstream_url(base_url: str, endpoint: str, path: str) -> str:
    """The provider's URL for `endpoint` (e.g. `/chat/completions`), keeping the query of
    the client's `path`."""
    query = path.split("?", 1)[1] if "?" in path else ""
    return base_url + endpoint + (f"?{query}" if query else "")
