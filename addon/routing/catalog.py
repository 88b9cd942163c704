"""The candidate table: benchmark DB offerings plus `rules/models.yaml`, joined to the
configured providers.

`build_catalog` is pure (rows, config and an environment mapping in; a Catalog out); the
rows come from `addon.store.benchmarks.load_catalog_rows`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from addon.config.loaded import Config
from addon.config.rules import DeclaredModel
from addon.config.schema import Provider
from addon.routing.continuation import default_prefill, prefill_form
from addon.routing.cost import Price

log = logging.getLogger("orchestrator")

UNKNOWN_QUALITY_PRIOR = 0.25  # normalized quality assumed for an unrated model (below median)


def host_of(url: str) -> str:
    """`host[:port]` of a URL, lower-case, default ports dropped."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and not (
        (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    ):
        return f"{host}:{port}"
    return host


@dataclass(frozen=True, slots=True)
class OfferingRow:
    """One offering joined with its model: everything the router's catalog needs."""

    model_id: str
    model_name: str
    org: str | None
    provider: str
    provider_model_id: str
    input_per_mtok: float | None
    output_per_mtok: float | None
    cached_input_per_mtok: float | None
    context_tokens: int | None
    max_output_tokens: int | None
    supports_tools: bool | None
    supports_vision: bool | None
    supports_json_schema: bool | None
    supports_reasoning: bool | None
    quality: float | None
    quality_lo: float | None
    quality_hi: float | None
    open_weights: bool | None
    source: str | None = None  # openrouter | litellm | local (a local provider's /models)


@dataclass(frozen=True)
class ProviderInfo:
    """A configured provider as routing sees it: its URL and `host[:port]`, the environment
    variable of its key and whether that is set, whether it is a local server, and the
    extra headers sent to it, and the APIs it serves."""

    name: str
    base_url: str
    host: str
    api_key_env: str | None
    has_env_key: bool
    local: bool
    headers: tuple[tuple[str, str], ...] = ()
    apis: frozenset[str] = frozenset({"chat", "completions"})  # what it serves

    @property
    def keyless(self) -> bool:
        """Whether the provider takes no key at all (`api_key_env` unset)."""
        return self.api_key_env is None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model at one configured provider: what the router scores, filters and sends.
    Prices are USD per million tokens (`price`); context and output limits are tokens."""

    key: str  # "provider:provider_model_id", unique
    model_id: str  # canonical model id
    name: str
    provider: str  # configured provider name
    provider_model_id: str  # what goes into the body's "model"
    price: Price
    context_tokens: int | None
    max_output_tokens: int | None
    tools: bool
    vision: bool
    json_schema: bool
    reasoning: bool
    quality: float | None  # arena-style rating
    quality_norm: float  # 0..1 over the catalog (prior when unrated)
    source: str  # "benchmarks" | "models.yaml"
    # how it continues a partial answer (`addon.routing.continuation`): a form, or "none"
    prefill: str = "none"


@dataclass(frozen=True)
class Catalog:
    """Every candidate one config can route to, sorted by key, with the providers and a
    name index. `source` is where the rows came from (a DB path, ``bundled:<path>`` or
    ``none``); `warnings` what loading them noted."""

    candidates: tuple[Candidate, ...]
    providers: dict[str, ProviderInfo]
    by_name: dict[str, tuple[Candidate, ...]] = field(repr=False)
    source: str = ""
    warnings: tuple[str, ...] = ()

    def lookup(self, name: str) -> tuple[Candidate, ...]:
        """The candidates a model name denotes, ignoring case: a canonical or provider
        model id, or either one's last path segment."""
        return self.by_name.get(name.lower(), ())


def requested_candidate(catalog: Catalog, name: str | None, host: str) -> Candidate | None:
    """The catalog entry a request's `model` names, as the client meant it: of the offerings
    under that name, those at `host` (the host the client addressed) first, priced ones
    before unpriced. None when the request names no model the catalog knows. The one rule
    for both routing (savings against the requested model) and recording (the price of an
    unrouted call)."""
    if not name:
        return None
    found = catalog.lookup(name)
    if not found:
        return None
    same_host = [c for c in found if catalog.providers[c.provider].host == host]
    priced = [c for c in (same_host or found) if c.price.known]
    return (priced or same_host or list(found))[0]


def provider_infos(
    providers: Mapping[str, Provider], env: Mapping[str, str]
) -> dict[str, ProviderInfo]:
    """Each configured provider by name; `env` is only asked whether its key is set."""
    return {
        name: ProviderInfo(
            name=name,
            base_url=p.base_url,
            host=host_of(p.base_url),
            api_key_env=p.api_key_env,
            has_env_key=bool(p.api_key_env and env.get(p.api_key_env)),
            local=p.local,
            headers=tuple(p.headers.items()),
            apis=frozenset(p.speaks),
        )
        for name, p in providers.items()
    }


