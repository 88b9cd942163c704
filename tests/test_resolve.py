"""Entity resolution: normalization, each hard guard, the index, and precision/recall."""

from __future__ import annotations

import csv
import itertools
import sqlite3
from pathlib import Path

import pytest

from addon.refresh.canonical import Inputs, assemble
from addon.refresh.merge import openrouter_model_id
from addon.refresh.model_names import DateTag, guard_conflicts, parse_name, strip_prefixes
from addon.refresh.resolve import (
    AliasRules,
    AliasRulesError,
    Match,
    Method,
    Miss,
    NameIndex,
    load_alias_rules,
    settle,
)
from addon.refresh.sources.huggingface import HFModel
from addon.refresh.sources.litellm import LiteLLMModel
from addon.refresh.sources.lmarena import ArenaScore
from addon.refresh.sources.local import LocalModel
from addon.refresh.sources.openrouter import OpenRouterModel

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
BUNDLED = REPO / "addon" / "bundled" / "benchmarks.db"
PAIR_FILES = (FIXTURES / "entity_pairs_dev.csv", REPO / "tests" / "data" / "entity_pairs_extra.csv")
COLUMNS = {
    "openrouter_id": "openrouter",
    "arena_name": "lmarena",
    "litellm_key": "litellm",
    "hf_id": "huggingface",
}


# --- normalization -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "base", "org"),
    [
        ("openai/gpt-4o-2024-08-06", "gpt-4o-2024-08-06", "openai"),
        ("deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama-3.1-8b-instruct",
         "meta-llama"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929",
         "anthropic"),
        ("bedrock_mantle/qwen.qwen3-235b-a22b-2507", "qwen3-235b-a22b-2507", "bedrock_mantle"),
        ("openai/gpt-oss-20b:free", "gpt-oss-20b", "openai"),
        ("fireworks_ai/accounts/fireworks/models/qwen2p5-72b", "qwen2.5-72b", "models"),
        ("cloudflare/@cf/meta/llama-3.2-3b-instruct", "llama-3.2-3b-instruct", "meta"),
        ("gpt-4o", "gpt-4o", None),
    ],
)  # fmt: skip
def test_strip_prefixes(raw: str, base: str, org: str | None) -> None:
    assert strip_prefixes(raw)[:2] == (base, org)


