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
from addon.config.schema_balance import Balance
from addon.config.schema_cache import CacheSettings
from addon.config.schema_limits import Limits
from addon.config.schema_telemetry import Telemetry

# The routed endpoints: (request path suffix, API, what is appended to a provider's
# base_url), tried in this order against the path without its query, the first suffix that
# fits wins (/chat/completions before /completions). /v1/messages is matched with its /v1,
# so OpenAI's Assistants `POST /v1/threads/{id}/messages` is no Messages call.
ENDPOINTS: tuple[tuple[str, Api, str], ...] = (
    ("/v1/messages/count_tokens", "messages", "/messages/count_tokens"),
    ("/v1/messages", "messages", "/messages"),
    ("/chat/completions", "chat", "/chat/completions"),
    ("/completions", "completions", "/completions"),
    ("/responses", "responses", "/responses"),
    ("/embeddings", "embeddings", "/embeddings"),
)

Api = Literal["chat", "completions", "responses", "messages", "embeddings"]
APIS: tuple[Api, ...] = ("chat", "completions", "responses", "messages", "embeddings")
# What well-known hosts really serve, for a provider that does not say (`apis:`). OpenRouter's
# and Groq's Responses endpoints are stateless (no `previous_response_id`); a Responses turn
# that needs stored state is pinned to the provider that produced it, so that is safe.
KNOWN_HOST_APIS: dict[str, tuple[Api, ...]] = {
    "api.openai.com": ("chat", "completions", "responses", "embeddings"),
    "api.anthropic.com": ("messages",),
    "openrouter.ai": ("chat", "completions", "responses"),
    "api.groq.com": ("chat", "responses"),
}
LOCAL_APIS: tuple[Api, ...] = ("chat", "completions", "embeddings")  # Ollama, vLLM, llama.cpp
OTHER_APIS: tuple[Api, ...] = ("chat", "completions")  # any other OpenAI-compatible host


def default_apis(host: str, *, local: bool) -> tuple[Api, ...]:
    """The APIs a provider at `host` (no port) speaks when its `apis:` is unset: the known
    hosts' real ones, a local server's chat/completions/embeddings, else chat/completions."""
    if host in KNOWN_HOST_APIS:
        return KNOWN_HOST_APIS[host]
    return LOCAL_APIS if local else OTHER_APIS


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


def numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host spells in any form the C resolver (inet_aton)
    accepts — `2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376`, `127.1`, `10.1.258` —
    so a URL cannot reach an internal address by writing it another way; None otherwise."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        low = part.lower()
        try:
            if low.startswith("0x"):
                values.append(int(low[2:], 16))
            elif len(low) > 1 and low.startswith("0"):
                values.append(int(low, 8))
            elif low.isdigit():
                values.append(int(low))
            else:
                return None
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    return ipaddress.IPv4Address((number << (8 * (5 - len(values)))) + last)


def address_kind(host: str) -> str | None:
    """'loopback', 'private', 'link-local', ... for an IP literal that is not public (in
    any spelling the resolver accepts: see `numeric_ipv4`); None for a public address or a
    host name (names are checked again when they resolve: see `config.loader.resolved_kinds`
    and the connect-time guard of `proxy.upstream`)."""
    bare = host.strip("[]").rstrip(".")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(bare)
    except ValueError:
        spelled = numeric_ipv4(bare)
        if spelled is None:
            low = bare.lower()
            return "loopback" if low == "localhost" or low.endswith(".localhost") else None
        ip = spelled
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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
    apis: tuple[Api, ...] | None = Field(
        default=None,
        description="The APIs this provider serves (chat, completions, responses, messages, "
        "embeddings); unset: the defaults for its host (`default_apis`).",
    )
    limits: Limits | None = None  # {rpm, tpm}: stay under its own limits (schema_limits)

    @property
    def speaks(self) -> tuple[Api, ...]:
        """The APIs it serves: `apis:` as written, or its host's defaults."""
        if self.apis is not None:
            return self.apis
        return default_apis(urlsplit(self.base_url).hostname or "", local=self.local)

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
    limits: Limits | None = None  # {rpm, tpm} for this client (addon.config.schema_limits)

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
    stream_handoff: bool = True  # a live stream enters its flow in process (addon.proxy.handoff)
    provider_hosts: list[str] = Field(default_factory=list)
    complexity: Literal["learned", "keyword"] = "learned"  # addon.routing.difficulty
    balance: Balance = Field(default_factory=Balance)  # addon.config.schema_balance
    cache: CacheSettings = Field(default_factory=CacheSettings)  # addon.config.schema_cache
    default_client_limits: Limits | None = None  # clients without limits: (schema_limits)
    telemetry: Telemetry | None = None  # OTLP export; unset: off (schema_telemetry)
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
