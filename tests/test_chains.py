"""Chain shape: providers interleaved after the first target, same-weights aliases."""

from __future__ import annotations

import pytest

from addon.routing.catalog import Candidate
from addon.routing.chains import (
    Chain,
    WeightsName,
    diversify,
    newcomers,
    repeats_failure,
    same_weights,
    tried_order,
    weights_name,
)
from addon.routing.cost import Price
from addon.routing.scoring import Scored


def cand(key: str) -> Candidate:
    provider, model = key.split(":", 1)
    return Candidate(key, model, model, provider, model, Price(1.0, 2.0), 8000, None,
                     True, False, False, False, None, 0.5, "models.yaml")  # fmt: skip


def chain_of(*keys: str) -> tuple[Scored, ...]:
    return tuple(Scored(cand(k), 1.0 - i / 100, ()) for i, k in enumerate(keys))


def keys(chain: Chain) -> list[str]:
    return [s.candidate.key for s in chain.targets]


# --------------------------------------------------------------------------- diversify


@pytest.mark.parametrize(
    ("before", "usable", "after"),
    [
        ([], {"a"}, []),
        (["a:1"], {"a"}, ["a:1"]),
        (["a:1", "a:2", "b:1", "b:2"], {"a", "b"}, ["a:1", "b:1", "a:2", "b:2"]),
        # three providers: each gets a turn before any gets a second one
        (["a:1", "a:2", "a:3", "b:1", "b:2", "c:1"], {"a", "b", "c"},
         ["a:1", "b:1", "c:1", "a:2", "b:2", "a:3"]),
        # among providers tried as often, the better-ranked target goes first
        (["a:1", "c:1", "b:1", "b:2", "c:2"], {"a", "b", "c"},
         ["a:1", "c:1", "b:1", "b:2", "c:2"]),
        # one provider only: order untouched
        (["a:1", "a:2", "a:3"], {"a"}, ["a:1", "a:2", "a:3"]),
        # the first target stays first even when its provider has the most targets
        (["b:1", "a:1", "a:2", "a:3"], {"a", "b"}, ["b:1", "a:1", "a:2", "a:3"]),
        # a provider that is not usable goes last, in its order
        (["a:1", "x:1", "a:2", "b:1", "x:2"], {"a", "b"}, ["a:1", "b:1", "a:2", "x:1", "x:2"]),
    ],
)  # fmt: skip
def test_diversify_interleaves_providers(
    before: list[str], usable: set[str], after: list[str]
) -> None:
    out = diversify(chain_of(*before), usable)
    assert keys(out) == after
    assert len(out.reasons) == len(out.targets)
    assert sorted(keys(out)) == sorted(before)  # a reorder, nothing lost or added


def test_diversify_keeps_each_providers_own_order() -> None:
    before = ["a:3", "b:9", "a:1", "c:5", "a:2", "b:8", "c:4"]
    out = keys(diversify(chain_of(*before), {"a", "b", "c"}))
    for p in "abc":
        assert [k for k in out if k[0] == p] == [k for k in before if k[0] == p]


def test_every_target_says_why_it_is_where_it_is() -> None:
    out = diversify(chain_of("a:1", "a:2", "a:3", "b:1", "b:2", "x:1"), {"a", "b"})
    assert keys(out) == ["a:1", "b:1", "a:2", "b:2", "a:3", "x:1"]
    assert out.reasons == (
        "first: rank 1 of 6",
        "next provider: rank 4, the first target at b",
        "interleaved: rank 2, target 2 at a; no provider with targets left had fewer",
        "interleaved: rank 5, target 2 at b; no provider with targets left had fewer",
        "same provider: rank 3, target 3 at a; no other usable provider has targets left",
        "last: rank 6, provider x is not usable now",
    )
    assert out.lines()[0] == "1. a:1 (1.000): first: rank 1 of 6"
    assert out.lines()[1].startswith("2. b:1 (0.970): next provider")