@pytest.mark.parametrize(
    ("raw", "names", "versions", "sizes", "tiers", "variants", "soft"),
    [
        ("gpt-4o", ("gpt",), ("4o",), set(), set(), set(), set()),
        ("gpt-4o-mini", ("gpt",), ("4o",), set(), {"mini"}, set(), set()),
        ("gpt-4.1", ("gpt",), ("4", "1"), set(), set(), set(), set()),
        ("anthropic/claude-opus-4.5", ("claude",), ("4", "5"), set(), {"opus"}, set(), set()),
        ("claude-opus-4-5-20251101", ("claude",), ("4", "5"), set(), {"opus"}, set(), set()),
        ("Qwen/Qwen2.5-7B-Instruct", ("qwen",), ("2", "5"), {"7b"}, set(), set(), {"instruct"}),
        ("qwen/qwen-2.5-7b-instruct", ("qwen",), ("2", "5"), {"7b"}, set(), set(), {"instruct"}),
        ("qwen3-30b-a3b", ("qwen",), ("3",), {"30b", "a3b"}, set(), set(), set()),
        ("Meta-Llama-3.1-8B-Instruct", ("llama",), ("3", "1"), {"8b"}, set(), set(),
         {"instruct"}),
        ("mixtral-8x22b-instruct-v0.1", ("mixtral",), ("0", "1"), {"8x22b"}, set(), set(),
         {"instruct"}),
        ("anthropic/claude-3.7-sonnet:thinking", ("claude",), ("3", "7"), set(), {"sonnet"},
         {"thinking"}, set()),
        ("claude-3-7-sonnet-20250219-thinking-32k", ("claude",), ("3", "7"), set(), {"sonnet"},
         {"thinking"}, {"32k"}),
        ("qwen3-235b-a22b-no-thinking", ("qwen",), ("3",), {"235b", "a22b"}, set(),
         {"no-thinking"}, set()),
        ("mimo-v2-flash (non-thinking)", ("mimo",), ("2",), set(), {"flash"}, {"no-thinking"},
         set()),
        ("kimi-k2-0905-preview", ("k2", "kimi"), (), set(), set(), set(), {"preview"}),
        ("gpt-5-chat-latest", ("gpt",), ("5",), set(), {"chat"}, set(), {"latest"}),
        ("gemini-pro-latest", ("gemini",), (), set(), {"pro", "latest"}, set(), set()),
        ("amazon.nova-pro-v1:0", ("nova",), (), set(), {"pro"}, set(), set()),
        ("amazon/nova-pro-v1", ("nova",), (), set(), {"pro"}, set(), {"v1"}),
        ("NVIDIA-Nemotron-3-Super-120B-A12B-FP8", ("nemotron",), ("3",), {"120b", "a12b"},
         {"super"}, set(), {"fp8"}),
        ("lfm-2.5-1.2b-thinking", ("lfm",), ("2", "5"), {"1p2b"}, set(), {"thinking"}, set()),
        ("minimax-m2p7", ("m2", "minimax"), ("7",), set(), set(), set(), set()),
        ("glm-4.6v", ("glm",), ("4", "6v"), set(), set(), set(), set()),
    ],
)  # fmt: skip
def test_parse_name_token_classes(
    raw: str,
    names: tuple[str, ...],
    versions: tuple[str, ...],
    sizes: set[str],
    tiers: set[str],
    variants: set[str],
    soft: set[str],
) -> None:
    sig = parse_name(raw)
    assert (sig.names, sig.versions) == (names, versions)
    assert (set(sig.sizes), set(sig.tiers), set(sig.variants), set(sig.soft)) == (
        sizes,
        tiers,
        variants,
        soft,
    )


@pytest.mark.parametrize(
    ("raw", "date", "revision"),
    [
        ("gpt-4o-2024-08-06", DateTag(2024, 8, 6), None),
        ("claude-sonnet-4-5-20250929", DateTag(2025, 9, 29), None),
        ("qwen3-235b-a22b-2507", DateTag(2025, 7, None), None),
        ("kimi-k2-0905", DateTag(None, 9, 5), None),
        ("gemini-2.5-flash-preview-09-2025", DateTag(2025, 9, None), None),
        ("gemini-2.5-pro-preview-05-06", DateTag(None, 5, 6), None),
        ("ChatGPT-4o-latest (2025-03-26)", DateTag(2025, 3, 26), None),
        ("step-1o-turbo-202506", DateTag(2025, 6, None), None),
        ("vertex_ai/claude-3-5-haiku@20241022", DateTag(2024, 10, 22), None),
        ("gemini-2.0-flash-001", None, "001"),
        ("llama-3.1-405b-instruct", None, None),
        ("groq/llama3-8b-8192", None, None),  # 8192 is a context size, not a date
    ],
)
def test_dates_and_revisions(raw: str, date: DateTag | None, revision: str | None) -> None:
    sig = parse_name(raw)
    assert (sig.date, sig.revision) == (date, revision)


@pytest.mark.parametrize(
    ("a", "b", "compatible"),
    [
        (DateTag(2024, 8, 6), DateTag(None, 8, 6), True),
        (DateTag(2025, 7, None), DateTag(2025, 7, 28), True),
        (DateTag(2024, 8, 6), DateTag(2024, 5, 13), False),
        (DateTag(2025, 9, None), DateTag(2024, 9, None), False),
    ],
)
def test_date_compatibility(a: DateTag, b: DateTag, compatible: bool) -> None:
    assert a.compatible(b) is compatible and b.compatible(a) is compatible


# --- guards: each one alone must keep two models apart -----------------------------------


