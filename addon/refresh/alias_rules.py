"""Manual entity-resolution rules (``rules/aliases.yaml``): ``overrides`` pin a source name to
a model, ``never`` forbids one pairing. Loaded here; applied by ``addon.refresh.merge.Merge``
before any automatic matching (``addon.refresh.resolve``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from addon.errors import AliasRulesError


class AliasRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: Literal["litellm", "lmarena", "huggingface", "local"]
    name: str = Field(min_length=1)
    model: str = Field(min_length=1)


class AliasRules(BaseModel):
    """Manual entity-resolution rules: ``overrides`` pin, ``never`` forbid."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    overrides: tuple[AliasRule, ...] = ()
    never: tuple[AliasRule, ...] = ()


def load_alias_rules(path: Path) -> AliasRules:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AliasRulesError(f"{path}: cannot be read ({exc.strerror}) — fix the path") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise AliasRulesError(f"{path}{where}: invalid YAML ({problem}) — fix the syntax") from exc
    try:
        rules = AliasRules.model_validate(doc or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise AliasRulesError(
            f"{path}: {problems} — each rule is {{source: litellm|lmarena|huggingface|local, "
            "name: ..., model: ...}"
        ) from exc
    seen = Counter((r.source, r.name) for r in rules.overrides)
    dupes = sorted(f"{s}:{n}" for (s, n), count in seen.items() if count > 1)
    if dupes:
        raise AliasRulesError(f"{path}: overrides lists {', '.join(dupes)} twice — keep one")
    return rules
