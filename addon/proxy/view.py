"""Everything the request path derives from one config version, built once per load.

A `View` is replaced whole on reload, so a request reads one version from start to end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from addon.config.loaded import Config
from addon.errors import OrchestratorError
from addon.proxy import clients
from addon.routing import catalog as catmod
from addon.routing import ranking
from addon.routing.difficulty import DifficultyModel
from addon.store import benchmarks
from addon.store import scorer as scorer_store

log = logging.getLogger("orchestrator")


@dataclass(frozen=True)
class View:
    """Everything derived from one config version; replaced whole on reload."""

    config: Config
    catalog: catmod.Catalog
    router: ranking.Router
    keys: Mapping[str, str] = field(repr=False)
    client_digests: Mapping[str, str] = field(default_factory=dict, repr=False)
    _keyed: dict[tuple[str, str], frozenset[str]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _speaking: dict[str, frozenset[str] | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    # the learned difficulty scorer (`complexity: learned`); None: the keyword heuristic
    difficulty: DifficultyModel | None = field(default=None, compare=False, repr=False)

    def keyed(self, client_key_host: str | None, api: str = "chat") -> frozenset[str]:
        """Providers a request of `api` can be sent to with a key, among those that speak
        it: keyless ones, ours (a configured key), and, when the client sent its own key,
        those at the host it meant it for."""
        host = client_key_host or ""
        got = self._keyed.get((host, api))
        if got is None:
            got = frozenset(
                name
                for name, p in self.catalog.providers.items()
                if (p.keyless or name in self.keys or (host and p.host == host)) and api in p.apis
            )
            if len(self._keyed) > 256:  # hosts come from clients: keep the memo bounded
                self._keyed.clear()
            self._keyed[(host, api)] = got
        return got

    def speaking(self, api: str) -> frozenset[str] | None:
        """The providers that speak `api`; None when every configured provider does."""
        if api not in self._speaking:
            names = frozenset(n for n, p in self.catalog.providers.items() if api in p.apis)
            self._speaking[api] = None if len(names) == len(self.catalog.providers) else names
        return self._speaking[api]


def build_view(cfg: Config, env: Mapping[str, str], latency: Mapping[str, float]) -> View:
    """Load the catalog (benchmark DB + declared models), rank it with `latency` (candidate
    key -> observed ms), and take provider keys and client key digests from `env`."""
    rows, source, warnings = benchmarks.load_catalog_rows(cfg)
    catalog = catmod.build_catalog(cfg, rows, env, source, warnings)
    keys = {
        name: env[p.api_key_env]
        for name, p in cfg.settings.providers.items()
        if p.api_key_env and env.get(p.api_key_env)
    }
    try:
        difficulty = scorer_store.for_config(cfg)
    except OrchestratorError as e:  # a broken artifact costs the learned scorer, not the proxy
        log.warning("%s; routing with the keyword heuristic", e)
        difficulty = None
    return View(cfg, catalog, ranking.build_router(cfg, catalog, latency), keys,
                clients.key_digests(cfg.settings, env), difficulty=difficulty)  # fmt: skip


def intercepted(host: str, intercept: tuple[str, ...] | list[str]) -> bool:
    """Whether `host` (`host[:port]`) is on the intercept list, with or without its port."""
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return any(entry in (host, bare) for entry in intercept)


def local_hosts(view: View) -> frozenset[str]:
    """Host names of the `local: true` providers: the only ones that may resolve to
    internal addresses."""
    return frozenset(
        (urlsplit(p.base_url).hostname or "").lower()
        for p in view.config.settings.providers.values()
        if p.local
    )


def environ() -> Mapping[str, str]:
    """A copy of the process environment (provider and client keys are read from it)."""
    return dict(os.environ)