@pytest.mark.parametrize(
    ("a", "b", "guard"),
    [
        ("gpt-4o", "gpt-4o-mini", "tier"),
        ("o3", "o3-mini", "tier"),
        ("o3", "o3-pro", "tier"),
        ("o3-mini", "o3-pro", "tier"),
        ("gemini-2.5-flash", "gemini-2.5-flash-lite", "tier"),
        ("claude-3-5-sonnet", "claude-3-5-haiku", "tier"),
        ("gpt-5", "gpt-5-chat", "tier"),
        ("grok-3-beta", "grok-3", "tier"),
        ("gemini-pro-latest", "gemini-pro", "tier"),
        ("llama-3.1-8b-instruct", "llama-3.1-70b-instruct", "size"),
        ("qwen3-30b-a3b", "qwen3-32b", "size"),
        ("qwen3-235b-a22b", "qwen3-235b-a3b", "size"),
        ("gemma-3-27b-it", "gemma-3-12b-it", "size"),
        ("gpt-4o", "gpt-4.1", "version"),
        ("gpt-4.1", "gpt-4", "version"),
        ("claude-3.5-sonnet", "claude-3.7-sonnet", "version"),
        ("gemini-2.5-pro", "gemini-2.0-pro", "version"),
        ("deepseek-v3", "deepseek-v3.1", "version"),
        ("kimi-k2", "kimi-k2.5", "version"),
        ("glm-4.6", "glm-4.6v", "version"),
        ("qwen3-next-80b-a3b-thinking", "qwen3-next-80b-a3b-instruct", "variant"),
        ("claude-3.7-sonnet:thinking", "claude-3.7-sonnet", "variant"),
        ("qwen3-235b-a22b-no-thinking", "qwen3-235b-a22b", "variant"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-08-06", "date"),
        ("mistral-large-2407", "mistral-large-2411", "date"),
        ("gemini-1.5-pro-001", "gemini-1.5-pro-002", "revision"),
        ("gpt-4o", "chatgpt-4o-latest", "name"),
        ("gpt-oss-20b", "gpt-oss-safeguard-20b", "tier"),
        ("deepseek-r1", "deepseek-r1-distill-llama", "name"),
        ("command-r-plus", "command-plus", "name"),
        ("llama-3.1-8b", "llama-guard-3.1-8b", "tier"),
    ],
)
def test_each_guard_separates(a: str, b: str, guard: str) -> None:
    problems = guard_conflicts(parse_name(a), parse_name(b))
    assert any(p.startswith(guard) for p in problems), problems


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("anthropic/claude-opus-4.5", "claude-opus-4-5-20251101"),
        ("qwen/qwen-2.5-7b-instruct", "deepinfra/Qwen/Qwen2.5-7B-Instruct"),
        ("meta-llama/llama-3.1-8b-instruct", "deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct"),
        ("moonshotai/kimi-k2-0905", "kimi-k2-0905-preview"),
        ("qwen/qwen3-235b-a22b-2507", "Qwen/Qwen3-235B-A22B-Instruct-2507"),
        ("openai/gpt-5-chat", "gpt-5-chat-latest"),
        ("amazon/nova-pro-v1", "amazon.nova-pro-v1:0"),
        ("z-ai/glm-4.6", "zai-org/GLM-4.6"),
    ],
)
def test_guards_agree_on_same_model(a: str, b: str) -> None:
    assert guard_conflicts(parse_name(a), parse_name(b)) == ()


# --- the index -------------------------------------------------------------------------------


def _index(*entries: tuple[str, str, str]) -> NameIndex:
    index = NameIndex()
    for model_id, name, origin in entries:
        index.add(model_id, name, origin)
    return index


def test_index_methods() -> None:
    index = _index(
        ("openai/gpt-4o", "openai/gpt-4o", "id"),
        ("openai/gpt-4o-mini", "openai/gpt-4o-mini", "id"),
        ("deepseek/deepseek-chat", "deepseek/deepseek-chat", "id"),
        ("deepseek/deepseek-chat", "deepseek-ai/DeepSeek-V3", "hf"),
        ("meta-llama/llama-3.1-8b-instruct", "meta-llama/llama-3.1-8b-instruct", "id"),
    )
    cases = {
        "azure/gpt-4o": ("openai/gpt-4o", Method.EXACT, 100.0),
        "deepseek-v3": ("deepseek/deepseek-chat", Method.EVIDENCE, 100.0),
        "Meta-Llama-3.1-8B-Instruct": ("meta-llama/llama-3.1-8b-instruct", Method.NORMALIZED, 100),
        "cerebras/llama-3.1-8b": ("meta-llama/llama-3.1-8b-instruct", Method.FUZZY, 97.0),
    }
    for name, (model_id, method, score) in cases.items():
        result = index.resolve("litellm", name)
        assert isinstance(result, Match), result
        assert (result.model_id, result.method, result.score) == (model_id, method, score)
    miss = index.resolve("litellm", "gpt-4o-nano")
    assert isinstance(miss, Miss) and not miss.uncertain
    assert miss.best_candidate is not None and "tier" in miss.reason


