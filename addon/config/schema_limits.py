"""Rate limits in the config (`addon.routing.ratelimit` has the window). PURE.

    clients[].limits              {rpm, tpm} for that client (by name)
    default_client_limits         {rpm, tpm} for every client without `limits:` of its own:
                                  each named client, or each client address when `clients:`
                                  is empty (anonymous)
    providers.<name>.limits       {rpm, tpm} to stay under the provider's own limits: a
                                  provider at its limit is skipped like an open breaker
    policies[].limits             {rpm, tpm, scope}: requests the policy matches, together
                                  (`scope: policy`) or per client (`scope: client`)

`rpm` is requests, `tpm` tokens (input + output), per sliding minute; either may be left out.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """`addon.config.schema.Strict` (an unknown key is an error, a loaded value is frozen),
    again: that module imports this one."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(Strict):
    """`{rpm, tpm}`: requests and tokens (input + output) per sliding minute; at least one."""

    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _some(self) -> Limits:
        if self.rpm is None and self.tpm is None:
            raise ValueError("limits need rpm, tpm or both, e.g. {rpm: 60, tpm: 100000}")
        return self


class PolicyLimits(Limits):
    """`policies[].limits` in `rules/policies.yaml`: `Limits` over every request the policy
    matches (`scope: policy`), or over each client's (`scope: client`)."""

    scope: Literal["policy", "client"] = "policy"
