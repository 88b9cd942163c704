"""Load balancing across deployments of one model: which of them a request tries first. Pure.

Deployments are the targets of one chain that serve the same canonical model (`model_id`)
at providers of one `balance:` group (`addon.config.schema_balance`). `rebalance` reorders
them among the places they hold in the chain — the strategy's pick takes the first of those
places, the others follow as its fallbacks — and leaves every other target where it was, so
the model the profile (or route, or pin) chose is still the model tried first. Deployments
that are unhealthy never get here: `decide` already left out those behind an open breaker or
at their rate limit (`addon.proxy.eligible.state_filter`); `absent` names them in the reason.

Strategies (each returns the members in the order to try, with why):

- `weighted`: the first pick is random by weight — deployment i with probability
  w_i / sum(w) — from one uniform draw u in [0, 1): the first i whose cumulative weight
  exceeds u * sum(w). The others follow by weight, heaviest first. Weight 0: never first
  while a deployment with weight > 0 is there.
- `least_busy`: the fewest calls in flight per unit of weight (in flight / weight; fleet-wide
  with `state:`); ties are broken by weight with the draw, as `weighted` does among them.
- `latency`: the lowest smoothed latency (`addon.state.memory.Latency`: an EWMA of the
  time to the first content event of a stream, of the whole answer otherwise); a deployment
  with no sample yet goes first (so it gets one); with probability `explore` (u < explore)
  the order is `weighted`'s instead (u / explore as its draw), so one that was slow once is
  measured again.

A draw of None (`orchestrator rank --chain`) asks for the most likely order: by weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from addon.config.schema_balance import Balance, Group, Strategy
from addon.routing.chains import Chain
from addon.routing.scoring import Scored

Draw = Callable[[], float] | None  # a uniform draw in [0, 1) per balanced model, or None


@dataclass(frozen=True)
class Pick:
    """One member's place: its index among the members, and why it is there."""

    index: int
    why: str


def _pick_by_weight(weights: Sequence[float], u: float) -> int:
    """The index a uniform draw `u` in [0, 1) lands on, by weight (equal weights when all
    are 0)."""
    ws = list(weights) if sum(weights) > 0 else [1.0] * len(weights)
    target = min(max(u, 0.0), math.nextafter(1.0, 0.0)) * sum(ws)
    acc = 0.0
    for i, w in enumerate(ws):
        acc += w
        if w > 0 and target < acc:
            return i
    return max(i for i, w in enumerate(ws) if w > 0)


def _by_weight(indices: Sequence[int], weights: Sequence[float]) -> list[int]:
    return sorted(indices, key=lambda i: (-weights[i], i))


def _share(w: float, total: float) -> str:
    return f"weight {w:g} of {total:g} ({100 * w / total:.0f}%)" if total else f"weight {w:g}"


def weighted(weights: Sequence[float], u: float | None) -> list[Pick]:
    """`weighted` order (module docstring) of members with `weights` for draw `u`."""
    n = len(weights)
    total = sum(weights)
    if u is None:
        order = _by_weight(range(n), weights)
        head = order[0]
        first = f"most likely first pick, {_share(weights[head], total)}"
    else:
        head = _pick_by_weight(weights, u)
        order = [head, *_by_weight([i for i in range(n) if i != head], weights)]
        first = f"picked by weight, {_share(weights[head], total)}, draw {u:.3f}"
    return [Pick(head, first), *(Pick(i, f"fallback, {_share(weights[i], total)}")
                                 for i in order[1:])]  # fmt: skip


def least_busy(inflight: Sequence[int], weights: Sequence[float], u: float | None) -> list[Pick]:
    """`least_busy` order (module docstring): `inflight[i]` calls in flight at member i."""
    n = len(weights)
    load = [inflight[i] / weights[i] if weights[i] > 0 else math.inf for i in range(n)]
    if all(math.isinf(x) for x in load):  # only weight-0 members here: by count alone
        load = [float(c) for c in inflight]
    best = min(load)
    tied = [i for i in range(n) if load[i] == best]
    if len(tied) > 1:
        sub = weighted([weights[i] for i in tied], u)
        head, tie = tied[sub[0].index], f", tied with {len(tied) - 1} other(s): by weight"
    else:
        head, tie = tied[0], ""
    rest = sorted((i for i in range(n) if i != head),
                  key=lambda i: (load[i], -weights[i], i))  # fmt: skip

    def busy(i: int) -> str:
        per = f", {load[i]:.2f} per unit of weight" if weights[i] not in (0, 1) else ""
        return f"{inflight[i]} in flight{per}" + (", weight 0" if weights[i] == 0 else "")

    return [Pick(head, f"least busy: {busy(head)}{tie}"),
            *(Pick(i, f"fallback, {busy(i)}") for i in rest)]  # fmt: skip