def test_undated_and_dated_names() -> None:
    index = _index(
        ("openai/o3", "openai/o3", "id"),
        ("mistralai/mistral-large", "mistralai/mistral-large", "id"),
        ("mistralai/mistral-large-2407", "mistralai/mistral-large-2407", "id"),
        ("mistralai/mistral-large-2411", "mistralai/mistral-large-2411", "id"),
        ("x/foo-2024-01-01", "x/foo-2024-01-01", "id"),
        ("x/foo-2024-06-01", "x/foo-2024-06-01", "id"),
    )
    dated = index.resolve("lmarena", "o3-2025-04-16")
    assert isinstance(dated, Match) and dated.model_id == "openai/o3" and dated.one_sided
    # a dated name never takes an undated model whose family has other dates, and an undated
    # name never takes a dated release: each is a model of its own (uncertain=False)
    family = index.resolve("lmarena", "mistral-large-2402")
    assert isinstance(family, Miss) and not family.uncertain
    assert "other dated versions (mistralai/mistral-large-2407" in family.reason
    undated = index.resolve("litellm", "foo")
    assert isinstance(undated, Miss) and not undated.uncertain
    assert undated.best_candidate == "x/foo-2024-01-01"
    assert "undated name vs the dated release x/foo-2024-01-01" in undated.reason
    exact_date = index.resolve("litellm", "x/foo-2024-06-01")
    assert isinstance(exact_date, Match) and exact_date.model_id == "x/foo-2024-06-01"


def test_never_rule_and_settle() -> None:
    index = _index(("openai/gpt-audio-mini", "openai/gpt-audio-mini", "id"))
    assert isinstance(index.resolve("litellm", "gpt-audio-mini-2025-10-06"), Match)
    forbidden = index.resolve("litellm", "gpt-audio-mini", frozenset({"openai/gpt-audio-mini"}))
    assert isinstance(forbidden, Miss)
    results = [
        index.resolve("litellm", n)
        for n in ("gpt-audio-mini-2025-10-06", "gpt-audio-mini-2025-12-15")
    ]
    settled = settle(index, results)
    assert all(isinstance(r, Miss) and not r.uncertain for r in settled)
    assert "2025-12-15" in settled[0].reason  # type: ignore[union-attr]
    alone = settle(index, results[:1])
    assert isinstance(alone[0], Match)


@pytest.mark.parametrize(
    ("openrouter_id", "model_id"),
    [
        ("openai/gpt-oss-20b:free", "openai/gpt-oss-20b"),
        ("z-ai/glm-4.6:exacto", "z-ai/glm-4.6"),
        ("openai/gpt-4o:extended", "openai/gpt-4o"),
        ("anthropic/claude-3.7-sonnet:thinking", "anthropic/claude-3.7-sonnet:thinking"),
        ("OpenAI/GPT-4o", "openai/gpt-4o"),
    ],
)
def test_openrouter_routing_variants(openrouter_id: str, model_id: str) -> None:
    assert openrouter_model_id(openrouter_id) == model_id


# --- assembly rules on small inputs --------------------------------------------------------


def _or(model_id: str, hf: str | None = None) -> OpenRouterModel:
    return OpenRouterModel(
        model_id, model_id, None, hf, 1000, 100, 1.0, 2.0, None, True, False, False, False
    )


def _lite(key: str, provider: str = "openai", price: float | None = 1.0) -> LiteLLMModel:
    pmid = key.removeprefix(provider + "/")
    return LiteLLMModel(key, provider, pmid, "chat", price, price, None, 100, 10, None, None, None, None)  # fmt: skip


