"""The pydantic schema of `rules/*.yaml` (profiles, policies, routes, models): the single
source of truth for every key ops may write there. Defaults live here."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from addon.config.schema import Strict
from addon.config.schema_cache import CacheRule
from addon.config.schema_limits import PolicyLimits

# --------------------------------------------------------------------------- rules/profiles.yaml


class Weights(Strict):
    """`profiles.<name>.weights` in `rules/profiles.yaml`: each metric's relative weight
    (>= 0, at least one positive; the scorer divides by their sum)."""

    quality: Annotated[float, Field(ge=0)] = 0.0
    latency: Annotated[float, Field(ge=0)] = 0.0
    cost: Annotated[float, Field(ge=0)] = 0.0
    context: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _some_weight(self) -> Weights:
        if self.quality + self.latency + self.cost + self.context <= 0:
            raise ValueError("all weights are 0; give at least one metric a positive weight")
        return self


class Profile(Strict):
    """`profiles.<name>` in `rules/profiles.yaml`: weights, a context floor (tokens), and
    whether the complexity adjustment applies. `free_penalty` is subtracted from the score of
    OpenRouter `:free` variants (heavily rate-limited: fallbacks, not first choices; 0 ranks
    them by their metrics alone); `latency_prior` is what an unobserved candidate's latency
    is assumed to be (`price`: estimated from its output price, `neutral`: 0.5 for all);
    `max_price_ratio` refuses candidates whose blended price exceeds that multiple of the
    requested model's (1.0: never dearer than what was asked for)."""

    description: str = ""
    weights: Weights
    min_context: Annotated[int, Field(ge=0)] = 0
    complexity_adjust: bool = True
    free_penalty: Annotated[float, Field(ge=0, le=1)] = 0.3
    latency_prior: Literal["price", "neutral"] = "price"
    max_price_ratio: Annotated[float, Field(gt=0)] | None = None
    cache: CacheRule | None = None  # the response cache's opt-in (addon.config.schema_cache)


class ProfilesFile(Strict):
    """The whole of `rules/profiles.yaml`."""

    profiles: dict[str, Profile]


# --------------------------------------------------------------------------- rules/policies.yaml


Task = Literal["chat", "code", "math", "creative", "extraction", "summarize", "embedding"]
Complexity = Literal["simple", "medium", "complex"]


class Match(Strict):
    """`policies[].match` in `rules/policies.yaml`: every condition given must hold; `host`,
    `path`, `model` and header values are globs, `client` a client name or IP network.
    An empty match fits every request."""

    host: str | None = None
    path: str | None = None
    model: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    client: str | None = None
    task: Task | None = None
    complexity: Complexity | None = None

    @field_validator("client")
    @classmethod
    def _client(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z][\w.-]*", v):
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise ValueError(
                    f"{v!r} is neither a client name nor an IP address or network; "
                    "write a name from `clients:` or a network like 10.0.0.0/8"
                ) from None
        return v


class AllowDeny(Strict):
    """`constraints.providers` / `constraints.models` of a policy: allow and deny lists
    (model entries are globs); an empty allow list allows everything."""

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)


class Constraints(Strict):
    """`policies[].constraints` in `rules/policies.yaml`: hard filters on candidates.
    `max_cost_usd` caps a request's estimated maximum cost (USD), `min_quality` is on the
    rating scale, `min_context` in tokens, `max_price_ratio` caps a candidate's blended price
    at that multiple of the requested model's (the stricter of this and the profile's)."""

    max_cost_usd: Annotated[float, Field(gt=0)] | None = None
    max_price_ratio: Annotated[float, Field(gt=0)] | None = None
    min_quality: float | None = None
    min_context: Annotated[int, Field(ge=0)] | None = None
    providers: AllowDeny = Field(default_factory=AllowDeny)
    models: AllowDeny = Field(default_factory=AllowDeny)


