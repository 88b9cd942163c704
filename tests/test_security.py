"""Security units: client keys, provider URL checks, connect-time DNS guard."""

from __future__ import annotations

import asyncio
import base64
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from addon.config import loader
from addon.config.schema import Provider, Settings, address_kind
from addon.errors import ConfigError
from addon.proxy import clients
from addon.proxy.upstream import GuardedResolver

KEY = "router-key-for-team-a"


def settings(**kw: Any) -> Settings:
    return Settings.model_validate({"providers": {}, **kw})


def test_identify() -> None:
    s = settings(clients=[{"name": "team-a", "key_env": "K_A"},
                          {"name": "team-b", "key_sha256": clients.digest("kb")}])  # fmt: skip
    digests = clients.key_digests(s, {"K_A": KEY})
    basic = "Basic " + base64.b64encode(f"team-a:{KEY}".encode()).decode()
    assert clients.identify(basic, digests) == "team-a"
    assert clients.identify(f"Bearer {KEY}", digests) == "team-a"
    assert clients.identify("Bearer kb", digests) == "team-b"
    wrong_user = "Basic " + base64.b64encode(f"team-b:{KEY}".encode()).decode()
    for bad in (None, "", "Bearer nope", wrong_user, "Basic !!!", "Digest x"):
        assert clients.identify(bad, digests) is None
    assert KEY not in repr(digests)  # only digests are held


@pytest.mark.parametrize(
    ("host", "kind"),
    [("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("169.254.169.254", "link-local"),
     ("[::1]", "loopback"), ("localhost", "loopback"), ("8.8.8.8", None), ("api.openai.com", None),
     # the same addresses in the other spellings the C resolver accepts
     ("2852039166", "link-local"), ("0xa9fea9fe", "link-local"),
     ("0251.0376.0251.0376", "link-local"), ("127.1", "loopback"), ("0x7f000001", "loopback"),
     ("10.1.258", "private"), ("[::ffff:169.254.169.254]", "link-local"),
     ("app.localhost", "loopback"), ("localhost.", "loopback"),
     ("134744072", None), ("256.1.1.1", None), ("09", None), ("0x", None), ("1.2.3.4.5", None)],
)  # fmt: skip
def test_address_kind(host: str, kind: str | None) -> None:
    assert address_kind(host) == kind


def _tree(tmp_path: Path, settings_yaml: dict[str, Any]) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "profiles.yaml").write_text(
        "profiles:\n  balanced:\n    weights: {quality: 1}\n"
    )
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(settings_yaml))
    return tmp_path / "orchestrator.yaml"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"providers": {"x": {"base_url": "http://api.example.com/v1"}}},
         "providers.x: http://api.example.com/v1 is plain http"),
        ({"providers": {"x": {"base_url": "https://169.254.169.254/v1"}}},
         "points at a link-local address — only providers marked `local: true` may reach"),
        ({"providers": {"x": {"base_url": "https://10.0.0.5/v1"}}}, "points at a private address"),
        ({"providers": {"x": {"base_url": "https://evil.example/v1"}},
          "provider_hosts": ["api.openai.com", "*.openrouter.ai"]},
         "providers.x.base_url: host 'evil.example' is not in provider_hosts"),
        ({"listen": "0.0.0.0:8080"},
         "listen: 0.0.0.0:8080 is reachable from other machines and no `clients:` are "
         "configured, so anyone there could spend your provider keys — add `clients:`"),
        ({"clients": [{"name": "a"}]}, "client 'a' needs exactly one of key_env or key_sha256"),
        ({"clients": [{"name": "a", "key_sha256": "abc"}]}, "is not 64 lower-case hex digits"),
        ({"clients": [{"name": "a", "key_env": "X", "policies": ["nope"]}]},
         "clients.0.policies: policy 'nope' is not defined"),
    ],
)  # fmt: skip
def test_unsafe_config_is_refused(tmp_path: Path, cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        loader.load(_tree(tmp_path, {"intercept": ["api.openai.com"], **cfg}))
    assert message in str(ei.value)


def test_local_provider_may_be_internal(tmp_path: Path) -> None:
    cfg = loader.load(_tree(tmp_path, {
        "intercept": ["api.openai.com"],
        "providers": {"ollama": {"base_url": "http://127.0.0.1:11434/v1", "local": True}},
        "listen": "0.0.0.0:8080", "clients": [{"name": "a", "key_env": "A"}],
    }))  # fmt: skip
    assert cfg.settings.providers["ollama"].local


class _FakeDNS:
    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        return [{"hostname": host, "host": self.answers[host], "port": port, "family": family,
                 "proto": 0, "flags": 0}]  # fmt: skip

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("host", "ip", "local", "refused"),
    [("api.example.com", "93.184.216.34", False, False),
     ("rebind.example.com", "127.0.0.1", False, True),
     ("meta.example.com", "169.254.169.254", False, True),
     ("gpu-box.lan", "192.168.1.20", True, False)],
)  # fmt: skip
def test_dns_answers_checked_at_connect(host: str, ip: str, local: bool, refused: bool) -> None:
    r = GuardedResolver(lambda h: local, _FakeDNS({host: ip}))  # type: ignore[arg-type]
    if refused:
        with pytest.raises(OSError, match="only providers marked `local: true`"):
            asyncio.run(r.resolve(host, 443))
    else:
        assert asyncio.run(r.resolve(host, 443))[0]["host"] == ip


@pytest.mark.parametrize("spelling", ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "127.1"])
def test_a_provider_url_cannot_spell_an_internal_address_another_way(spelling: str) -> None:
    with pytest.raises(ValueError, match="address; only providers marked `local: true`"):
        Provider(base_url=f"https://{spelling}/v1")
    assert Provider(base_url=f"http://{spelling}/v1", local=True).base_url.startswith("http://")
