"""End to end: `orchestrator capture` in a network namespace of its own. A real `orchestrator
run` in `mode: transparent` listens on the namespace's loopback; the namespace's hosts file
(`ip netns exec` bind-mounts /etc/netns/NS/hosts) maps api.openai.com to an address on its
loopback and outside.test to another, where a TLS server of its own answers. Apps run as
another user (the proxy's user is never captured) with NO proxy variables: curl and the
openai SDK reach api.openai.com and are routed to loopback fakes, with one fallback;
outside.test passes untouched; `capture remove` leaves the rule set as it was. Nothing
leaves the namespace."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e import CLIENT_KEY, ENV, RULES, _config
from tests.fakeupstream import FakeUpstream
from tests.proxyproc import ORCHESTRATOR, ProxyProcess

pytestmark = pytest.mark.e2e

APP_UID = 65534  # nobody: the captured apps' user; the proxy runs as root, never captured
API_IP = "192.0.2.10"  # api.openai.com inside the namespace (nothing listens there)
OUTSIDE_IP = "192.0.2.20"  # outside.test: a TLS server of its own on port 443
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
              "NODE_EXTRA_CA_CERTS")  # fmt: skip
# the app user may read the test's private temp files (and the virtualenv under /root)
AS_APP = ["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups",
          "--inh-caps=+dac_read_search,+dac_override",
          "--ambient-caps=+dac_read_search,+dac_override"]  # fmt: skip
SDK = r"""
import json, os, openai
c = openai.OpenAI(api_key=os.environ["APP_KEY"], base_url="https://api.openai.com/v1", max_retries=0, timeout=30)
r = c.chat.completions.with_raw_response.create(
    model="dead-first", messages=[{"role": "user", "content": "Say hi"}])
data = r.parse()
with c.chat.completions.with_streaming_response.create(
        model="dead-first", stream=True, messages=[{"role": "user", "content": "Say hi"}]) as s:
    streamed = "".join(ch.choices[0].delta.content or "" for ch in s.parse() if ch.choices)
print(json.dumps({"content": data.choices[0].message.content,
                  "provider": r.headers.get("x-orchestrator-provider"),
                  "attempts": r.headers.get("x-orchestrator-attempts"),
                  "streamed": streamed}))
