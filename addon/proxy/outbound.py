"""What an upstream attempt sends: which client headers go along, whose key, which URL.

Plain functions over header pairs. The rules (README: Security): the client's own API key
goes only to the host it was meant for; any other provider gets the key from its
`api_key_env`; headers naming the client's account at its provider never go elsewhere; proxy
credentials, hop-by-hop framing and the router's own `x-orchestrator-*` headers never leave.
A Messages provider gets its key as `x-api-key` (Anthropic's header), every other one as
`Authorization: Bearer`; `anthropic-version` and `anthropic-beta` go along as the client sent
them, and a Messages request sent elsewhere than the client's host without an
`anthropic-version` gets `ANTHROPIC_VERSION`.
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
ANTHROPIC_VERSION = "2023-06-01"  # for a Messages request that names no version

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
    api: str = "chat",
) -> tuple[tuple[str, str], ...]:
    """The headers of one attempt of an `api` request, in order: the client's forwardable
    headers (account headers only when `same_host`, i.e. the target is the host the client
    addressed), the provider's configured `headers:`, then credentials — the client's own
    key headers when `same_host` and it sent one, else the provider's key if it has one
    (`x-api-key: <key>` for Messages, `Authorization: Bearer <key>` otherwise) — for
    Messages sent elsewhere `anthropic-version` if none came along, and
    `Accept-Encoding: identity` (answers are read as they stream)."""
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
        messages = api == "messages"
        out.append(
            ("x-api-key", provider_key) if messages else ("Authorization", f"Bearer {provider_key}")
        )
    if (
        api == "messages"
        and not same_host
        and all(k.lower() != "anthropic-version" for k, _ in out)
    ):
        out.append(("anthropic-version", ANTHROPIC_VERSION))
    out.append(("Accept-Encoding", "identity"))
    return tuple(out)


def upstream_url(base_url: str, endpoint: str, path: str) -> str:
    """The provider's URL for `endpoint` (e.g. `/chat/completions`), keeping the query of
    the client's `path`."""
    query = path.split("?", 1)[1] if "?" in path else ""
    return base_url + endpoint + (f"?{query}" if query else "")