def build_catalog(
    cfg: Config,
    rows: list[OfferingRow],
    env: Mapping[str, str],
    source: str = "",
    warnings: list[str] | None = None,
) -> Catalog:
    """The candidates of `cfg`'s providers: each DB offering at every provider whose
    `catalog:` names the offering's provider (a provider that is not local defaults to its
    own name), a local server's own `/models` offerings, then the models of
    `rules/models.yaml`, which replace an offering of the same key. Quality is normalized
    min-max from the 5th percentile of the rated ones; an unrated candidate gets
    `UNKNOWN_QUALITY_PRIOR`."""
    providers = provider_infos(cfg.settings.providers, env)
    by_catalog: dict[str, list[str]] = {}
    for name, p in cfg.settings.providers.items():
        # A local server serves what it has installed, not what a price map lists for its
        # kind: it joins DB offerings only when `catalog:` says so explicitly.
        if p.catalog or not p.local:
            by_catalog.setdefault(p.catalog or name, []).append(name)
    # ... but what the refresh discovered on that very server (its /v1/models) is real
    local_names = {n for n, p in cfg.settings.providers.items() if p.local and not p.catalog}

    raw: dict[str, dict] = {}
    for r in rows:
        serving: Sequence[str] = by_catalog.get(r.provider, ())
        if r.provider in local_names and r.source == "local":
            serving = (r.provider,)
        for prov in serving:
            key = f"{prov}:{r.provider_model_id}"
            raw[key] = dict(
                key=key,
                model_id=r.model_id,
                name=r.model_name or r.model_id,
                provider=prov,
                provider_model_id=r.provider_model_id,
                price=Price(r.input_per_mtok, r.output_per_mtok, r.cached_input_per_mtok),
                context_tokens=r.context_tokens,
                max_output_tokens=r.max_output_tokens,
                tools=bool(r.supports_tools),
                vision=bool(r.supports_vision),
                json_schema=bool(r.supports_json_schema),
                reasoning=bool(r.supports_reasoning),
                quality=r.quality,
                source="benchmarks",
                prefill=default_prefill(providers[prov].base_url),
            )
    for dm in cfg.models:
        key = f"{dm.provider}:{dm.provider_model_id or dm.id}"
        prov_info = providers[dm.provider]
        raw[key] = _declared(dm, key, prov_info.local, prov_info.base_url)

    rated = sorted(v["quality"] for v in raw.values() if v["quality"] is not None)
    lo = rated[len(rated) // 20] if rated else 0.0
    hi = rated[-1] if rated else 1.0
    span = (hi - lo) or 1.0

    cands = []
    for key in sorted(raw):
        v = raw[key]
        q = v["quality"]
        qn = UNKNOWN_QUALITY_PRIOR if q is None else min(1.0, max(0.0, (q - lo) / span))
        cands.append(Candidate(quality_norm=round(qn, 6), **v))

    index: dict[str, list[Candidate]] = {}
    for c in cands:
        names = {
            c.provider_model_id,
            c.model_id,
            c.model_id.rsplit("/", 1)[-1],
            c.provider_model_id.rsplit("/", 1)[-1],
        }
        for n in names:
            index.setdefault(n.lower(), []).append(c)
    return Catalog(
        candidates=tuple(cands),
        providers=providers,
        by_name={k: tuple(v) for k, v in index.items()},
        source=source,
        warnings=tuple(warnings or ()),
    )


def _declared(dm: DeclaredModel, key: str, local: bool, base_url: str = "") -> dict:
    free = 0.0 if local else None
    return dict(
        key=key,
        model_id=dm.id,
        name=dm.name or dm.id,
        provider=dm.provider,
        provider_model_id=dm.provider_model_id or dm.id,
        price=Price(
            dm.input_per_mtok if dm.input_per_mtok is not None else free,
            dm.output_per_mtok if dm.output_per_mtok is not None else free,
            dm.cached_input_per_mtok,
        ),
        context_tokens=dm.context_tokens,
        max_output_tokens=dm.max_output_tokens,
        tools=dm.capabilities.tools,
        vision=dm.capabilities.vision,
        json_schema=dm.capabilities.json_schema,
        reasoning=dm.capabilities.reasoning,
        quality=dm.quality,
        source="models.yaml",
        prefill=prefill_form(dm.capabilities.prefill, base_url),
    )
