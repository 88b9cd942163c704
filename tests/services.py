"""Real PostgreSQL and Redis servers for the scale-out tests, run privately on loopback.

Each test session starts its own `postgres` (a fresh `initdb` cluster in a temp dir,
trust auth, TCP on 127.0.0.1) and its own `redis-server` (no persistence) from the Debian
packages that `.ci/run` installs. Owning the processes lets a test stop and restart
PostgreSQL mid-run. Nothing here is skipped: a machine without the binaries fails with a
message that says what to install.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis

INSTALL_HINT = (
    "install them with `apt-get install postgresql redis-server` "
    "(`make test` does it when it runs as root with apt-get)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)  # fmt: skip
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not on this machine: {INSTALL_HINT}")
    return path


def _wait(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as e:  # the server is not up yet: poll again
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout}s (last error: {last})")


@dataclass
class PgServer:
    """A private PostgreSQL cluster: `url(db)` for a database, `stop()`/`start()` for a
    restart mid-test."""

    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orch-pg-")))
    proc: subprocess.Popen[bytes] | None = None
    _dbs: int = 0

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @staticmethod
    def _owner() -> str | None:
        # initdb and postgres refuse to run as root: run them as the `postgres` user
        return "postgres" if os.geteuid() == 0 else None

    def init(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True, user=self._owner(), group=self._owner(),
        )  # fmt: skip

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [_pg_bin("postgres"), "-D", str(self.datadir), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, user=self._owner(), group=self._owner(),
        )  # fmt: skip
        log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            with psycopg.connect(self.url("postgres"), connect_timeout=2) as c:
                c.execute("SELECT 1")
            return True

        _wait(up, "PostgreSQL")

    def stop(self) -> None:
        """A fast shutdown (SIGINT): like a database restart seen by clients."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "postgres.log").read_text(errors="replace")[-2000:]
        return ""

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        self._dbs += 1
        name = f"t{os.getpid()}_{self._dbs}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RedisServer:
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _dbs: int = 0

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(f"redis-server is not on this machine: {INSTALL_HINT}")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--databases", "64"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def up() -> bool:
            return bool(redis.Redis(port=self.port, socket_timeout=2).ping())

        _wait(up, "Redis")

    def new_database(self) -> str:
        """An empty logical database (1..63, reused round-robin after FLUSHDB); its URL."""
        self._dbs = self._dbs % 63 + 1
        redis.Redis(port=self.port, db=self._dbs).flushdb()
        return f"redis://127.0.0.1:{self.port}/{self._dbs}"

    def fleet_database(self) -> str:
        """`new_database`'s URL with 5 s timeouts (README: Rate limits): for replicas whose
        agreement a test asserts exactly. Under CI's load a Redis answer can come after the
        default 0.5 s, and a replica then counts alone (budgets fail closed) by design."""
        return self.new_database() + "?socket_timeout=5&socket_connect_timeout=5"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    srv = PgServer()
    try:
        srv.init()
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    srv = RedisServer()
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database on the session's PostgreSQL; restart the server with
    `pg_server.stop()` / `pg_server.start()`."""
    if pg_server.proc is None or pg_server.proc.poll() is not None:
        pg_server.start()  # a previous test left it stopped
    return pg_server.new_database()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.new_database()
