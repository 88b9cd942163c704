"""The CLI's friction fixes (issue 18): `run --host` keeps the loopback rule of `listen:`, a
busy port names `orchestrator run`'s own flag, `status`/`reload` read a running proxy even
when the file on disk is broken, and `prune` counts, refuses negative days and asks before
deleting everything."""

from __future__ import annotations

import re
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from addon import cli
from addon.host import running
from addon.store import sqlite_ledger
from addon.store.ledger_schema import Dialect, LedgerRow, insert_sql
from tests.e2e import ENV, RULES, _config, _free_port
from tests.fakeupstream import FakeUpstream
from tests.proxyproc import ORCHESTRATOR, ProxyProcess
from tests.services import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

REPO = Path(__file__).resolve().parents[1]
DAY = 86400.0


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The shipped orchestrator.yaml and rules/ in a folder of their own."""
    shutil.copy(REPO / "orchestrator.yaml", tmp_path)
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    return tmp_path


def _with(workdir: Path, extra: str) -> Path:
    path = workdir / "orchestrator.yaml"
    path.write_text(path.read_text() + extra)
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args))


# --------------------------------------------------------------------------- run --host


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """`serve()` replaced by a recorder: what `orchestrator run` would have started."""
    calls: list[dict[str, Any]] = []

    def serve(path: Path, **kw: Any) -> int:
        calls.append(kw)
        return 0

    monkeypatch.setattr("addon.proxy.process.serve", serve)
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "fd00::1", "myhost.lan"])
def test_run_host_off_loopback_without_clients_is_refused(
    workdir: Path, served: list[dict[str, Any]], host: str
) -> None:
    out = invoke("run", "-c", str(workdir / "orchestrator.yaml"), "--host", host, "--port", "0")
    assert out.exit_code == 2 and served == []
    assert out.output == (
        f"error: --host {host}: {host}:0 is reachable from other machines and no `clients:` are "
        "configured, so anyone there could spend your provider keys — add `clients:` (README: "
        "Security) or listen on 127.0.0.1\n"
    )


def test_listen_off_loopback_in_the_file_says_the_same(workdir: Path) -> None:
    text = (workdir / "orchestrator.yaml").read_text().replace("listen: 127.0.0.1:8080",
                                                              "listen: 0.0.0.0:8080")  # fmt: skip
    (workdir / "orchestrator.yaml").write_text(text)
    out = invoke("check", "-c", str(workdir / "orchestrator.yaml"))
    assert out.exit_code == 2
    assert ("0.0.0.0:8080 is reachable from other machines and no `clients:` are configured, so "
            "anyone there could spend your provider keys — add `clients:` (README: Security) or "
            "listen on 127.0.0.1") in out.output  # fmt: skip


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_run_host_on_loopback_starts(workdir: Path, served: list[dict[str, Any]],
                                     host: str) -> None:  # fmt: skip
    out = invoke("run", "-c", str(workdir / "orchestrator.yaml"), "--host", host, "--port", "0",
                 "--confdir", str(workdir / "ca"))  # fmt: skip
    assert out.exit_code == 0, out.output
    assert served[0]["host"] == host and served[0]["port"] == 0


def test_run_host_off_loopback_with_clients_starts(workdir: Path,
                                                   served: list[dict[str, Any]]) -> None:  # fmt: skip
    path = _with(workdir, "clients:\n  - {name: team, key_env: ORQ_TEST_CLIENT}\n")
    out = invoke("run", "-c", str(path), "--host", "0.0.0.0", "--port", "0",
                 "--confdir", str(workdir / "ca"))  # fmt: skip
    assert out.exit_code == 0, out.output
    assert served[0]["host"] == "0.0.0.0"


# --------------------------------------------------------------------------- busy port


def test_a_busy_port_names_orchestrator_runs_own_flag(workdir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([str(ORCHESTRATOR), "run", "-c", str(workdir / "orchestrator.yaml"),
                              "--port", str(port), "--confdir", str(workdir / "ca")],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: is already in use (another proxy, or one "
        "still running?): pick a free port with `orchestrator run --port N` or change `listen:` "
        "in orchestrator.yaml\n"
    )
    assert "--mode" not in out.stdout + out.stderr


def test_a_privileged_port_says_so(workdir: Path, served: list[dict[str, Any]],
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    def refuse(self: socket.socket, addr: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    out = invoke("run", "-c", str(workdir / "orchestrator.yaml"), "--port", "443")
    assert out.exit_code == 2 and served == []
    assert out.output == ("error: cannot listen on 127.0.0.1:443: needs root (a port below "
                          "1024): use `orchestrator run --port 8080`\n")  # fmt: skip


# --------------------------------------------------------------------------- status / reload


@pytest.mark.parametrize(
    ("text", "admin", "url", "broken"),
    [
        ("admin: {listen: 127.0.0.1:9555}\n", None, "http://127.0.0.1:9555", False),
        ("admin: {listen: '[::1]:9555'}\n", None, "http://[::1]:9555", False),
        ("admin: {listen: 127.0.0.1:9555}\nlog_level: loud\n", None, "http://127.0.0.1:9555", True),
        ("admin: {listen: nowhere}\n", None, "http://127.0.0.1:9090", True),
        ("admin: [1, 2\n", None, "http://127.0.0.1:9090", True),
        ("log_level: loud\n", "http://127.0.0.1:7/", "http://127.0.0.1:7", True),
    ],
)
def test_the_admin_endpoint_is_read_leniently(
    workdir: Path, text: str, admin: str | None, url: str, broken: bool
) -> None:
    path = _with(workdir, text)
    ep = running.endpoint(path, admin)
    assert ep.url == url and (ep.problem is not None) == broken


def test_the_admin_endpoint_of_a_missing_file_is_the_default(tmp_path: Path) -> None:
    ep = running.endpoint(tmp_path / "nothere.yaml")
    assert ep.url == "http://127.0.0.1:9090" and "file not found" in (ep.problem or "")


@pytest.fixture
def live(tmp_path: Path) -> Iterator[ProxyProcess]:
    """A proxy with its admin endpoint on a known port."""
    fakes = {n: FakeUpstream(n).start() for n in ("alpha", "beta", "gamma", "delta", "orig",
                                                  "outside")}  # fmt: skip
    cfg = _config(fakes)
    cfg["admin"] = {"listen": f"127.0.0.1:{_free_port()}"}
    p = ProxyProcess(tmp_path / "proxy", cfg, RULES, ENV).start()
    yield p
    p.stop()
    for f in fakes.values():
        f.stop()


def _orq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ORCHESTRATOR), *args], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


@pytest.mark.e2e
def test_status_shows_the_running_proxy_while_the_file_is_broken(live: ProxyProcess) -> None:
    admin = live.admin_url()
    data = yaml.safe_load(live.config_path.read_text())
    data["log_level"] = "loud"
    live.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    live.wait_for_log(re.compile(r"rejected"), timeout=10)
    out = _orq("status", "-c", str(live.config_path))
    assert out.returncode == 0, out.stderr
    assert "last reload REJECTED" in out.stdout and "log_level" in out.stdout
    assert out.stderr.startswith(f"note: {live.config_path} does not load now; the running proxy "
                                 "keeps its last good config:\n")  # fmt: skip
    reload = _orq("reload", "-c", str(live.config_path))
    assert reload.returncode == 2 and "log_level" in reload.stdout
    # a file that is not even YAML, with --admin naming the endpoint
    live.config_path.write_text("listen: [unclosed\n")
    out = _orq("status", "-c", str(live.config_path), "--admin", admin, "--json")
    assert out.returncode == 0, out.stderr
    assert "YAML syntax error" in out.stderr and '"last_error"' in out.stdout


# --------------------------------------------------------------------------- prune


@pytest.fixture
def ledger(workdir: Path) -> Path:
    """The config's SQLite ledger holding rows 0.5, 2, 10 and 40 days old."""
    path = workdir / "data" / "ledger.db"
    conn = sqlite_ledger.connect(path)
    sqlite_ledger.migrate(conn)
    now = time.time()
    with conn:
        conn.executemany(insert_sql(Dialect.SQLITE, replace=True), [
            LedgerRow(f"orq-{age}", now - age * DAY, "ok").as_row() for age in (0.5, 2, 10, 40)
        ])  # fmt: skip
    conn.close()
    return path


