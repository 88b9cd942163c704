"""Start a real `orchestrator run` process for end-to-end tests and wait until it listens."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATOR = Path(sys.executable).with_name("orchestrator")
LISTEN_RE = re.compile(r"listening at \S*?:(\d+)\.?$", re.I)
ADMIN_RE = re.compile(r"admin endpoint: http://[^:]+:(\d+)/")


class ProxyProcess:
    """`orchestrator run -c CONFIG --port 0`, its log captured; `port` parsed from the log.
    A config with `log_level: debug` makes the proxy itself log the router's debug lines
    (one per request), which the tests inspect."""

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        rules: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "orchestrator.yaml"
        self.confdir = workdir / "certs"
        (workdir / "rules").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        for name, data in rules.items():
            (workdir / "rules" / name).write_text(yaml.safe_dump(data, sort_keys=False))
        self.env = {**os.environ, **(env or {})}
        for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
            self.env.pop(k, None)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The proxy's own address (valid once started)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """The proxy's CA certificate alone."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def ca_bundle(self) -> Path:
        """System roots plus the proxy's CA: what SSL_CERT_FILE should name."""
        return self.confdir / "orchestrator-ca-bundle.pem"

    @property
    def ledger_path(self) -> Path:
        """The SQLite ledger the shared test config writes."""
        return self.workdir / "data" / "ledger.db"

    def start(self, timeout: float = 30.0, *, mitmdump: bool = False) -> ProxyProcess:
        """Start the process and wait (up to `timeout` s) until it listens and has printed its
        banner; `mitmdump` loads the addon into plain mitmdump instead."""
        if mitmdump:  # the addon loaded straight into mitmproxy, no `orchestrator run`
            cmd = [
                str(ORCHESTRATOR.with_name("mitmdump")),
                "-s",
                str(REPO / "addon" / "entry.py"),
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                "0",
                "--set",
                f"orchestrator_config={self.config_path}",
                "--set",
                f"confdir={self.confdir}",
            ]
        else:
            cmd = [
                str(ORCHESTRATOR),
                "run",
                "-c",
                str(self.config_path),
                "--port",
                "0",
                "--confdir",
                str(self.confdir),
            ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        try:
            m = LISTEN_RE.search(self.wait_for_log(LISTEN_RE, timeout))
            assert m is not None  # wait_for_log returns a matching line
            self.port = int(m.group(1))
            self.wait_for_log(re.compile("Local AI Orchestrator"), timeout)
        except BaseException:
            self.stop()  # never leave a half-started proxy behind
            raise
        return self

    def admin_url(self, timeout: float = 10.0) -> str:
        """The admin endpoint's base URL, waiting for its log line."""
        m = ADMIN_RE.search(self.wait_for_log(ADMIN_RE, timeout))
        assert m is not None
        return f"http://127.0.0.1:{m.group(1)}"

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_log(
        self, pattern: re.Pattern[str], timeout: float = 10.0, *, since: int = 0
    ) -> str:
        """The first captured line matching `pattern` (from line `since` on: pass
        `len(proxy.lines)` taken before the action), waiting up to `timeout` s for it;
        TimeoutError (with the log) if none comes, RuntimeError if the process exits."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[since:]:
                    if pattern.search(line):
                        return line
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError("proxy exited early:\n" + self.log())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no log line matching {pattern.pattern!r}:\n{self.log()}")
                self._cond.wait(left)

    def log(self) -> str:
        """Everything captured so far (complete only once the process has stopped)."""
        with self._cond:
            return "\n".join(self.lines)

    def client_env(self) -> dict[str, str]:
        """Environment for an app using the proxy: HTTPS_PROXY and the CA bundle."""
        return {
            "HTTPS_PROXY": self.url,
            "HTTP_PROXY": self.url,
            "SSL_CERT_FILE": str(self.ca_bundle),
            "NO_PROXY": "",
        }

    def stop(self) -> None:
        """SIGINT and wait (kill after 10 s); the log is complete afterwards."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._close_pipe()

    def kill9(self) -> None:
        """SIGKILL: no shutdown hooks run."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=5)
        self._close_pipe()

    def _close_pipe(self) -> None:
        self._pump_thread.join(timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
