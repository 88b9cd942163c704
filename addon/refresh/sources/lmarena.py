"""LMArena (Chatbot Arena) leaderboards.

Two rating shapes are read by ``parse``:

* the arena-catalog JSON ``{category: {model_key: {rating, rating_q975, rating_q025}}}``
  (official ``lmarena/arena-catalog`` and mirrors of it), keyed by lowercase model keys;
* the fboulnois CSV ``rank,rank_stylectrl,model,arena_score,95_pct_ci,votes,organization,
  license,...`` whose ``model`` column holds display names and which has only the overall
  ("full") rating.

``parse_model_table`` reads LMSYS's ``leaderboard_table_*.csv`` (``key,Model,...,License,
Organization,Link``): no ratings, but display name, organisation and licence per key.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass

from addon.refresh.sources import (
    ParseResult,
    SourceFormatError,
    SourceWarning,
    as_int,
    decode_text,
    load_json,
    nonempty_str,
)

SOURCE = "lmarena"
OVERALL = "full"
_CI = re.compile(r"^\s*\+?\s*(\d+(?:\.\d+)?)\s*/\s*-?\s*(\d+(?:\.\d+)?)\s*$")
_CSV_COLUMNS = frozenset({"model", "arena_score"})
_TABLE_COLUMNS = frozenset({"key", "Model"})


@dataclass(frozen=True, slots=True)
class ArenaScore:
    model: str
    category: str
    rating: float
    rating_lo: float | None
    rating_hi: float | None
    votes: int | None = None
    organization: str | None = None
    license: str | None = None


@dataclass(frozen=True, slots=True)
class ArenaModelInfo:
    key: str
    display_name: str | None
    organization: str | None
    license: str | None
    link: str | None


def parse(raw: bytes | str, name: str) -> ParseResult[ArenaScore]:
    if name.lower().endswith(".csv"):
        return _parse_csv(decode_text(raw, name), name)
    return _parse_json(raw, name)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _parse_json(raw: bytes | str, name: str) -> ParseResult[ArenaScore]:
    doc = load_json(raw, name)
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise SourceFormatError(
            name,
            "expected {category: {model_key: {rating, rating_q975, rating_q025}}}",
            "use leaderboard-text.json from lmarena/arena-catalog unchanged",
        )
    records: list[ArenaScore] = []
    warnings: list[SourceWarning] = []
    for category, models in doc.items():
        for key, entry in models.items():
            label = f"{name}: {category}/{key}"
            rating = _number(entry.get("rating")) if isinstance(entry, dict) else None
            if rating is None or not isinstance(entry, dict):
                warnings.append(SourceWarning(label, "missing or non-numeric rating"))
                continue
            records.append(
                ArenaScore(
                    model=key,
                    category=str(category),
                    rating=rating,
                    rating_lo=_number(entry.get("rating_q025")),
                    rating_hi=_number(entry.get("rating_q975")),
                )
            )
    return ParseResult(SOURCE, name, tuple(records), tuple(warnings))


def _rows(text: str, name: str, required: frozenset[str], what: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    header = set(reader.fieldnames or ())
    if not required <= header:
        missing = ", ".join(sorted(required - header))
        raise SourceFormatError(
            name, f"CSV header lacks {missing} (saw {sorted(header)})", f"use {what} unchanged"
        )
    try:
        return list(reader)
    except csv.Error as exc:
        raise SourceFormatError(name, f"unreadable CSV ({exc})", "re-download it") from exc


def _parse_csv(text: str, name: str) -> ParseResult[ArenaScore]:
    rows = _rows(text, name, _CSV_COLUMNS, "fboulnois/llm-leaderboard-csv's lmarena_text.csv")
    records: list[ArenaScore] = []
    warnings: list[SourceWarning] = []
    for line, row in enumerate(rows, start=2):
        model = nonempty_str(row.get("model"))
        rating = _number(row.get("arena_score"))
        if model is None or rating is None:
            detail = f"model={row.get('model')!r}, arena_score={row.get('arena_score')!r}"
            warnings.append(SourceWarning(f"{name}:{line}", "missing model or score", detail))
            continue
        lo = hi = None
        ci = _CI.match(row.get("95_pct_ci") or "")
        if ci:
            hi, lo = rating + float(ci.group(1)), rating - float(ci.group(2))
        records.append(
            ArenaScore(
                model=model,
                category=OVERALL,
                rating=rating,
                rating_lo=lo,
                rating_hi=hi,
                votes=as_int((row.get("votes") or "").replace(",", "")),
                organization=nonempty_str(row.get("organization")),
                license=nonempty_str(row.get("license")),
            )
        )
    return ParseResult(SOURCE, name, tuple(records), tuple(warnings))


def parse_model_table(raw: bytes | str, name: str) -> ParseResult[ArenaModelInfo]:
    rows = _rows(decode_text(raw, name), name, _TABLE_COLUMNS, "LMSYS leaderboard_table_*.csv")
    records: list[ArenaModelInfo] = []
    warnings: list[SourceWarning] = []
    for line, row in enumerate(rows, start=2):
        key = nonempty_str(row.get("key"))
        if key is None:
            warnings.append(SourceWarning(f"{name}:{line}", "missing key"))
            continue
        records.append(
            ArenaModelInfo(
                key=key,
                display_name=_dash_none(row.get("Model")),
                organization=_dash_none(row.get("Organization")),
                license=_dash_none(row.get("License")),
                link=_dash_none(row.get("Link")),
            )
        )
    return ParseResult("lmsys", name, tuple(records), tuple(warnings))


def _dash_none(value: str | None) -> str | None:
    text = nonempty_str(value)
    return None if text in (None, "-") else text
