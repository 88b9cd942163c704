"""Configuration: the shipped files validate; every error reads file:line:col key: message — hint."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.config import loader, schema
from addon.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
LOC = re.compile(r"^(?P<file>\S+):(?P<line>\d+):(?P<col>\d+) (?P<rest>.*)$")


def test_shipped_config_and_rules_validate() -> None:
    cfg = loader.load(REPO / "orchestrator.yaml")
    assert set(cfg.profiles) == {"quality", "balanced", "speed", "budget", "long_context"}
    w = {n: p.weights for n, p in cfg.profiles.items()}
    assert (w["quality"].quality, w["quality"].latency, w["quality"].cost) == (0.8, 0.1, 0.1)
    assert (w["balanced"].quality, w["balanced"].latency, w["balanced"].cost) == (0.4, 0.3, 0.3)
    assert (w["speed"].quality, w["speed"].latency, w["speed"].cost) == (0.1, 0.7, 0.2)
    assert (w["budget"].quality, w["budget"].latency, w["budget"].cost) == (0.1, 0.1, 0.8)
    lc = cfg.profiles["long_context"]
    assert (lc.weights.context, lc.min_context) == (0.3, 100000)
    assert cfg.settings.default_profile == "balanced"


def test_every_rules_file_is_known_and_valid() -> None:
    known = {
        "profiles.yaml",
        "policies.yaml",
        "routes.yaml",
        "models.yaml",
        "aliases.yaml",
        "sources.yaml",
    }
    for f in (REPO / "rules").glob("*.yaml"):
        assert f.name in known, f"unexpected rules file {f.name}"
        yaml.safe_load(f.read_text())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copy(REPO / "orchestrator.yaml", tmp_path)
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    return tmp_path


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        (
            "orchestrator.yaml",
            "listen: 127.0.0.1:8080\nlisen: 1\n",
            ["orchestrator.yaml:2:1 lisen: unknown key — did you mean `listen`?"],
        ),
        (
            "orchestrator.yaml",
            "listen: nowhere\n",
            [
                "orchestrator.yaml:1:9 listen: 'nowhere' is not host:port — write it like 127.0.0.1:8080"
            ],
        ),
        (
            "orchestrator.yaml",
            "mode: sideways\n",
            ["orchestrator.yaml:1:7 mode: 'sideways' is not a mode"],
        ),
        (
            "orchestrator.yaml",
            "default_profile: turbo\n",
            ["orchestrator.yaml:1:1 default_profile: profile 'turbo' is not defined"],
        ),
        (
            "orchestrator.yaml",
            "providers:\n  x: {base_url: ftp://a}\n",
            [
                "orchestrator.yaml:2:17 providers.x.base_url: 'ftp://a' is not an http(s) URL — write it like"
            ],
        ),
        (
            "orchestrator.yaml",
            "resilience:\n  max_attempts: 0\n",
            [
                "orchestrator.yaml:2:17 resilience.max_attempts: Input should be greater than or equal to 1"
            ],
        ),
        ("orchestrator.yaml", "providers: [\n", ["orchestrator.yaml:2:1 YAML syntax error"]),
        (
            "rules/profiles.yaml",
            "profiles:\n  fast:\n    weights: {quality: 0.1, latncy: 2}\n",
            [
                "profiles.yaml:3:29 profiles.fast.weights.latncy: unknown key — did you mean `latency`?"
            ],
        ),
        (
            "rules/profiles.yaml",
            "profiles:\n  zero:\n    weights: {quality: 0}\n",
            ["profiles.yaml:3:5 profiles.zero.weights: all weights are 0"],
        ),
        (
            "rules/policies.yaml",
            "policies:\n  - name: a\n    profile: nope\n",
            ["policies.yaml:3:5 policies.0.profile: profile 'nope' is not defined — use one of:"],
        ),
        (
            "rules/policies.yaml",
            "policies:\n  - name: a\n    match: {client: 10.0.0.300/8}\n",
            [
                "policies.yaml:3:21 policies.0.match.client: '10.0.0.300/8' is neither a client name nor an IP address or network — write a name from `clients:`"
            ],
        ),
        (
            "rules/policies.yaml",
            "policies:\n  - match: {}\n",
            ["policies.yaml:2:5 policies.0.name: required key is missing — add `name:`"],
        ),
        (
            "rules/routes.yaml",
            "routes:\n  gpt-4o: [{provider: nope, model: x}]\n",
            ["routes.yaml:2:12 routes.gpt-4o.0: provider 'nope' is not configured"],
        ),
        (
            "rules/models.yaml",
            "models:\n  - {id: a, provider: ghost}\n",
            [
                "models.yaml:2:13 models.0.provider: provider 'ghost' is not configured in orchestrator.yaml — add it"
            ],
        ),
    ],
)
def test_errors_are_located(tree: Path, file: str, text: str, expected: list[str]) -> None:
    (tree / file).write_text(text)
    with pytest.raises(ConfigError) as ei:
        loader.load(tree / "orchestrator.yaml")
    lines = str(ei.value).splitlines()
    for want in expected:
        assert any(want in line for line in lines), f"{want!r} not in {lines}"
    for line in lines:
        assert LOC.match(line), line


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_yaml_never_crashes(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "rules").mkdir()
    (d / "orchestrator.yaml").write_text(text)
    try:
        loader.load(d / "orchestrator.yaml")
    except ConfigError as e:
        assert e.issues and all(LOC.match(str(i)) for i in e.issues)


def test_routes_normalized(tree: Path) -> None:
    (tree / "rules" / "routes.yaml").write_text(
        textwrap.dedent("""\
        routes:
          gpt-4o: [gpt-4o, {provider: openrouter, model: openai/gpt-4o}]
    """)
    )
    cfg = loader.load(tree / "orchestrator.yaml")
    chain = cfg.routes["gpt-4o"]
    assert [(t.provider, t.model) for t in chain] == [
        (None, "gpt-4o"),
        ("openrouter", "openai/gpt-4o"),
    ]


@pytest.mark.parametrize(
    ("provider", "speaks"),
    [
        ({"base_url": "https://api.openai.com/v1"}, ("chat", "completions", "responses", "embeddings")),
        ({"base_url": "https://api.anthropic.com/v1"}, ("messages",)),
        ({"base_url": "https://openrouter.ai/api/v1"}, ("chat", "completions", "responses")),
        ({"base_url": "https://api.groq.com/openai/v1"}, ("chat", "responses")),
        ({"base_url": "http://127.0.0.1:11434/v1", "local": True}, ("chat", "completions", "embeddings")),
        ({"base_url": "https://api.together.xyz/v1"}, ("chat", "completions")),
        ({"base_url": "https://api.openai.com/v1", "apis": ["embeddings"]}, ("embeddings",)),
        ({"base_url": "https://gw.example.com/v1", "apis": ["messages", "chat"]}, ("messages", "chat")),
    ],
)  # fmt: skip
def test_a_provider_serves_its_hosts_apis_unless_it_says(provider: dict, speaks: tuple) -> None:
    assert schema.Provider(**provider).speaks == speaks


def test_an_unknown_api_is_located(tree: Path) -> None:
    cfg = (tree / "orchestrator.yaml").read_text()
    (tree / "orchestrator.yaml").write_text(
        cfg.replace(
            "api_key_env: OPENAI_API_KEY}", "api_key_env: OPENAI_API_KEY, apis: [chat, talk]}"
        )
    )
    with pytest.raises(ConfigError) as ei:
        loader.load(tree / "orchestrator.yaml")
    assert "providers.openai.apis.1" in str(ei.value) and "'talk'" in str(ei.value)
