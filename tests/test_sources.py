"""Source parsers against the real snapshots in ../shared/fixtures/sources and edge cases."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from addon.errors import ConfigError
from addon.refresh.sources import (
    SourceFormatError,
    huggingface,
    litellm,
    lmarena,
    local,
    openrouter,
    per_million,
    schema,
    to_float,
)

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO.parent / "shared" / "fixtures" / "sources"
OR_NEW = "openrouter_models_2026-05-22.json"
OR_OLD = "openrouter_models_2025-12-02.json"
LITELLM = "litellm_model_prices_2026-11-23.json"


def _read(name: str) -> bytes:
    return (SOURCES / name).read_bytes()


@pytest.fixture(scope="module")
def or_new() -> openrouter.ParseResult[openrouter.OpenRouterModel]:
    return openrouter.parse(_read(OR_NEW), OR_NEW)


@pytest.fixture(scope="module")
def lite() -> litellm.ParseResult[litellm.LiteLLMModel]:
    return litellm.parse(_read(LITELLM), LITELLM)


# --- prices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0000025", 2.5),
        ("0.00001", 10.0),
        ("0", 0.0),
        ("0.00000008333333333333334", 0.08333333333),
        (2.5e-06, 2.5),
        (1e-05, 10.0),
        (3.75e-08, 0.0375),
        (0, 0.0),
        ("-1", -1_000_000.0),
        (None, None),
        ("abc", None),
        ("", None),
        (True, None),
        ("NaN", None),
    ],
)
def test_per_million_is_exact_and_rounded(value: object, expected: float | None) -> None:
    assert to_float(per_million(value)) == expected


def test_per_million_keeps_decimal_exactness() -> None:
    assert per_million("0.0000001") == Decimal("0.1000000")


# --- OpenRouter --------------------------------------------------------------------------


def test_openrouter_newest_snapshot(or_new: openrouter.ParseResult) -> None:
    ids = {r.id for r in or_new.records}
    assert len(or_new.records) == 345
    assert dict(or_new.skipped) == {"floating alias (~id)": 8, "pseudo-model (price -1)": 3}
    assert or_new.warnings == ()
    assert {"openrouter/auto", "openrouter/pareto-code", "openrouter/bodybuilder"}.isdisjoint(ids)
    assert not any(i.startswith("~") for i in ids)
    assert sum(1 for i in ids if i.endswith(":free")) == 24


def test_openrouter_record_fields(or_new: openrouter.ParseResult) -> None:
    rec = next(r for r in or_new.records if r.id == "openai/gpt-4o-2024-08-06")
    assert (rec.input_per_mtok, rec.output_per_mtok, rec.cached_input_per_mtok) == (2.5, 10, 1.25)
    assert (rec.context_length, rec.max_completion_tokens) == (128000, 16384)
    assert rec.hugging_face_id is None
    assert (rec.supports_tools, rec.supports_vision, rec.supports_json_schema) == (True,) * 3
    assert rec.supports_reasoning is False
    thinking = next(r for r in or_new.records if r.id == "baidu/ernie-4.5-21b-a3b-thinking")
    assert thinking.supports_reasoning is True
    assert thinking.hugging_face_id == "baidu/ERNIE-4.5-21B-A3B-Thinking"
    free = next(r for r in or_new.records if r.id == "openai/gpt-oss-20b:free")
    assert (free.input_per_mtok, free.output_per_mtok) == (0.0, 0.0)


def test_openrouter_empty_and_null_hf_ids_become_none(or_new: openrouter.ParseResult) -> None:
    raw = json.loads(_read(OR_NEW))["data"]
    empty = {r["id"] for r in raw if r["hugging_face_id"] == ""}
    null = {r["id"] for r in raw if r["hugging_face_id"] is None}
    assert len(empty) == 127 and len(null) == 56
    by_id = {r.id: r for r in or_new.records}
    assert all(by_id[i].hugging_face_id is None for i in (empty | null) if i in by_id)


def test_openrouter_older_snapshot_schema_drift() -> None:
    result = openrouter.parse(_read(OR_OLD), OR_OLD)
    assert len(result.records) == 334  # 335 minus openrouter/auto
    assert result.warnings == ()
    rec = next(r for r in result.records if r.id == "anthropic/claude-3.7-sonnet:thinking")
    assert rec.supports_reasoning and rec.input_per_mtok == 3.0


def _or_doc(*records: object) -> bytes:
    return json.dumps({"data": list(records)}).encode()


_GOOD = {"id": "x/y", "pricing": {"prompt": "0.000001", "completion": "0.000002"}}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("not a dict", "not an object"),
        ({"pricing": _GOOD["pricing"]}, "missing id"),
        ({"id": "x/y"}, "missing pricing"),
        ({"id": "x/y", "pricing": {"prompt": "cheap", "completion": "0"}}, "unreadable"),
        ({"id": "x/y", "pricing": {"prompt": "0.1"}}, "unreadable"),
    ],
)
def test_openrouter_bad_record_is_skipped_with_warning(record: object, reason: str) -> None:
    result = openrouter.parse(_or_doc(record, _GOOD), "or.json")
    assert [r.id for r in result.records] == ["x/y"]
    assert len(result.warnings) == 1
    assert reason in result.warnings[0].reason
    assert str(result.warnings[0]).startswith("or.json: ")


def test_openrouter_unknown_fields_are_ignored() -> None:
    record = {**_GOOD, "brand_new_field": {"a": 1}, "architecture": None, "top_provider": 7}
    (rec,) = openrouter.parse(_or_doc(record), "or.json").records
    assert rec.context_length is None and rec.supports_vision is False


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b'{"data": [', "not valid JSON"),
        (b"[1, 2]", '"data" list'),
        (b'{"data": {}}', '"data" list'),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_openrouter_unreadable_file_raises_naming_file(raw: bytes, problem: str) -> None:
    with pytest.raises(SourceFormatError) as info:
        openrouter.parse(raw, "openrouter_models_2030-01-01.json")
    message = str(info.value)
    assert message.startswith("openrouter_models_2030-01-01.json: ")
    assert problem in message and " — " in message  # file, problem, remedy


# --- LiteLLM ------------------------------------------------------------------------------


def test_litellm_keeps_chat_entries_only(lite: litellm.ParseResult) -> None:
    keys = {r.key for r in lite.records}
    skipped = dict(lite.skipped)
    assert "sample_spec" not in keys and skipped["sample_spec (documentation)"] == 1
    assert skipped["mode embedding"] == 153
    assert skipped["fine-tune template (ft:)"] > 0
    assert {r.mode for r in lite.records} == {"chat", "responses"}
    assert "text-embedding-3-small" not in keys
    assert "chatgpt/gpt-5.4" in keys  # responses + /v1/chat/completions
    assert "azure/codex-mini" not in keys  # responses only
    assert lite.warnings == ()


@pytest.mark.parametrize(
    ("key", "provider", "expected"),
    [
        ("groq/openai/gpt-oss-20b", "groq", "openai/gpt-oss-20b"),
        ("gpt-4o", "openai", "gpt-4o"),
        ("gemini/gemini-2.5-pro", "gemini", "gemini-2.5-pro"),
        ("vertex_ai/claude-3-5-haiku", "vertex_ai-anthropic_models", "vertex_ai/claude-3-5-haiku"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock_converse",
         "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ],
)  # fmt: skip
def test_litellm_provider_model_id(key: str, provider: str, expected: str) -> None:
    assert litellm.provider_model_id(key, provider) == expected


def test_litellm_record_fields(lite: litellm.ParseResult) -> None:
    by_key = {r.key: r for r in lite.records}
    rec = by_key["gpt-4o-2024-08-06"]
    assert (rec.provider, rec.provider_model_id) == ("openai", "gpt-4o-2024-08-06")
    assert (rec.input_per_mtok, rec.output_per_mtok, rec.cached_input_per_mtok) == (2.5, 10, 1.25)
    assert (rec.context_tokens, rec.max_output_tokens) == (128000, 16384)
    assert (rec.supports_tools, rec.supports_vision, rec.supports_json_schema) == (True,) * 3
    assert rec.supports_reasoning is None  # flag absent: unknown, not False
    groq = by_key["groq/openai/gpt-oss-20b"]
    assert (groq.input_per_mtok, groq.output_per_mtok, groq.cached_input_per_mtok) == (
        0.075,
        0.3,
        0.0375,
    )
    assert by_key["github_copilot/gpt-4o"].input_per_mtok is None  # unknown price stays NULL


def test_litellm_bad_entries_warn_and_bad_file_fails() -> None:
    doc = {"a": {"mode": "chat"}, "b": "nope", "c": {"mode": "chat", "litellm_provider": "p"}}
    result = litellm.parse(json.dumps(doc), "prices.json")
    assert [r.key for r in result.records] == ["c"]
    assert sorted(w.reason for w in result.warnings) == [
        "missing litellm_provider",
        "spec is not an object",
    ]
    with pytest.raises(SourceFormatError, match=re.escape("prices.json: expected a JSON object")):
        litellm.parse(b"[]", "prices.json")


# --- LMArena / LMSYS ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "full_models", "categories"),
    [
        ("lmarena_leaderboard_text_2025-12-11.json", 282, 29),
        ("lmarena_leaderboard_text_2026-07-14.json", 369, 29),
    ],
)
def test_arena_json(name: str, full_models: int, categories: int) -> None:
    result = lmarena.parse(_read(name), name)
    assert result.warnings == ()
    assert sum(1 for r in result.records if r.category == "full") == full_models
    assert len({r.category for r in result.records}) == categories


def test_arena_json_values() -> None:
    name = "lmarena_leaderboard_text_2025-12-11.json"
    result = lmarena.parse(_read(name), name)
    top = next(r for r in result.records if r.category == "full" and r.model == "gemini-3-pro")
    assert top.rating == pytest.approx(1486.6027, abs=1e-3)
    assert top.rating_lo == pytest.approx(1480.4027, abs=1e-3)
    assert top.rating_hi == pytest.approx(1492.8027, abs=1e-3)


def test_arena_json_bad_entries() -> None:
    doc = {"full": {"a": {"rating": "high"}, "b": {"rating": 1200}, "c": 5}}
    result = lmarena.parse(json.dumps(doc), "arena.json")
    assert [r.model for r in result.records] == ["b"]
    assert result.records[0].rating_lo is None
    assert len(result.warnings) == 2
    with pytest.raises(SourceFormatError, match=re.escape("arena.json: expected")):
        lmarena.parse(b'{"full": []}', "arena.json")


def test_arena_csv_display_names() -> None:
    name = "lmarena_leaderboard_text_2025-08-04.csv"
    result = lmarena.parse(_read(name), name)
    assert len(result.records) == 266 and result.warnings == ()
    by_model = {r.model: r for r in result.records}
    top = by_model["Gemini-2.5-Pro"]
    assert (top.rating, top.rating_lo, top.rating_hi, top.votes) == (1470, 1465, 1475, 26019)
    assert (top.organization, top.license, top.category) == ("Google", "Proprietary", "full")
    assert "GPT-4o-2024-08-06" in by_model and "Meta-Llama-3.1-8B-Instruct" in by_model


def test_arena_csv_bad_rows_and_header() -> None:
    text = "rank,model,arena_score,95_pct_ci\n1,A,1300,+4/-6\n2,,1200,\n3,B,n/a,\n"
    result = lmarena.parse(text, "board.csv")
    (rec,) = result.records
    assert (rec.model, rec.rating_lo, rec.rating_hi) == ("A", 1294, 1304)
    assert [w.record for w in result.warnings] == ["board.csv:3", "board.csv:4"]
    with pytest.raises(
        SourceFormatError, match=re.escape("board.csv: CSV header lacks arena_score")
    ):
        lmarena.parse("rank,model\n1,A\n", "board.csv")


def test_lmsys_model_table() -> None:
    name = "lmsys_leaderboard_table_2025-05-11.csv"
    result = lmarena.parse_model_table(_read(name), name)
    assert len(result.records) == 293 and result.warnings == ()
    by_key = {r.key: r for r in result.records}
    assert by_key["gpt-4o-2024-08-06"].license == "Proprietary"
    assert by_key["gpt-4o-2024-08-06"].display_name == "GPT-4o-2024-08-06"
    assert by_key["deepseek-v3"].organization == "DeepSeek"


# --- Hugging Face ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "license_", "params_b", "gated"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3.1", 8.03, True),
        ("Qwen/Qwen3-32B", "apache-2.0", 32.762, False),
        ("openai/gpt-oss-20b", "apache-2.0", 21.512, False),  # BF16 + U8
        ("baidu/ERNIE-4.5-21B-A3B-Thinking", "apache-2.0", 21.825, False),  # F32 + BF16
        ("google/gemma-3-1b-it", "gemma", 1.0, True),
        ("mistralai/Magistral-Small-2509", "apache-2.0", 24.011, False),
    ],
)
def test_huggingface_files(repo: str, license_: str, params_b: float, gated: bool) -> None:
    name = f"hf_model_{repo.replace('/', '__')}.json"
    result = huggingface.parse(_read(name), name)
    (rec,) = result.records
    assert (rec.id, rec.license, rec.params_b, rec.gated) == (repo, license_, params_b, gated)


def test_huggingface_optional_fields_and_errors() -> None:
    name = "hf_model_mistralai__Magistral-Small-2509.json"
    (rec,) = huggingface.parse(_read(name), name).records
    assert rec.pipeline_tag is None and rec.model_type == "mistral3"
    tagged = huggingface.parse(json.dumps({"id": "a/b", "tags": ["license:mit"]}), "f.json")
    assert tagged.records[0].license == "mit" and tagged.records[0].params is None
    missing = huggingface.parse(b'{"sha": "x"}', "hf.json")
    assert missing.records == () and missing.warnings[0].reason == "missing repo id"
    with pytest.raises(SourceFormatError, match=re.escape("hf.json: expected the JSON object")):
        huggingface.parse(b"[]", "hf.json")


# --- local providers' /v1/models --------------------------------------------------------------


def test_local_models_list_shapes() -> None:
    raw = json.dumps({"object": "list", "data": [
        {"id": "llama3.1:8b", "object": "model", "owned_by": "library"},
        {"id": "Qwen/Qwen3-32B", "max_model_len": 32768},
        {"id": "phi-4.gguf", "meta": {"n_ctx_train": 16384}},
        {"object": "model"},
        "nonsense",
    ]})  # fmt: skip
    result = local.parse(raw, "local_models_lab.json", "lab")
    assert [(r.provider, r.id, r.context_tokens) for r in result.records] == [
        ("lab", "llama3.1:8b", None), ("lab", "Qwen/Qwen3-32B", 32768), ("lab", "phi-4.gguf", 16384),
    ]  # fmt: skip
    assert [str(w) for w in result.warnings] == [
        "local_models_lab.json: data[3]: missing id", "local_models_lab.json: data[4]: missing id",
    ]  # fmt: skip
    with pytest.raises(SourceFormatError, match="check that provider lab's base_url ends in /v1"):
        local.parse(b'{"models": []}', "local_models_lab.json", "lab")


# --- rules/sources.yaml ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("24h", 86400), ("1d", 86400),
     ("0.5h", 1800), (45, 45), ("2 h", 7200)],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert schema.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "-1h", "0m", "1h junk", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match=r"write it like 30m, 1h or 24h|positive duration"):
        schema.parse_duration(text)


def test_format_duration() -> None:
    assert [schema.format_duration(s) for s in (86400, 3600, 5400, 90, 2.5)] == [
        "1d", "1h", "90m", "90s", "2.5s",
    ]  # fmt: skip


def test_shipped_sources_file_matches_the_defaults() -> None:
    shipped = schema.load_sources(REPO / "rules" / "sources.yaml", required=True)
    defaults = schema.SourcesFile()
    assert shipped.allowed_hosts == defaults.allowed_hosts
    assert shipped.fetch == defaults.fetch and shipped.jitter == defaults.jitter
    assert {s.kind: (s.url, s.interval_s, s.enabled) for s in shipped.sources} == {
        s.kind: (s.url, s.interval_s, s.enabled) for s in defaults.sources
    }
    assert {s.kind: s.interval_s for s in defaults.sources} == {
        "openrouter": 3600, "lmarena": 86400, "litellm": 86400, "huggingface": 86400,
        "local": 86400,
    }  # fmt: skip
    assert schema.load_sources(REPO / "rules" / "no-such-file.yaml") == defaults


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sources:\n  - kind: openrouter\n    url: https://o.test/m\n    repos: [a/b]\n",
         "sources.yaml:2:5 sources.0: `repos` applies to kind huggingface only — remove it "
         "from this openrouter source"),
        ("sources:\n  - kind: lmarena\n", "sources.yaml:2:5 sources.0: kind lmarena needs a url "
         "— add `url: https://...`"),
        ("sources:\n  - kind: local\n    url: http://127.0.0.1:11434/v1\n",
         "sources.yaml:2:5 sources.0: kind local takes no url"),
        ("sources:\n  - kind: huggingface\n    url: https://huggingface.co/api/models/\n",
         "sources.yaml:2:5 sources.0: the huggingface url must contain {repo}"),
        ("sources:\n  - {kind: huggingface, url: 'https://h.test/{repo}', repos: [nope]}\n",
         "sources.0.repos: 'nope' is not a Hugging Face repo id — write it like Qwen/Qwen3-32B"),
        ("sources:\n  - {kind: arxiv, url: 'https://a.test/x'}\n", "sources.0.kind: Input should "
         "be 'openrouter', 'lmarena', 'litellm', 'huggingface' or 'local'"),
        ("sources:\n  - {kind: local}\n  - {kind: local}\n",
         "sources: kind 'local' is listed twice — keep one entry per kind"),
        ("sources:\n  - {kind: openrouter, url: 'https://o.test/m', interval: soon}\n",
         "sources.yaml:2:59 sources.0.interval: 'soon' is not a duration — write it like 30m"),
        ("allowed_hosts: [https://openrouter.ai/]\n",
         "allowed_hosts: 'https://openrouter.ai/' is not a host name — write it like openrouter.ai"),
        ("fetch: {retries: 3}\n",
         "sources.yaml:1:9 fetch.retries: unknown key — allowed here: connect_timeout_s"),
        ("jitter: 2\n", "sources.yaml:1:9 jitter: Input should be less than or equal to 0.5"),
    ],
)  # fmt: skip
def test_sources_file_errors_are_located(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        schema.load_sources(path)
    assert expected in str(info.value)
    assert str(info.value).startswith(str(path))