class Budget(Strict):
    """`policies[].budget` in `rules/policies.yaml`: `usd` per calendar window (UTC), counted
    per client, policy or profile; `block` or `downgrade:<profile>` once spent; `alert_at`
    is the share of `usd` that logs an alert."""

    usd: Annotated[float, Field(gt=0)]
    per: Literal["day", "week", "month"] = "day"
    scope: Literal["client", "policy", "profile"] = "policy"
    on_exceed: str = "block"
    alert_at: Annotated[float, Field(gt=0, le=1)] | None = 0.8

    @field_validator("on_exceed")
    @classmethod
    def _on_exceed(cls, v: str) -> str:
        if v != "block" and not (v.startswith("downgrade:") and len(v) > len("downgrade:")):
            raise ValueError(f"{v!r} is not an action; use block or downgrade:<profile>")
        return v

    @property
    def downgrade_to(self) -> str | None:
        """The profile `downgrade:<profile>` names, or None for `block`."""
        return self.on_exceed.split(":", 1)[1] if self.on_exceed.startswith("downgrade:") else None


class Policy(Strict):
    """`policies[]` in `rules/policies.yaml`: the first policy whose `match` fits a request
    picks its profile, constraints, pinning and budget."""

    name: str
    match: Match = Field(default_factory=Match)
    profile: str | None = None
    constraints: Constraints = Field(default_factory=Constraints)
    pin: bool = False
    budget: Budget | None = None
    cache: CacheRule | None = None  # the response cache's opt-in (addon.config.schema_cache)
    limits: PolicyLimits | None = None  # rpm/tpm over its requests (schema_limits)


class PoliciesFile(Strict):
    """The whole of `rules/policies.yaml`: the policies in order, names unique."""

    policies: list[Policy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> PoliciesFile:
        seen: set[str] = set()
        for p in self.policies:
            if p.name in seen:
                raise ValueError(f"policy name {p.name!r} is used twice; names must be unique")
            seen.add(p.name)
        return self


# --------------------------------------------------------------------------- rules/routes.yaml


class RouteTarget(Strict):
    """One target of `routes.<model>` in `rules/routes.yaml`: a model name, at `provider`
    only if one is given (a bare string in the file is a target without a provider)."""

    model: str
    provider: str | None = None


RouteEntry = str | RouteTarget


class RoutesFile(Strict):
    """The whole of `rules/routes.yaml`: requested model -> its targets, in order."""

    routes: dict[str, list[RouteEntry]] = Field(default_factory=dict)


# --------------------------------------------------------------------------- rules/models.yaml


PrefillForm = Literal["assistant", "continue_final_message", "prefix"]


class Capabilities(Strict):
    """`models[].capabilities` in `rules/models.yaml` (each false unless given).

    `prefill` is whether, and in which form, the target continues a partial answer (how a
    stream that broke mid-answer is rescued, README "Resilience"): `false` never; `true` or
    `assistant` a trailing assistant message (llama.cpp, Ollama, Anthropic Messages);
    `continue_final_message` that plus `continue_final_message: true` and
    `add_generation_prompt: false` (vLLM); `prefix` that with `prefix: true` on the message
    (Mistral, DeepSeek's `/beta`). Unset: the default of its provider's host
    (`addon.routing.continuation.default_prefill`: api.anthropic.com `assistant`,
    api.mistral.ai and api.deepseek.com/beta `prefix`, every other host, local servers
    included, `false`, since a server that does not continue starts its answer anew and the
    client would get the text twice)."""

    tools: bool = False
    vision: bool = False
    json_schema: bool = False
    reasoning: bool = False
    prefill: PrefillForm | bool | None = None


class DeclaredModel(Strict):
    """`models[]` in `rules/models.yaml`: an offering ops declare. Prices are USD per million
    tokens (unset is unknown, or free on a `local: true` provider); limits are tokens;
    `quality` is on the LMArena rating scale."""

    id: str
    provider: str
    provider_model_id: str | None = None
    name: str | None = None
    input_per_mtok: Annotated[float, Field(ge=0)] | None = None
    output_per_mtok: Annotated[float, Field(ge=0)] | None = None
    cached_input_per_mtok: Annotated[float, Field(ge=0)] | None = None
    context_tokens: Annotated[int, Field(gt=0)] = 8192
    max_output_tokens: Annotated[int, Field(gt=0)] | None = None
    quality: float | None = None
    capabilities: Capabilities = Field(default_factory=Capabilities)


class ModelsFile(Strict):
    """The whole of `rules/models.yaml`."""

    models: list[DeclaredModel] = Field(default_factory=list)


RULE_FILES: dict[str, type[Strict]] = {
    "profiles.yaml": ProfilesFile,
    "policies.yaml": PoliciesFile,
    "routes.yaml": RoutesFile,
    "models.yaml": ModelsFile,
}
