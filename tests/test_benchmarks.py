"""Benchmark DB: schema and migrations, reader errors, and the refresh that writes it."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from addon import cli
from addon.refresh import ingest, sidecar, snapshots
from addon.refresh.summary import RefreshSummary
from addon.routing.catalog import OfferingRow
from addon.store import benchmarks
from addon.store.benchmarks import BenchmarkDBError

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO.parent / "shared" / "fixtures" / "sources"
BUNDLED = REPO / "addon" / "bundled" / "benchmarks.db"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RefreshSummary]:
    out = tmp_path_factory.mktemp("bench") / "benchmarks.db"
    return out, ingest.build_from_folder(SOURCES, out, REPO / "rules" / "aliases.yaml")


def _link_dir(tmp_path: Path, names: list[str], extra: dict[str, bytes] | None = None) -> Path:
    """A snapshot folder of symlinks to the shared fixtures (nothing is copied)."""
    folder = tmp_path / "snapshots"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(SOURCES / name)
    for name, content in (extra or {}).items():
        (folder / name).write_bytes(content)
    return folder


# --- schema, migrations, opening -----------------------------------------------------------


def test_migrations_are_recorded_and_rerunnable(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    conn = benchmarks.open_db(path, readonly=False)
    try:
        assert benchmarks.migrate(conn) == []  # already applied by open_db
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations")]
        assert names == [m.name for m in benchmarks.MIGRATIONS]
        conn.execute("DELETE FROM schema_migrations")
        assert benchmarks.migrate(conn) == names  # re-running over existing tables is safe
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert set(benchmarks.TABLES) | {"schema_migrations"} <= tables
    finally:
        conn.close()


def test_schema_columns_match_the_contract(tmp_path: Path) -> None:
    conn = benchmarks.open_db(tmp_path / "b.db", readonly=False)
    try:
        columns = {
            t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in benchmarks.TABLES
        }
    finally:
        conn.close()
    for record in (benchmarks.ModelRecord, benchmarks.OfferingRecord, benchmarks.AliasRecord,
                   benchmarks.UnmatchedRecord, benchmarks.RefreshRecord,
                   benchmarks.CategoryRecord):  # fmt: skip
        assert columns[record.TABLE] == [f.name for f in dataclasses.fields(record)]
    assert columns["meta"] == ["key", "value"]


def _corrupt(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + b"\x07" * 4000)


def _no_schema(path: Path) -> None:
    sqlite3.connect(path).close()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()


def _future_schema(path: Path) -> None:
    benchmarks.open_db(path, readonly=False).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES ('0999_from_the_future', '')")
    conn.commit()
    conn.close()


def _old_schema(path: Path) -> None:
    benchmarks.open_db(path, readonly=False).close()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM schema_migrations")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("make", "problem", "remedy"),
    [
        (lambda p: None, "does not exist", "orchestrator refresh"),
        (lambda p: p.write_bytes(b""), "is empty", "orchestrator refresh --from DIR"),
        (lambda p: p.write_text("id,name\n"), "is not a SQLite database", "refresh --from DIR"),
        (_corrupt, "is corrupt", "refresh --from DIR"),
        (_no_schema, "no schema_migrations table", "refresh --from DIR"),
        (_future_schema, "does not know (0999_from_the_future)", "upgrade the orchestrator"),
        (_old_schema, "lacks schema migrations 0001_initial", "refresh --from DIR"),
        (lambda p: p.mkdir(), "is not a file", "data.benchmarks"),
    ],
)
def test_reader_errors_name_file_problem_and_remedy(
    tmp_path: Path, make: object, problem: str, remedy: str
) -> None:
    path = tmp_path / "benchmarks.db"
    make(path)  # type: ignore[operator]
    with pytest.raises(BenchmarkDBError) as info:
        benchmarks.load_offerings(path)
    message = str(info.value)
    assert message.startswith(f"benchmark DB {path}: ")
    assert problem in message and remedy in message
    with pytest.raises(BenchmarkDBError):
        benchmarks.db_info(path)


def test_readonly_open_never_creates_the_file(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDBError):
        benchmarks.open_db(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_read_table_rejects_unknown_tables(built: tuple[Path, RefreshSummary]) -> None:
    with pytest.raises(ValueError, match="unknown benchmark DB table"):
        benchmarks.read_table(built[0], "sqlite_master")


# --- the built DB ---------------------------------------------------------------------------


def test_load_offerings_rows(built: tuple[Path, RefreshSummary]) -> None:
    rows = benchmarks.load_offerings(built[0])
    assert len(rows) > 3000
    assert rows == sorted(rows, key=lambda r: (r.model_id, r.provider, r.provider_model_id))
    by_key = {(r.provider, r.provider_model_id): r for r in rows}
    row = by_key[("openrouter", "openai/gpt-4o-2024-08-06")]
    assert row == OfferingRow(
        model_id="openai/gpt-4o-2024-08-06", model_name="GPT-4o (2024-08-06)", org="openai",
        provider="openrouter", provider_model_id="openai/gpt-4o-2024-08-06",
        input_per_mtok=2.5, output_per_mtok=10.0, cached_input_per_mtok=1.25,
        context_tokens=128000, max_output_tokens=16384, supports_tools=True,
        supports_vision=True, supports_json_schema=True, supports_reasoning=False,
        quality=row.quality, quality_lo=row.quality_lo, quality_hi=row.quality_hi,
        open_weights=False,  # LMSYS lists the licence as Proprietary
        source="openrouter",
    )  # fmt: skip
    assert row.quality is not None and row.quality_lo < row.quality < row.quality_hi
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.quality = 0.0  # type: ignore[misc]
    direct = by_key[("openai", "gpt-4o-2024-08-06")]
    assert direct.model_id == row.model_id and direct.supports_reasoning is None
    groq = by_key[("groq", "openai/gpt-oss-20b")]
    assert (groq.model_id, groq.input_per_mtok, groq.open_weights) == (
        "openai/gpt-oss-20b",
        0.075,
        True,
    )
    free = by_key[("openrouter", "openai/gpt-oss-20b:free")]
    assert (free.model_id, free.input_per_mtok, free.output_per_mtok) == (
        "openai/gpt-oss-20b",
        0,
        0,
    )
    assert by_key[("github_copilot", "gpt-4o")].input_per_mtok is None  # unknown, never 0


def test_offerings_exclude_pseudo_models_and_non_chat(
    built: tuple[Path, RefreshSummary],
) -> None:
    conn = sqlite3.connect(built[0])
    try:
        ids = {r[0] for r in conn.execute("SELECT provider_model_id FROM offerings")}
        models = {r[0] for r in conn.execute("SELECT id FROM models")}
        bad_prices = conn.execute(
            "SELECT COUNT(*) FROM offerings WHERE input_per_mtok < 0 OR output_per_mtok < 0"
        ).fetchone()[0]
    finally:
        conn.close()
    assert {"openrouter/auto", "openrouter/pareto-code", "~openai/gpt-latest"}.isdisjoint(ids)
    assert {"text-embedding-3-small", "sample_spec", "ft:gpt-4o-2024-08-06"}.isdisjoint(ids)
    assert bad_prices == 0
    assert all(m == m.lower() and "/" in m for m in models)


def test_db_info(built: tuple[Path, RefreshSummary]) -> None:
    path, summary = built
    info = benchmarks.db_info(path)
    assert info["built_at"] == "2026-11-23" == summary.built_at
    assert info["schema_version"] == str(benchmarks.SCHEMA_VERSION)
    assert info["counts"]["offerings"] == summary.counts["offerings"] > 3000
    assert info["counts"]["meta"] >= 2
    assert info["sources"]["openrouter"] == {"fetched_at": "2026-05-22", "status": "ok"}
    assert info["sources"]["lmarena"]["fetched_at"] == "2026-07-14"
    assert info["sources"]["huggingface"]["fetched_at"] is None


def test_summary_counts_and_table(built: tuple[Path, RefreshSummary]) -> None:
    summary = built[1]
    stats = {s.source: s for s in summary.sources}
    # both OpenRouter snapshots are read: the newest's 345 ids are the offerings, an older
    # id either joins a current model (matched) or is a model of its own (new, no offering)
    openrouter = stats["openrouter"]
    assert openrouter.fetched == openrouter.matched + openrouter.new + openrouter.unmatched
    assert openrouter.matched > 345 and openrouter.new > 50 and openrouter.added == 345
    assert openrouter.skipped == 11 + 1  # the newest file's 11, the older one's pseudo-model
    assert stats["litellm"].matched > 1000 and stats["litellm"].new > 0
    assert stats["lmarena"].matched + stats["lmarena"].unmatched == stats["lmarena"].fetched
    assert summary.ok and stats["local"].status == "missing"  # no local_models_*.json
    assert all(s.status == "ok" for s in summary.sources if s.source != "local")
    table = summary.format_table()
    header = table.splitlines()[0].split()
    assert header == ["source", "status", "fetched", "added", "updated", "matched", "unmatched",
                      "new", "failed", "skipped"]  # fmt: skip
    assert "wrote " in table and "built_at 2026-11-23" in table
    report = summary.format_report()
    assert "  lmarena: gpt-4o-2024-08-06 -> openai/gpt-4o-2024-08-06 (exact, 100)" in report
    assert "unmatched (source: name; best candidate, score; reason):" in report


def test_build_is_deterministic_and_tracks_updates(
    built: tuple[Path, RefreshSummary], tmp_path: Path
) -> None:
    first = built[0]
    second = tmp_path / "again.db"
    second.write_bytes(first.read_bytes())
    # a rebuild over an existing DB gives the same rows and reports nothing added or updated
    again = ingest.build_from_folder(SOURCES, second, REPO / "rules" / "aliases.yaml")
    assert all(s.added == 0 and s.updated == 0 for s in again.sources)
    for table in benchmarks.TABLES:
        assert benchmarks.read_table(first, table) == benchmarks.read_table(second, table), table


# --- snapshot choice, failures, atomicity -----------------------------------------------------


def test_find_snapshots_picks_newest_and_prefers_arena_json(tmp_path: Path) -> None:
    folder = _link_dir(
        tmp_path,
        ["openrouter_models_2025-12-02.json", "openrouter_models_2026-05-22.json",
         "lmarena_leaderboard_text_2025-12-11.json", "lmarena_leaderboard_text_2026-07-14.json",
         "hf_model_Qwen__Qwen3-32B.json", "hf_model_openai__gpt-oss-20b.json"],
    )  # fmt: skip
    (folder / "lmarena_leaderboard_text_2027-01-01.csv").symlink_to(
        SOURCES / "lmarena_leaderboard_text_2025-08-04.csv"
    )
    chosen = snapshots.find_files(folder)
    assert chosen["openrouter"][0].name == "openrouter_models_2026-05-22.json"
    assert chosen["lmarena"][0].name == "lmarena_leaderboard_text_2026-07-14.json"
    assert len(chosen["huggingface"]) == 2
    assert "litellm" not in chosen and "lmsys" not in chosen


def test_arena_csv_used_when_no_json(tmp_path: Path) -> None:
    folder = _link_dir(
        tmp_path, ["openrouter_models_2026-05-22.json", "lmarena_leaderboard_text_2025-08-04.csv"]
    )
    out = tmp_path / "b.db"
    summary = ingest.build_from_folder(folder, out)
    stats = {s.source: s for s in summary.sources}
    assert stats["lmarena"].status == "ok" and stats["lmarena"].matched > 50
    assert stats["litellm"].status == "missing"
    conn = sqlite3.connect(out)
    try:
        quality, source, license_ = conn.execute(
            "SELECT quality, quality_source, license FROM models WHERE id = 'google/gemini-2.5-pro'"
        ).fetchone()
    finally:
        conn.close()
    assert (quality, source, license_) == (1470, "lmarena_leaderboard_text_2025-08-04.csv", "Proprietary")  # fmt: skip


def test_corrupt_source_fails_alone(tmp_path: Path) -> None:
    folder = _link_dir(
        tmp_path,
        ["litellm_model_prices_2026-11-23.json", "hf_model_Qwen__Qwen3-32B.json"],
        {"openrouter_models_2026-06-01.json": b'{"data": [{"id": "x/y"',
         "lmarena_leaderboard_text_2026-06-01.json": b"[]"},
    )  # fmt: skip
    out = tmp_path / "b.db"
    summary = ingest.build_from_folder(folder, out)
    stats = {s.source: s for s in summary.sources}
    assert stats["openrouter"].status == "failed" and not summary.ok
    assert "openrouter_models_2026-06-01.json: not valid JSON" in (stats["openrouter"].error or "")
    assert stats["lmarena"].status == "failed"
    assert stats["litellm"].status == "ok" and stats["huggingface"].status == "ok"
    assert "failed" in summary.format_table()
    assert len(benchmarks.load_offerings(out)) > 3000
    info = benchmarks.db_info(out)
    assert info["sources"]["openrouter"]["status"] == "failed"


def test_old_db_stays_when_the_build_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _link_dir(tmp_path, ["openrouter_models_2026-05-22.json"])
    out = tmp_path / "benchmarks.db"
    ingest.build_from_folder(folder, out)
    before = out.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ingest.RefreshError, match="no price source could be read"):
        ingest.build_from_folder(empty, tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists()

    def explode(*args: object) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(benchmarks, "insert", explode)
    with pytest.raises(sqlite3.OperationalError):
        ingest.build_from_folder(folder, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.db", "empty", "snapshots"]


# --- command line ----------------------------------------------------------------------------


def test_main_prints_table_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _link_dir(
        tmp_path, ["openrouter_models_2026-05-22.json", "lmarena_leaderboard_text_2026-07-14.json"]
    )
    out = tmp_path / "out" / "benchmarks.db"
    assert sidecar.main(["--from", str(folder), "--out", str(out), "--report"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("matches (source: name -> canonical id, method, score):")
    assert "openrouter   ok" in printed and out.exists()


def test_main_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sidecar.main(["--from", str(tmp_path / "nope"), "--out", str(tmp_path / "b.db")]) == 2
    err = capsys.readouterr().err
    assert "--from" in err and "not a directory" in err
    bad = tmp_path / "aliases.yaml"
    bad.write_text("overrides: [\n")
    argv = ["--from", str(tmp_path), "--out", str(tmp_path / "b.db"), "--aliases", str(bad)]
    assert sidecar.main(argv) == 2
    assert "invalid YAML" in capsys.readouterr().err
    assert sidecar.main(["--from", str(tmp_path), "--out", str(tmp_path / "b.db")]) == 3
    assert "no price source could be read" in capsys.readouterr().err
    assert not (tmp_path / "b.db").exists()


def test_script_wrapper_runs() -> None:
    script = REPO / "scripts" / "refresh_benchmarks.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--from", "/nonexistent", "--out", os.devnull],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_orchestrator_refresh_is_the_same_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.main, ["refresh", "--from", str(tmp_path / "no"), "--out", "x"])
    assert result.exit_code == 2 and "not a directory" in result.output
    result = CliRunner().invoke(cli.main, ["refresh", "--help"])
    assert result.exit_code == 0 and "exit codes:" in result.output and "--every" in result.output


def test_bench_refresh_script_runs(tmp_path: Path) -> None:
    folder = _link_dir(tmp_path, ["openrouter_models_2026-05-22.json"])
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_refresh.py"), "--from", str(folder)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].strip().startswith("329 models") and "345 offerings" in lines[1]
    assert lines[2].startswith("  wall time") and "target < 5 s" in lines[2]
    assert lines[3].startswith("  peak RSS") and "target < 300 MB" in lines[3]


def test_bundled_db_is_usable() -> None:
    rows = benchmarks.load_offerings(BUNDLED)
    info = benchmarks.db_info(BUNDLED)
    assert len(rows) == info["counts"]["offerings"] > 3000
    assert info["built_at"] == "2026-11-23"
    assert any(r.provider == "openrouter" and r.quality is not None for r in rows)


@pytest.mark.parametrize(
    "table", ["models", "model_categories", "offerings", "aliases", "unmatched", "meta"]
)
def test_bundled_db_is_what_the_code_builds(built: tuple[Path, RefreshSummary], table: str) -> None:
    """The shipped DB is our ingestion of the shared snapshots, not a hand-edited file:
    `make bundle` after a change to the ingestion code keeps this green."""
    fresh, _ = built
    assert sorted(benchmarks.read_table(fresh, table)) == sorted(
        benchmarks.read_table(BUNDLED, table)
    ), f"addon/bundled/benchmarks.db is stale in table {table}: run `make bundle`"
