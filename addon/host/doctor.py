"""`orchestrator doctor`: does each runtime on this host reach an intercepted host through
the running proxy, trusting its CA?

Each runtime (python with the openai SDK or httpx, node, curl) runs one request with the
settings `orchestrator trust` prints: a POST to the host's chat completions endpoint with
`X-Orchestrator-Profile: orchestrator-doctor-check`, a profile no config defines, so the
router itself answers 400 `unknown_profile` with its `x-orchestrator-*` headers and no
provider is ever called (the fake key goes nowhere). Any answer carrying those headers, or
the router's own 407/401 asking for a client key, shows the request reached the router; no
answer, a TLS error or an answer without them is a failure with the setting to fix. Each
check leaves one 400 row in the ledger.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addon.config.schema import Settings
from addon.host.capture import WEB_PORTS, split_entry

PROFILE = "orchestrator-doctor-check"
KEY = "sk-orchestrator-doctor-not-a-key"
BODY = {"model": "orchestrator-doctor", "messages": [{"role": "user", "content": "doctor"}]}
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
           "X-Orchestrator-Profile": PROFILE}  # fmt: skip
CLEARED = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
           "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
           "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "NODE_USE_ENV_PROXY", "NODE_OPTIONS")  # fmt: skip
TLS = re.compile(r"certificate|CERT_|SSL|TLS|self.signed|issuer", re.I)
REFUSED = re.compile(r"refused|Failed to connect|reset by peer|ECONNRESET|timed? ?out|ETIMEDOUT|"
                     r"EHOSTUNREACH|unreachable", re.I)  # fmt: skip
AUTH = re.compile(r"\b40[17]\b")


@dataclass(frozen=True)
class Probe:
    """How each runtime reaches the intercepted host: `url`, through `proxy` (None when the
    connection is captured transparently or the proxy is the base URL), trusting `cert`
    (alone, for Node and curl) or `bundle` (system roots + the CA, for Python)."""

    url: str
    proxy: str | None
    cert: Path
    bundle: Path
    timeout_s: float = 15.0


@dataclass(frozen=True)
class Result:
    """One runtime's verdict: `ok`, `fail` or `skip`, what was seen, the fix, and notes."""

    runtime: str
    verdict: str
    detail: str
    fix: str = ""
    notes: tuple[str, ...] = ()


PYTHON = r"""
import json, os, sys
url, timeout = os.environ["DOCTOR_URL"], float(os.environ["DOCTOR_TIMEOUT"])
body, headers = json.loads(os.environ["DOCTOR_BODY"]), json.loads(os.environ["DOCTOR_HEADERS"])
def chain(e):
    out = []
    while e is not None and len(out) < 6:
        out.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return " <- ".join(out)
lib = "python"
try:
    try:
        import openai
        lib = f"openai {openai.__version__}"
    except ImportError:
        openai = None
        import httpx
        lib = f"httpx {httpx.__version__}"
    if openai is not None:
        c = openai.OpenAI(api_key=headers["Authorization"][7:], base_url=url.rsplit("/chat/", 1)[0],
                          max_retries=0, timeout=timeout)
        extra = {k: v for k, v in headers.items() if k != "Authorization"}
        try:
            r = c.chat.completions.with_raw_response.create(**body, extra_headers=extra)
            status, got = r.status_code, dict(r.headers)
        except openai.APIStatusError as e:
            status, got = e.status_code, dict(e.response.headers)
    else:
        r = httpx.post(url, json=body, headers=headers, timeout=timeout)
        status, got = r.status_code, dict(r.headers)
    print(json.dumps({"status": status, "headers": got, "client": lib}))
except Exception as e:
    print(json.dumps({"error": chain(e), "client": lib}))
"""

NODE = r"""
const http = require("http"), https = require("https"), tls = require("tls");
const url = new URL(process.env.DOCTOR_URL), proxy = process.env.DOCTOR_PROXY;
const body = process.env.DOCTOR_BODY, headers = JSON.parse(process.env.DOCTOR_HEADERS);
const ms = Number(process.env.DOCTOR_TIMEOUT) * 1000;
const done = (o) => { console.log(JSON.stringify(o)); process.exit(0); };
const why = (e) => [e && e.code, e && e.message, e && e.cause && (e.cause.code || e.cause.message)]
  .filter(Boolean).join(": ");
setTimeout(() => done({ error: `timed out after ${ms} ms` }), ms).unref();
if (process.env.DOCTOR_MODE === "fetch") {
  fetch(url, { method: "POST", headers, body })
    .then((r) => done({ status: r.status, headers: Object.fromEntries(r.headers) }))
    .catch((e) => done({ error: why(e) }));
} else {  // Node < 24: fetch ignores HTTPS_PROXY, so open the CONNECT tunnel by hand
  const p = new URL(proxy);
  const auth = p.username ? { "proxy-authorization": "Basic " +
    Buffer.from(decodeURIComponent(p.username) + ":" + decodeURIComponent(p.password)).toString("base64") } : {};
  const req = http.request({ host: p.hostname, port: p.port || 80, method: "CONNECT",
    path: `${url.hostname}:${url.port || 443}`, headers: auth });
  req.on("connect", (res, socket) => {
    if (res.statusCode !== 200) return done({ error: `proxy answered CONNECT with ${res.statusCode}` });
    const r = https.request({ host: url.hostname, path: url.pathname, method: "POST", headers,
      createConnection: () => tls.connect({ socket, servername: url.hostname }) },
      (res2) => done({ status: res2.statusCode, headers: res2.headers }));
    r.on("error", (e) => done({ error: why(e) }));
    r.end(body);
  });
  req.on("error", (e) => done({ error: why(e) }));
  req.end();
}
"""


