"""Model-name normalization and the hard guards entity resolution relies on.

``parse_name`` lowercases a name, drops the provider/org path, Bedrock's vendor prefix and
``-v1:0`` suffix (Mistral's Bedrock ``-v0:2`` is the model version 0.2), Vertex's ``-v2@date``
release marker and OpenRouter's ``:free``-style routing suffix, reads ``2p5`` as ``2.5``,
splits on ``. - _ / @ ( )`` and sorts the tokens into classes:

* name words (``gpt``, ``claude``, ``llama``) — compared with rapidfuzz;
* versions (``4o``, ``3.5`` -> ``3 5``, ``v3``), sizes (``8b``, ``a3b``, ``8x22b``, ``128k``),
  tiers (``mini``, ``pro``, ``flash``, ``opus``, ``chat``...), variants (``thinking``,
  ``reasoning``, ``no-thinking``) — hard guards, must be equal;
* a release date (``2024-08-06``, ``20250929``, ``2507``, ``0905``, ``09-2025``) and a
  revision (``001``) — must agree when both names carry one;
* soft words (``instruct``, ``it``, ``latest``, ``fp8``, ``maas``) — may differ, at a cost.

Noise words (``meta`` in ``Meta-Llama``, ``nvidia`` in ``NVIDIA-Nemotron``) are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date
from types import MappingProxyType

from rapidfuzz import fuzz

LISTING_LAG_DAYS = 45  # a catalog lists a release at most this long after its date
NAME_THRESHOLD = 90.0  # rapidfuzz ratio between the name words (same word count) of two names

ROUTING_TAGS = frozenset(  # OpenRouter id suffixes that name a route, not a model
    {"free", "exacto", "extended", "nitro", "floor", "online", "beta"}
)
_BEDROCK_VENDORS = (
    "anthropic|openai|meta|amazon|mistral|qwen|minimax|xai|moonshotai|moonshot|nvidia|cohere"
    "|deepseek|google|twelvelabs|zai|ai21|writer"
)
_BEDROCK = re.compile(rf"^(?:[a-z]{{2,6}}(?:-gov)?\.)?(?:{_BEDROCK_VENDORS})\.(?=[a-z])")
_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?$")
_BEDROCK_MODEL_VERSION = re.compile(r"-v0:(\d+)$")  # mistral.mistral-7b-instruct-v0:2 is v0.2
_VERTEX_RELEASE = re.compile(r"-v\d+(?=@\d{8}$)")  # claude-3-5-sonnet-v2@20241022: the date says it
_SEPARATORS = re.compile(r"[\s\-_./:,()+@\[\]]+")
_DECIMAL_SIZE = re.compile(r"(?<![\d.])(\d+)\.(\d+)([bmkt])\b")
_ALPHA_DIGIT = re.compile(r"^([a-z]{3,})(\d.*)$")
_P_DECIMAL = re.compile(r"(?<=\d)p(?=\d)")  # Fireworks spells 2.5 as 2p5

_MONTH = r"(0[1-9]|1[0-2])"
_DAY = r"(0[1-9]|[12]\d|3[01])"
_D8 = re.compile(rf"(?<!\d)(20\d\d)[-_.]?{_MONTH}[-_.]?{_DAY}(?!\d)")
_YM6 = re.compile(rf"(?<![\d.])(20\d\d){_MONTH}(?![\d.])")
_MY = re.compile(rf"(?<![\d.]){_MONTH}[-_](20\d\d)(?!\d)")
_MD = re.compile(rf"(?<=[a-z][-_ ]){_MONTH}[-_]{_DAY}(?![\d.])")
_D4 = re.compile(r"(?<![\d.])(\d\d)(\d\d)(?![\d.])")

SOFT = frozenset(
    {"instruct", "it", "hf", "latest", "preview", "default", "maas", "fp8", "bf16", "fp16",
     "fp4", "nvfp4", "int4", "int8", "awq", "gguf", "mlx", "pt", "v1"}
)  # fmt: skip
_PACKAGING = frozenset(SOFT - {"instruct", "it", "latest", "preview"})
_NOISE = frozenset(
    {"meta", "nvidia", "c4ai", "ai", "amazon", "ibm", "google", "microsoft", "openai",
     "anthropic", "mistralai", "xai", "zai", "alibaba", "moonshotai"}
)  # fmt: skip
TIERS = frozenset(
    {"mini", "nano", "small", "medium", "large", "pro", "flash", "lite", "turbo", "micro",
     "tiny", "max", "plus", "ultra", "air", "fast", "premier", "scout", "maverick", "super",
     "high", "low", "minimal", "xl", "xs", "haiku", "sonnet", "opus", "base", "instant",
     "codex", "coder", "code", "vision", "vl", "audio", "search", "image", "guard",
     "safeguard", "distill", "deep", "research", "omni", "realtime", "exp", "experimental",
     "alpha", "beta", "next", "speciale", "terminus", "edge", "multi", "agent", "chat",
     "customtools", "online", "versatile", "lora"}
)  # fmt: skip
_VARIANTS = MappingProxyType(
    {"thinking": "thinking", "think": "thinking", "reasoning": "reasoning",
     "reasoner": "reasoner", "nothink": "no-thinking", "nothinking": "no-thinking"}
)  # fmt: skip
_WORDS = SOFT | TIERS | frozenset(_VARIANTS)
_SIZE = re.compile(r"^(?:\d+(?:p\d+)?[bmkt]|[a-z]\d+(?:p\d+)?b|\d+x\d+(?:p\d+)?b|\d+e)$")
_VERSION = re.compile(r"^v?(\d+[a-z]?)$")
_REVISION = re.compile(r"^0\d\d$")


@dataclass(frozen=True, slots=True)
class DateTag:
    year: int | None
    month: int
    day: int | None

    def compatible(self, other: DateTag) -> bool:
        return (
            self.month == other.month
            and (self.year is None or other.year is None or self.year == other.year)
            and (self.day is None or other.day is None or self.day == other.day)
        )

    def listed_by(self, listing: DateTag, lag_days: int = LISTING_LAG_DAYS) -> bool:
        """Whether a release dated ``self`` can be the one a catalog listed on ``listing``:
        the same date, or a listing up to ``lag_days`` after the release (OpenRouter's
        canonical slug carries the listing date: ``claude-4.5-opus-20251124`` for the
        20251101 release)."""
        if self.compatible(listing):
            return True
        if listing.year is None or listing.day is None:
            return False
        years = [self.year] if self.year else [listing.year, listing.year - 1]
        try:
            end = date(listing.year, listing.month, listing.day)
            spans = [(date(y, self.month, self.day or 1), date(y, self.month, self.day or 28))
                     for y in years]  # fmt: skip
        except ValueError:  # 02-30 and the like: no such day
            return False
        return any(first <= end and (end - last).days <= lag_days for first, last in spans)

    def __str__(self) -> str:
        parts = [str(self.year) if self.year else "????", f"{self.month:02d}"]
        return "-".join([*parts, f"{self.day:02d}"] if self.day else parts)


type GuardKey = tuple[tuple[str, ...], frozenset[str], frozenset[str], frozenset[str]]


@dataclass(frozen=True, slots=True)
class NameSig:
    """A parsed model name: the token classes the guards compare."""

    base: str
    org: str | None
    names: tuple[str, ...]
    versions: tuple[str, ...]
    sizes: frozenset[str]
    tiers: frozenset[str]
    variants: frozenset[str]
    soft: frozenset[str]
    date: DateTag | None
    revision: str | None

    @property
    def guard_key(self) -> GuardKey:
        return (self.versions, self.sizes, self.tiers, self.variants)

    @property
    def name_text(self) -> str:
        return "".join(self.names)

    @property
    def key(self) -> str:
        """A canonical text form: the comparable tokens, for display and rapidfuzz."""
        tokens = [*self.names, *self.versions, *sorted(self.sizes), *sorted(self.tiers)]
        tokens += [*sorted(self.variants), *sorted(self.soft)]
        if self.date:
            tokens.append(str(self.date))
        if self.revision:
            tokens.append(self.revision)
        return " ".join(tokens)

    def strict_key(self) -> tuple[object, ...]:
        """Identity for grouping new models: every token except packaging words."""
        return (self.name_text, self.guard_key, self.soft - _PACKAGING, self.date, self.revision)


def strip_prefixes(raw: str) -> tuple[str, str | None, list[str]]:
    """Lowercased name without path, Bedrock vendor/version and routing suffix.

    Returns ``(base, org, extra_tokens)``; ``extra_tokens`` are kept routing tags such
    as ``thinking`` (OpenRouter ``:thinking``) or ``8b`` (Ollama ``llama3:8b``).
    """
    text = _P_DECIMAL.sub(".", raw.strip().lower())
    text = _VERTEX_RELEASE.sub("", _BEDROCK_MODEL_VERSION.sub(r"-v0.\1", text))
    extra: list[str] = []
    slash = text.rfind("/")
    colon = text.find(":", slash + 1)
    if colon > 0:
        text, tag = text[:colon], text[colon + 1 :]
        if tag and tag not in ROUTING_TAGS and not tag.isdigit():
            extra.extend(t for t in _SEPARATORS.split(tag) if t)
    parts = [p for p in text.split("/") if p and not p.startswith("@")]
    if not parts:
        return text, None, extra
    base = parts[-1]
    org = parts[-2] if len(parts) > 1 else None
    bedrock = _BEDROCK.match(base)
    if bedrock:
        org = org or bedrock.group(0).rstrip(".").split(".")[-1]
        base = _BEDROCK_VERSION.sub("", base[bedrock.end() :])
    return base, org, extra


def _take_date(text: str) -> tuple[str, DateTag | None]:
    for pattern, build in (
        (_D8, lambda m: DateTag(int(m[1]), int(m[2]), int(m[3]))),
        (_YM6, lambda m: DateTag(int(m[1]), int(m[2]), None)),
        (_MY, lambda m: DateTag(int(m[2]), int(m[1]), None)),
        (_MD, lambda m: DateTag(None, int(m[1]), int(m[2]))),
    ):
        found = pattern.search(text)
        if found:
            return text[: found.start()] + " " + text[found.end() :], build(found)
    for found in _D4.finditer(text):
        first, second = int(found[1]), int(found[2])
        if 23 <= first <= 29 and 1 <= second <= 12:
            tag = DateTag(2000 + first, second, None)
        elif 1 <= first <= 12 and 1 <= second <= 31:
            tag = DateTag(None, first, second)
        else:
            continue
        return text[: found.start()] + " " + text[found.end() :], tag
    return text, None


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    for token in _SEPARATORS.split(_DECIMAL_SIZE.sub(r"\1p\2\3", text)):
        if not token:
            continue
        split = _ALPHA_DIGIT.match(token)
        if split and not _SIZE.match(token) and token not in _WORDS:
            out.extend(split.groups())
        else:
            out.append(token)
    return out


def parse_name(raw: str) -> NameSig:
    base, org, extra = strip_prefixes(raw)
    text, date = _take_date(base)
    tokens = _tokens(text) + extra
    if tokens[-2:] == ["v1", "0"]:
        tokens = [*tokens[:-2], "v1"]
    names: list[str] = []
    versions: list[str] = []
    sizes: set[str] = set()
    tiers: set[str] = set()
    variants: set[str] = set()
    soft: set[str] = set()
    revision: str | None = None
    for index, token in enumerate(tokens):
        previous = tokens[index - 1] if index else ""
        if token in _VARIANTS:
            negated = previous in ("no", "non")
            variants.add("no-thinking" if negated else _VARIANTS[token])
        elif token in ("no", "non") and index + 1 < len(tokens) and tokens[index + 1] in _VARIANTS:
            continue
        elif (token == "v1" and index == len(tokens) - 1 and len(tokens) > 1) or (
            token in SOFT and token != "v1"
        ):
            soft.add(token)
        elif _SIZE.match(token):
            budget = previous in _VARIANTS and token.endswith("k")
            (soft if budget else sizes).add(token)
        elif _REVISION.match(token):
            revision = token
        elif token in TIERS:
            tiers.add(token)
        elif match := _VERSION.match(token):
            versions.append(match.group(1).lstrip("0") or "0")
        elif token not in _NOISE:
            names.append(token)
    if "latest" in soft and not versions:
        soft.discard("latest")  # "gemini-pro-latest" floats; "gpt-5-chat-latest" does not
        tiers.add("latest")
    return NameSig(
        base=":".join([base, *extra]),
        org=org,
        names=tuple(sorted(names)),
        versions=tuple(versions),
        sizes=frozenset(sizes),
        tiers=frozenset(tiers),
        variants=frozenset(variants),
        soft=frozenset(soft),
        date=date,
        revision=revision,
    )


def without_date(sig: NameSig) -> NameSig:
    return replace(sig, date=None)


def name_similarity(a: NameSig, b: NameSig) -> float:
    """rapidfuzz ratio of the name words; 0 when the word counts differ (command vs command-r)."""
    if len(a.names) != len(b.names):
        return 0.0
    return fuzz.ratio(a.name_text, b.name_text)


def guard_conflicts(a: NameSig, b: NameSig) -> tuple[str, ...]:
    """Why ``a`` and ``b`` cannot be the same model (empty when every hard guard agrees)."""
    problems: list[str] = []
    for label, left, right in (
        ("version", a.versions, b.versions),
        ("size", sorted(a.sizes), sorted(b.sizes)),
        ("tier", sorted(a.tiers), sorted(b.tiers)),
        ("variant", sorted(a.variants), sorted(b.variants)),
    ):
        if left != right:
            problems.append(f"{label} {_show(left)} vs {_show(right)}")
    if a.date and b.date and not a.date.compatible(b.date):
        problems.append(f"date {a.date} vs {b.date}")
    if a.revision and b.revision and a.revision != b.revision:
        problems.append(f"revision {a.revision} vs {b.revision}")
    ratio = name_similarity(a, b)
    if ratio < NAME_THRESHOLD:
        problems.append(f"name {a.name_text or '-'} vs {b.name_text or '-'} ({ratio:.0f})")
    return tuple(problems)


def _show(values: tuple[str, ...] | list[str]) -> str:
    return ".".join(values) if values else "-"