def test_assembly_overrides_never_and_new_models(tmp_path: Path) -> None:
    rules_file = tmp_path / "aliases.yaml"
    rules_file.write_text(
        "overrides:\n  - {source: lmarena, name: gpt-5-high, model: openai/gpt-5}\n"
        "never:\n  - {source: litellm, name: azure/gpt-5, model: openai/gpt-5}\n"
    )
    inputs = Inputs(
        openrouter=(_or("openai/gpt-5"), _or("openai/gpt-5:free"), _or("qwen/qwen3-32b", "Qwen/Qwen3-32B")),
        litellm=(_lite("gpt-5"), _lite("azure/gpt-5", "azure"), _lite("anthropic/claude-x-9", "anthropic"),
                 _lite("claude-x-9", "anthropic"), _lite("deepinfra/Qwen/Qwen3-32B", "deepinfra")),
        arena=(ArenaScore("gpt-5-high", "full", 1400.0, 1390.0, 1410.0),
               ArenaScore("qwen3-32b", "full", 1300.0, None, None),
               ArenaScore("qwen3-32b", "coding", 1310.0, None, None)),
        huggingface=(HFModel("Qwen/Qwen3-32B", "apache-2.0", 32_000_000_000, False, None, None),),
        rules=load_alias_rules(rules_file),
    )  # fmt: skip
    result = assemble(inputs)
    aliases = {(a.source, a.source_name): (a.model_id, a.method) for a in result.aliases}
    assert aliases[("lmarena", "gpt-5-high")] == ("openai/gpt-5", "manual")
    assert aliases[("openrouter", "openai/gpt-5:free")] == ("openai/gpt-5", "normalized")
    assert aliases[("litellm", "gpt-5")] == ("openai/gpt-5", "exact")
    assert aliases[("litellm", "azure/gpt-5")][0] != "openai/gpt-5"  # never rule
    assert aliases[("litellm", "claude-x-9")] == aliases[("litellm", "anthropic/claude-x-9")]
    assert aliases[("huggingface", "Qwen/Qwen3-32B")] == ("qwen/qwen3-32b", "evidence")
    models = {m.id: m for m in result.models}
    assert models["openai/gpt-5"].quality == 1400.0
    assert models["qwen/qwen3-32b"].params_b == 32.0 and models["qwen/qwen3-32b"].open_weights
    assert {c.category for c in result.categories if c.model_id == "qwen/qwen3-32b"} == {
        "full",
        "coding",
    }
    offerings = {(o.provider, o.provider_model_id): o.model_id for o in result.offerings}
    assert offerings[("openrouter", "openai/gpt-5:free")] == "openai/gpt-5"
    assert offerings[("deepinfra", "Qwen/Qwen3-32B")] == "qwen/qwen3-32b"


def test_local_models_match_are_pinned_or_stand_alone() -> None:
    rules = AliasRules.model_validate(
        {"overrides": [{"source": "local", "name": "llama3.1:8b", "model": "meta-llama/llama-3.1-8b-instruct"}]}
    )  # fmt: skip
    inputs = Inputs(
        openrouter=(_or("meta-llama/llama-3.1-8b-instruct"), _or("qwen/qwen3-32b", "Qwen/Qwen3-32B")),
        litellm=(_lite("ollama/my-tune", "ollama", 0.0),),
        local=(LocalModel("ollama", "llama3.1:8b", None, None),
               LocalModel("ollama", "Qwen/Qwen3-32B", None, 40960),
               LocalModel("ollama", "my-tune", None, None),
               LocalModel("vllm", "my-tune", None, None)),
        rules=rules,
    )  # fmt: skip
    result = assemble(inputs)
    offerings = {(o.provider, o.provider_model_id): o for o in result.offerings}
    assert offerings[("ollama", "llama3.1:8b")].model_id == "meta-llama/llama-3.1-8b-instruct"
    qwen = offerings[("ollama", "Qwen/Qwen3-32B")]
    assert (qwen.model_id, qwen.input_per_mtok, qwen.output_per_mtok, qwen.context_tokens) == (
        "qwen/qwen3-32b", 0.0, 0.0, 40960,
    )  # fmt: skip
    # the server's own list replaces a price map's entry for the same (provider, id)
    assert offerings[("ollama", "my-tune")].source == "local"
    assert offerings[("ollama", "my-tune")].model_id == offerings[("vllm", "my-tune")].model_id
    aliases = {(a.source, a.source_name): (a.model_id, a.method) for a in result.aliases}
    assert aliases[("local", "llama3.1:8b")] == ("meta-llama/llama-3.1-8b-instruct", "manual")
    assert result.rows_by_source["local"] == 4 and result.fetched["local"] == 4


