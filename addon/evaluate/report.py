"""The eval's output: a text table per benchmark, and the same numbers as JSON. Pure."""

from __future__ import annotations

from typing import Any

from addon.evaluate.metrics import Point
from addon.evaluate.run import TARGET, BenchResult, MethodResult


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _usd(per_call: float | None) -> str:
    return "—" if per_call is None else f"${1000 * per_call:.3f}"


def _row(m: MethodResult, strong_cost: float) -> list[str]:
    s = m.summary
    if s is None:
        p = m.points[0]
        return [m.name, "—", "—", "—", "—", "—", "—",
                _num(p.quality), _pct(p.strong_share), _usd(p.cost)]  # fmt: skip
    at, d = s.at_target, s.default
    saving = None if at is None or not strong_cost else 1 - at.cost / strong_cost
    return [m.name, _num(s.apgr), _pct(s.cpt50), _pct(s.cpt80),
            _pct(at.strong_share if at else None), _usd(at.cost if at else None), _pct(saving),
            _num(d.quality if d else None), _pct(d.strong_share if d else None),
            _usd(d.cost if d else None)]  # fmt: skip


HEADER = ["method", "APGR", "CPT(50%)", "CPT(80%)", "strong@95%", "cost@95%", "saving@95%",
          "quality@0", "strong@0", "cost@0"]  # fmt: skip


def table(results: list[BenchResult], profile: str, output_tokens: int) -> str:
    """The text report: per benchmark, one row per method (see README "Routing quality")."""
    lines = [
        f"profile {profile}; cost = catalog price x (prompt-token estimate + {output_tokens} "
        "completion tokens) per call, shown per 1,000 calls; @95% = the cheapest operating "
        f"point with at least {int(TARGET * 100)}% of the strong model's quality; @0 = offset 0 "
        "(the router as configured)",
    ]
    for r in results:
        lines += [
            "",
            f"{r.benchmark}: {r.items:,} items; strong {r.strong} {r.strong_quality:.4f} "
            f"({_usd(r.strong_cost)}/1k calls), weak {r.weak} {r.weak_quality:.4f} "
            f"({_usd(r.weak_cost)}/1k calls); target quality {r.target:.4f}",
        ]
        rows = [HEADER] + [_row(m, r.strong_cost) for m in r.methods]
        widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
        for row in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths, strict=True))))  # fmt: skip
    return "\n".join(lines)


def _point(p: Point | None) -> dict[str, float] | None:
    if p is None:
        return None
    return {"offset": round(p.offset, 6), "strong_share": round(p.strong_share, 6),
            "quality": round(p.quality, 6), "cost_usd": round(p.cost, 9)}  # fmt: skip


def as_json(
    results: list[BenchResult], profile: str, output_tokens: int, *, curves: bool = False
) -> dict[str, Any]:
    """The same numbers as a JSON-ready dict (`curves`: every point of every curve too)."""
    out: dict[str, Any] = {"profile": profile, "output_tokens": output_tokens, "target": TARGET,
                           "benchmarks": []}  # fmt: skip
    for r in results:
        methods = []
        for m in r.methods:
            entry: dict[str, Any] = {"method": m.name}
            s = m.summary
            if s is None:
                entry["point"] = _point(m.points[0])
            else:
                at = s.at_target
                entry.update(
                    apgr=s.apgr, cpt50=s.cpt50, cpt80=s.cpt80, at_target=_point(at),
                    saving_at_target=(None if at is None or not r.strong_cost
                                      else 1 - at.cost / r.strong_cost),
                    default=_point(s.default),
                )  # fmt: skip
            if curves:
                entry["curve"] = [_point(p) for p in m.points]
            methods.append(entry)
        out["benchmarks"].append({
            "benchmark": r.benchmark, "items": r.items, "strong": r.strong, "weak": r.weak,
            "strong_quality": r.strong_quality, "weak_quality": r.weak_quality,
            "strong_cost_usd": r.strong_cost, "weak_cost_usd": r.weak_cost,
            "target_quality": r.target, "methods": methods,
        })  # fmt: skip
    return out
