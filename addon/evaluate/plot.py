"""The eval's plot: quality against the share of strong calls and against cost, one panel
pair per benchmark, every method's curve and the two fixed baselines. matplotlib (Agg, no
display) is an optional dependency (`pip install -e '.[dev]'`): without it `write` raises
`OrchestratorError` saying so, and the table is still printed."""

from __future__ import annotations

from pathlib import Path

from addon.errors import OrchestratorError
from addon.evaluate.run import BenchResult

STYLES = {"random": ":", "keyword": "--", "learned": "-", "oracle": "-."}


def write(results: list[BenchResult], path: Path | str) -> Path:
    """Draw the curves of `results` into the PNG file at `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OrchestratorError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install -e '.[dev]'); the table above is complete without it"
        ) from None
    out = Path(path)
    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.2 * len(results)), squeeze=False)
    for row, r in zip(axes, results, strict=True):
        left, right = row
        for m in r.methods:
            if m.summary is None:
                p = m.points[0]
                for ax, x in ((left, 100 * p.strong_share), (right, 1000 * p.cost)):
                    ax.scatter([x], [p.quality], marker="o", s=40, label=m.name, zorder=3)
                continue
            xs = [100 * p.strong_share for p in m.points]
            cs = [1000 * p.cost for p in m.points]
            qs = [p.quality for p in m.points]
            style = STYLES.get(m.name, "-")
            left.plot(xs, qs, style, label=m.name)
            right.plot(cs, qs, style, label=m.name)
        for ax in (left, right):
            ax.axhline(r.target, color="grey", linewidth=0.8, linestyle=(0, (2, 4)))
            ax.grid(alpha=0.3)
            ax.set_ylabel("quality (mean score)")
        left.set_xlabel("calls to the strong model (%)")
        right.set_xlabel("cost (USD per 1,000 calls)")
        left.set_title(f"{r.benchmark}: {r.items:,} items — quality vs strong calls")
        right.set_title(f"{r.benchmark}: quality vs cost (dotted line: 95% of strong)")
        left.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=90)
    except OSError as e:
        raise OrchestratorError(f"--plot {out}: cannot write it ({e})") from None
    finally:
        plt.close(fig)
    return out