def test_override_to_unknown_model_is_reported(tmp_path: Path) -> None:
    rules = AliasRules.model_validate(
        {"overrides": [{"source": "lmarena", "name": "x-1", "model": "nobody/x"}]}
    )
    result = assemble(Inputs(arena=(ArenaScore("x-1", "full", 1.0, None, None),), rules=rules))
    (miss,) = result.unmatched
    assert miss.best_candidate == "nobody/x" and "rules/aliases.yaml" in miss.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("overrides: [\n", "aliases.yaml:2:1: invalid YAML"),
        ("overides: []\n", "overides: Extra inputs are not permitted"),
        ("overrides:\n  - {source: openrouter, name: a, model: b}\n", "overrides.0.source"),
        ("overrides:\n  - {source: lmarena, name: a}\n", "overrides.0.model: Field required"),
        ("overrides:\n  - {source: lmarena, name: a, model: b}\n  - {source: lmarena, name: a, "
         "model: c}\n", "lists lmarena:a twice"),
    ],
)  # fmt: skip
def test_alias_rules_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text(text)
    with pytest.raises(AliasRulesError) as info:
        load_alias_rules(path)
    assert str(info.value).startswith(str(path)) and expected in str(info.value)


def test_shipped_alias_rules_load() -> None:
    assert load_alias_rules(REPO / "rules" / "aliases.yaml") == AliasRules()


# --- precision / recall over the labelled pairs ---------------------------------------------


@pytest.fixture(scope="module")
def built_db() -> Path:
    """The shipped DB: tests/test_benchmarks.py checks it equals a fresh build of the shared
    snapshots by the current code (`make bundle`), so these figures are the code's figures."""
    return BUNDLED


def _labelled_names() -> list[tuple[tuple[str, str], tuple[str, int]]]:
    names = []
    for path in PAIR_FILES:
        with path.open(newline="") as handle:
            for row_no, row in enumerate(csv.DictReader(handle)):
                for column, source in COLUMNS.items():
                    for name in filter(None, (row.get(column) or "").split("|")):
                        names.append(((source, name.strip()), (path.name, row_no)))
    return names


def test_precision_and_recall_over_labelled_pairs(built_db: Path) -> None:
    with sqlite3.connect(built_db) as conn:
        aliases = {(s, n): m for s, n, m in conn.execute("SELECT source, source_name, model_id FROM aliases")}  # fmt: skip
    conn.close()
    names = _labelled_names()
    assert len({key for key, _ in names}) == len(names), "a name is labelled twice"
    tp = fp = fn = 0
    errors = []
    for (a, group_a), (b, group_b) in itertools.combinations(names, 2):
        same = group_a == group_b
        predicted = aliases.get(a) is not None and aliases.get(a) == aliases.get(b)
        tp += same and predicted
        if predicted and not same:
            fp += 1
            errors.append(f"FP {a} ~ {b} -> {aliases[a]}")
        elif same and not predicted:
            fn += 1
            errors.append(f"FN {a} -> {aliases.get(a)}, {b} -> {aliases.get(b)}")
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    summary = f"precision={precision:.4f} recall={recall:.4f} (tp={tp} fp={fp} fn={fn})"
    print(f"entity resolution over {len(names)} labelled names: {summary}")  # pytest -s / -rP
    assert tp + fn > 200, summary
    assert precision >= 0.99 and recall >= 0.95, summary + "\n" + "\n".join(errors[:40])