def fastest(latency_ms: Sequence[float | None], weights: Sequence[float], u: float | None,
            explore: float) -> list[Pick]:  # fmt: skip
    """`latency` order (module docstring): `latency_ms[i]` member i's smoothed latency
    (None: no sample yet)."""
    if u is not None and u < explore:
        picks = weighted(weights, u / explore)
        return [Pick(picks[0].index, f"exploring (draw {u:.3f} < explore {explore:g}): "
                     f"{picks[0].why}"), *picks[1:]]  # fmt: skip
    n = len(weights)

    def key(i: int) -> tuple[bool, bool, float, float, int]:
        ms = latency_ms[i]
        return (weights[i] == 0, ms is not None, ms or 0.0, -weights[i], i)

    order = sorted(range(n), key=key)

    def seen(i: int) -> str:
        ms = latency_ms[i]
        return "no latency sample yet" if ms is None else f"{ms:.0f} ms smoothed latency"

    head = order[0]
    first = "no latency sample yet: measured first" if latency_ms[head] is None else (
        f"fastest: {seen(head)}")  # fmt: skip
    return [Pick(head, first), *(Pick(i, f"fallback, {seen(i)}") for i in order[1:])]


def order(strategy: Strategy, members: Sequence[Scored], group: Group,
          inflight: Mapping[str, int], latency: Mapping[str, float],
          u: float | None) -> list[Pick]:  # fmt: skip
    """`members` (deployments of one model, as they stand in the chain) in the order
    `strategy` tries them; weights from `group`, counts and latencies by target key."""
    weights = [group.deployments.get(s.candidate.provider, 0.0) for s in members]
    if strategy == "least_busy":
        return least_busy([inflight.get(s.candidate.key, 0) for s in members], weights, u)
    if strategy == "latency":
        ms = [latency.get(s.candidate.key) for s in members]
        return fastest(ms, weights, u, group.explore)
    return weighted(weights, u)


@dataclass(frozen=True)
class Balanced:
    """A chain after balancing, and one line per balanced model for the reasons."""

    chain: Chain
    lines: tuple[str, ...] = ()


def rebalance(
    chain: Chain,
    balance: Balance,
    *,
    inflight: Mapping[str, int],
    latency: Callable[[], Mapping[str, float]],
    draw: Draw,
    absent: Callable[[str, str, tuple[str, ...]], list[str]] | None = None,
) -> Balanced:
    """`chain` with each model's deployments reordered by their group's strategy (module
    docstring). `inflight` and `latency()` are by target key (`latency` is asked only when
    a `latency` strategy is used); `draw()` gives a uniform draw in [0, 1) per balanced
    model (None: the most likely order); `absent(group, model_id, present providers)`
    names the group's deployments of that model missing from the chain, with why."""
    if not balance.groups or not chain.targets:
        return Balanced(chain)
    group_of = balance.group_of()
    slots: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(chain.targets):
        g = group_of.get(s.candidate.provider)
        if g is not None:
            slots.setdefault((g[0], s.candidate.model_id), []).append(i)
    if not slots:
        return Balanced(chain)
    targets, reasons = list(chain.targets), list(chain.reasons)
    lines: list[str] = []
    lat: Mapping[str, float] | None = None
    for (name, model_id), places in slots.items():
        group = balance.groups[name]
        members = [chain.targets[i] for i in places]
        present = tuple(s.candidate.provider for s in members)
        missing = absent(name, model_id, present) if absent is not None else []
        if len(members) < 2:
            if missing:
                lines.append(f"balance {name}: {model_id} at {present[0]} only; "
                             f"skipped {'; '.join(missing)}")  # fmt: skip
            continue
        strategy = group.strategy_for(model_id, tuple(s.candidate.provider_model_id
                                                      for s in members))  # fmt: skip
        if strategy == "latency" and lat is None:
            lat = latency()
        picks = order(strategy, members, group, inflight, lat or {},
                      None if draw is None else draw())  # fmt: skip
        for k, (place, pick) in enumerate(zip(places, picks, strict=True), 1):
            targets[place] = members[pick.index]
            reasons[place] = (f"balanced {k} of {len(members)} ({name}, {strategy}): "
                              f"{pick.why}")  # fmt: skip
        tried = ", ".join(members[p.index].candidate.provider for p in picks)
        head = members[picks[0].index].candidate
        line = (f"balance {name} ({strategy}): {model_id} over {len(members)} deployments, "
                f"{head.provider} first ({picks[0].why}); order {tried}")  # fmt: skip
        lines.append(line + (f"; skipped {'; '.join(missing)}" if missing else ""))
    return Balanced(Chain(tuple(targets), tuple(reasons)), tuple(lines))
