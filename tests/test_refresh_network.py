"""The refresh sidecar over HTTP: a loopback server plays OpenRouter, LMArena, LiteLLM,
Hugging Face and a local provider with the real fixture snapshots, at production paths.

Loopback and http are allowed explicitly (``Runtime(allow_loopback=True)``). Most tests
use a "light" source set (LiteLLM disabled) so each rebuild takes well under a second;
one test fetches all five sources and checks the DB equals a ``--from`` build.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from addon.refresh import ingest, sidecar
from addon.refresh.schedule import Schedule, epoch
from addon.refresh.sidecar import Runtime
from addon.store import benchmarks
from tests.sourceserver import (
    ARENA,
    FIXTURES,
    HF,
    HF_REPOS,
    LITELLM,
    LOCAL,
    OPENROUTER,
    REPO,
    Redirect,
    SourceServer,
)

NOW = datetime(2025, 12, 11, 12, 0, tzinfo=UTC).timestamp()  # the arena snapshot's date


def no_wait(seconds: float) -> bool:
    return False


def runtime(**kwargs: object) -> Runtime:
    base: dict[str, object] = {"allow_loopback": True, "clock": lambda: NOW, "wait": no_wait,
                               "rng": random.Random(3)}  # fmt: skip
    return Runtime(**(base | kwargs))  # type: ignore[arg-type]


def write_project(
    root: Path,
    server: SourceServer,
    *,
    litellm: bool = False,
    arena_url: str | None = None,
    hosts: str = "127.0.0.1",
    read_timeout: float = 1.0,
) -> Path:
    """orchestrator.yaml + rules/ whose sources all point at the loopback server."""
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "profiles.yaml").write_text("profiles: {balanced: {weights: {quality: 1}}}\n")
    (root / "orchestrator.yaml").write_text(
        "rules: rules/\n"
        "data: {benchmarks: data/benchmarks.db, ledger: data/ledger.db}\n"
        "providers:\n"
        "  openrouter: {base_url: https://openrouter.ai/api/v1, api_key_env: OPENROUTER_API_KEY}\n"
        f"  lab: {{base_url: '{server.url('/v1')}', local: true}}\n"
    )
    repos = ", ".join(HF_REPOS)
    (root / "rules" / "sources.yaml").write_text(
        f"allowed_hosts: [{hosts}]\n"
        "jitter: 0\n"
        f"fetch: {{connect_timeout_s: 2, read_timeout_s: {read_timeout}, attempts: 2, "
        "backoff_s: 0}\n"
        "sources:\n"
        f"  - {{kind: openrouter, url: '{server.url(OPENROUTER)}', interval: 1h}}\n"
        f"  - {{kind: lmarena, url: '{arena_url or server.url(ARENA)}', interval: 2h}}\n"
        f"  - {{kind: litellm, url: '{server.url(LITELLM)}', enabled: {str(litellm).lower()}}}\n"
        f"  - {{kind: huggingface, url: '{server.url(HF)}{{repo}}', repos: [{repos}]}}\n"
        "  - {kind: local}\n"
    )
    return root / "orchestrator.yaml"


def table(db: Path, name: str) -> list[tuple[object, ...]]:
    return benchmarks.read_table(db, name)


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def refreshes(db: Path) -> dict[str, tuple[object, ...]]:
    return {r[0]: r[1:] for r in table(db, "refreshes")}


@pytest.fixture
def server() -> Iterator[SourceServer]:
    with SourceServer() as srv:
        srv.serve_fixtures()
        yield srv


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A light DB built over HTTP with every source healthy (the "previous DB")."""
    root = tmp_path_factory.mktemp("baseline")
    with SourceServer() as srv:
        srv.serve_fixtures()
        config = write_project(root, srv)
        assert sidecar.main(["-c", str(config)], runtime=runtime()) == 0
    return (root / "data" / "benchmarks.db").read_bytes()


