"""OpenAI Responses state on the request path: where a turn may be served, and which of its
input items another provider could not read.

- `previous_response_id`: that response lives at the provider that produced it, its *home*
  (`addon.state.response_homes`, remembered when the answer passed through the router). The
  turn is served there only, by that provider's targets. A home the router does not know
  (the response was not produced through it) is taken to be the provider at the host the
  client addressed, the client's intent; with none configured there the turn is refused
  (400). The turn is never sent to a provider that has no such response.
- `conversation`: a conversation lives at the host the client addressed: served there only.
- Without either (a first turn, or `store: false` carrying the full input) a turn moves
  freely.
- Encrypted reasoning items (`reasoning.encrypted_content`) are readable only by the
  provider that wrote them. The router remembers each blob's producer in the same store,
  under the blob's digest (`reasoning_key`); a target at another provider gets the body
  without them (`wire.responses.strip_encrypted_reasoning`), and the ledger reasons say how
  many were stripped. A blob the router never saw is taken to come from the addressed host.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from addon.routing.catalog import ProviderInfo
from addon.state.response_homes import ResponseHomes
from addon.wire.responses import ResponsesRequest, encrypted_reasoning_indexes, event_answer
from addon.wire.sse import SSEEvent, event_json


@dataclass(frozen=True)
class Pin:
    """The only providers a Responses turn may be served by, and why (for the ledger and
    for a refusal)."""

    providers: frozenset[str]
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A Responses turn the router cannot serve anywhere: the status, message and code of
    its answer."""

    status: int
    message: str
    code: str


def _at_host(providers: Mapping[str, ProviderInfo], host: str) -> frozenset[str]:
    return frozenset(n for n, p in providers.items() if p.host == host)


async def pin_for(
    homes: ResponseHomes,
    r: ResponsesRequest,
    providers: Mapping[str, ProviderInfo],
    host: str,
    now: float,
) -> Pin | Refusal | None:
    """Where a turn that continues provider-side state must be served (see the module
    docstring); None when it may go anywhere. `now` is wall-clock seconds."""
    state = ("previous_response_id", r.previous_response_id)
    if state[1] is None:
        if r.conversation_id is None:
            return None
        state = ("conversation", r.conversation_id)
    else:
        home = await homes.home(state[1], now)
        if home is not None:
            if home not in providers:
                return Refusal(503, f"previous_response_id {state[1]} was produced by "
                               f"provider {home!r}, which is no longer configured, and only it "
                               "holds that response: start a new conversation, or send the "
                               "whole input with store: false", "previous_response_unavailable")  # fmt: skip
            return Pin(frozenset({home}), f"previous_response_id {state[1]} was produced by "
                       f"{home}: pinned there")  # fmt: skip
    key, value = state
    here = _at_host(providers, host)
    if not here:
        origin = ("was not produced through this router" if key == "previous_response_id"
                  else "lives at the host it was created at")  # fmt: skip
        return Refusal(400, f"{key} {value} {origin}, and no provider is configured at {host}, "
                       "where the request was sent: add a provider with that base_url to "
                       "orchestrator.yaml, or send the whole input with store: false",
                       f"{key.split('_')[0]}_unknown")  # fmt: skip
    return Pin(here, f"{key} {value} lives at {host}, where the request was sent: pinned to "
               f"{', '.join(sorted(here))}")  # fmt: skip


def unusable_pin(pin: Pin, keyed: frozenset[str], providers: Mapping[str, ProviderInfo],
                 api: str) -> Refusal:  # fmt: skip
    """The 503 for a pinned turn none of whose providers can be sent this request (no key,
    or no longer speaking the API)."""
    why = []
    for name in sorted(pin.providers):
        p = providers.get(name)
        if p is not None and api not in p.apis:
            why.append(f"{name} does not speak the {api} API (its `apis:`)")
        elif p is not None:
            why.append(f"{name} has no key for this request (set {p.api_key_env})")
    return Refusal(503, f"{pin.reason}, but it cannot take this request: {'; '.join(why)}; "
                   "the turn is not sent to another provider, which holds no such state",
                   "pinned_provider_unavailable")  # fmt: skip


# --------------------------------------------------------------------------- encrypted reasoning


def reasoning_key(blob: str) -> str:
    """The key a blob of encrypted reasoning is remembered under: its SHA-256 digest."""
    return "rs:" + hashlib.sha256(blob.encode("utf-8", "replace")).hexdigest()


def blobs_of(data: dict[str, Any]) -> tuple[str, ...]:
    """The `encrypted_content` of the request's encrypted reasoning input items."""
    items = data.get("input")
    if not isinstance(items, list):
        return ()
    return tuple(items[i]["encrypted_content"] for i in encrypted_reasoning_indexes(items))


async def reasoning_readers(
    homes: ResponseHomes,
    blobs: tuple[str, ...],
    providers: Mapping[str, ProviderInfo],
    host: str,
    now: float,
) -> frozenset[str]:
    """The providers that can read every one of `blobs`: the one that produced them all
    (a blob the router never saw: the provider at the addressed host); empty when they
    come from different providers."""
    keys = sorted({reasoning_key(b) for b in blobs})
    found = await asyncio.gather(*(homes.home(k, now) for k in keys))
    readers: frozenset[str] | None = None
    for home in found:
        can = frozenset({home}) if home is not None else _at_host(providers, host)
        readers = can if readers is None else readers & can
    return readers or frozenset()


def first_response_id(events: list[SSEEvent]) -> str | None:
    """The response id a stream's first events carry (`response.created`), if any."""
    for ev in events:
        ans = event_answer(event_json(ev))
        if ans is not None and ans.response_id:
            return ans.response_id
    return None


def remember(
    homes: ResponseHomes,
    provider: str,
    now: float,
    *,
    response_id: str | None,
    stored: bool,
    blobs: tuple[str, ...],
) -> None:
    """After a Responses answer from `provider`: its id (when the response is stored
    upstream) and its encrypted reasoning blobs now live there."""
    if response_id and stored:
        homes.remember(response_id, provider, now)
    for b in blobs:
        homes.remember(reasoning_key(b), provider, now)
