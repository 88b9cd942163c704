"""End to end: every launch path listens where `listen:` says and refuses an address other
machines reach without `clients:`; local mode works or refuses in one line; bad input that
used to log tracebacks (issue 18)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e import ENV, RULES, _clean, _config, ups, wait_for_request_lines
from tests.fakeupstream import FakeUpstream
from tests.proxyproc import ORCHESTRATOR, REPO, ProxyProcess

__all__ = ["_clean", "ups"]
pytestmark = pytest.mark.e2e
ENTRY = str(REPO / "addon" / "entry.py")
BANNER = re.compile(r"Local AI Orchestrator \S+: (listening on (\S+):(\d+)|capturing)")
NOISE = ("Traceback", "Stack backtrace", "Caused by", "Error handling request")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _workdir(root: Path, *, listen: str, mode: str = "regular") -> Path:
    """A config of one (never called) provider: enough to start and listen."""
    (root / "rules").mkdir(parents=True)
    cfg = {"listen": listen, "mode": mode, "intercept": ["api.openai.com"],
           "providers": {"alpha": {"base_url": "http://127.0.0.1:9/v1", "local": True}},
           "data": {"benchmarks": "data/benchmarks.db", "ledger": "data/ledger.db"},
           "admin": {"listen": "127.0.0.1:0"}}  # fmt: skip
    rules = {"profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1}}}},
             "models.yaml": {"models": [{"id": "m", "provider": "alpha", "input_per_mtok": 1,
                                         "output_per_mtok": 1, "context_tokens": 8000,
                                         "quality": 1000}]}}  # fmt: skip
    (root / "orchestrator.yaml").write_text(yaml.safe_dump(cfg))
    for name, data in rules.items():
        (root / "rules" / name).write_text(yaml.safe_dump(data))
    return root


class Launched:
    """A proxy started by any command line, its output captured."""

    def __init__(self, cmd: Sequence[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)  # fmt: skip
        self.lines: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    def banner(self, timeout: float = 30.0) -> re.Match[str] | None:
        """The banner once logged; None when the process exits without it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := BANNER.search(line):
                    return m
            if self.proc.poll() is not None:
                self._pump.join(timeout=5)
                return next((m for x in self.lines if (m := BANNER.search(x))), None)
            time.sleep(0.05)
        raise AssertionError(f"neither a banner nor an exit within {timeout}s:\n{self.log()}")

    def exit_code(self, timeout: float = 30.0) -> int:
        """Wait for the process to end by itself."""
        code = self.proc.wait(timeout=timeout)
        self._finish()
        return code

    def _finish(self) -> None:
        self._pump.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        """SIGINT, then kill after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._finish()


def _mitm(tool: str, work: Path, *flags: str) -> list[str]:
    cmd = [str(ORCHESTRATOR.with_name(tool)), "-s", ENTRY, "--set",
           f"orchestrator_config={work / 'orchestrator.yaml'}", "--set",
           f"confdir={work / 'certs'}", *flags]  # fmt: skip
    if tool == "mitmweb":
        cmd += ["--no-web-open-browser", "--web-port", str(_free_port())]
    return cmd


def _run(work: Path, *flags: str) -> list[str]:
    return [str(ORCHESTRATOR), "run", "-c", str(work / "orchestrator.yaml"), "--confdir",
            str(work / "certs"), *flags]  # fmt: skip


def listening(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses process `pid` listens on (from /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = row.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                hexaddr, hexport = f[1].split(":")
                raw = bytes.fromhex(hexaddr)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                host = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)
                out.add((host, int(hexport, 16)))
    return out


# --------------------------------------------------------------------------- listen:


@pytest.mark.skipif(sys.platform != "linux", reason="reads the sockets from /proc")
@pytest.mark.parametrize("tool", ["mitmdump", "mitmweb"])
def test_plain_mitmproxy_listens_only_where_listen_says(tool: str, tmp_path: Path) -> None:
    port = _free_port()
    work = _workdir(tmp_path, listen=f"127.0.0.1:{port}")
    p = Launched(_mitm(tool, work), work)  # no --listen-host / --listen-port
    try:
        m = p.banner()
        assert m is not None, p.log()
        assert (m.group(2), int(m.group(3))) == ("127.0.0.1", port)
        socks = listening(p.proc.pid)
        assert ("127.0.0.1", port) in socks
        assert {host for host, _ in socks} == {"127.0.0.1"}, socks  # admin, pipe, web UI too
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        p.stop()


@pytest.mark.parametrize(
    ("launch", "flags", "code"),
    [
        ("mitmdump", ("--listen-host", "0.0.0.0"), 1),
        ("mitmweb", ("--listen-host", "0.0.0.0"), 1),
        ("mitmdump", ("--mode", "regular@0.0.0.0:{port}"), 1),
        ("run", ("--set", "listen_host=0.0.0.0"), 2),
        ("run", ("--set", "mode=regular@0.0.0.0:{port}"), 2),
    ],
)
def test_every_launch_path_refuses_an_exposed_address_without_clients(
    launch: str, flags: tuple[str, ...], code: int, tmp_path: Path
) -> None:
    port = _free_port()
    work = _workdir(tmp_path, listen=f"127.0.0.1:{port}")
    args = [f.format(port=_free_port()) for f in flags]
    if launch != "run":
        args += ["--listen-port", str(port)]  # mitmproxy binds before it loads the addon
    p = Launched(_run(work, *args) if launch == "run" else _mitm(launch, work, *args), work)
    try:
        assert p.exit_code() == code, p.log()
    finally:
        p.stop()
    refusals = [x for x in p.lines if "is reachable from other machines and no `clients:`" in x]
    assert len(refusals) == 1, p.log()
    assert (
        ":" in refusals[0]
        and "add `clients:` (README: Security) or listen on 127.0.0.1" in (refusals[0])
    )
    assert not BANNER.search(p.log()) and not any(n in p.log() for n in NOISE), p.log()


# --------------------------------------------------------------------------- local mode


def _missing_here() -> str | None:
    from addon.proxy.process import local_capture_missing

    return local_capture_missing()


@pytest.mark.parametrize(
    ("launch", "spec"),
    [("run", "local"), ("run", "local:curl"), ("run", "local:!curl"), ("mitmdump", "local")],
)
def test_local_mode_captures_or_refuses_in_one_line(launch: str, spec: str, tmp_path: Path) -> None:
    """Where local capture cannot start (no sudo, no cgroup v2 root, a kernel that refuses
    the eBPF program: this container), the process exits non-zero with one line naming what
    is missing and what to do; where it can, it serves and /healthz says so."""
    work = _workdir(tmp_path, listen=f"127.0.0.1:{_free_port()}", mode=spec)
    p = Launched(_run(work) if launch == "run" else _mitm(launch, work), work)
    try:
        m = p.banner(timeout=40)
        if m is not None:  # it works here: capturing, and healthy
            assert m.group(0).endswith("capturing")
            admin = re.search(r"admin endpoint: (http://\S+)/ ", p.log())
            assert admin is not None
            assert httpx.get(f"{admin.group(1)}/healthz").json()["status"] == "ok"
            return
        code = p.exit_code()
    finally:
        p.stop()
    said = [x for x in p.lines if "local mode" in x]
    assert code == (2 if launch == "run" and _missing_here() else 1), p.log()
    assert len(said) == 1, p.log()
    assert (
        said[0]
        .rstrip()
        .endswith("use `mode: transparent` with `sudo .venv/bin/orchestrator capture install`")
    )
    assert not any(n in p.log() for n in NOISE), p.log()


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad(ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A proxy on the shared config (debug log), max_request_bytes 1 MiB."""
    cfg = _config(ups)
    cfg["max_request_bytes"] = 1024 * 1024
    p = ProxyProcess(tmp_path_factory.mktemp("bad"), cfg, RULES, ENV).start()
    yield p
    p.stop()