def local_address(settings: Settings) -> str:
    """`host:port` to reach the proxy from this host (a wildcard listen address as loopback)."""
    host = settings.listen_host
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    return f"[{host}]:{settings.listen_port}" if ":" in host else f"{host}:{settings.listen_port}"


def probe_for(settings: Settings, *, proxy: str | None, host: str | None, cert: Path,
              bundle: Path) -> Probe:  # fmt: skip
    """Where the doctor's request goes for this config: regular mode through `proxy` (the
    `listen:` address by default) to `host` (the first intercepted name by default);
    transparent and local mode straight to `host` (the capture rules redirect it); reverse
    mode to the proxy as the base URL."""
    if settings.mode.startswith("reverse:"):
        base = (proxy or f"http://{local_address(settings)}").rstrip("/")
        return Probe(f"{base}/v1/chat/completions", None, cert, bundle)
    names = [e for e in settings.intercept if split_entry(e)[1] == WEB_PORTS]
    target = host or (names or [*settings.intercept, "api.openai.com"])[0]
    via = (proxy or f"http://{local_address(settings)}") if settings.mode == "regular" else None
    return Probe(f"https://{target}/v1/chat/completions", via, cert, bundle)


def env_proxy_fetch(version: str) -> bool:
    """Whether this Node (`v24.1.0`) has a fetch that honours HTTPS_PROXY with
    NODE_USE_ENV_PROXY=1: 24 and later, and 22.21 and later in the 22 line."""
    m = re.match(r"v?(\d+)\.(\d+)", version)
    major, minor = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return major >= 24 or (major == 22 and minor >= 21)


def _env(base: Mapping[str, str], probe: Probe, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in CLEARED}
    env.update(DOCTOR_URL=probe.url, DOCTOR_TIMEOUT=str(probe.timeout_s),
               DOCTOR_BODY=json.dumps(BODY), DOCTOR_HEADERS=json.dumps(HEADERS))  # fmt: skip
    if probe.proxy:
        env.update(HTTPS_PROXY=probe.proxy, https_proxy=probe.proxy, NO_PROXY="", no_proxy="")
    env.update(extra)
    return env


def judge(runtime: str, answer: Mapping[str, Any], fix_tls: str, probe: Probe) -> Result:
    """The verdict on one runtime's answer (`status` and `headers`, or `error`)."""
    host = probe.url.split("/")[2]
    if "error" in answer:
        err = str(answer["error"])[:400]
        if AUTH.search(err) and probe.proxy:
            return Result(runtime, "fail", f"the router wants a client key ({err})",
                          "put the key in the proxy URL: --proxy http://NAME:KEY@HOST:PORT")  # fmt: skip
        if REFUSED.search(err):
            where = probe.proxy or host
            return Result(runtime, "fail", f"no answer from {where}: {err}",
                          "start the proxy (`orchestrator run`) and check --proxy / `listen:`"
                          if probe.proxy else "start the proxy and `sudo orchestrator capture "
                          "install`; run the doctor as an app's user (the proxy's own user is "
                          "never captured); `sudo orchestrator capture status` shows the rules")  # fmt: skip
        if TLS.search(err):
            return Result(runtime, "fail", f"TLS error: {err}", fix_tls)
        return Result(runtime, "fail", err, fix_tls)
    headers = {str(k).lower(): str(v) for k, v in dict(answer.get("headers") or {}).items()}
    status = answer.get("status")
    rid = headers.get("x-orchestrator-request-id")
    if any(k.startswith("x-orchestrator-") for k in headers):
        return Result(runtime, "ok", f"answered by the router (HTTP {status}"
                      + (f", request {rid}" if rid else "") + ")")  # fmt: skip
    if status in (401, 407) and "local-ai-orchestrator" in headers.get("proxy-authenticate", "x"):
        return Result(runtime, "fail", f"the router answered {status}: it wants a client key",
                      "put the key in the proxy URL: --proxy http://NAME:KEY@HOST:PORT")  # fmt: skip
    return Result(runtime, "fail", f"{host} answered HTTP {status} without x-orchestrator "
                  "headers: the request did not go through the router",
                  f"add {host} to `intercept:` (and, without HTTPS_PROXY, "
                  "`sudo orchestrator capture install`)")  # fmt: skip