def _rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    finally:
        conn.close()


def test_prune_dry_run_counts_and_deletes_nothing(workdir: Path, ledger: Path) -> None:
    out = invoke("prune", "-c", str(workdir / "orchestrator.yaml"), "--older-than", "5",
                 "--dry-run")  # fmt: skip
    assert out.exit_code == 0
    assert out.output == (f"would prune 2 rows older than 5 days from {ledger} (dry run: "
                          "nothing deleted)\n")  # fmt: skip
    assert _rows(ledger) == 4
    out = invoke("prune", "-c", str(workdir / "orchestrator.yaml"), "--dry-run")  # retention 30
    assert out.output.startswith("would prune 1 rows older than 30 days")


def test_prune_deletes_what_it_counted(workdir: Path, ledger: Path) -> None:
    out = invoke("prune", "-c", str(workdir / "orchestrator.yaml"), "--older-than", "5")
    assert out.exit_code == 0 and out.output == f"pruned 2 rows older than 5 days from {ledger}\n"
    assert _rows(ledger) == 2


@pytest.mark.parametrize("days", ["-1", "-30"])
def test_prune_refuses_negative_days(workdir: Path, ledger: Path, days: str) -> None:
    out = invoke("prune", "-c", str(workdir / "orchestrator.yaml"), "--older-than", days)
    assert out.exit_code == 2
    assert out.output == (f"error: --older-than {days}: give the days to keep, 0 or more (0 "
                          "deletes every row)\n")  # fmt: skip
    assert _rows(ledger) == 4