def test_a_100000_digit_integer_gets_a_clean_400(bad: ProxyProcess, ups: Any) -> None:
    orig = ups["orig"].port
    body = b'{"model":"gpt-4o","messages":[],"n":' + b"9" * 100_000 + b"}"
    r = httpx.post(f"http://127.0.0.1:{orig}/v1/chat/completions", content=body, proxy=bad.url,
                   headers={"Content-Type": "application/json"}, timeout=15)  # fmt: skip
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_number")
    assert "integer of 100000 digits" in err["message"]
    assert ups["orig"].requests() == []  # refused by the router, never forwarded
    wait_for_request_lines(bad, [r.headers["x-orchestrator-request-id"]])
    assert "Traceback" not in bad.log() and "internal router error" not in bad.log()


@pytest.mark.parametrize(("announced", "sent"), [(5_000_000, 1_000_000), (900_000, 500_000)])
def test_an_upload_abandoned_mid_body_logs_no_traceback(
    bad: ProxyProcess, ups: Any, announced: int, sent: int
) -> None:
    """Over max_request_bytes (answered 413 while the body drains into the pipe) or under it
    (buffered by mitmproxy): the client sends part of what it announced, then goes."""
    before = len(bad.lines)
    orig = ups["orig"].port
    head = (f"POST http://127.0.0.1:{orig}/v1/chat/completions HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{orig}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {announced}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", bad.port), timeout=10) as s:
        s.sendall(head + b" " * sent)
    bad.wait_for_log(re.compile(r"client disconnect"), timeout=10)
    time.sleep(1.0)  # the pipe's handler notices after mitmproxy has let go
    after = "\n".join(bad.lines[before:])
    assert "client disconnect" in after
    assert not any(n in after for n in NOISE), after
    r = httpx.get(f"http://127.0.0.1:{orig}/v1/models", proxy=bad.url, timeout=10)
    assert r.status_code == 200  # still serving