def _answer(out: str) -> dict[str, Any]:
    for line in reversed(out.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return {"error": out.strip()[-400:] or "no output"}


def _curl_answer(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    if done.returncode != 0:
        return {"error": f"curl exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    heads = [h for h in done.stdout.replace("\r", "").split("\n\n") if h.startswith("HTTP/")]
    if not heads:
        return {"error": f"curl printed no HTTP answer: {done.stdout.strip()[-400:]}"}
    head = heads[-1].splitlines()
    pairs = (line.split(":", 1) for line in head[1:] if ":" in line)
    return {"status": int(head[0].split()[1]), "headers": {k.strip(): v.strip() for k, v in pairs}}


@dataclass(frozen=True)
class Job:
    """One runtime's check: the program and its environment (the settings under test), the
    fix to print for a TLS failure, and notes for the report."""

    argv: list[str]
    env: dict[str, str]
    fix: str
    notes: tuple[str, ...] = ()


def _node_job(node: str, probe: Probe, env: Mapping[str, str]) -> Job:
    """fetch with NODE_USE_ENV_PROXY where that works; before Node 24 through a CONNECT
    tunnel opened by hand (fetch would ignore HTTPS_PROXY), with a note saying so."""
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout.strip()  # fmt: skip
    extra = {"NODE_EXTRA_CA_CERTS": str(probe.cert), "DOCTOR_MODE": "fetch",
             "DOCTOR_PROXY": probe.proxy or ""}  # fmt: skip
    notes: tuple[str, ...] = ()
    if probe.proxy and env_proxy_fetch(version):
        extra["NODE_USE_ENV_PROXY"] = "1"
    elif probe.proxy:
        extra["DOCTOR_MODE"] = "connect"
        notes = (f"Node {version}: fetch ignores HTTPS_PROXY before Node 24; checked through a "
                 "CONNECT tunnel — give fetch an undici ProxyAgent, or capture the app "
                 "(`sudo orchestrator capture install`)",)  # fmt: skip
    return Job([node, "-e", NODE], _env(env, probe, extra),
               f"export NODE_EXTRA_CA_CERTS={probe.cert}", notes)  # fmt: skip


def jobs(probe: Probe, python: str, env: Mapping[str, str]) -> dict[str, Job | Result]:
    """Each runtime's check, or its `skip` result when it is not installed."""
    node, curl = (shutil.which(n, path=env.get("PATH")) for n in ("node", "curl"))
    py_env = _env(env, probe, {"SSL_CERT_FILE": str(probe.bundle),
                               "REQUESTS_CA_BUNDLE": str(probe.bundle)})  # fmt: skip
    out: dict[str, Job | Result] = {
        "python": Job([python, "-c", PYTHON], py_env, f"export SSL_CERT_FILE={probe.bundle}"),
        "node": _node_job(node, probe, env) if node else Result("node", "skip", "node is not on PATH"),
        "curl": Result("curl", "skip", "curl is not on PATH"),
    }  # fmt: skip
    if curl:
        argv = [curl, "-sS", "-o", "/dev/null", "-D", "-", "--max-time", str(probe.timeout_s),
                "--cacert", str(probe.cert), "-X", "POST", probe.url, "--data", json.dumps(BODY),
                *(a for k, v in HEADERS.items() for a in ("-H", f"{k}: {v}"))]  # fmt: skip
        out["curl"] = Job(argv, _env(env, probe, {}), f"curl --cacert {probe.cert} …")
    return out


def check_all(probe: Probe, python: str = sys.executable,
              base_env: Mapping[str, str] | None = None) -> list[Result]:  # fmt: skip
    """Run python, node and curl against `probe` (at once, each within its timeout) and
    judge each answer; a runtime that is not installed is skipped."""
    todo = jobs(probe, python, dict(os.environ if base_env is None else base_env))
    results = {n: j for n, j in todo.items() if isinstance(j, Result)}
    procs: dict[str, tuple[Job, subprocess.Popen[str]]] = {}
    for name, job in todo.items():
        if isinstance(job, Job):
            try:
                procs[name] = job, subprocess.Popen(job.argv, env=job.env, text=True,
                                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)  # fmt: skip
            except OSError as e:
                results[name] = Result(name, "fail", f"cannot run {job.argv[0]}: {e}",
                                       "give a program that exists (--python PATH)")  # fmt: skip
    for name, (job, proc) in procs.items():
        try:
            out, err = proc.communicate(timeout=probe.timeout_s + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            answer: dict[str, Any] = {"error": f"timed out after {probe.timeout_s + 10} s"}
        else:
            done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            answer = _curl_answer(done) if name == "curl" else _answer(out or err)
        r = judge(name, answer, job.fix, probe)
        client = answer.get("client")
        results[name] = Result(name, r.verdict, f"{client}: {r.detail}" if client else r.detail,
                               r.fix, job.notes)  # fmt: skip
    return [results[n] for n in ("python", "node", "curl")]


def report(results: Sequence[Result]) -> list[str]:
    """The lines `orchestrator doctor` prints: one per runtime, then its fix and notes."""
    out = []
    for r in results:
        out.append(f"{r.verdict.upper():<5} {r.runtime:<7} {r.detail}")
        if r.fix and r.verdict == "fail":
            out.append(f"      fix: {r.fix}")
        out.extend(f"      note: {n}" for n in r.notes)
    return out
