"""Name matching that generalizes: the name shapes of real catalogs, the dated/undated rule and
the merges it refuses, older snapshots, LMSYS display names, `orchestrator resolve`, and the
precision/recall floors on the labelled pairs (the holdout pairs were never tuned on)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from addon import cli
from addon.refresh import ingest, snapshots
from addon.refresh.canonical import Inputs, assemble
from addon.refresh.model_names import DateTag, guard_conflicts, parse_name
from addon.refresh.name_eval import aliases_of, score_pairs
from addon.refresh.resolve import Match, Method, Miss, NameIndex
from addon.refresh.sources.lmarena import ArenaModelInfo, ArenaScore
from addon.refresh.sources.openrouter import OpenRouterModel
from addon.store.benchmarks import BUNDLED_DB
from tests.test_routing import write_tree

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO.parent / "shared" / "fixtures" / "sources"
PAIRS = {
    "dev": REPO.parent / "shared" / "fixtures" / "entity_pairs_dev.csv",
    "extra": REPO / "tests" / "data" / "entity_pairs_extra.csv",
    "holdout": REPO / "tests" / "data" / "entity_pairs_holdout.csv",
}


# --------------------------------------------------------------------------- name shapes


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # provider prefixes
        ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", "claude-3-7-sonnet-20250219"),
        ("deepinfra/Qwen/Qwen3-32B", "qwen/qwen3-32b"),
        ("fireworks_ai/accounts/fireworks/models/llama-v3p1-8b-instruct",
         "meta-llama/llama-3.1-8b-instruct"),
        ("bedrock/us-east-1/mistral.mixtral-8x7b-instruct-v0:1", "mixtral-8x7b-instruct-v0.1"),
        ("vertex_ai/gemini-2.5-pro", "google/gemini-2.5-pro"),
        ("azure/gpt-4o", "openai/gpt-4o"),
        # routing suffix
        ("openai/gpt-oss-20b:free", "openai/gpt-oss-20b"),
        # Bedrock API versions
        ("amazon.nova-pro-v1:0", "amazon/nova-pro-v1"),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet-20241022"),
        ("mistral.mistral-7b-instruct-v0:2", "mistralai/mistral-7b-instruct-v0.2"),
        # @date (Vertex), with and without the v2 release marker
        ("vertex_ai/claude-3-5-haiku@20241022", "claude-3-5-haiku-20241022"),
        ("vertex_ai/claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet-20241022"),
        # version dots
        ("qwen2p5-72b-instruct", "Qwen2.5-72B-Instruct"),
        ("ovhcloud/Meta-Llama-3_1-70B-Instruct", "meta-llama/llama-3.1-70b-instruct"),
        ("claude-3_5-sonnet", "claude-3.5-sonnet"),
        # leaderboard display names
        ("ChatGPT-4o-latest (2025-03-26)", "chatgpt-4o-latest-20250326"),
        ("Claude 3.5 Sonnet (20241022)", "claude-3-5-sonnet-20241022"),
        ("Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b-instruct"),
    ],
)  # fmt: skip
def test_name_shapes_denote_the_same_model(a: str, b: str) -> None:
    sa, sb = parse_name(a), parse_name(b)
    assert guard_conflicts(sa, sb) == ()
    assert sa.date == sb.date or sa.date is None or sb.date is None


@pytest.mark.parametrize(
    ("a", "b", "guard"),
    [
        ("mistral.mistral-7b-instruct-v0:2", "mistralai/mistral-7b-instruct-v0.3", "version"),
        ("mistral.mistral-7b-instruct-v0:2", "mistralai/mistral-7b-instruct", "version"),
        ("vertex_ai/claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet-20240620", "date"),
        ("qwen2p5-72b-instruct", "qwen2-72b-instruct", "version"),
    ],
)
def test_name_shapes_keep_their_versions(a: str, b: str, guard: str) -> None:
    problems = guard_conflicts(parse_name(a), parse_name(b))
    assert any(p.startswith(guard) for p in problems), problems


@pytest.mark.parametrize(
    ("release", "listing", "fits"),
    [
        (DateTag(2025, 11, 1), DateTag(2025, 11, 24), True),  # claude-opus-4.5's slug
        (DateTag(2025, 5, 14), DateTag(2025, 5, 22), True),
        (DateTag(2025, 4, 16), DateTag(2025, 4, 16), True),
        (DateTag(None, 9, 19), DateTag(2025, 1, 25), False),  # qwen-max-0919 vs 2025-01-25
        (DateTag(2026, 2, 10), DateTag(2025, 12, 11), False),  # released after the listing
        (DateTag(2025, 7, None), DateTag(2025, 8, 10), True),
        (DateTag(2025, 2, 30), DateTag(2025, 3, 1), False),  # no such day: no crash
    ],
)
def test_listing_lag(release: DateTag, listing: DateTag, fits: bool) -> None:
    assert release.listed_by(listing) is fits


# --------------------------------------------------------------------------- refused merges


def _index(*names: tuple[str, str]) -> NameIndex:
    index = NameIndex()
    for model_id, name in names:
        index.add(model_id, name, "id")
    return index


@pytest.mark.parametrize(
    ("name", "dated"),
    [
        ("azure/command-r-plus", "cohere/command-r-plus-08-2024"),
        ("command-r", "cohere/command-r-08-2024"),
        ("azure_ai/ministral-3b", "mistralai/ministral-3b-2512"),
        ("vercel_ai_gateway/mistral/ministral-8b", "mistralai/ministral-8b-2512"),
        ("qwen3.5-flash", "qwen/qwen3.5-flash-02-23"),
    ],
)
def test_an_undated_name_never_takes_a_dated_release(name: str, dated: str) -> None:
    """These pairs were merged before: the undated name is an older release."""
    result = _index((dated, dated)).resolve("litellm", name)
    assert isinstance(result, Miss) and not result.uncertain  # a model of its own
    assert result.best_candidate == dated and "undated name vs the dated release" in result.reason


def test_a_documented_alias_lets_an_undated_name_in() -> None:
    index = _index(("cohere/command-r-plus-08-2024", "cohere/command-r-plus-08-2024"))
    index.add("cohere/command-r-plus-08-2024", "cohere/command-r-plus", "slug")  # a source says so
    result = index.resolve("litellm", "azure/command-r-plus")
    assert isinstance(result, Match) and result.model_id == "cohere/command-r-plus-08-2024"


def test_a_documented_release_date_decides_dated_names() -> None:
    index = _index(("qwen/qwen-max", "qwen/qwen-max"), ("anthropic/claude-opus-4.5",
                   "anthropic/claude-opus-4.5"), ("x/foo", "x/foo"))  # fmt: skip
    index.document_release("qwen/qwen-max", DateTag(2025, 1, 25))
    index.document_release("anthropic/claude-opus-4.5", DateTag(2025, 11, 24))
    refused = index.resolve("lmarena", "qwen-max-0919")
    assert isinstance(refused, Miss) and refused.best_candidate == "qwen/qwen-max"
    assert "the release a source documents for qwen/qwen-max" in refused.reason
    taken = index.resolve("litellm", "claude-opus-4-5-20251101")
    assert isinstance(taken, Match) and (taken.method, taken.score) == (Method.EVIDENCE, 100.0)
    assert not taken.one_sided
    undocumented = index.resolve("litellm", "foo-2024-01-01")  # no source dates x/foo
    assert isinstance(undocumented, Match) and undocumented.one_sided


def test_refusals_name_the_near_candidates_and_why() -> None:
    index = _index(("openai/gpt-4o", "openai/gpt-4o"), ("openai/gpt-4o-mini", "openai/gpt-4o-mini"),
                   ("openai/gpt-4o-2024-08-06", "openai/gpt-4o-2024-08-06"))  # fmt: skip
    why = {r.model_id: r.reason for r in index.refusals("gpt-4o")}
    assert why["openai/gpt-4o-mini"].startswith("guards differ: tier - vs mini")
    assert why["openai/gpt-4o-2024-08-06"].startswith("undated name vs the dated release")


@pytest.fixture(scope="module")
def bundled_aliases() -> dict[tuple[str, str], str]:
    return aliases_of(BUNDLED_DB)


@pytest.mark.parametrize(
    ("source", "name", "not_model", "model"),
    [
        ("litellm", "azure/command-r-plus", "cohere/command-r-plus-08-2024", "cohere/command-r-plus"),
        ("lmarena", "command-r", "cohere/command-r-08-2024", "cohere/command-r"),
        ("litellm", "azure_ai/ministral-3b", "mistralai/ministral-3b-2512", "mistralai/ministral-3b"),
        ("lmarena", "qwen-max-0919", "qwen/qwen-max", None),
        ("litellm", "mistral.mistral-7b-instruct-v0:2", "mistralai/mistral-7b-instruct",
         "mistralai/mistral-7b-instruct-v0.2"),
        ("lmarena", "gpt-5.2-chat-latest-20260210", "openai/gpt-5.2-chat", None),
    ],
)  # fmt: skip
def test_the_bundled_db_refuses_the_merges_made_before(
    bundled_aliases: dict[tuple[str, str], str],
    source: str,
    name: str,
    not_model: str,
    model: str | None,
) -> None:
    assert bundled_aliases.get((source, name)) != not_model
    assert bundled_aliases.get((source, name)) == model


# --------------------------------------------------------------------------- older snapshots


def _or(model_id: str, slug: str | None = None, hf: str | None = None) -> OpenRouterModel:
    return OpenRouterModel(model_id, f"Acme: {model_id}", slug, hf, 1000, 100, 1.0, 2.0, None,
                           True, False, False, False)  # fmt: skip


def test_older_openrouter_ids_become_aliases_or_models_without_offerings() -> None:
    inputs = Inputs(
        openrouter=(_or("acme/m-3b-2512"), _or("acme/n-1"), _or("acme/p-2", "acme/p-2-20250301")),
        openrouter_older=(_or("acme/n-1:free"), _or("acme/m-3b", hf="Acme/M-3B"),
                          _or("acme/p-2-20250210"), _or("acme/p-2-20240101")),
        arena=(ArenaScore("m-3b", "full", 1200.0, None, None),),
    )  # fmt: skip
    result = assemble(inputs)
    aliases = {(a.source, a.source_name): (a.model_id, a.method) for a in result.aliases}
    assert aliases[("openrouter", "acme/n-1:free")] == ("acme/n-1", "normalized")
    assert aliases[("openrouter", "acme/m-3b")] == ("acme/m-3b", "exact")  # its own model
    assert aliases[("huggingface", "Acme/M-3B")] == ("acme/m-3b", "evidence")
    assert aliases[("openrouter", "acme/p-2-20250210")] == ("acme/p-2", "evidence")  # slug lag
    assert aliases[("openrouter", "acme/p-2-20240101")][0] != "acme/p-2"  # slug says 2025
    assert aliases[("lmarena", "m-3b")][0] == "acme/m-3b"  # not the dated 2512 release
    offered = {o.model_id for o in result.offerings}
    assert "acme/m-3b" not in offered and "acme/m-3b-2512" in offered
    assert result.fetched["openrouter"] == 7


def test_older_arena_files_fill_only_what_newer_ones_lack() -> None:
    # LMSYS's table: the display name "Xeno Original" is the arena key xeno-2024-05-01
    table = (ArenaModelInfo("xeno-2024-05-01", "Xeno Original", None, None, None),)
    inputs = Inputs(
        openrouter=(_or("acme/xeno-2024-05-01"), _or("acme/yak-2")),
        arena=(ArenaScore("yak-2", "full", 1300.0, None, None),),
        arena_file="new.json",
        arena_older=(("old.csv", (ArenaScore("Xeno Original", "full", 1100.0, None, None),
                                  ArenaScore("yak-2", "full", 1250.0, None, None))),),
        lmsys=table,
    )  # fmt: skip
    result = assemble(inputs)
    models = {m.id: m for m in result.models}
    assert (models["acme/yak-2"].quality, models["acme/yak-2"].quality_source) == (1300.0,
                                                                                  "new.json")  # fmt: skip
    xeno = models["acme/xeno-2024-05-01"]
    assert (xeno.quality, xeno.quality_source) == (1100.0, "old.csv")
    aliases = {(a.source, a.source_name): (a.model_id, a.method) for a in result.aliases}
    assert aliases[("lmarena", "Xeno Original")] == ("acme/xeno-2024-05-01", "evidence")


def test_every_history_snapshot_is_found_newest_first(tmp_path: Path) -> None:
    names = ["openrouter_models_2025-12-02.json", "openrouter_models_2026-05-22.json",
             "lmarena_leaderboard_text_2025-08-04.csv", "lmarena_leaderboard_text_2025-12-11.json",
             "lmarena_leaderboard_text_2026-07-14.json", "litellm_model_prices_2026-11-23.json"]  # fmt: skip
    for name in names:
        (tmp_path / name).symlink_to(SOURCES / name)
    found = {k: [p.name for p in v] for k, v in snapshots.find_files(tmp_path).items()}
    assert found["openrouter"] == names[1::-1]
    assert found["lmarena"] == [names[4], names[3], names[2]]  # JSON before CSV
    assert found["litellm"] == [names[5]]


def test_a_network_refresh_keeps_older_snapshots_as_history(tmp_path: Path) -> None:
    read = snapshots.read_folder(SOURCES, frozenset({"openrouter"}))["openrouter"].snapshots
    new = next(s for s in read if "2026" in s.name)
    old = next(s for s in read if "2025" in s.name)
    out = tmp_path / "b.db"
    fresh = {"openrouter": snapshots.Collected("openrouter", (new,))}
    summary = ingest.build(fresh, out, previous={"openrouter": (old,)})
    stats = {s.source: s for s in summary.sources}
    assert stats["openrouter"].status == "ok" and stats["openrouter"].kept is None
    with sqlite3.connect(out) as conn:
        stored = {r[0] for r in conn.execute("SELECT name FROM source_snapshots")}
        claude = conn.execute("SELECT id FROM models WHERE id = 'anthropic/claude-3.7-sonnet'")
        assert claude.fetchone() is not None  # only the older snapshot lists it
    conn.close()
    assert stored == {new.name, old.name}


# --------------------------------------------------------------------------- orchestrator resolve


def _resolve(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.main, ["resolve", *args])
    return result.exit_code, result.stdout, result.stderr


def test_resolve_prints_model_method_score_and_refusals() -> None:
    code, out, _ = _resolve("--db", str(BUNDLED_DB), "azure/command-r-plus", "o3-2025-04-16")
    assert code == 0
    blocks = out.split("\n\n")
    assert "           cohere/command-r: guards differ: tier plus vs -" in blocks[0].splitlines()
    assert blocks[0].splitlines()[:4] == [
        "azure/command-r-plus",
        "  model    cohere/command-r-plus (command-r-plus)",
        "  method   exact  score 100.0  (recorded by the refresh for source litellm)",
        "  refused  cohere/command-r-plus-08-2024: undated name vs the dated release "
        "cohere/command-r-plus-08-2024; no source documents which release the undated name means",
    ]
    assert "  model    openai/o3 (o3)" in blocks[1] and "method   evidence" in blocks[1]


def test_resolve_json_unknown_names_and_source(tmp_path: Path) -> None:
    code, out, _ = _resolve("--db", str(BUNDLED_DB), "--json", "--source", "lmarena",
                            "qwen-max-0919", "gpt-4o-nano", "Gemma-2-27B-it")  # fmt: skip
    assert code == 1  # a name did not resolve
    answers = {a["name"]: a for a in json.loads(out)["answers"]}
    refused = answers["qwen-max-0919"]
    assert refused["model"] is None and refused["via"] == "unmatched"
    assert "2025-01-25, the release a source documents for qwen/qwen-max" in refused["reason"]
    nano = answers["gpt-4o-nano"]
    assert nano["via"] == "none" and "guards differ" in nano["reason"]
    assert any(r["model"] == "openai/gpt-4.1-nano" for r in nano["refused"])
    gemma = answers["Gemma-2-27B-it"]
    assert (gemma["model"], gemma["source"], gemma["via"]) == ("google/gemma-2-27b-it", "lmarena",
                                                               "alias")  # fmt: skip


def test_resolve_answers_from_the_configured_db_or_the_bundled_one(tmp_path: Path) -> None:
    cfg = write_tree(tmp_path, settings={"data": {"benchmarks": "missing.db"}}).path
    code, out, err = _resolve("-c", str(cfg), "gpt-4o")
    assert code == 0 and "answering from the bundled DB" in err
    assert "  model    openai/gpt-4o " in out
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"not sqlite")
    code, _, err = _resolve("--db", str(broken), "gpt-4o")
    assert code == 2 and str(broken) in err


def test_resolve_resolves_names_the_refresh_never_saw() -> None:
    code, out, _ = _resolve("--db", str(BUNDLED_DB), "my-gateway/openai/gpt-4o-mini:free")
    assert code == 0 and "  model    openai/gpt-4o-mini " in out
    assert "resolved now against the DB's names" in out


# --------------------------------------------------------------------------- precision / recall

FLOORS = {"dev": (0.99, 0.95), "extra": (0.99, 0.95), "holdout": (0.97, 0.80)}


@pytest.mark.parametrize("which", sorted(PAIRS))
def test_precision_and_recall_floors(
    bundled_aliases: dict[tuple[str, str], str], which: str
) -> None:
    score = score_pairs(PAIRS[which], bundled_aliases)
    print(f"{which}: {score.summary()}")  # pytest -s; README quotes scripts/eval_names.py
    precision, recall = FLOORS[which]
    assert score.tp + score.fn > 90, score.summary()
    assert score.precision >= precision and score.recall >= recall, (
        score.summary() + "\n" + "\n".join(score.errors[:20])
    )


def test_eval_script_prints_every_file() -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(REPO / "scripts" / "eval_names.py")],
                         capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    lines = run.stdout.splitlines()
    assert lines[0].startswith("name matching of ") and len(lines) == 4
    assert "holdout (not tuned on)" in lines[3] and "precision=" in lines[3]