def test_prune_everything_needs_yes_without_a_terminal(workdir: Path, ledger: Path) -> None:
    out = invoke("prune", "-c", str(workdir / "orchestrator.yaml"), "--older-than", "0")
    assert out.exit_code == 2
    assert out.output == (f"error: --older-than 0 deletes all 4 rows of {ledger}: pass --yes to "
                          "confirm (there is no terminal to ask on)\n")  # fmt: skip
    assert _rows(ledger) == 4
    out = invoke("prune", "-c", str(workdir / "orchestrator.yaml"), "--older-than", "0", "--yes")
    assert out.exit_code == 0 and out.output == f"pruned 4 rows older than 0 days from {ledger}\n"
    assert _rows(ledger) == 0


@pytest.mark.parametrize(("answer", "code", "left"), [("y\n", 0, 0), ("n\n", 1, 4), ("\n", 1, 4)])
def test_prune_everything_asks_at_a_terminal(
    workdir: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch, answer: str, code: int, left: int
) -> None:
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    out = CliRunner().invoke(cli.main, ["prune", "-c", str(workdir / "orchestrator.yaml"),
                                        "--older-than", "0"], input=answer)  # fmt: skip
    assert out.exit_code == code
    assert f"delete all 4 rows of {ledger}? [y/N]" in out.output
    assert _rows(ledger) == left
    if code:
        assert "error: nothing deleted" in out.output


def test_prune_asks_only_at_a_terminal_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    monkeypatch.delenv("CI", raising=False)
    assert cli._interactive() is True
    monkeypatch.setenv("CI", "true")
    assert cli._interactive() is False


def test_prune_dry_run_on_a_postgresql_ledger(workdir: Path, pg_url: str) -> None:
    import psycopg

    from addon.store import pgledger
    from addon.store.pg_reader import PgReader

    assert PgReader(pg_url).count_before(time.time()) == 0  # no table yet
    with psycopg.connect(pg_url, autocommit=True) as conn:
        pgledger.migrate(conn)
        for i, age in enumerate((1, 10, 40)):
            conn.execute("INSERT INTO requests (id, ts, outcome) VALUES (%s, %s, 'ok')",
                         (f"orq-{i}", time.time() - age * DAY))  # fmt: skip
    text = (workdir / "orchestrator.yaml").read_text()
    text = text.replace("ledger: data/ledger.db", f'ledger: "{pg_url}"')
    (workdir / "orchestrator.yaml").write_text(text)
    out = invoke(
        "prune", "-c", str(workdir / "orchestrator.yaml"), "--older-than", "5", "--dry-run"
    )
    assert out.exit_code == 0, out.output
    assert out.output.startswith("would prune 2 rows older than 5 days from postgresql://")
    assert PgReader(pg_url).count_before(time.time()) == 3


# --------------------------------------------------------------------------- names resolving inward


def _provider_named(workdir: Path, host: str) -> None:
    """Add a non-local provider at `host` to the shipped config."""
    path = workdir / "orchestrator.yaml"
    data = yaml.safe_load(path.read_text())
    data["providers"]["inward"] = {"base_url": f"https://{host}/v1", "api_key_env": "INWARD_KEY"}
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
def inward_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name lookups as in a network whose DNS maps `llm.internal.example` to a link-local and
    `loop.example` to a loopback address; every other name fails, as offline."""
    table = {"llm.internal.example": "169.254.169.254", "loop.example": "127.0.0.1"}

    def fake(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host in table:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], 443))]
        raise socket.gaierror(socket.EAI_NONAME, host)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.parametrize(("host", "kind"), [("llm.internal.example", "link-local"),
                                            ("loop.example", "loopback")])  # fmt: skip
def test_check_refuses_a_provider_name_that_resolves_inward(
    workdir: Path, inward_dns: None, host: str, kind: str
) -> None:
    _provider_named(workdir, host)
    out = invoke("check", "-c", str(workdir / "orchestrator.yaml"))
    assert out.exit_code == 2, out.output
    assert f"providers.inward.base_url: {host} resolves to {kind} address" in out.output
    assert "1 provider(s) resolve to internal addresses" in out.output


def test_check_passes_names_that_do_not_resolve(workdir: Path, inward_dns: None) -> None:
    _provider_named(workdir, "llm.public.example")  # offline: not answered, not a problem
    out = invoke("check", "-c", str(workdir / "orchestrator.yaml"))
    assert out.exit_code == 0, out.output
    assert "resolves to" not in out.output


def test_run_warns_of_a_provider_name_that_resolves_inward(
    workdir: Path, inward_dns: None, served: list[dict[str, Any]]
) -> None:
    _provider_named(workdir, "loop.example")
    out = invoke("run", "-c", str(workdir / "orchestrator.yaml"), "--port", "0",
                 "--confdir", str(workdir / "ca"))  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "warning: providers.inward.base_url: loop.example resolves to loopback" in out.output
    assert served, "the proxy still starts: the other providers are usable"
