"""The learned difficulty scorer: how likely a stronger model is to help, from the request
alone. Pure: the weights come in as a value (`DifficultyModel`, read from JSON by
`addon.store.scorer` at config load); nothing here reads a file or the network.

What it computes
    p = sigmoid(bias + Σ w[token] + Σ w[pair] + Σ w_k · (x_k - mean_k) / scale_k)

    over the last user turn's text (its first and last `sample_chars` characters when it is
    longer) as UTF-8: split into words at white space, ASCII letters lower-cased, every
    digit read as "0" (so "1,234" and "9,876" are one shape), ASCII punctuation stripped
    from each word's ends
    (`tokens`); each distinct token and each
    distinct pair of adjacent tokens (joined by a space) counts once, one without a weight
    counts 0. The dense features `DENSE`
    describe the question's shape: its length, digits, numbers, math symbols, answer
    options, lines and so on (`dense_features`). `p` estimates the chance that the strong
    model of the training data answers correctly where the weak one does not
    (`scripts/train_router.py` fits it by logistic regression).

From p to complexity (the 0..1 value `RequestFeatures.complexity` carries)
    piecewise linear through (0, 0), (p_simple, 0.33), (p_complex, 0.66), (1, 1): a request
    below `p_simple` is "simple" (the scorer moves weight from quality to cost), above
    `p_complex` "complex". The training script picks `p_simple` as the lowest threshold
    that keeps 95% of the strong model's quality on its training data when every request
    from it up goes to the strong model, and `p_complex` as the 90th percentile of p there
    (both over out-of-fold predictions, so they are not flattered by the fit).

Cost: one translate, a split and a strip a word, one set of words and adjacent word pairs
looked up in one dict (pairs keyed as tuples, so no pair is joined into new bytes), and a
few byte counts, over at most 2·`sample_chars` characters whatever the prompt's size (see
`scripts/bench_routing.py`, "learned difficulty scorer alone").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise, repeat
from typing import Any

FORMAT = "orchestrator-difficulty/1"
SIMPLE_AT = 0.33  # complexity where "simple" ends (RequestFeatures.complexity_class)
COMPLEX_AT = 0.66  # and where "complex" begins

_DIGITS = bytes.maketrans(b"0123456789", b"0000000000")
# ASCII letters lower-cased and digits read as "0" in one pass (bytes.lower touches ASCII only)
_FOLD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", b"abcdefghijklmnopqrstuvwxyz0000000000"
)
_PUNCT = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"  # stripped from both ends of a word
_NOT = lambda keep: bytes(b for b in range(256) if b not in keep)  # noqa: E731
_NOT_UPPER = _NOT(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NOT_DIGITS = _NOT(b"0123456789")
_NOT_MARKS = _NOT(b"+-*/=^<>%$\\")
_OPTIONS = re.compile(rb"\n\(?[A-E][.)]")  # a line that starts an answer option

# name of each dense feature, in the order `dense_features` returns them
DENSE = (
    "log_chars",
    "log_tokens",
    "digit_share",
    "log_numbers",
    "log_math_marks",
    "question_marks",
    "options",
    "log_lines",
    "upper_share",
    "mean_word_len",
)


@dataclass(frozen=True)
class DifficultyModel:
    """The weights of one trained scorer (see the module docstring): a bias, a weight per
    token and token pair, per dense feature its (mean, scale, weight), the two knots of
    the complexity mapping, and what the training script recorded about itself (`meta`:
    data, split, date; informational)."""

    bias: float
    words: Mapping[bytes, float] = field(repr=False)  # UTF-8 word or "word word" -> weight
    dense: tuple[tuple[float, float, float], ...]  # per DENSE name: (mean, scale, weight)
    p_simple: float
    p_complex: float
    sample_chars: int = 300
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # `words` as `probability` looks them up: a word as bytes, a pair as a (word, word) tuple
    grams: Mapping[bytes | tuple[bytes, bytes], float] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        grams: dict[bytes | tuple[bytes, bytes], float] = {}
        for k, w in self.words.items():
            first, space, second = k.partition(b" ")
            grams[(first, second) if space else k] = w
        object.__setattr__(self, "grams", grams)


def sample(text: str, chars: int) -> str:
    """The first and last `chars` characters of `text` (all of it when it is short)."""
    if len(text) > 2 * chars:
        return text[:chars] + "\n" + text[-chars:]
    return text


def encode(part: str) -> bytes:
    """`part` as UTF-8 (a lone surrogate becomes "?"): the scorer reads bytes, which keeps
    non-ASCII text on the fast paths (`bytes.lower` and `split` touch ASCII only)."""
    return part.encode("utf-8", "replace")


def tokens(raw: bytes) -> list[bytes]:
    """The words of `raw`: split at white space, ASCII letters lower-cased, digits read as
    "0", ASCII punctuation stripped from both ends (b"April," is b"april"; b"?" is b"")."""
    return list(map(bytes.strip, raw.translate(_FOLD).split(), repeat(_PUNCT)))


def pairs(toks: Sequence[bytes]) -> set[bytes]:
    """The distinct pairs of adjacent words, joined by a space."""
    return set(map(b" ".join, pairwise(toks)))


def dense_features(raw: bytes, toks: Sequence[bytes], full_chars: int) -> tuple[float, ...]:
    """The dense features (`DENSE`, in order) of `raw` (a sample of a text of `full_chars`
    characters) and its `tokens`; letters, digits and marks counted are ASCII."""
    n = len(raw) or 1
    alpha = list(filter(bytes.isalpha, toks))
    words = len(alpha)
    letters = sum(map(len, alpha))
    return (
        math.log1p(full_chars),
        math.log1p(len(toks) * full_chars / n),
        len(raw.translate(None, _NOT_DIGITS)) / n,
        math.log1p(sum(map(bytes.isdigit, toks))),
        math.log1p(len(raw.translate(None, _NOT_MARKS))),
        float(min(raw.count(b"?"), 5)),
        float(min(len(_OPTIONS.findall(raw)), 10)),
        math.log1p(raw.count(b"\n")),
        len(raw.translate(None, _NOT_UPPER)) / max(letters, 1),
        (letters / words) if words else 0.0,
    )


def probability(model: DifficultyModel, text: str) -> float:
    """p (0..1): how likely the strong model helps on a request whose last user turn is
    `text` (see the module docstring)."""
    raw = encode(sample(text, model.sample_chars))
    toks = tokens(raw)
    grams: set[bytes | tuple[bytes, bytes]] = set(toks)
    grams.update(pairwise(toks))
    z = model.bias + sum(filter(None, map(model.grams.get, grams)))
    for x, (mean, scale, w) in zip(dense_features(raw, toks, len(text)), model.dense, strict=True):
        z += w * (x - mean) / scale
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def complexity(model: DifficultyModel, p: float) -> float:
    """The complexity (0..1) of a request the scorer gives `p` (see the module docstring)."""
    lo, hi = model.p_simple, model.p_complex
    if p <= lo:
        return SIMPLE_AT * p / lo if lo > 0 else SIMPLE_AT
    if p <= hi:
        return SIMPLE_AT + (COMPLEX_AT - SIMPLE_AT) * (p - lo) / ((hi - lo) or 1.0)
    return min(1.0, COMPLEX_AT + (1 - COMPLEX_AT) * (p - hi) / ((1 - hi) or 1.0))


def from_dict(data: Any) -> DifficultyModel:
    """A `DifficultyModel` from the parsed JSON artifact; ValueError naming the bad key."""
    if not isinstance(data, dict):
        raise ValueError("the scorer file must hold a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
    try:
        words = data["words"]
        dense = data["dense"]
        if not isinstance(words, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) for k, v in words.items()
        ):
            raise ValueError("`words` must map strings to numbers")
        if not isinstance(dense, dict) or set(dense) != set(DENSE):
            raise ValueError(f"`dense` must have exactly the keys {', '.join(DENSE)}")
        triples = tuple(tuple(float(v) for v in dense[name]) for name in DENSE)
        if any(len(t) != 3 or t[1] <= 0 for t in triples):
            raise ValueError("each `dense` entry must be [mean, scale > 0, weight]")
        model = DifficultyModel(
            bias=float(data["bias"]),
            words={k.encode("utf-8"): float(v) for k, v in words.items()},
            dense=triples,  # type: ignore[arg-type]
            p_simple=float(data["p_simple"]),
            p_complex=float(data["p_complex"]),
            sample_chars=int(data.get("sample_chars", 300)),
            meta=data.get("meta") or {},
        )
    except KeyError as e:
        raise ValueError(f"missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None
    if not 0 < model.p_simple <= model.p_complex < 1:
        raise ValueError("need 0 < p_simple <= p_complex < 1")
    if model.sample_chars < 1:
        raise ValueError("sample_chars must be positive")
    return model
