"""The bench scripts run end to end in their tiny configuration (`--quick`) and print their
tables. No timing is asserted: this only keeps the scripts from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def _run(script: str, *args: str, timeout: float) -> str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_bench_routing_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "routing.json"
    out = _run("bench_routing.py", "--quick", "--json", str(out_json), timeout=60)
    assert "routing work per request" in out
    for label in ("100B", "1KB", "8KB", "64KB", "200KB", "200KB utf8", "route gpt-4o"):
        assert f"\n{label} " in out, label
    for stage in ("parse p50/p99", "features p50/p99", "decide p50/p99", "rewrite p50/p99"):
        assert stage in out
    assert "targets: p99 ≤ 100 µs" in out
    assert "pauses a second of 10 µs or more" in out and "constant p50/p99" in out
    data = json.loads(out_json.read_text())
    assert data["catalog_offerings"] >= 2000
    assert data["pauses"]["seconds"] > 0 and 0 <= data["pauses"]["share"] < 1
    for row in data["sizes"]:  # the constant work is sized to the call it stands beside
        assert 0.25 < row["p50_us"]["constant"] / row["p50_us"]["total"] < 4, row["label"]
    assert {r["label"] for r in data["sizes"]} >= {"100B", "200KB"}


@pytest.mark.e2e
def test_bench_proxy_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "proxy.json"
    out = _run("bench_proxy.py", "--quick", "--json", str(out_json), timeout=120)
    for heading in (
        "non-streaming, 2 KB POST",
        "streaming, 20 events",
        "C (orchestrator) against B",
    ):
        assert heading in out
    for target in ("A direct", "B mitmdump", "C orchestrator"):
        assert target in out
    assert "req/s C/B" in out and "added TTFE p50 C-B" in out
    assert "upstream check: 18/18 runs" in out
    runs = json.loads(out_json.read_text())["runs"]
    assert len(runs) == 18  # 6 cases x 3 targets x 1 repeat
    assert all(r["upstream_seen"] == r["requests"] == r["ok"] for r in runs)
    # the upstream's send stamps reached every streaming client, through both proxies
    streams = [r for r in runs if r["case"] in ("stream-c8", "responses-c8")]
    assert len(streams) == 6 and all(
        r["up_gap_p99_ms"] and r["added_gap_p99_ms"] is not None for r in streams
    )
    assert "upstream gap p99, as sent" in out and "C gap p99 - upstream's" in out
    assert "responses c=8  added TTFE p50 C-B" in out  # the Responses stream, routed
    assert "stream c=8  proxy CPU/stream C/B" in out
    assert all(r["routed"] == r["requests"] for r in runs if r["target"] == "C")


@pytest.mark.e2e
def test_bench_scaleout_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "scaleout.json"
    out = _run("bench_scaleout.py", "--quick", "--json", str(out_json), timeout=180)
    for label in ("S 1 replica, SQLite", "P 1 replica, PostgreSQL + Redis",
                  "F 2 replicas, PostgreSQL + Redis", "PostgreSQL CPU ms/req"):  # fmt: skip
        assert label in out
    assert "upstream check: 6/6 runs" in out
    data = json.loads(out_json.read_text())
    assert len(data["runs"]) == 6  # 2 cases x 3 deployments x 1 repeat
    assert all(r["upstream_seen"] == r["requests"] == r["ok"] for r in data["runs"])
    assert set(data["ledgers"]) == {"S", "P", "F"} and all(n > 0 for n in data["ledgers"].values())


@pytest.mark.e2e
def test_bench_streams_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "streams.json"
    out = _run("bench_streams.py", "--quick", "--json", str(out_json), timeout=120)
    for heading in ("streams of 20 events 5 ms apart", "stream capacity per core",
                    "C (orchestrator) against B (stock mitmdump)"):  # fmt: skip
        assert heading in out
    for target in ("A direct", "B mitmdump", "C orchestrator"):
        assert target in out
    assert "proxy CPU/event C/B" in out and "TTFE p50 C-B" in out
    data = json.loads(out_json.read_text())
    steps = data["steps"]
    assert len(steps) == 6  # 2 steps x 3 targets x 1 repeat
    # every stream arrived whole (all its events, [DONE], the final chunk) on every path
    assert all(s["ok"] == s["sent"] and not s["errors"] for s in steps)
    assert all(s["events"] == s["sent"] * 20 == s["upstream_events"] for s in steps)
    assert all(s["proxy_cpu_us_per_event"] is not None for s in steps if s["target"] != "A")
    assert set(data["capacity"]) == {"A", "B", "C"}
    assert "ledger rows written (C)" in out and "MISMATCH" not in out


@pytest.mark.e2e
def test_bench_limits_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "limits.json"
    out = _run("bench_limits.py", "--quick", "--json", str(out_json), timeout=180)
    assert "rate-limit check cost per request" in out
    assert "in process (state: unset)" in out and "through Redis (state: redis://" in out
    for row in ("off", "client", "full", "anonymous"):
        assert f"\n{row} " in out, row
    assert "in-process limits add " in out and "µs target" in out
    data = json.loads(out_json.read_text())
    assert data["target_us"] == 20
    for where in ("in_process", "redis"):
        rows = data[where]
        assert set(rows) == {"off", "client", "full", "anonymous"}
        assert all(r["n"] > 0 and r["p99_us"] >= r["p50_us"] > 0 for r in rows.values())
        assert rows["off"]["added_p50_us"] == 0
    worst = max(r["added_p50_us"] for r in data["in_process"].values())
    assert data["worst_added_p50_us"] == worst


@pytest.mark.e2e
def test_bench_cache_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "cache.json"
    out = _run("bench_cache.py", "--quick", "--upstream-ms", "5", "--json", str(out_json),
               timeout=180)  # fmt: skip
    assert "response cache: hit vs miss, 10 rounds each" in out
    assert "hit/miss p50" in out and "\nwhole " in out and "\nstreamed " in out
    # one upstream call per miss and none per hit (the script checks miss, then hit)
    assert "upstream check: 30/30 calls (one per miss, none per hit)" in out
    data = json.loads(out_json.read_text())
    assert data["upstream_calls"] == 30 and data["rounds"] == 10
    for kind in ("whole", "streamed"):
        for state in ("miss", "hit"):
            r = data["kinds"][kind][state]
            assert r["p95_ms"] >= r["p50_ms"] > 0


@pytest.mark.e2e
def test_bench_telemetry_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "telemetry.json"
    out = _run("bench_telemetry.py", "--quick", "--json", str(out_json), timeout=180)
    assert "telemetry export cost per request: off vs on (receiver up) vs down" in out
    for kind in ("whole", "streamed"):
        assert f"{kind}: on/off p50 " in out and f"{kind}: down/off p50 " in out
        assert "proxy CPU/req" in out
    assert "(one request + one attempt span each)" in out and "MISMATCH" not in out
    data = json.loads(out_json.read_text())
    assert data["export_check"]["spans"] == 2 * data["export_check"]["requests"] > 0
    for kind in ("whole", "streamed"):
        for state in ("off", "on", "down"):
            r = data["kinds"][kind][state]
            assert r["p95_ms"] >= r["p50_ms"] > 0 and r["cpu_ms_per_req"] >= 0
