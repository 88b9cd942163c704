"""Precision and recall of a benchmark DB's name matching over labelled pairs.

A pairs file is a CSV with the columns ``openrouter_id, arena_name, litellm_key, hf_id`` (and
any others, e.g. ``note``). Each row is one real model; a cell may hold several names of that
source separated by ``|``. Every two labelled names in the same row should resolve to the same
canonical model (a positive pair), every two in different rows to different ones (a negative
pair). A name resolves to the model its ``aliases`` row names; a name without one (unmatched,
or not in the source) predicts "different" for every pair it is in.

``scripts/eval_names.py`` prints these figures; ``tests/test_names.py`` holds them to a floor.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

from addon.store import benchmarks

COLUMNS = {
    "openrouter_id": "openrouter",
    "arena_name": "lmarena",
    "litellm_key": "litellm",
    "hf_id": "huggingface",
}


@dataclass(frozen=True, slots=True)
class PairScore:
    """Pair counts over one labelled file, and the pairs that went wrong."""

    names: int
    tp: int
    fp: int
    fn: int
    errors: tuple[str, ...]

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def summary(self) -> str:
        return (f"precision={self.precision:.4f} recall={self.recall:.4f} "
                f"(tp={self.tp} fp={self.fp} fn={self.fn}, {self.names} names)")  # fmt: skip


def labelled_names(path: Path) -> list[tuple[tuple[str, str], int]]:
    """((source, name), row number) for every name of a pairs file."""
    names = []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for row_no, row in enumerate(csv.DictReader(handle)):
            for column, source in COLUMNS.items():
                for name in filter(None, (row.get(column) or "").split("|")):
                    names.append(((source, name.strip()), row_no))
    return names


def aliases_of(db: Path) -> dict[tuple[str, str], str]:
    """(source, source name) -> canonical model id, from a benchmark DB's aliases table."""
    return {(s, n): m for s, n, m, _, _ in benchmarks.read_table(db, "aliases")}


def score_pairs(path: Path, aliases: dict[tuple[str, str], str]) -> PairScore:
    """Precision and recall of `aliases` over every pair of the names labelled in `path`."""
    names = labelled_names(path)
    if len({key for key, _ in names}) != len(names):
        raise ValueError(f"{path}: a name is labelled twice; keep one")
    tp = fp = fn = 0
    errors: list[str] = []
    for (a, row_a), (b, row_b) in itertools.combinations(names, 2):
        same = row_a == row_b
        predicted = aliases.get(a) is not None and aliases.get(a) == aliases.get(b)
        if same and predicted:
            tp += 1
        elif predicted:
            fp += 1
            errors.append(f"FP {a} ~ {b} -> {aliases[a]}")
        elif same:
            fn += 1
            errors.append(f"FN {a} -> {aliases.get(a)}, {b} -> {aliases.get(b)}")
    return PairScore(len(names), tp, fp, fn, tuple(errors))