def project_with_previous(
    tmp_path: Path, server: SourceServer, baseline: bytes, **kw: object
) -> Path:
    config = write_project(tmp_path, server, **kw)  # type: ignore[arg-type]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "benchmarks.db").write_bytes(baseline)
    return config


# --- the healthy path ------------------------------------------------------------------------


def test_all_sources_over_http_equal_a_build_from_the_same_files(
    tmp_path: Path, server: SourceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_project(tmp_path / "net", server, litellm=True)
    assert sidecar.main(["-c", str(config)], runtime=runtime()) == 0
    net = tmp_path / "net" / "data" / "benchmarks.db"
    folder = tmp_path / "files"
    folder.mkdir()
    for path in ("openrouter_models_2026-05-22.json", "lmarena_leaderboard_text_2025-12-11.json",
                 "litellm_model_prices_2026-11-23.json", *(f"hf_model_{r.replace('/', '__')}.json"
                                                          for r in HF_REPOS)):  # fmt: skip
        (folder / path).symlink_to(FIXTURES / path)
    offline = tmp_path / "offline.db"
    ingest.build_from_folder(folder, offline)
    # the same rows, plus what the local provider adds (its offerings, one model of its own)
    assert [m for m in table(net, "models") if m[0] != "local/my-finetune-v2"] == table(
        offline, "models"
    )
    for name in ("model_categories", "aliases", "unmatched"):
        assert [r for r in table(net, name) if r[0] != "local"] == table(offline, name), name
    assert [o for o in table(net, "offerings") if o[12] != "local"] == table(offline, "offerings")
    printed = capsys.readouterr().out
    assert "openrouter   ok" in printed and "litellm      ok" in printed
    assert set(server.hits) >= {OPENROUTER, ARENA, LITELLM, LOCAL, *(HF + r for r in HF_REPOS)}
    assert all(n == 1 for n in server.hits.values())
    assert refreshes(net)["openrouter"][:2] == ("2025-12-11T12:00:00Z", "ok")


def test_local_provider_models_become_free_offerings(baseline: bytes, tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    db.write_bytes(baseline)
    local = {r[2]: r for r in rows(db, "SELECT * FROM offerings WHERE provider = 'lab'")}
    assert set(local) == {"Qwen/Qwen3-32B", "my-finetune-v2"}
    qwen, own = local["Qwen/Qwen3-32B"], local["my-finetune-v2"]
    assert qwen[0] == "qwen/qwen3-32b" and qwen[3:7] == (0.0, 0.0, None, 32768)
    assert own[0] == "local/my-finetune-v2" and own[12] == "local"
    quality = dict(rows(db, "SELECT id, quality FROM models WHERE id IN "
                            "('qwen/qwen3-32b', 'local/my-finetune-v2')"))  # fmt: skip
    assert quality["qwen/qwen3-32b"] is not None and quality["local/my-finetune-v2"] is None
    offering = next(r for r in benchmarks.load_offerings(db) if r.provider == "lab")
    assert offering.source == "local"
    status = refreshes(db)["local"]
    assert status[1:3] == ("ok", 2) and "1 record" not in str(status)


def test_schema_drift_older_openrouter_snapshot(
    tmp_path: Path, server: SourceServer, baseline: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    server.routes[OPENROUTER].body = (FIXTURES / "openrouter_models_2025-12-02.json").read_bytes()
    config = project_with_previous(tmp_path, server, baseline)
    assert sidecar.main(["-c", str(config)], runtime=runtime()) == 0
    db = tmp_path / "data" / "benchmarks.db"
    ids = {r[0] for r in rows(db, "SELECT provider_model_id FROM offerings WHERE provider = 'openrouter'")}  # fmt: skip
    assert len(ids) > 300 and "openai/gpt-4o-2024-08-06" in ids
    stats = capsys.readouterr().out.splitlines()
    line = next(s for s in stats if s.startswith("openrouter"))
    status, fetched, added, updated = line.split()[1:5]
    assert status == "ok" and int(fetched) > 300 and int(added) > 0 and int(updated) > 0


# --- failures keep the previous rows -----------------------------------------------------------


def _snapshot_of(db: Path) -> dict[str, list[tuple[object, ...]]]:
    return {
        "openrouter": rows(db, "SELECT * FROM offerings WHERE source = 'openrouter' ORDER BY 2, 3"),
        "lmarena": rows(
            db,
            "SELECT id, quality, quality_lo, quality_hi FROM models "
            "WHERE quality IS NOT NULL ORDER BY 1",
        ),
        "categories": rows(db, "SELECT * FROM model_categories ORDER BY 1, 2"),
        "local": rows(db, "SELECT * FROM offerings WHERE source = 'local' ORDER BY 2, 3"),
        "huggingface": rows(
            db, "SELECT id, params_b, license, hf_id FROM models WHERE hf_id IS NOT NULL ORDER BY 1"
        ),
    }


@pytest.mark.parametrize(
    ("source", "path", "steps", "arena_url", "error"),
    [
        ("openrouter", OPENROUTER, (500,), None,
         "HTTP 500 from {base}/api/v1/models (gave up after 2 attempts)"),
        ("openrouter", OPENROUTER, ("hang",), None, "timed out (no data within the read timeout"),
        ("openrouter", OPENROUTER, ("cut",), None, "not valid JSON"),
        ("openrouter", OPENROUTER, (b'{"data": []}',), None, "no usable records"),
        ("lmarena", ARENA, (Redirect("http://internal.test/leaderboard.json"),), None,
         "redirect to http://internal.test/leaderboard.json refused: internal.test resolves "
         "to 10.0.0.7, a private address"),
        ("lmarena", ARENA, (), "http://localhost:{port}" + ARENA,
         "host localhost is not allowed — add it to allowed_hosts in rules/sources.yaml"),
        ("local", LOCAL, (503,), None, "HTTP 503"),
    ],
    ids=["500", "timeout", "truncated-json", "empty-list", "redirect-to-private",
         "host-not-allowed", "local-provider-down"],
)  # fmt: skip
def test_a_failing_source_keeps_its_previous_rows(
    tmp_path: Path,
    server: SourceServer,
    baseline: bytes,
    capsys: pytest.CaptureFixture[str],
    source: str,
    path: str,
    steps: tuple[object, ...],
    arena_url: str | None,
    error: str,
) -> None:
    if steps and isinstance(steps[0], bytes):
        server.routes[path].body = steps[0]
    elif steps:
        server.script(path, *steps)  # type: ignore[arg-type]
    url = arena_url.format(port=server.port) if arena_url else None
    config = project_with_previous(tmp_path, server, baseline, arena_url=url,
                                   hosts="127.0.0.1, internal.test", read_timeout=0.3)  # fmt: skip
    db = tmp_path / "data" / "benchmarks.db"
    before = _snapshot_of(db)
    code = sidecar.main(["-c", str(config)], runtime=runtime(resolver=lambda h, p: ["10.0.0.7"]))
    assert code == sidecar.EXIT_SOURCE_FAILED
    after = _snapshot_of(db)
    assert after == before  # every source's rows are as they were, the failed one included
    status = refreshes(db)[source]
    assert status[1] == "failed" and status[2] > 0
    assert error.format(base=server.url("")) in str(status[3])
    printed = capsys.readouterr().out
    assert f"{source}: previous data reused" in printed and error.split(" {")[0] in printed
    others = {k: v[1] for k, v in refreshes(db).items() if k not in (source, "litellm", "lmsys")}
    assert set(others.values()) == {"ok"}


def test_one_failing_repo_reuses_its_previous_file(
    tmp_path: Path, server: SourceServer, baseline: bytes
) -> None:
    server.script(HF + "Qwen/Qwen3-32B", 404)
    config = project_with_previous(tmp_path, server, baseline)
    assert sidecar.main(["-c", str(config)], runtime=runtime()) == 0
    db = tmp_path / "data" / "benchmarks.db"
    assert _snapshot_of(db)["huggingface"] == _snapshot_of_bytes(baseline, tmp_path)["huggingface"]
    status = refreshes(db)["huggingface"]
    assert status[1] == "partial" and "HTTP 404" in str(status[3])


def _snapshot_of_bytes(data: bytes, tmp_path: Path) -> dict[str, list[tuple[object, ...]]]:
    copy = tmp_path / "copy.db"
    copy.write_bytes(data)
    return _snapshot_of(copy)


def test_every_price_source_failing_still_writes_from_previous_data(
    tmp_path: Path, server: SourceServer, baseline: bytes
) -> None:
    for path in (OPENROUTER, ARENA, LOCAL, *(HF + r for r in HF_REPOS)):
        server.script(path, 500)
    config = project_with_previous(tmp_path, server, baseline)
    db = tmp_path / "data" / "benchmarks.db"
    before = _snapshot_of(db)
    assert sidecar.main(["-c", str(config)], runtime=runtime()) == 1
    assert _snapshot_of(db) == before


def test_nothing_written_without_any_price_data(
    tmp_path: Path, server: SourceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.script(OPENROUTER, 500)
    config = write_project(tmp_path, server)
    assert sidecar.main(["-c", str(config)], runtime=runtime()) == sidecar.EXIT_NOT_WRITTEN
    assert "no price source could be read" in capsys.readouterr().err
    assert not (tmp_path / "data" / "benchmarks.db").exists()
    assert not list((tmp_path / "data").glob(".*.tmp"))


# --- options -----------------------------------------------------------------------------------


def test_only_refreshes_one_kind_and_keeps_the_rest(
    tmp_path: Path, server: SourceServer, baseline: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project_with_previous(tmp_path, server, baseline)
    progress: list[str] = []
    code = sidecar.main(["-c", str(config), "--only", "openrouter", "--report"],
                        runtime=runtime(progress=progress.append))  # fmt: skip
    assert code == 0 and set(server.hits) == {OPENROUTER}
    db = tmp_path / "data" / "benchmarks.db"
    assert {k: v[1] for k, v in refreshes(db).items()} == {
        "openrouter": "ok", "lmarena": "kept", "huggingface": "kept", "local": "kept",
        "litellm": "disabled", "lmsys": "missing",
    }  # fmt: skip
    assert f"openrouter: GET {server.url(OPENROUTER)}" in progress
    out = capsys.readouterr().out
    assert out.startswith("matches (source: name -> canonical id, method, score):")
    assert "  local: my-finetune-v2 -> local/my-finetune-v2" not in out  # created, not matched


def test_disabled_source_is_dropped(tmp_path: Path, server: SourceServer, baseline: bytes) -> None:
    config = project_with_previous(tmp_path, server, baseline)
    text = config.parent / "rules" / "sources.yaml"
    text.write_text(text.read_text().replace("interval: 2h}", "interval: 2h, enabled: false}"))
    assert sidecar.main(["-c", str(config)], runtime=runtime()) == 0
    db = tmp_path / "data" / "benchmarks.db"
    assert ARENA not in server.hits and refreshes(db)["lmarena"][1] == "disabled"
    assert rows(db, "SELECT COUNT(*) FROM models WHERE quality IS NOT NULL") == [(0,)]


def test_saved_snapshots_rebuild_the_same_db(tmp_path: Path, server: SourceServer) -> None:
    config = write_project(tmp_path / "p", server)
    saved = tmp_path / "saved"
    assert sidecar.main(["-c", str(config), "--save", str(saved)], runtime=runtime()) == 0
    assert (saved / "openrouter_models_2025-12-11.json").read_bytes() == server.routes[
        OPENROUTER
    ].body
    assert (saved / "local_models_lab.json").exists()
    again = tmp_path / "again.db"
    assert sidecar.main(["--from", str(saved), "--out", str(again), "-c", str(config)]) == 0
    net = tmp_path / "p" / "data" / "benchmarks.db"
    for name in ("models", "offerings", "aliases", "unmatched", "model_categories"):
        assert table(net, name) == table(again, name), name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--every", "soon"], "--every: 'soon' is not a duration; write it like 30m, 1h or 24h"),
        (["--every", "1h", "--from", "."], "--every refreshes from the network; drop --from"),
        (["--only", "openrouter,arxiv"], "--only arxiv: unknown kind — use openrouter, litellm"),
        (["--sources", "missing.yaml"], "missing.yaml:1:1 file not found"),
    ],
)
def test_bad_options_exit_2(
    tmp_path: Path, server: SourceServer, argv: list[str], message: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    config = write_project(tmp_path, server)
    monkeypatch.chdir(tmp_path)
    assert sidecar.main(["-c", str(config), *argv], runtime=runtime()) == 2
    assert message in capsys.readouterr().err
    assert not server.hits


def test_invalid_sources_yaml_is_located(
    tmp_path: Path, server: SourceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_project(tmp_path, server)
    (tmp_path / "rules" / "sources.yaml").write_text(
        "allowed_hosts: [127.0.0.1]\nsources:\n  - kind: openrouter\n    url: https://x.test/m\n"
        "    intervall: 1h\n"
    )
    assert sidecar.main(["-c", str(config)], runtime=runtime()) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'rules' / 'sources.yaml'}:5:5 sources.0.intervall: unknown key — did you mean `interval`?" in err  # fmt: skip


def test_no_config_needs_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert sidecar.main([], runtime=runtime()) == 2
    assert (
        "no orchestrator.yaml here — pass --out PATH or -c orchestrator.yaml"
        in capsys.readouterr().err
    )


# --- --every ------------------------------------------------------------------------------------


class FakeTime:
    """A clock the loop's ``wait`` advances; stops the loop past ``horizon`` seconds."""

    def __init__(self, horizon: float) -> None:
        self.now = NOW
        self.end = NOW + horizon
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if self.now + seconds > self.end:
            return True
        self.now += seconds
        return False


@pytest.mark.parametrize(
    ("every", "openrouter_hits", "arena_hits", "rebuilds"),
    [("1h", 5, 3, 5), ("3h", 2, 2, 2)],
)
def test_every_refreshes_each_source_on_its_own_interval(
    tmp_path: Path, server: SourceServer, every: str, openrouter_hits: int, arena_hits: int,
    rebuilds: int, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    config = write_project(tmp_path, server)
    text = config.parent / "rules" / "sources.yaml"  # only the two timed sources
    text.write_text(text.read_text().replace("repos: [", "enabled: false, repos: ["))
    fake = FakeTime(horizon=4 * 3600)
    code = sidecar.main(["-c", str(config), "--every", every],
                        runtime=runtime(clock=fake.clock, wait=fake.wait))  # fmt: skip
    assert code == 0
    assert (server.hits[OPENROUTER], server.hits[ARENA]) == (openrouter_hits, arena_hits)
    out = capsys.readouterr()
    assert out.out.count("wrote ") == rebuilds  # one rebuild (and table) per wake-up
    assert "[2025-12-11 12:00:00Z] refreshing lmarena, local, openrouter" in out.out
    assert "refresh: running; " in out.err and "openrouter every" in out.err


def test_every_waits_out_fresh_data_after_a_restart(tmp_path: Path, server: SourceServer,
                                                    baseline: bytes) -> None:  # fmt: skip
    config = project_with_previous(tmp_path, server, baseline)
    fake = FakeTime(horizon=30 * 60)  # the baseline was fetched at NOW
    assert sidecar.main(["-c", str(config), "--every", "1h"],
                        runtime=runtime(clock=fake.clock, wait=fake.wait)) == 0  # fmt: skip
    assert not server.hits and fake.waits == [3600.0]


def test_sigterm_stops_the_loop_cleanly(tmp_path: Path, server: SourceServer) -> None:
    config = write_project(tmp_path, server)
    script = ("import sys; from addon.refresh import sidecar; raise SystemExit(sidecar.main("
              "sys.argv[1:], runtime=sidecar.Runtime(allow_loopback=True)))")  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-c", script, "-c", str(config), "--every", "1h"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        lines = []
        # a bounded wait: a sidecar that never finishes its first rebuild is killed after
        # 60 s, which ends the read below with an empty line and fails the test
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        try:
            while not any(line.startswith("wrote ") for line in lines):  # first rebuild done
                line = proc.stdout.readline()
                assert line, proc.communicate()
                lines.append(line)
        finally:
            watchdog.cancel()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "refresh: stopping after the current step" in err
    assert benchmarks.load_offerings(tmp_path / "data" / "benchmarks.db")


def test_progress_goes_to_an_interactive_stderr_only(
    tmp_path: Path, server: SourceServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    config = write_project(tmp_path, server)
    assert sidecar.main(["-c", str(config)], runtime=runtime()) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert sidecar.main(["-c", str(config), "--only", "local"], runtime=runtime()) == 0
    assert capsys.readouterr().err.splitlines() == [
        "refresh: local: fetching 1 URLs", "refresh: local: 1 fetched, 0 failed",
        "refresh: parsing snapshots", "refresh: matching names across sources",
        f"refresh: writing {tmp_path / 'data' / 'benchmarks.db'}",
    ]  # fmt: skip


# --- the schedule itself ------------------------------------------------------------------------


def simulate(
    schedule: Schedule, hours: float, fail: frozenset[str] = frozenset()
) -> dict[str, list[float]]:
    now, end = NOW, NOW + hours * 3600
    runs: dict[str, list[float]] = {kind: [] for kind in schedule.periods}
    while now <= end:
        for kind in sorted(schedule.due(now)):
            runs[kind].append((now - NOW) / 3600)
            schedule.done(kind, now, ok=kind not in fail)
        now = max(now, schedule.next_wake())
    return runs


def test_jittered_intervals_over_two_days() -> None:
    schedule = Schedule({"openrouter": 3600, "lmarena": 86400}, every=3600, jitter=0.1,
                        retry_failed_after=900, rng=random.Random(5), last_fetched={}, now=NOW)  # fmt: skip
    runs = simulate(schedule, hours=48)
    gaps = [b - a for a, b in zip(runs["openrouter"], runs["openrouter"][1:], strict=False)]
    assert 44 <= len(runs["openrouter"]) <= 53 and len(runs["lmarena"]) in (2, 3)
    assert all(0.9 <= gap <= 1.1 for gap in gaps) and len(set(gaps)) > 10  # jitter, bounded


def test_failed_sources_retry_sooner_and_restarts_respect_fresh_data() -> None:
    last = {"openrouter": NOW - 1800, "lmarena": None, "litellm": NOW + 999_999}
    schedule = Schedule({"openrouter": 3600, "lmarena": 86400, "litellm": 86400}, every=600,
                        jitter=0, retry_failed_after=900, rng=random.Random(1),
                        last_fetched=last, now=NOW)  # fmt: skip
    assert schedule.next_due == {"openrouter": NOW + 1800, "lmarena": NOW, "litellm": NOW + 86400}
    runs = simulate(schedule, hours=1, fail=frozenset({"lmarena"}))
    assert runs["lmarena"] == [0, 0.25, 0.5, 0.75, 1.0] and runs["openrouter"] == [0.5]


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [("2025-12-11", datetime(2025, 12, 11, tzinfo=UTC).timestamp()),
     ("2025-12-11T12:00:00Z", NOW), (None, None), ("yesterday", None)],
)  # fmt: skip
def test_epoch_of_fetched_at(stamp: str | None, expected: float | None) -> None:
    assert epoch(stamp) == expected
