"""Precision and recall of name matching over the labelled pairs (README "Name matching").

    .venv/bin/python scripts/eval_names.py [--db PATH] [--errors N] [PAIRS.csv ...]

Defaults: the bundled DB (`make bundle` builds it from ../shared/fixtures/sources) and the
three pair files: the shared dev pairs the matcher was tuned on, our extra pairs, and our
holdout pairs (tests/data/entity_pairs_holdout.csv), labelled from real catalog names and
never tuned on. Prints one line per file; --errors N also lists N wrong pairs per file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addon.refresh.name_eval import aliases_of, score_pairs  # noqa: E402
from addon.store.benchmarks import BUNDLED_DB  # noqa: E402

PAIRS = (
    ("dev (tuned on)", REPO.parent / "shared" / "fixtures" / "entity_pairs_dev.csv"),
    ("extra (tuned on)", REPO / "tests" / "data" / "entity_pairs_extra.csv"),
    ("holdout (not tuned on)", REPO / "tests" / "data" / "entity_pairs_holdout.csv"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pairs", nargs="*", type=Path, help="pair files (default: all three)")
    parser.add_argument("--db", type=Path, default=BUNDLED_DB, help="benchmark DB to score")
    parser.add_argument("--errors", type=int, default=0, help="wrong pairs to list per file")
    args = parser.parse_args(argv)
    files = [(p.name, p) for p in args.pairs] or [(n, p) for n, p in PAIRS if p.exists()]
    aliases = aliases_of(args.db)
    print(f"name matching of {args.db}")
    for label, path in files:
        score = score_pairs(path, aliases)
        print(f"  {label:24} {path.name:30} {score.summary()}")
        for line in score.errors[: args.errors]:
            print(f"      {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
