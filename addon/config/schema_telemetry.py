"""`telemetry:` in `orchestrator.yaml`: OpenTelemetry export over OTLP/HTTP (JSON). PURE.

Absent, nothing is exported and the request path does no telemetry work at all. Present,
one span per request (a child span per upstream attempt) and the GenAI metrics go to
`endpoint` + `/v1/traces` and `/v1/metrics` (`addon.proxy.telemetry`).
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from addon.config.redact import redact

SIGNAL_PATHS = ("/v1/traces", "/v1/metrics")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    """`addon.config.schema.Strict` (unknown keys are errors, loaded values frozen), again:
    that module imports this one for `Settings.telemetry`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Telemetry(Strict):
    """`telemetry:` in `orchestrator.yaml`: where spans and metrics go (the OTLP/HTTP base
    URL: `/v1/traces` and `/v1/metrics` are appended), extra request headers (`headers`:
    literal values; `headers_env`: header -> the environment variable holding its value,
    for tokens), the `service.name` resource attribute, the share of new traces kept
    (`sampling`; a client's `traceparent` decides for its own trace), how many finished
    requests may wait for the exporter (`queue_size`; beyond it they are dropped and
    counted), how often it sends (`export_interval_s`) and how long one send may take
    (`timeout_s`)."""

    endpoint: str
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, str] = Field(default_factory=dict)
    service_name: str = "local-ai-orchestrator"
    sampling: Annotated[float, Field(ge=0, le=1)] = 1.0
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 2048
    export_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{redact(v)!r} is not an http(s) URL; write the collector's OTLP/HTTP base "
                "URL, like http://127.0.0.1:4318"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"{redact(v)!r} has a query or fragment; write the base URL only")
        base = v.rstrip("/")
        for path in SIGNAL_PATHS:
            if base.endswith(path):
                raise ValueError(
                    f"{redact(v)!r} names a signal path; write the base URL "
                    f"{redact(base.removesuffix(path)) or 'http://127.0.0.1:4318'} "
                    "(/v1/traces and /v1/metrics are appended)"
                )
        return base

    @field_validator("headers", "headers_env")
    @classmethod
    def _header_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name; use letters, digits, -")
        return v

    @field_validator("headers")
    @classmethod
    def _header_values(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"headers.{name} holds a line break; write a one-line value")
        return v

    @field_validator("headers_env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, env in v.items():
            if not _ENV_NAME.match(env):
                raise ValueError(
                    f"headers_env.{name}: {env!r} is not an environment variable name; "
                    "write the variable's name (like OTLP_TOKEN), not its value"
                )
        return v

    @field_validator("service_name")
    @classmethod
    def _service(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("service_name is empty; write a name like local-ai-orchestrator")
        return v
