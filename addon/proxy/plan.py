"""The attempts of one request's chain, each built only when it is tried.

A target is what one chain entry sends: the provider's URL for the request's endpoint, the
headers `addon.proxy.outbound` allows, and the client's body with the provider's `model`
spliced in (`stream_options.include_usage` forced on for chat and completions streams). A
Responses body carrying encrypted reasoning goes as it is only to a provider that can read
it; any other gets it without those items, counted in `Pending.stripped`. Each target also
carries how its API's failures read (`addon.proxy.apis`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import overload

from addon.proxy import apis
from addon.proxy.exchange import Incoming, Pending
from addon.proxy.outbound import outbound_headers, upstream_url
from addon.proxy.upstream import Target
from addon.proxy.view import View
from addon.routing.catalog import Candidate
from addon.routing.fallback import Outcome
from addon.routing.scoring import Scored
from addon.wire.embeddings import EmbeddingsRequest
from addon.wire.request import ParsedBody, parse_request, rewrite
from addon.wire.responses import strip_encrypted_reasoning

Vet = Callable[[bytes], Outcome | None]


@dataclass(frozen=True)
class Shape:
    """What every target of one request shares: the request, its body read once, its
    endpoint, whether usage is injected into its stream, whether it streams, the providers
    that may get its encrypted reasoning (None: it has none), and the check of a 2xx body
    per candidate (embeddings' vector lengths)."""

    incoming: Incoming
    parsed: ParsedBody
    endpoint: apis.Endpoint
    inject_usage: bool
    stream: bool
    reasoning_readers: frozenset[str] | None = None
    vet: Callable[[Candidate], Vet | None] | None = None


class Plan(Sequence[Target]):
    """The chain's targets, each built (headers, rewritten body) only when it is tried;
    `refusals` (`upstream.Explained`) holds why the request's `acquire` refused a target
    (its provider's rate limit, the budget), for the engine's skip list."""

    def __init__(self, view: View, chain: Sequence[Scored], shape: Shape, pending: Pending) -> None:
        self._view, self._chain, self._shape, self._pending = view, chain, shape, pending
        self.refusals: dict[str, str] = {}  # target key -> why it was not acquired
        self._built: dict[int, Target] = {}
        self._stripped: tuple[ParsedBody, int] | None = None

    def __len__(self) -> int:
        return len(self._chain)

    @overload
    def __getitem__(self, i: int) -> Target: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Target]: ...
    def __getitem__(self, i: int | slice) -> Target | Sequence[Target]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i not in self._built:
            self._built[i] = self._target(self._chain[i])
        return self._built[i]

    def _body_for(self, provider: str) -> ParsedBody:
        """The body as `provider` may read it: without the encrypted reasoning another
        provider produced (stripped once per request)."""
        shape = self._shape
        readers = shape.reasoning_readers
        if readers is None or provider in readers:
            return shape.parsed
        if self._stripped is None:
            raw, n = strip_encrypted_reasoning(shape.parsed)
            self._stripped = (parse_request(raw), n)
        body, n = self._stripped
        self._pending.stripped[provider] = n
        return body

    def _target(self, s: Scored) -> Target:
        """The attempt at chain entry `s`: its URL, headers and rewritten body."""
        view, shape = self._view, self._shape
        c = s.candidate
        prov = view.catalog.providers[c.provider]
        inc, api = shape.incoming, shape.endpoint.api
        headers = outbound_headers(inc.headers, same_host=prov.host == inc.host,
                                   provider_headers=prov.headers,
                                   provider_key=view.keys.get(c.provider), api=api)  # fmt: skip
        body = rewrite(self._body_for(c.provider), model=c.provider_model_id,
                       include_usage=shape.inject_usage)  # fmt: skip
        return Target(s, upstream_url(prov.base_url, shape.endpoint.path, inc.path), headers,
                      body, shape.stream, classify=apis.classifier(api),
                      vet=shape.vet(c) if shape.vet is not None else None,
                      vet_first=apis.first_event_check(api) if shape.stream else None)  # fmt: skip


def vector_check(
    e: EmbeddingsRequest | None, lengths: dict[str, int], max_models: int = 1024
) -> Callable[[Candidate], Vet] | None:
    """Per candidate of an embeddings request `e` (None: not one), the check of its answer's
    vectors: as many as inputs, each as long as the request asked (`dimensions`), else as
    long as that model's vectors were before — `lengths` (model id -> length, at most
    `max_models` kept) learns it from the first answer without `dimensions`."""
    if e is None:
        return None

    def for_candidate(c: Candidate) -> Vet:
        want = e.dimensions or lengths.get(c.model_id)

        def vet(body: bytes) -> Outcome | None:
            bad, n = apis.embeddings_check(body, want, e.items)
            if bad is None and n is not None and want is None:
                if len(lengths) >= max_models:
                    lengths.clear()
                lengths[c.model_id] = n
            return bad

        return vet

    return for_candidate
