"""The response cache's YAML: `cache:` in `orchestrator.yaml` (where entries live, how big
one may be, how a streamed hit is paced) and `cache:` on a policy or a profile in `rules/`
(the opt-in: how long entries live, whether tool results may be cached). PURE.

The cache is off unless the policy or profile a request is routed under says `cache:`; a
policy's `cache:` wins over its profile's, so `cache: {enabled: false}` on a policy turns it
off for that policy's traffic under a caching profile.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from addon.config.redact import redact

DEFAULT_FILE = "data/cache.db"


class Strict(BaseModel):
    """`addon.config.schema.Strict` (unknown keys are errors, loaded values frozen), again:
    that module imports this one for `Settings.cache`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CacheRule(Strict):
    """`cache:` on a policy (`rules/policies.yaml`) or a profile (`rules/profiles.yaml`):
    answers to requests routed under it are cached for `ttl_s` seconds; `tool_results`
    lets requests that carry tool results (a tool's output fed back) be cached too;
    `enabled: false` turns the cache off (a policy's rule wins over its profile's)."""

    enabled: bool = True
    ttl_s: Annotated[int, Field(gt=0, le=30 * 86400)] = 3600
    tool_results: bool = False


class CacheSettings(Strict):
    """`cache:` in `orchestrator.yaml`: `store` is a SQLite file path, or a Redis URL to
    share entries between replicas; unset, it is the `state:` Redis when that is set, else
    `data/cache.db`. `max_entry_bytes` bounds one stored answer (a bigger one is not
    cached); `pace` replays a streamed hit's events with that share of the gaps recorded
    between them (0: as fast as the client reads, 1: as the original arrived)."""

    store: str | None = None
    max_entry_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    pace: Annotated[float, Field(ge=0, le=1)] = 0.0

    @field_validator("store")
    @classmethod
    def _store(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if "://" in v and parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"{redact(v)!r} is neither a SQLite file path nor a Redis URL; write "
                f"{DEFAULT_FILE} or redis://127.0.0.1:6379/0"
            )
        if not v.strip():
            raise ValueError(f"cache.store is empty; write {DEFAULT_FILE} or leave it out")
        return v

    def location(self, state: str | None) -> str:
        """Where entries live: `store`, else the `state:` Redis, else the default file."""
        return self.store or state or DEFAULT_FILE


def is_redis(location: str) -> bool:
    """Whether a `CacheSettings.location` is a Redis URL (else a SQLite file path)."""
    return urlsplit(location).scheme in ("redis", "rediss", "unix") and "://" in location