# --------------------------------------------------------------------------- same weights


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-4o", WeightsName("gpt-4o")),
        ("gpt-4o-2024-08-06", WeightsName("gpt-4o", "20240806")),
        ("GPT-4o-2024-08-06", WeightsName("gpt-4o", "20240806")),
        ("claude-sonnet-4-5-20250929", WeightsName("claude-sonnet-4-5", "20250929")),
        ("claude-3-5-sonnet-20241022", WeightsName("claude-3-5-sonnet", "20241022")),
        ("claude-3-5-sonnet-latest", WeightsName("claude-3-5-sonnet")),
        ("claude-3-5-sonnet-v2@20241022", WeightsName("claude-3-5-sonnet-v2", "20241022")),
        ("gemini_2024_01_01", WeightsName("gemini_2024_01_01")),  # `_` inside the date: no
        ("model_20240101", WeightsName("model", "20240101")),
        ("meta-llama/llama-3.3-70b-instruct:free",
         WeightsName("meta-llama/llama-3.3-70b-instruct")),
        ("anthropic/claude-3.5-sonnet:beta", WeightsName("anthropic/claude-3.5-sonnet")),
        ("deepseek/deepseek-r1:nitro", WeightsName("deepseek/deepseek-r1")),
        ("qwen/qwen3-32b:thinking", WeightsName("qwen/qwen3-32b:thinking")),  # a variant
        ("llama3.1:8b", WeightsName("llama3.1:8b")),  # an Ollama tag is a size, not a route
        ("mistral-large-2407", WeightsName("mistral-large-2407")),  # short tags: releases
        ("kimi-k2-0905", WeightsName("kimi-k2-0905")),
        ("gpt-4-0613", WeightsName("gpt-4-0613")),
        ("gpt-4o-2024-13-06", WeightsName("gpt-4o-2024-13-06")),  # no month 13
        ("gpt-4o-2024-0806", WeightsName("gpt-4o-2024-0806")),  # mixed separators
        ("20240806", WeightsName("20240806")),  # a date alone is the name
        ("-latest", WeightsName("-latest")),
        (":free", WeightsName(":free")),
    ],
)  # fmt: skip
def test_weights_name_shapes(name: str, expected: WeightsName) -> None:
    assert weights_name(name) == expected


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("openai:gpt-4o-2024-08-06", "openai:gpt-4o", True),
        ("openai:gpt-4o", "openai:gpt-4o-2024-08-06", True),
        ("anthropic:claude-x-20250929", "anthropic:claude-x", True),
        ("anthropic:claude-x-latest", "anthropic:claude-x-20250929", True),
        ("or:meta-llama/llama-3.3-70b-instruct:free", "or:meta-llama/llama-3.3-70b-instruct", True),
        ("or:meta-llama/llama-3.3-70b-instruct:free",
         "or:meta-llama/llama-3.3-70b-instruct:nitro", True),
        ("openai:gpt-4o", "openai:gpt-4o", True),
        # two snapshots are two sets of weights
        ("openai:gpt-4o-2024-05-13", "openai:gpt-4o-2024-08-06", False),
        ("openai:gpt-4o-mini-2024-07-18", "openai:gpt-4o", False),
        ("openai:gpt-4o", "azure:gpt-4o", False),  # another provider is another target
        ("openai:gpt-4o-2024-08-06", "azure:gpt-4o", False),
        ("moonshot:kimi-k2", "moonshot:kimi-k2-0905", False),
        ("or:qwen/qwen3-32b", "or:qwen/qwen3-32b:thinking", False),
    ],
)  # fmt: skip
def test_same_weights(a: str, b: str, same: bool) -> None:
    assert same_weights(cand(a), cand(b)) is same
    assert same_weights(cand(b), cand(a)) is same


def test_repeats_failure_names_the_failed_twin() -> None:
    failed = [cand("openai:gpt-4o-2024-08-06"), cand("groq:llama")]
    assert repeats_failure(cand("openai:gpt-4o"), failed) == failed[0]
    assert repeats_failure(cand("openai:gpt-4o-mini"), failed) is None
    assert repeats_failure(cand("openai:gpt-4o"), []) is None


# --------------------------------------------------------------------------- order per mode


@pytest.mark.parametrize("mode", ["route", "pin", "space"])
def test_a_declared_chain_keeps_its_own_order(mode: str) -> None:
    before = chain_of("a:1", "a:2", "b:1")
    out = tried_order(before, mode, {"a", "b"})
    assert out.targets == before
    assert out.reasons == tuple(f"{mode}: position {i} of 3, its own order" for i in (1, 2, 3))


def test_a_scored_chain_is_diversified() -> None:
    assert keys(tried_order(chain_of("a:1", "a:2", "b:1"), "scored", {"a", "b"})) == [
        "a:1", "b:1", "a:2"
    ]  # fmt: skip


def test_newcomers_bring_the_best_target_of_each_lacking_provider() -> None:
    full = chain_of("a:1", "a:2")
    rest = chain_of("a:3", "b:1", "c:1", "b:2", "x:1", "d:1")
    got = newcomers(full, rest, {"a", "b", "c", "d"}, lambda c: c.key == "c:1")
    assert [s.candidate.key for s in got] == ["b:1", "d:1"]  # c:1 is unfit, x not usable
    assert newcomers(full, rest, {"a"}, lambda c: None) == []
