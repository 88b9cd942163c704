"""Trusting the CA: `orchestrator ca` (the PEM, or `--paths`), `orchestrator trust` (the
settings per runtime, the system store) and `orchestrator doctor` against a real proxy whose
router answers the doctor's request itself (nothing leaves loopback)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from addon import cli
from addon.config.schema import Settings
from addon.errors import OrchestratorError
from addon.host import doctor, trust
from addon.host.doctor import Probe
from tests.e2e import ENV, RULES, _config, _free_port
from tests.fakeupstream import FakeUpstream
from tests.proxyproc import ORCHESTRATOR, ProxyProcess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(REPO / "orchestrator.yaml", tmp_path)
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    return tmp_path


# --------------------------------------------------------------------------- ca


def test_ca_prints_the_certificate_and_paths_prints_where_it_is(workdir: Path) -> None:
    config = str(workdir / "orchestrator.yaml")
    out = CliRunner().invoke(cli.main, ["ca", "-c", config])
    cert = workdir / "data" / "mitmproxy" / "mitmproxy-ca-cert.pem"
    assert out.exit_code == 0 and out.output == cert.read_text()
    assert out.output.startswith("-----BEGIN CERTIFICATE-----")
    out = CliRunner().invoke(cli.main, ["ca", "-c", config, "--paths"])
    bundle = cert.with_name("orchestrator-ca-bundle.pem")
    assert out.output.splitlines()[:2] == [f"CA certificate: {cert}",
                                           f"CA bundle (system roots + this CA): {bundle}"]  # fmt: skip
    assert bundle.read_text().endswith(cert.read_text())
    assert "ca" in cli.main.commands and "(PEM)" in (cli.main.commands["ca"].help or "")


# --------------------------------------------------------------------------- trust


def test_trust_prints_every_runtimes_setting_with_the_proxy(workdir: Path) -> None:
    out = CliRunner().invoke(cli.main, ["trust", "-c", str(workdir / "orchestrator.yaml")])
    assert out.exit_code == 0, out.output
    conf = workdir / "data" / "mitmproxy"
    cert, bundle = conf / "mitmproxy-ca-cert.pem", conf / "orchestrator-ca-bundle.pem"
    text = out.output
    for line in (
        f"CA certificate: {cert}",
        f"CA bundle (system roots + this CA): {bundle}",
        "Every runtime below also needs the proxy: export HTTPS_PROXY=http://127.0.0.1:8080 "
        "NO_PROXY=localhost,127.0.0.1",
        f"  export SSL_CERT_FILE={bundle}",
        f"  export REQUESTS_CA_BUNDLE={bundle}",
        f"  export NODE_EXTRA_CA_CERTS={cert} NODE_USE_ENV_PROXY=1   # fetch honours HTTPS_PROXY "
        "only with it",
        "  fetch ignores HTTPS_PROXY before Node 24: pass an undici ProxyAgent",
        "  GLOBAL_AGENT_HTTP_PROXY=http://127.0.0.1:8080 node -r global-agent/bootstrap app.js",
        f"  export NODE_EXTRA_CA_CERTS={cert}   # read at start; Bun honours HTTPS_PROXY itself",
        f"  curl --cacert {cert} …   (or export CURL_CA_BUNDLE={bundle})",
        f"  keytool -importcert -noprompt -alias local-ai-orchestrator -file {cert} -keystore "
        "orchestrator.jks -storepass changeit",
        "  java -Djavax.net.ssl.trustStore=orchestrator.jks -Dhttps.proxyHost=127.0.0.1 "
        "-Dhttps.proxyPort=8080 …",
        "  sudo orchestrator trust --install-system   (undo: --remove-system)",
    ):
        assert line in text.splitlines(), line


def test_trust_without_a_proxy_in_transparent_mode() -> None:
    lines = trust.runtime_settings(Path("/ca.pem"), Path("/bundle.pem"), None)
    assert not any("HTTPS_PROXY=" in line or "ProxyAgent" in line for line in lines)
    assert "  export NODE_EXTRA_CA_CERTS=/ca.pem" in lines


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, tuple[str, ...], Path]:
    """A relocated Debian trust store: local roots, the /etc/ssl/certs folder, no hooks."""
    if shutil.which("update-ca-certificates") is None:
        pytest.skip("update-ca-certificates is not installed (Debian/Ubuntu only)")
    local, etc, hooks = tmp_path / "local", tmp_path / "etc", tmp_path / "hooks"
    for d in (local, etc, hooks):
        d.mkdir()
    update = ("update-ca-certificates", "--localcertsdir", str(local), "--etccertsdir", str(etc),
              "--hooksdir", str(hooks))  # fmt: skip
    return local, update, etc / "ca-certificates.crt"


def test_the_system_store_takes_the_ca_and_gives_it_back(
    workdir: Path, store: tuple[Path, tuple[str, ...], Path]
) -> None:
    local, update, bundle = store
    cert = workdir / "ca.pem"
    assert (
        CliRunner().invoke(cli.main, ["ca", "-c", str(workdir / "orchestrator.yaml")]).exit_code
        == 0
    )
    cert.write_text((workdir / "data" / "mitmproxy" / "mitmproxy-ca-cert.pem").read_text())
    pem = cert.read_text().strip()
    path = trust.install_system(cert, local, update)
    assert path == local / "local-ai-orchestrator.crt" and oct(path.stat().st_mode)[-3:] == "644"
    assert pem in bundle.read_text()
    assert trust.install_system(cert, local, update) == path  # again: still one copy
    assert bundle.read_text().count(pem) == 1
    assert trust.remove_system(local, update) == path
    assert pem not in bundle.read_text() and not path.exists()
    assert trust.remove_system(local, update) is None


def test_the_system_store_needs_its_tool(tmp_path: Path) -> None:
    with pytest.raises(OrchestratorError, match=r"--install-system needs no-such-tool"):
        trust.install_system(tmp_path / "ca.pem", tmp_path, ("no-such-tool",))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--install-system", "--remove-system"],
         "error: --install-system and --remove-system undo each other: give one\n"),
        (["--install-system"], "error: `orchestrator trust --install-system` changes "
         "/usr/local/share/ca-certificates and needs root: run it with sudo (sudo "
         ".venv/bin/orchestrator trust --install-system …)\n"),
    ],
)  # fmt: skip
def test_trust_refusals(workdir: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                        message: str) -> None:  # fmt: skip
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    out = CliRunner().invoke(cli.main, ["trust", "-c", str(workdir / "orchestrator.yaml"), *args])
    assert out.exit_code == 2 and out.output == message


# --------------------------------------------------------------------------- doctor: pieces


@pytest.mark.parametrize(
    ("version", "env_proxy"),
    [("v20.20.2", False), ("v22.20.0", False), ("v22.21.0", True), ("v23.9.0", False),
     ("v24.0.0", True), ("v25.1.0", True), ("", False)],
)  # fmt: skip
def test_which_node_fetch_honours_https_proxy(version: str, env_proxy: bool) -> None:
    assert doctor.env_proxy_fetch(version) is env_proxy


CERT, BUNDLE = Path("/c/ca.pem"), Path("/c/bundle.pem")


@pytest.mark.parametrize(
    ("kw", "url", "proxy"),
    [
        ({}, "https://api.openai.com/v1/chat/completions", "http://127.0.0.1:8080"),
        ({"listen": "0.0.0.0:8080", "clients": [{"name": "a", "key_env": "X"}]},
         "https://api.openai.com/v1/chat/completions", "http://127.0.0.1:8080"),
        ({"intercept": ["127.0.0.1:11434", "openrouter.ai"]},
         "https://openrouter.ai/v1/chat/completions", "http://127.0.0.1:8080"),
        ({"mode": "transparent"}, "https://api.openai.com/v1/chat/completions", None),
        ({"mode": "reverse:https://api.openai.com"}, "http://127.0.0.1:8080/v1/chat/completions",
         None),
    ],
)  # fmt: skip
def test_where_the_doctor_asks(kw: dict[str, Any], url: str, proxy: str | None) -> None:
    s = Settings.model_validate({"listen": "127.0.0.1:8080", **kw})
    probe = doctor.probe_for(s, proxy=None, host=None, cert=CERT, bundle=BUNDLE)
    assert (probe.url, probe.proxy) == (url, proxy)
    other = doctor.probe_for(s, proxy="http://a:b@127.0.0.1:1", host="api.groq.com", cert=CERT,
                             bundle=BUNDLE)  # fmt: skip
    assert other.url.startswith("http://a:b@127.0.0.1:1/" if "reverse" in str(kw) else
                                "https://api.groq.com/")  # fmt: skip


PROBE = Probe("https://api.openai.com/v1/chat/completions", "http://127.0.0.1:8080", CERT, BUNDLE)


@pytest.mark.parametrize(
    ("answer", "verdict", "detail", "fix"),
    [
        ({"status": 400, "headers": {"X-Orchestrator-Request-Id": "orq-1"}}, "ok",
         "answered by the router (HTTP 400, request orq-1)", ""),
        ({"error": "APIConnectionError: Connection error. <- ConnectError: [SSL: "
                   "CERTIFICATE_VERIFY_FAILED] certificate verify failed"}, "fail",
         "TLS error: APIConnectionError", "FIX"),
        ({"error": "UNABLE_TO_VERIFY_LEAF_SIGNATURE: unable to verify the first certificate"},
         "fail", "TLS error: UNABLE_TO_VERIFY_LEAF_SIGNATURE", "FIX"),
        ({"error": "curl exit 7: curl: (7) Failed to connect to 127.0.0.1 port 8080"}, "fail",
         "no answer from http://127.0.0.1:8080: curl exit 7", "start the proxy"),
        ({"error": "proxy answered CONNECT with 407"}, "fail", "the router wants a client key",
         "put the key in the proxy URL"),
        ({"status": 401, "headers": {"content-type": "application/json"}}, "fail",
         "api.openai.com answered HTTP 401 without x-orchestrator headers",
         "add api.openai.com to `intercept:`"),
    ],
)  # fmt: skip
def test_the_doctors_verdicts(answer: dict[str, Any], verdict: str, detail: str,
                              fix: str) -> None:  # fmt: skip
    r = doctor.judge("python", answer, "FIX", PROBE)
    assert r.verdict == verdict and r.detail.startswith(detail) and r.fix.startswith(fix)


# --------------------------------------------------------------------------- doctor: for real


@pytest.fixture(scope="module")
def regular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    fakes = {n: FakeUpstream(n).start() for n in ("alpha", "beta", "gamma", "delta", "orig",
                                                  "outside")}  # fmt: skip
    p = ProxyProcess(tmp_path_factory.mktemp("doctor"), _config(fakes), RULES, ENV).start()
    yield p
    p.stop()
    for f in fakes.values():
        f.stop()


def _doctor(p: ProxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run([str(ORCHESTRATOR), "doctor", "-c", str(p.config_path), *args],
                          capture_output=True, text=True, timeout=120, check=False, env=env)  # fmt: skip


def _verdicts(out: str) -> dict[str, str]:
    return dict((m[1], m[0]) for m in re.findall(r"^(OK|FAIL|SKIP) +(\w+)", out, re.M))


@pytest.mark.e2e
def test_doctor_finds_every_runtime_routed(regular: ProxyProcess) -> None:
    out = _doctor(regular, "--confdir", str(regular.confdir), "--proxy", regular.url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == (
        f"POST https://api.openai.com/v1/chat/completions through {regular.url}, trusting "
        f"{regular.ca_cert}"
    )
    want = {"python": "OK", "curl": "OK"} | ({"node": "OK"} if shutil.which("node") else {})
    assert _verdicts(out.stdout).items() >= want.items()
    assert re.search(r"^OK +python +openai [\d.]+: answered by the router \(HTTP 400, request "
                     r"orq-[0-9a-f]+\)$", out.stdout, re.M), out.stdout  # fmt: skip
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False,
                          timeout=10).stdout if shutil.which("node") else "v24"  # fmt: skip
    if not doctor.env_proxy_fetch(node):  # this machine's Node: checked through a tunnel
        assert f"note: Node {node.strip()}: fetch ignores HTTPS_PROXY before Node 24" in out.stdout
    # the router answered each itself: no provider was tried
    line = re.compile(r"orchestrator-doctor -> -/- status=400 outcome=error attempts=0 ")
    deadline = time.monotonic() + 10
    while len(line.findall(regular.log())) < len(want):
        assert time.monotonic() < deadline, regular.log()[-3000:]
        time.sleep(0.05)


@pytest.mark.e2e
def test_doctor_says_what_to_fix_when_the_ca_is_not_the_proxys(regular: ProxyProcess,
                                                               tmp_path: Path) -> None:  # fmt: skip
    other = tmp_path / "other-ca"
    made = subprocess.run([str(ORCHESTRATOR), "ca", "-c", str(regular.config_path), "--confdir",
                           str(other)], capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    out = _doctor(regular, "--confdir", str(other), "--proxy", regular.url)
    assert out.returncode == 1
    assert _verdicts(out.stdout)["python"] == "FAIL" and _verdicts(out.stdout)["curl"] == "FAIL"
    assert f"      fix: export SSL_CERT_FILE={other / 'orchestrator-ca-bundle.pem'}" in out.stdout
    assert f"      fix: curl --cacert {other / 'mitmproxy-ca-cert.pem'} …" in out.stdout
    if shutil.which("node"):
        assert (
            f"      fix: export NODE_EXTRA_CA_CERTS={other / 'mitmproxy-ca-cert.pem'}" in out.stdout
        )
    assert out.stdout.count("TLS error") == len(_verdicts(out.stdout))


@pytest.mark.e2e
def test_doctor_says_when_no_proxy_answers(regular: ProxyProcess) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    out = _doctor(regular, "--confdir", str(regular.confdir), "--proxy", url)
    assert out.returncode == 1
    assert set(_verdicts(out.stdout).values()) == {"FAIL"}
    assert out.stdout.count(f"no answer from {url}") == len(_verdicts(out.stdout))
    assert "fix: start the proxy (`orchestrator run`) and check --proxy / `listen:`" in out.stdout


def test_doctor_needs_the_proxys_ca(workdir: Path) -> None:
    out = CliRunner().invoke(cli.main, ["doctor", "-c", str(workdir / "orchestrator.yaml"),
                                        "--confdir", str(workdir / "none")])  # fmt: skip
    assert out.exit_code == 2
    assert out.output == (f"error: no CA in {workdir / 'none'} yet: the proxy creates it when it "
                          "first starts (`orchestrator run`); or pass its --confdir\n")  # fmt: skip