"""


def _sh(*argv: str, check: bool = True, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False,
                         env=env)  # fmt: skip
    if check:
        assert out.returncode == 0, f"{argv}: {out.stdout}\n{out.stderr}"
    return out


def _why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "creating a network namespace needs root (CI runs the suite as root)"
    if shutil.which("ip") is None or shutil.which("setpriv") is None:
        return "iproute2 and util-linux (ip, setpriv) are not installed"
    probe = f"orqprobe{os.getpid()}"
    made = _sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    _sh("ip", "netns", "del", probe, check=False)
    return None


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run this thread (and what it starts: sockets, threads, processes) in namespace `ns`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        os.setns(there, os.CLONE_NEWNET)
        yield
    finally:
        os.setns(home, os.CLONE_NEWNET)
        os.close(home)
        os.close(there)


def _self_signed(name: str, folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


class _Outside(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"outside.test answered itself"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Namespace:
    """The namespace, its proxy and the files the apps trust."""

    name: str
    proxy: ProxyProcess
    outside_cert: Path

    def ns(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command as root inside the namespace (with its hosts file)."""
        return _sh("ip", "netns", "exec", self.name, *argv, check=check)

    def app(
        self, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A command as the app user inside the namespace, with no proxy variables."""
        clean = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
        return _sh("ip", "netns", "exec", self.name, *AS_APP, *argv, check=False,
                   env={**clean, **(env or {})})  # fmt: skip

    def capture(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`orchestrator capture ARGS` as root inside the namespace."""
        return self.ns(str(ORCHESTRATOR), "capture", *args, check=check)

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`capture install` for this proxy's config and port."""
        return self.capture("install", "-c", str(self.proxy.config_path), "--port",
                            str(self.proxy.port), *args)  # fmt: skip

    def ruleset(self) -> str:
        """The whole nftables rule set of the namespace, without counter values."""
        return self.ns("nft", "--stateless", "list", "ruleset").stdout

    def curl_api(self, *, as_app: bool = True) -> subprocess.CompletedProcess[str]:
        """A chat completion for the `dead-first` route (dead, then beta) with curl."""
        argv = ["curl", "-sS", "-i", "--max-time", "30", "--cacert", str(self.proxy.ca_cert),
                "https://api.openai.com/v1/chat/completions", "-H",
                f"Authorization: Bearer {CLIENT_KEY}", "-H", "Content-Type: application/json",
                "-d", '{"model": "dead-first", "messages": [{"role": "user", "content": "hi"}]}']  # fmt: skip
        return self.app(*argv) if as_app else self.ns(*argv, check=False)

    def curl_outside(self) -> subprocess.CompletedProcess[str]:
        """A GET to outside.test trusting only its own certificate (not the proxy's CA)."""
        return self.app("curl", "-sS", "--max-time", "30", "--cacert", str(self.outside_cert),
                        "https://outside.test/")  # fmt: skip


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespace]:
    if reason := _why_no_netns():
        pytest.skip(reason)
    if shutil.which("nft") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install nftables (scripts/system_deps.sh)")
        pytest.skip("nftables is not installed (scripts/system_deps.sh installs it)")
    name = f"orqcap{os.getpid()}"
    etc = Path("/etc/netns") / name
    # the app user's own permissions must reach the config (click checks them): a folder
    # everyone may traverse, instead of pytest's private one
    work = Path(tempfile.mkdtemp(prefix="orq-capture-"))
    os.chmod(work, 0o755)
    _sh("ip", "netns", "add", name)
    stops: list[object] = []
    try:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{API_IP} api.openai.com\n"
                                   f"{OUTSIDE_IP} outside.test\n")  # fmt: skip
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        for ip in (API_IP, OUTSIDE_IP):
            _sh("ip", "-n", name, "addr", "add", f"{ip}/32", "dev", "lo")
        # a table of someone else's, which capture must leave alone
        _sh("ip", "netns", "exec", name, "nft", "add table inet other; add chain inet other c { "
            "type filter hook output priority 10; policy accept; }; add rule inet other c counter")  # fmt: skip
        cert, key = _self_signed("outside.test", work)
        with entered(name):
            fakes = {n: FakeUpstream(n, content=f"Hello from {n}").start()
                     for n in ("alpha", "beta", "gamma", "delta", "orig", "outside")}  # fmt: skip
            stops.extend(fakes.values())
            server = ThreadingHTTPServer((OUTSIDE_IP, 443), _Outside)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            stops.append(server)
            cfg = {**_config(fakes, mode="transparent"), "intercept": ["api.openai.com"]}
            proxy = ProxyProcess(work / "proxy", cfg, RULES, ENV).start()
            stops.append(proxy)
        yield Namespace(name, proxy, cert)
    finally:
        for s in reversed(stops):
            if isinstance(s, ThreadingHTTPServer):
                s.shutdown()
                s.server_close()
            else:
                s.stop()  # type: ignore[attr-defined]
        _sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _routed(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stderr
    head = out.stdout.lower()
    assert re.search(r"^http/\S+ 200", head, re.M), out.stdout
    assert "x-orchestrator-provider: beta" in head and "x-orchestrator-attempts: 2" in head
    assert "Hello from beta" in out.stdout


def _counters(ns: Namespace) -> int:
    st = ns.capture("status")
    m = re.search(r"^(\d+) connections redirected", st.stdout, re.M)
    assert m, st.stdout
    return int(m.group(1))


def test_capture_routes_intercepted_hosts_and_leaves_the_rest(netns: Namespace) -> None:
    before = netns.ruleset()
    assert "orchestrator_capture" not in before
    assert netns.curl_api().returncode != 0  # nothing listens on api.openai.com here
    out = netns.install()
    assert f"{API_IP} port 443" in out.stdout and "never captured: user root (uid 0)" in out.stdout
    first = netns.ns("nft", "list", "table", "inet", "orchestrator_capture").stdout
    netns.install()  # idempotent: the same rules, not twice as many
    assert netns.ns("nft", "list", "table", "inet", "orchestrator_capture").stdout == first
    assert "inet other" in netns.ruleset()

    _routed(netns.curl_api())
    sdk = netns.app(
        sys.executable,
        "-c",
        SDK,
        env={"SSL_CERT_FILE": str(netns.proxy.ca_bundle), "APP_KEY": CLIENT_KEY},
    )
    assert sdk.returncode == 0, sdk.stderr
    assert json.loads(sdk.stdout) == {"content": "Hello from beta", "provider": "beta",
                                      "attempts": "2", "streamed": "Hello from beta"}  # fmt: skip
    # the transparent capture's stack (TLS both ways) takes the in-process stream handoff
    assert any("stream body handed to the flow's in-process server" in line
               for line in netns.proxy.lines)  # fmt: skip
    outside = netns.curl_outside()  # not intercepted: no rule for it, its own certificate
    assert outside.returncode == 0 and outside.stdout == "outside.test answered itself"
    assert _counters(netns) >= 2
    assert "proxy on loopback port" in netns.capture("status").stdout

    doctor = netns.app(str(ORCHESTRATOR), "doctor", "-c", str(netns.proxy.config_path),
                       "--confdir", str(netns.proxy.confdir))  # fmt: skip
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert re.findall(r"^OK +(\w+)", doctor.stdout, re.M) == ["python", "node", "curl"]

    assert netns.capture("remove").stdout.startswith("capture removed (nftables)")
    assert netns.ruleset() == before
    assert netns.curl_api().returncode != 0  # captured no more
    assert netns.capture("remove").stdout.startswith("no capture rules of ours")
    assert netns.capture("status", check=False).returncode == 1


def test_capture_all_tunnels_other_hosts_and_never_the_proxy_user(netns: Namespace) -> None:
    before = netns.ruleset()
    netns.install("--all", "--uid", str(APP_UID))
    try:
        seen = _counters(netns)
        outside = netns.curl_outside()  # through the proxy now, tunnelled by SNI untouched
        assert outside.returncode == 0 and outside.stdout == "outside.test answered itself"
        assert _counters(netns) == seen + 1
        _routed(netns.curl_api())
        # root is the proxy's user: never captured, so its call goes nowhere
        assert netns.curl_api(as_app=False).returncode != 0
        assert _counters(netns) == seen + 2
    finally:
        netns.capture("remove")
    assert netns.ruleset() == before


@pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables is not installed")
def test_capture_with_iptables_where_nft_is_absent(netns: Namespace) -> None:
    def rules() -> str:
        return "".join(netns.ns(tool, "-t", table, "-S").stdout
                       for tool in ("iptables", "ip6tables") for table in ("nat", "filter"))  # fmt: skip

    before = rules()
    netns.install("--backend", "iptables")
    netns.install("--backend", "iptables")
    assert rules().count("-j REDIRECT --to-ports") == 2  # 443 and 80, once each
    _routed(netns.curl_api())
    st = netns.capture("status", "--backend", "iptables")
    assert re.search(r"^[1-9]\d* connections redirected", st.stdout, re.M), st.stdout
    assert netns.capture("remove", "--backend", "iptables").stdout.startswith("capture removed")
    assert rules() == before
