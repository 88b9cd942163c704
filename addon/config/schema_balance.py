"""`balance:` in `orchestrator.yaml`: load balancing across deployments of one model. PURE.

A group names configured providers that are deployments of one another — two keys on one
provider (`openai-a`, `openai-b`, both `catalog: openai`), the same model on OpenAI and an
Azure-style endpoint, several vLLM servers declared with one `id` in `rules/models.yaml` —
with a weight each and a strategy. Wherever a request's chain holds the same model (the
same canonical model id) at two or more of a group's deployments, those targets are
reordered among the places they hold: the strategy's pick first, the others as its
fallbacks (`addon.routing.balance`). Which model the profile chose never changes.

`problems` lists what only the whole config can tell (a deployment that is no configured
provider, a provider in two groups); the loader reports each with its file:line.
"""

from __future__ import annotations

from collections.abc import Collection
from fnmatch import fnmatchcase
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Strategy = Literal["weighted", "least_busy", "latency"]
STRATEGIES: tuple[Strategy, ...] = ("weighted", "least_busy", "latency")

Weight = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    """`addon.config.schema.Strict` (an unknown key is an error, a loaded value is frozen),
    again: that module imports this one for `Settings.balance`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Group(Strict):
    """`balance.groups.<name>`: the deployments (provider -> weight; a list means weight 1
    each), the strategy, per-model strategies, and the latency strategy's exploration."""

    deployments: dict[str, Weight] = Field(
        description="Configured providers that are deployments of the same models: "
        "provider -> weight (a list gives each weight 1; weight 0: a fallback only)."
    )
    strategy: Strategy = "weighted"
    models: dict[str, Strategy] = Field(
        default_factory=dict,
        description="Model id glob -> strategy, for the models that balance otherwise.",
    )
    explore: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.05,
        description="latency: the share of requests placed by weight instead, so a "
        "deployment that was slow is measured again.",
    )

    @field_validator("deployments", mode="before")
    @classmethod
    def _listed(cls, v: object) -> object:
        if isinstance(v, list):
            return {str(name): 1.0 for name in v}
        return v

    @model_validator(mode="after")
    def _weighted(self) -> Group:
        if not self.deployments:
            raise ValueError("a group needs at least one deployment (a configured provider)")
        if not any(w > 0 for w in self.deployments.values()):
            raise ValueError(
                "every deployment has weight 0, so none can be picked first; give at least "
                "one a positive weight"
            )
        return self

    def strategy_for(self, model_id: str, provider_model_ids: tuple[str, ...] = ()) -> Strategy:
        """The strategy for `model_id` (or one of its provider model ids): the first glob of
        `models` that matches, else `strategy`."""
        names = (model_id.lower(), *(n.lower() for n in provider_model_ids))
        for pattern, strategy in self.models.items():
            if any(fnmatchcase(n, pattern.lower()) for n in names):
                return strategy
        return self.strategy


class Balance(Strict):
    """`balance:` in `orchestrator.yaml`: the groups of deployments (none: no balancing)."""

    groups: dict[str, Group] = Field(
        default_factory=dict,
        description="Group name -> its deployments, weights and strategy.",
    )

    def group_of(self) -> dict[str, tuple[str, Group]]:
        """provider -> (its group's name, the group)."""
        return {p: (name, g) for name, g in self.groups.items() for p in g.deployments}


def problems(
    balance: Balance, providers: Collection[str]
) -> list[tuple[tuple[str | int, ...], str, str]]:
    """(location, what is wrong, remedy) for each deployment that names no configured
    provider and each provider listed in two groups."""
    out: list[tuple[tuple[str | int, ...], str, str]] = []
    seen: dict[str, str] = {}
    for name, g in balance.groups.items():
        for prov in g.deployments:
            loc: tuple[str | int, ...] = ("balance", "groups", name, "deployments", prov)
            if prov not in providers:
                out.append((loc, f"deployment {prov!r} of group {name!r} is not a configured "
                            "provider", f"add it under `providers:` or use one of: "
                            f"{', '.join(providers) or 'none'}"))  # fmt: skip
            elif prov in seen:
                out.append((loc, f"provider {prov!r} is in groups {seen[prov]!r} and {name!r}",
                            "a provider is a deployment of one group only"))  # fmt: skip
            else:
                seen[prov] = name
    return out
