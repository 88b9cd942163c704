"""A full benchmark-DB refresh from saved snapshots: wall time and peak RSS vs the targets.

    .venv/bin/python scripts/bench_refresh.py --from ../shared/fixtures/sources [--strict]

Runs exactly what `orchestrator refresh --from DIR --out PATH` runs (``addon.refresh.main``,
in this process, into a temporary DB), including the imports. Wall time is measured from
before the first ``addon`` import to the swapped-in DB; peak RSS is this process's
``ru_maxrss``. Targets: under 5 s and under 300 MB. ``--strict`` exits 1 when one is missed.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 5.0
TARGET_MB = 300.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source_dir", type=Path, required=True, metavar="DIR")
    parser.add_argument("--aliases", type=Path, default=REPO / "rules" / "aliases.yaml")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(REPO))
    from addon.refresh import sidecar

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "benchmarks.db"
        argv = ["--from", str(args.source_dir), "--out", str(out), "--aliases", str(args.aliases)]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = sidecar.main(argv)
        wall = time.perf_counter() - STARTED
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if code not in (sidecar.EXIT_OK, sidecar.EXIT_SOURCE_FAILED):
        print(f"refresh failed (exit {code}); see the messages above", file=sys.stderr)
        return code
    wrote = next(
        (line for line in printed.getvalue().splitlines() if line.startswith("wrote ")), ""
    )
    print(f"refresh --from {args.source_dir}")
    print(f"  {wrote.partition(': ')[2]}")
    ok_time, ok_rss = wall < TARGET_S, peak_mb < TARGET_MB
    print(f"  wall time {wall:6.2f} s   target < {TARGET_S:g} s    {'ok' if ok_time else 'MISSED'}")
    print(
        f"  peak RSS  {peak_mb:6.0f} MB  target < {TARGET_MB:g} MB  {'ok' if ok_rss else 'MISSED'}"
    )
    return 1 if args.strict and not (ok_time and ok_rss) else 0


if __name__ == "__main__":
    raise SystemExit(main())
