"""addon.ingest: previous data survives failures, and the DB file is never half-written —
not even when the process is killed (SIGKILL) in the middle of a build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from addon.refresh import ingest, snapshots
from addon.refresh.snapshots import Collected, Failure, Snapshot
from addon.store import benchmarks
from tests.sourceserver import OPENROUTER, SourceServer

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO.parent / "shared" / "fixtures" / "sources"
LIGHT = ("openrouter_models_2026-05-22.json", "lmarena_leaderboard_text_2025-12-11.json",
         "hf_model_Qwen__Qwen3-32B.json", "hf_model_openai__gpt-oss-20b.json")  # fmt: skip


def link(folder: Path, names: tuple[str, ...] | list[str], **extra: bytes) -> Path:
    """A snapshot folder of symlinks to the shared fixtures (nothing is copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(SOURCES / name)
    for name, body in extra.items():
        (folder / name).write_bytes(body)
    return folder


@pytest.fixture(scope="module")
def old_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("old")
    out = root / "benchmarks.db"
    ingest.build_from_folder(link(root / "snaps", LIGHT), out)
    return out.read_bytes()


@pytest.fixture
def previous(tmp_path: Path, old_db: bytes) -> Path:
    out = tmp_path / "data" / "benchmarks.db"
    out.parent.mkdir()
    out.write_bytes(old_db)
    return out


def offerings(db: Path) -> list[tuple[object, ...]]:
    return benchmarks.read_table(db, "offerings")


# --- previous data ------------------------------------------------------------------------------


def test_snapshots_are_stored_compressed_and_read_back(previous: Path) -> None:
    stored, problem = snapshots.load_stored(previous)
    assert problem is None
    assert {k: sorted(s.name for s in v) for k, v in stored.items()} == {
        "openrouter": ["openrouter_models_2026-05-22.json"],
        "lmarena": ["lmarena_leaderboard_text_2025-12-11.json"],
        "huggingface": ["hf_model_Qwen__Qwen3-32B.json", "hf_model_openai__gpt-oss-20b.json"],
    }
    body = stored["openrouter"][0].body
    assert body == (SOURCES / "openrouter_models_2026-05-22.json").read_bytes()
    rows = benchmarks.read_table(previous, "source_snapshots")
    assert sum(len(row[6]) for row in rows) < sum(row[5] for row in rows) / 4  # zlib


def test_a_corrupt_snapshot_keeps_the_previous_rows(previous: Path, tmp_path: Path) -> None:
    before = offerings(previous)
    folder = link(
        tmp_path / "new", LIGHT[1:], **{"openrouter_models_2026-06-01.json": b'{"data": ['}
    )
    summary = ingest.build_from_folder(folder, previous)
    stats = summary.stats("openrouter")
    assert (stats.status, stats.fetched) == ("failed", 0)
    assert "openrouter_models_2026-06-01.json: not valid JSON" in (stats.error or "")
    assert stats.kept == "previous data reused: openrouter_models_2026-05-22.json"
    assert offerings(previous) == before and not summary.ok
    row = next(r for r in benchmarks.read_table(previous, "refreshes") if r[0] == "openrouter")
    assert row[1:3] == ("2026-05-22", "failed") and "not valid JSON" in row[4]
    table = summary.format_table()
    assert "openrouter: previous data reused: openrouter_models_2026-05-22.json" in table


def test_sources_not_in_the_folder_are_kept(previous: Path, tmp_path: Path) -> None:
    before = benchmarks.read_table(previous, "models")
    summary = ingest.build_from_folder(link(tmp_path / "only", LIGHT[:1]), previous)
    assert {s.source: s.status for s in summary.sources} == {
        "openrouter": "ok", "litellm": "missing", "lmarena": "kept", "huggingface": "kept",
        "lmsys": "missing", "local": "missing",
    }  # fmt: skip
    assert benchmarks.read_table(previous, "models") == before
    assert all(s.added == 0 and s.updated == 0 for s in summary.sources)


def test_a_failed_key_reuses_only_its_own_previous_file(previous: Path) -> None:
    stored, _ = snapshots.load_stored(previous)
    qwen = next(s for s in stored["huggingface"] if "Qwen3-32B" in s.name)
    oss = next(s for s in stored["huggingface"] if "gpt-oss" in s.name)
    fresh = {
        "openrouter": Collected("openrouter", stored["openrouter"]),
        "huggingface": Collected("huggingface", (qwen,), (Failure(oss.name, "HTTP 404"),)),
    }
    summary = ingest.build(fresh, previous, previous=stored, drop=frozenset({"lmarena"}))
    hf = summary.stats("huggingface")
    assert (hf.status, hf.error) == ("partial", "HTTP 404")
    assert hf.kept == f"previous data reused: {oss.name}" and summary.ok
    assert summary.stats("lmarena").status == "disabled"


def test_empty_and_unreadable_previous_db(tmp_path: Path) -> None:
    assert snapshots.load_stored(tmp_path / "none.db") == ({}, None)
    (tmp_path / "bad.db").write_bytes(b"not sqlite")
    stored, problem = snapshots.load_stored(tmp_path / "bad.db")
    assert stored == {} and "is not a SQLite database" in (problem or "")
    assert "a source that fails in this run has no earlier rows to keep" in (problem or "")


def test_a_snapshot_without_records_is_a_failure(previous: Path) -> None:
    empty = Snapshot("openrouter", "openrouter_models_2026-06-01.json", b'{"data": []}', None, "x")
    summary = ingest.build({"openrouter": Collected("openrouter", (empty,))}, previous)
    stats = summary.stats("openrouter")
    assert stats.status == "failed" and "no usable records" in (stats.error or "")
    assert summary.counts["offerings"] > 300


# --- atomic swap ----------------------------------------------------------------------------------


def test_stale_temporary_files_of_dead_builds_are_removed(previous: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = previous.with_name(f".{previous.name}.{dead}.tmp")
    alive = previous.with_name(f".{previous.name}.{os.getppid()}.tmp")
    stale.write_bytes(b"half a DB")
    alive.write_bytes(b"someone else's build")
    assert ingest.remove_stale_temps(previous) == [stale]
    assert alive.exists() and not stale.exists()


KILL_SCRIPT = """
import sys, threading
from pathlib import Path
from addon.store import benchmarks
from addon.refresh import ingest
from addon.refresh import sidecar

marker, point, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]

def pause(*args):
    marker.write_text(point)
    threading.Event().wait()

if point == "write":
    insert = benchmarks.insert
    def insert_then_pause(conn, records):
        count = insert(conn, records)
        if records and records[0].TABLE == "offerings":
            pause()
        return count
    benchmarks.insert = insert_then_pause
elif point == "replace":
    ingest.os.replace = pause
raise SystemExit(sidecar.main(argv, runtime=sidecar.Runtime(allow_loopback=True)))
"""


def poll(condition: object, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the build never reached the kill point"
        time.sleep(0.01)


@pytest.fixture
def sources_server() -> Iterator[SourceServer]:
    with SourceServer() as server:
        server.serve_fixtures()
        server.script(OPENROUTER, "hang")
        yield server


@pytest.mark.parametrize("point", ["fetch", "write", "replace"])
def test_sigkill_at_any_point_leaves_the_previous_db_byte_identical(
    point: str, previous: Path, tmp_path: Path, sources_server: SourceServer
) -> None:
    before = previous.read_bytes()
    marker = tmp_path / "marker"
    if point == "fetch":
        sources = tmp_path / "sources.yaml"
        sources.write_text(
            "allowed_hosts: [127.0.0.1]\nfetch: {read_timeout_s: 60}\nsources:\n"
            f"  - {{kind: openrouter, url: '{sources_server.url(OPENROUTER)}'}}\n"
        )
        argv = ["--out", str(previous), "--sources", str(sources)]
        condition = lambda: sources_server.hits[OPENROUTER] > 0  # noqa: E731
    else:
        argv = ["--from", str(link(tmp_path / "snaps", LIGHT[:1])), "--out", str(previous)]
        condition = marker.exists
    with subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(marker), point, *argv],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        try:
            poll(condition, proc)
            temp = previous.with_name(f".{previous.name}.{proc.pid}.tmp")
            assert temp.exists() == (point != "fetch")  # mid-build: the new DB is half written
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
    assert previous.read_bytes() == before
    benchmarks.load_offerings(previous)  # still a complete, readable DB
    ingest.build_from_folder(link(tmp_path / "again", LIGHT[:1]), previous)
    assert not list(previous.parent.glob(".*.tmp"))  # the next build cleans up after the dead one


def test_interrupt_during_a_single_run_removes_the_temporary_file(
    previous: Path, tmp_path: Path
) -> None:
    before = previous.read_bytes()
    marker = tmp_path / "marker"
    argv = ["--from", str(link(tmp_path / "snaps", LIGHT[:1])), "--out", str(previous)]
    with subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(marker), "write", *argv],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        poll(marker.exists, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"interrupted" in err
    assert previous.read_bytes() == before and not list(previous.parent.glob(".*.tmp"))
