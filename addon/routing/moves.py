"""Observed re-ranking: the few candidates observed latencies move within a base order.

A rerank never rescores the catalog: only the candidates with an observed latency get new
scores, so it takes them out of each base order and bisects them back in at their new
places. `Moves` is that edit, kept so that every order derived from a base order (a
provider subset, a filter pass) can be brought up to date with the same few bisections.
Pure.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from addon.routing.scoring import ORDER, Scored


@dataclass(frozen=True)
class Moves:
    """The candidates that observed latencies moved in one base order: their base entries
    (`old`, in base order) and their re-scored entries (`new`), key for key."""

    old: tuple[Scored, ...]
    new: tuple[Scored, ...]

    def apply(
        self, base: Sequence[Scored], keep: Callable[[Scored], bool] | None = None
    ) -> list[Scored]:
        """`base` (a base order, or the part of one that `keep` accepts) with the moved
        candidates taken out and put back at their new places: a bisection per moved
        candidate and slice copies, no Python step per entry."""
        out: list[Scored] = []
        prev = 0
        for s in self.old:  # in base order, so their places ascend
            if keep is None or keep(s):
                i = bisect.bisect_left(base, s.order, lo=prev, key=ORDER)
                if i < len(base) and base[i] is s:
                    out += base[prev:i]
                    prev = i + 1
        out += base[prev:]
        rest, out, prev = out, [], 0
        for s in self.new:  # best first, so their places ascend too
            if keep is None or keep(s):
                i = bisect.bisect_left(rest, s.order, lo=prev, key=ORDER)
                out += rest[prev:i]
                out.append(s)
                prev = i
        out += rest[prev:]
        return out
