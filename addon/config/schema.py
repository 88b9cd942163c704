"""The pydantic schema of `orchestrator.yaml` and `rules/*.yaml`: the single source of truth
for every key ops may write. Defaults live here. Loading (YAML, locations, cross-file
checks) is in `addon.config.loader`; `rules/*.yaml` is in `addon.config.rules`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from addon.config.redact import redact as _redact

LLM_PATHS = ("/chat/completions", "/completions", "/responses", "/embeddings")
ROUTED_PATHS = ("/chat/completions", "/completions")


class Strict(BaseModel):
    """The base of every YAML model: an unknown key is an error, a loaded value is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{v!r} is not host:port; write it like 127.0.0.1:8080")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{host!r} is not an IP address; use 127.0.0.1") from None
    return v


# --------------------------------------------------------------------------- orchestrator.yaml


class DataPaths(Strict):
    """`data:` in `orchestrator.yaml`: where the benchmark DB, the ledger and its spool live
    (a relative path is relative to the config file's folder)."""

    benchmarks: str = "data/benchmarks.db"
    ledger: str = Field(
        default="data/ledger.db",
        description="A SQLite file path, or postgresql://user@host:5432/db for a ledger "
        "shared by several replicas.",
    )
    spool: str = Field(
        default="data/ledger-spool.db",
        description="With a PostgreSQL ledger: where rows wait on disk while the database "
        "is unreachable.",
    )

    @field_validator("ledger")
    @classmethod
    def _ledger(cls, v: str) -> str:
        if "://" in v:
            parts = urlsplit(v)
            if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
                raise ValueError(
                    f"{_redact(v)!r} is neither a file path nor a PostgreSQL URL; write "
                    "data/ledger.db or postgresql://user@host:5432/dbname"
                )
        return v


def address_kind(host: str) -> str | None:
    """'loopback', 'private', 'link-local', ... for an IP literal that is not public; None
    for a public address or a host name (names are checked again when they resolve)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "loopback" if host.lower() == "localhost" else None
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None


class Provider(Strict):
    """`providers.<name>` in `orchestrator.yaml`: an upstream API, the environment variable
    holding its key, and whether it is a server of your own (`local`)."""

    base_url: str
    api_key_env: str | None = None
    max_connections: Annotated[int, Field(ge=1)] | None = None
    catalog: str | None = Field(
        default=None,
        description="Which provider's offerings in the benchmark DB this provider serves "
        "(defaults to the provider's own name).",
    )
    local: bool = False
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(
                f"{v!r} is not an http(s) URL; write it like https://api.openai.com/v1"
            )
        return v.rstrip("/")

    @model_validator(mode="after")
    def _reachable(self) -> Provider:
        parts = urlsplit(self.base_url)
        kind = address_kind(parts.hostname or "")
        if kind and not self.local:
            raise ValueError(
                f"{self.base_url} points at a {kind} address; only providers marked "
                "`local: true` may reach internal addresses; add `local: true` if this is "
                "your own server"
            )
        if parts.scheme != "https" and not self.local:
            raise ValueError(
                f"{self.base_url} is plain http: provider keys would cross the network in "
                "clear text; use https, or mark a server on your own network `local: true`"
            )
        return self


class Client(Strict):
    """`clients[]` in `orchestrator.yaml`: who may use the proxy, by a key from the
    environment or its SHA-256, and the policies it may use (see README "Security")."""

    name: str
    key_env: str | None = None
    key_sha256: str | None = None
    policies: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_key(self) -> Client:
        if (self.key_env is None) == (self.key_sha256 is None):
            raise ValueError(
                f"client {self.name!r} needs exactly one of key_env or key_sha256; "
                "key_sha256 is the hex SHA-256 of the key (`printf %s KEY | sha256sum`)"
            )
        if self.key_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.key_sha256):
            raise ValueError(
                f"key_sha256 of client {self.name!r} is not 64 lower-case hex digits; "
                "compute it with `printf %s KEY | sha256sum`"
            )
        return self


class Breaker(Strict):
    """`resilience.breaker` in `orchestrator.yaml`: the target faults in a row that open a
    breaker, and the seconds before it lets one probe through."""

    failures: Annotated[int, Field(ge=1)] = 3
    cooldown_s: Annotated[float, Field(gt=0)] = 60.0


class Resilience(Strict):
    """`resilience:` in `orchestrator.yaml`: attempts per request and the timeouts of the
    attempt engine, in milliseconds."""

    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    connect_timeout_ms: Annotated[int, Field(ge=1)] = 5000
    first_token_timeout_ms: Annotated[int, Field(ge=1)] = 20000
    stall_timeout_ms: Annotated[int, Field(ge=1)] = 30000
    total_timeout_ms: Annotated[int, Field(ge=1)] = 600000
    breaker: Breaker = Field(default_factory=Breaker)


class Admin(Strict):
    """`admin:` in `orchestrator.yaml`: whether the admin endpoint runs, and its host:port."""

    enabled: bool = True
    listen: str = "127.0.0.1:9090"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _host_port(v)


MODE_RE = re.compile(r"^(regular|transparent|local(:.*)?|reverse:https?://\S+)$")


class Settings(Strict):
    """The whole of `orchestrator.yaml` (its top-level keys)."""

    listen: str = "127.0.0.1:8080"
    mode: str = "regular"
    intercept: list[str] = Field(
        default_factory=lambda: ["api.openai.com", "openrouter.ai", "api.groq.com"]
    )
    default_profile: str = "balanced"
    rules: str = "rules/"
    data: DataPaths = Field(default_factory=DataPaths)
    providers: dict[str, Provider] = Field(default_factory=dict)
    resilience: Resilience = Field(default_factory=Resilience)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    admin: Admin = Field(default_factory=Admin)
    retention_days: Annotated[int, Field(ge=1)] = 30
    clients: list[Client] = Field(default_factory=list)
    max_request_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    log_prompts: Literal["off", "hash", "full"] = "off"
    provider_hosts: list[str] = Field(default_factory=list)
    state: str | None = Field(
        default=None,
        description="redis://host:6379/0 to share breaker states, latency stats and budget "
        "counters between replicas; unset keeps them in this process.",
    )

    @field_validator("state")
    @classmethod
    def _state(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("redis", "rediss", "unix") or not (
                parts.hostname or parts.path
            ):
                raise ValueError(
                    f"{_redact(v)!r} is not a Redis URL; write redis://127.0.0.1:6379/0 "
                    "(rediss:// for TLS)"
                )
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _host_port(v)

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if not MODE_RE.match(v):
            raise ValueError(
                f"{v!r} is not a mode; use regular, transparent, local or "
                "reverse:https://api.openai.com"
            )
        return v

    @property
    def listen_host(self) -> str:
        """The host of `listen`, without an IPv6 literal's brackets."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        """The port of `listen`."""
        return int(self.listen.rpartition(":")[2])
