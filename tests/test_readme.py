"""The README's example config validates, and every command, option and YAML key is documented."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import click
import pytest

from addon import cli
from addon.config import loader, rules
from addon.config import schema as config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w/.]+) -->\n```yaml\n(?P<body>.*?)```", re.S)


def test_readme_has_the_two_commands() -> None:
    assert "make run" in README and "make test" in README


def test_readme_example_config_validates(tmp_path: Path) -> None:
    examples = {m["name"]: m["body"] for m in EXAMPLE.finditer(README)}
    assert {
        "orchestrator.yaml",
        "rules/policies.yaml",
        "rules/routes.yaml",
        "rules/models.yaml",
    } <= set(examples)
    (tmp_path / "rules").mkdir()
    shutil.copy(REPO / "rules" / "profiles.yaml", tmp_path / "rules")
    for name, body in examples.items():
        (tmp_path / name).write_text(body)
    cfg = loader.load(tmp_path / "orchestrator.yaml")
    assert cfg.policies and cfg.routes and cfg.models


def _commands(group: click.Group) -> list[tuple[str, click.Command]]:
    return sorted(group.commands.items())


@pytest.mark.parametrize(("name", "command"), _commands(cli.main))
def test_every_command_and_option_documented(name: str, command: click.Command) -> None:
    assert f"orchestrator {name}" in README, f"command {name} missing from README"
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(opt in README for opt in param.opts), f"{name} {param.opts} undocumented"


def _keys(model: type[config.Strict], prefix: str = "") -> list[str]:
    """Leaf keys as dotted paths; `providers` entries as `providers.<name>.<key>`."""
    out = []
    for key, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, config.Strict):
            out.extend(_keys(ann, prefix + key + "."))
        elif key == "providers":
            out.extend(_keys(config.Provider, prefix + "providers.<name>."))
        else:
            out.append(prefix + key)
    return out


@pytest.mark.parametrize("key", _keys(config.Settings))
def test_every_orchestrator_yaml_key_documented(key: str) -> None:
    assert f"`{key}`" in README, f"orchestrator.yaml key {key} is not in the README table"


@pytest.mark.parametrize(
    "model",
    [
        rules.Profile,
        rules.Weights,
        rules.Policy,
        rules.Match,
        rules.Constraints,
        rules.AllowDeny,
        rules.DeclaredModel,
        rules.Capabilities,
        rules.RouteTarget,
    ],
)
def test_every_rules_key_documented(model: type[config.Strict]) -> None:
    for key in model.model_fields:
        assert re.search(rf"`[^`\n]*\b{key}\b[^`\n]*`", README), (
            f"{model.__name__}.{key} is not documented in the README"
        )
