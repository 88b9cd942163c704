"""Parsers for the public data sources the benchmark DB is built from.

Each source module exposes a pure ``parse(raw, name) -> ParseResult`` that turns the
bytes of one saved snapshot (or, later, one HTTP response body) into typed, frozen
records. Parsing never touches the network or the file system: ``addon.collect`` fetches
the bodies (``addon.refresh.fetch``), ``addon.refresh.snapshots`` reads saved ones, ``addon.refresh.ingest`` parses.

A record that lacks a required field is skipped and reported as a ``SourceWarning``;
only a file that cannot be read as a whole (not JSON/CSV, wrong top-level shape)
raises ``SourceFormatError``, which makes that one source "failed" in a refresh.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from addon.errors import SourceFormatError

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class SourceWarning:
    """One record that was skipped or partly read, with the reason and the value seen."""

    record: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.record}: {self.reason}{extra}"


@dataclass(frozen=True, slots=True)
class ParseResult[R]:
    """Records parsed from one snapshot plus what was left out and why.

    ``warnings`` are problems (a record missing a required field, a malformed value);
    ``skipped`` counts records left out on purpose (pseudo-models, non-chat modes),
    as ``(reason, count)`` pairs.
    """

    source: str
    name: str
    records: tuple[R, ...]
    warnings: tuple[SourceWarning, ...] = ()
    skipped: tuple[tuple[str, int], ...] = ()

    def warning_counts(self) -> dict[str, int]:
        return dict(Counter(w.reason for w in self.warnings))

    @property
    def skipped_total(self) -> int:
        return sum(n for _, n in self.skipped)


def decode_text(raw: bytes | str, name: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceFormatError(
            name, f"not UTF-8 text ({exc.reason} at byte {exc.start})", "re-download the file"
        ) from exc


def load_json(raw: bytes | str, name: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SourceFormatError(
            name, f"not valid JSON ({exc})", "re-download the snapshot; it may be truncated"
        ) from exc


def per_million(value: object) -> Decimal | None:
    """A per-token price (decimal string, int or float) as an exact Decimal per 1M tokens.

    Returns None for missing or unparseable values; the caller decides what a negative
    price means (OpenRouter uses ``"-1"`` for router pseudo-models).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int | str):
        text = str(value).strip()
    else:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return number * _MILLION


def to_float(value: Decimal | None) -> float | None:
    """Round to 10 significant digits, as the benchmark DB stores prices."""
    if value is None:
        return None
    return float(format(value, ".10g"))


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def as_flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def nonempty_str(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def counted(reasons: Counter[str]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(reasons.items()))
