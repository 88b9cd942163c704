"""The shape of a request's chain of targets once its first target is chosen. Pure.

- `diversify` interleaves providers: after the first target, the next is always at the
  usable provider tried least so far (ties: the better-ranked target), each provider's own
  targets keeping their order. A1 A2 A3 B1 B2 C1 becomes A1 B1 C1 A2 B2 A3: a provider that
  is down costs one attempt, not one per model. Every target carries the reason for its
  place (`explain`, `rank --chain`). Only a scored chain is reordered (`tried_order`): a
  route, a pinning policy and an embedding space keep their own order.
- `newcomers` finds, past a chain already full, the best target of each usable provider
  the chain lacks (at most NEWCOMERS of them, the best-ranked), so a chain filled with one
  provider's models still has a way out without growing with the number of providers.
- `same_weights` tells when two offerings at one provider are the same model under
  another name — a dated alias (`gpt-4o-2024-08-06` / `gpt-4o`, `claude-x-20250929` /
  `claude-x`, `…-latest`) or an OpenRouter route suffix (`…:free`, `:beta`, `:nitro`,
  `:floor`, `:exacto`, `:extended`) — so that after one fails the others are dropped.

Name shapes, exactly (`weights_name`): lower-cased; one trailing route suffix above is
dropped; a trailing full date — `YYYY-MM-DD`, `YYYYMMDD` (20xx, valid month and day) after
`-`, `_` or `@` — or `-latest` is split off. Two names are the same weights when what is
left is equal and their dates are equal or at least one has none (an undated alias points
at one of the dated snapshots: it may be any of them). Short tags (`-2407`, `-0905`,
`-0613`) are not dates here: on open-weight models they name a different release
(`kimi-k2` / `kimi-k2-0905`), so those stay separate targets.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from addon.routing.catalog import Candidate
from addon.routing.scoring import Scored

PROVIDER_SCAN = 256  # ranking entries past a full chain searched for the providers it lacks
NEWCOMERS = 8  # at most this many lacking providers join a full chain (one target each)
ROUTE_SUFFIXES = frozenset({"free", "beta", "nitro", "floor", "exacto", "extended"})
_DATED = re.compile(
    r"^(?P<base>.+?)[-_@](?P<y>20\d\d)(?P<sep>-?)(?P<m>0[1-9]|1[0-2])(?P=sep)"
    r"(?P<d>0[1-9]|[12]\d|3[01])$"
)


@dataclass(frozen=True)
class WeightsName:
    """A model name reduced to what identifies its weights: the `base` name (lower-case,
    no route suffix, no date) and its release `date` as ``YYYYMMDD`` ("" when undated)."""

    base: str
    date: str = ""


def weights_name(name: str) -> WeightsName:
    """`name` (a provider model id) read as described in the module docstring."""
    low = name.strip().lower()
    head, sep, tail = low.rpartition(":")
    if sep and head and tail in ROUTE_SUFFIXES:
        low = head
    if low.endswith("-latest") and len(low) > len("-latest"):
        return WeightsName(low.removesuffix("-latest"))
    m = _DATED.match(low)
    if m is None:
        return WeightsName(low)
    return WeightsName(m["base"], m["y"] + m["m"] + m["d"])


def same_weights(a: Candidate, b: Candidate) -> bool:
    """Whether `a` and `b` are the same weights behind the same provider (a dated alias or
    a route variant of one model), so one failing means the other would fail the same way.
    A candidate is the same weights as itself."""
    if a.provider != b.provider:
        return False
    if a.provider_model_id == b.provider_model_id:
        return True
    wa, wb = weights_name(a.provider_model_id), weights_name(b.provider_model_id)
    return wa.base == wb.base and (wa.date == wb.date or not wa.date or not wb.date)


def repeats_failure(c: Candidate, failed: Iterable[Candidate]) -> Candidate | None:
    """The already failed candidate `c` is the same weights as (`same_weights`), if any:
    `c` is then no fallback and is dropped from the chain."""
    return next((f for f in failed if same_weights(c, f)), None)


@dataclass(frozen=True)
class Chain:
    """A chain in the order it is tried, with one reason per target saying why it is
    there (`reasons[i]` explains `targets[i]`)."""

    targets: tuple[Scored, ...]
    reasons: tuple[str, ...]

    def lines(self) -> tuple[str, ...]:
        """The chain as text, one target a line: ``1. openai:gpt-4o (0.812): first: …``."""
        return tuple(
            f"{i}. {s.candidate.key} ({s.score:.3f}): {why}"
            for i, (s, why) in enumerate(zip(self.targets, self.reasons, strict=True), 1)
        )


def diversify(chain: Sequence[Scored], providers_usable: Iterable[str]) -> Chain:
    """`chain` (best first) reordered so providers interleave, as the module docstring
    says. The first target stays first. Only providers in `providers_usable` take part in
    the interleaving; targets at any other provider keep their order at the end (the
    request path skips them). Ranks in the reasons are 1-based positions in `chain`."""
    if not chain:
        return Chain((), ())
    usable = frozenset(providers_usable)
    first = chain[0]
    queues: dict[str, deque[tuple[int, Scored]]] = {}
    later: list[tuple[int, Scored]] = []
    for rank, s in enumerate(chain[1:], 2):
        prov = s.candidate.provider
        (queues.setdefault(prov, deque()) if prov in usable else later).append((rank, s))
    tried: Counter[str] = Counter({first.candidate.provider: 1})
    # the least-tried provider with targets left; among those, the best-ranked target:
    # a heap of (times tried, its next target's rank, provider), one entry per provider
    heap = [(tried[p], q[0][0], p) for p, q in queues.items()]
    heapq.heapify(heap)
    out = [first]
    reasons = [f"first: rank 1 of {len(chain)}"]
    while heap:
        n, _, prov = heapq.heappop(heap)
        q = queues[prov]
        rank, s = q.popleft()
        out.append(s)
        reasons.append(_reason(prov, rank, n, others=bool(heap)))
        if q:
            heapq.heappush(heap, (n + 1, q[0][0], prov))
    for rank, s in later:
        out.append(s)
        reasons.append(f"last: rank {rank}, provider {s.candidate.provider} is not usable now")
    return Chain(tuple(out), tuple(reasons))


def tried_order(chain: Sequence[Scored], mode: str, providers_usable: Iterable[str]) -> Chain:
    """The order a decision's `chain` is tried in: a scored chain (`mode` "scored")
    `diversify`-ed; a route, a pin or an embedding space (any other `mode`) as it is."""
    if mode == "scored":
        return diversify(chain, providers_usable)
    n = len(chain)
    return Chain(tuple(chain), tuple(f"{mode}: position {i} of {n}, its own order" for i in
                                     range(1, n + 1)))  # fmt: skip


def newcomers(
    chain: Sequence[Scored],
    rest: Iterable[Scored],
    providers: Iterable[str],
    rejected: Callable[[Candidate], object],
    limit: int | None = None,
) -> list[Scored]:
    """From `rest` (the ranking past the full `chain`, best first), the best target of each
    provider in `providers` that has none in `chain`, skipping those `rejected` says are
    unfit (a truthy answer): at most one per provider and `limit` in all, best first."""
    missing = set(providers).difference(s.candidate.provider for s in chain)
    out: list[Scored] = []
    for s in rest:
        if not missing or (limit is not None and len(out) >= limit):
            break
        prov = s.candidate.provider
        if prov in missing and not rejected(s.candidate):
            out.append(s)
            missing.discard(prov)
    return out


def _reason(prov: str, rank: int, tried: int, *, others: bool) -> str:
    if tried == 0:
        return f"next provider: rank {rank}, the first target at {prov}"
    nth = f"target {tried + 1} at {prov}"
    if others:
        return f"interleaved: rank {rank}, {nth}; no provider with targets left had fewer"
    return f"same provider: rank {rank}, {nth}; no other usable provider has targets left"
