"""The pydantic schema of ``rules/sources.yaml``: where the refresh sidecar fetches from.

The file is optional; every default lives here. Load it with ``load_sources``, which
reports problems as ``file:line:col key: message — hint`` (``addon.errors.ConfigError``).
Host allowlisting and the https rule are enforced when fetching (``addon.refresh.fetch``), so a
bad URL fails its own source with a message instead of stopping the whole refresh.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from addon.config import loader
from addon.config.schema import Strict

Kind = Literal["openrouter", "lmarena", "litellm", "huggingface", "local"]
KINDS: tuple[Kind, ...] = ("openrouter", "lmarena", "litellm", "huggingface", "local")
DEFAULT_INTERVALS: Mapping[str, str] = MappingProxyType({"openrouter": "1h"})  # others: 24h
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT: Mapping[str, int] = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400})
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_duration(value: object) -> float:
    """Seconds in ``90s``, ``15m``, ``1h``, ``1h30m``, ``1d`` or a bare number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    parts = _DURATION.findall(text)
    if not text or not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration; write it like 30m, 1h or 24h")
    seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{value!r} is zero; use a positive duration such as 1h")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


class FetchSettings(Strict):
    """How every source is fetched (timeouts, retries, size cap)."""

    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    read_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    total_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    attempts: Annotated[int, Field(ge=1, le=10)] = 4
    backoff_s: Annotated[float, Field(ge=0)] = 1.0
    max_backoff_s: Annotated[float, Field(ge=0)] = 60.0
    max_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    max_redirects: Annotated[int, Field(ge=0, le=20)] = 5
    concurrency: Annotated[int, Field(ge=1, le=16)] = 4


class Source(Strict):
    """One data source. ``local`` means every provider with ``local: true`` in
    orchestrator.yaml (``GET {base_url}/models``); it takes no ``url``."""

    kind: Kind
    url: str | None = None
    interval: Duration | None = None
    enabled: bool = True
    repos: list[str] = Field(default_factory=list)
    from_openrouter: bool = False
    max_repos: Annotated[int, Field(ge=0)] = 200

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+/\S*$", v):
            raise ValueError(
                f"{v!r} is not an absolute URL; write it like https://openrouter.ai/api/v1/models"
            )
        return v

    @field_validator("repos")
    @classmethod
    def _repos(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not REPO_ID.match(r)]
        if bad:
            raise ValueError(
                f"{bad[0]!r} is not a Hugging Face repo id; write it like Qwen/Qwen3-32B"
            )
        return v

    @model_validator(mode="after")
    def _by_kind(self) -> Source:
        hf_only = [
            k for k in ("repos", "from_openrouter", "max_repos") if k in self.model_fields_set
        ]
        if self.kind != "huggingface" and hf_only:
            raise ValueError(
                f"`{hf_only[0]}` applies to kind huggingface only; remove it from this "
                f"{self.kind} source"
            )
        if self.kind == "local" and self.url is not None:
            raise ValueError(
                "kind local takes no url; it asks every provider with `local: true` in "
                "orchestrator.yaml for GET {base_url}/models — remove `url:`"
            )
        if self.kind != "local" and self.url is None:
            raise ValueError(f"kind {self.kind} needs a url; add `url: https://...`")
        if self.kind == "huggingface" and "{repo}" not in (self.url or ""):
            raise ValueError(
                "the huggingface url must contain {repo}; write it like "
                "https://huggingface.co/api/models/{repo}"
            )
        return self

    @property
    def interval_s(self) -> float:
        """``interval`` in seconds, or the kind's default (OpenRouter 1h, others 24h)."""
        if self.interval is not None:
            return self.interval
        return parse_duration(DEFAULT_INTERVALS.get(self.kind, "24h"))


def _default_sources() -> list[Source]:
    return [
        Source(kind="openrouter", url="https://openrouter.ai/api/v1/models"),
        Source(
            kind="lmarena",
            url="https://raw.githubusercontent.com/lmarena/arena-catalog/main/data/"
            "leaderboard-text.json",
        ),
        Source(
            kind="litellm",
            url="https://raw.githubusercontent.com/BerriAI/litellm/main/"
            "model_prices_and_context_window.json",
        ),
        Source(
            kind="huggingface",
            url="https://huggingface.co/api/models/{repo}",
            from_openrouter=True,
        ),
        Source(kind="local"),
    ]


class SourcesFile(Strict):
    """``rules/sources.yaml``."""

    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["openrouter.ai", "raw.githubusercontent.com", "huggingface.co"]
    )
    jitter: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    retry_failed_after: Duration = 900.0
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    sources: list[Source] = Field(default_factory=_default_sources)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            if not re.match(r"^(\*\.)?[a-z0-9.-]+$|^\[?[0-9a-f:.]+\]?$", host.lower()):
                raise ValueError(
                    f"{host!r} is not a host name; write it like openrouter.ai or "
                    "*.example.com (no scheme, path or port)"
                )
        return [h.lower().rstrip(".") for h in v]

    @field_validator("sources")
    @classmethod
    def _unique(cls, v: list[Source]) -> list[Source]:
        seen: set[str] = set()
        for s in v:
            if s.kind in seen:
                raise ValueError(f"kind {s.kind!r} is listed twice; keep one entry per kind")
            seen.add(s.kind)
        return v

    def enabled(self) -> dict[str, Source]:
        return {s.kind: s for s in self.sources if s.enabled}


def load_sources(path: Path, *, required: bool = False) -> SourcesFile:
    """Read and validate ``rules/sources.yaml``; a missing optional file gives the defaults."""
    if not path.exists() and not required:
        return SourcesFile()
    data, marks = loader.read_yaml(path)
    result: SourcesFile = loader.validate(SourcesFile, data, marks, str(path))
    return result
