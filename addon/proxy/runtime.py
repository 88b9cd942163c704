"""The running proxy's state and background work, independent of mitmproxy.

`Runtime` owns the dispatcher, ledger, metrics, budget book and admin server, and does the
hot reload: it watches `orchestrator.yaml`, `rules/*.yaml` and the benchmark DB, rebuilds the
whole configuration off the event loop, validates it completely and swaps it in with one
assignment. A bad edit keeps the last good config; requests in flight finish under the
config they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from addon.config import loader
from addon.config.loaded import Config
from addon.config.schema import Settings, default_apis
from addon.errors import ConfigError
from addon.proxy import budgetgate, dispatch
from addon.proxy.balancing import Balancing
from addon.proxy.cachegate import CacheGate
from addon.proxy.metrics import Metrics
from addon.proxy.ratelimitgate import RateLimitGate
from addon.proxy.view import View, build_view, environ
from addon.routing import ranking
from addon.state import memory
from addon.state.response_homes import LocalResponseHomes
from addon.store import benchmarks, ledgers

log = logging.getLogger("orchestrator")

WATCH_EVERY_S = 0.25
RERANK_EVERY_S = 5.0
RESTART_KEYS = ("listen", "mode", "admin", "data", "state")


def _settle() -> None:
    """Take what lives as long as a config (catalog, rankings: ~150k objects) out of the
    cyclic collector's sight. A full collection walks every tracked object and over that
    heap stalls the event loop ~100 ms each time; frozen, collections walk only what
    requests allocate. (The previous config is freed by reference counting on swap; only
    garbage cycles in it would outlive it, frozen.)"""
    gc.freeze()


def watch_paths(cfg: Config) -> tuple[Path, ...]:
    """The files a change of which reloads the config: its YAML files and the benchmark DB."""
    return (*loader.watched_files(cfg), cfg.benchmarks_path)


def fingerprint(paths: tuple[Path, ...]) -> tuple[tuple[int, int] | None, ...]:
    """(mtime ns, size) of each path, None for a missing one: compared to spot an edit."""
    out: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


def startup_lines(view: View, host: str, port: int | str, ca_bundle: str) -> list[str]:
    """What the proxy logs once it listens (`host:port`, the address it bound): what it
    serves, and how to use it in its mode — regular: the HTTPS_PROXY settings; reverse: the
    base URL to point an SDK at; transparent and local: how to confirm that apps' traffic
    is captured."""
    cfg = view.config
    cat = view.catalog
    mode = cfg.settings.mode
    usable = sorted(n for n, p in cat.providers.items() if p.keyless or p.has_env_key)
    where = (f"capturing {_local_scope(mode)}" if mode.startswith("local")
             else f"listening on {_authority(host, port)}")  # fmt: skip
    lines = [
        f"Local AI Orchestrator {cfg.version}: {where}, mode "
        f"{mode}, default profile {cfg.settings.default_profile}, "
        f"{len(cat.candidates)} candidates ({cat.source}), providers usable without a client "
        f"key: {', '.join(usable) or 'none'}, config {cfg.path}"
    ]
    url = f"http://{_authority(_reachable(host), port)}"
    trust = (f"  apps must trust this proxy's CA: export SSL_CERT_FILE={ca_bundle}\n"
             "  (`.venv/bin/orchestrator trust` prints the setting for each runtime)")  # fmt: skip
    if mode.startswith("reverse:"):
        lines.append("Point an SDK at it (no proxy settings):\n" + "\n".join(
            f"  export {line}" for line in _base_urls(cfg.settings, mode, url)))  # fmt: skip
    elif mode == "transparent":
        lines.append(
            "Transparent mode: apps need no proxy settings once their connections are redirected "
            "here.\n  set that up (root): sudo .venv/bin/orchestrator capture install\n"
            "  see its rules and counters: sudo .venv/bin/orchestrator capture status\n"
            "  confirm, as an app's user: .venv/bin/orchestrator doctor\n" + trust
        )
    elif mode.startswith("local"):
        lines.append(
            "Local mode: apps need no proxy settings; mitmproxy's eBPF redirector captures "
            "their connections.\n  confirm, as an app's user: .venv/bin/orchestrator doctor\n"
            + trust
        )
    else:
        lines.append(
            f"Point an app at it:\n  export HTTPS_PROXY={url}\n"
            f"  export SSL_CERT_FILE={ca_bundle}\n  export NO_PROXY=localhost,127.0.0.1\n"
            "(SSL_CERT_FILE = system roots + this proxy's CA; Node: NODE_EXTRA_CA_CERTS)"
        )
    return lines


def _authority(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reachable(host: str) -> str:
    """The address an app on this machine uses for a proxy bound to `host` (every interface:
    loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "*") else host


def _local_scope(mode: str) -> str:
    spec = mode.partition(":")[2]
    return "every local app's connections" if not spec else f"the connections of {spec!r}"


def _base_urls(settings: Settings, mode: str, url: str) -> list[str]:
    """The SDK settings for reverse mode: OpenAI's base URL (with the upstream's API path),
    Anthropic's for an upstream speaking Messages, and the router key with `clients:`."""
    target = urlsplit(mode.removeprefix("reverse:"))
    same = [p for p in settings.providers.values()
            if urlsplit(p.base_url).netloc == target.netloc]  # fmt: skip
    path = urlsplit(same[0].base_url).path if same else ""
    speaks = set(same[0].speaks) if same else set(default_apis(target.hostname or "", local=False))
    out = []
    if speaks - {"messages"}:
        out.append(f"OPENAI_BASE_URL={url}{path or '/v1'}")
        if settings.clients:
            out.append("OPENAI_API_KEY=<your router key>   (clients: it proves who you are)")
    if "messages" in speaks:
        out.append(f"ANTHROPIC_BASE_URL={url}{path.removesuffix('/v1')}")
        if settings.clients:
            out.append("ANTHROPIC_AUTH_TOKEN=<your router key>   (sent as Authorization: Bearer)")
    return out


class Runtime:
    """The running proxy apart from mitmproxy: the dispatcher and its stores, metrics, the
    admin endpoint, and the hot reload."""

    def __init__(self, cfg: Config, view: View,
                 apply_settings: Callable[[Settings], None]) -> None:  # fmt: skip
        self.config_path = cfg.path
        self.apply_settings = apply_settings
        self.ledger = ledgers.open_writer(cfg)
        self.reader = ledgers.open_reader(cfg)
        self.shared: Any = None  # addon.redisstate.RedisState with `state: redis://…`
        if cfg.settings.state is not None:
            from addon.state.redisstate import RedisState

            self.shared = RedisState(cfg.settings.state)
            breakers, latency, budgets, homes = (
                self.shared.breakers,
                self.shared.latency,
                self.shared.budgets,
                self.shared.responses,
            )
        else:
            breakers, latency, budgets, homes = (
                memory.LocalBreakers(),
                memory.LocalLatency(),
                memory.LocalBudgets(),
                LocalResponseHomes(),
            )
        self.budgets: memory.Budgets = budgets
        providers: memory.Breakers = (self.shared.provider_breakers if self.shared is not None
                                      else memory.LocalProviderBreakers())  # fmt: skip
        self.dispatcher = dispatch.Dispatcher(view, self.ledger, budgets, breakers=breakers,
                                              latency=latency, homes=homes,
                                              provider_breakers=providers)  # fmt: skip
        self.dispatcher.balancing = Balancing.for_state(cfg.settings.state)  # calls in flight
        self.metrics = Metrics(self.live_state)  # reads the dispatcher's state when scraped
        self.dispatcher.metrics = self.metrics
        self.dispatcher.cache = CacheGate.for_config(cfg, self.metrics)  # `cache:`
        self.dispatcher.limits = RateLimitGate.for_state(cfg.settings.state, self.metrics)
        budgets.on_alert = budgetgate.alert_sink(self.metrics)
        self._seed = budgetgate.spend_to_seed(cfg, self.reader)
        if isinstance(budgets, memory.LocalBudgets):  # before the first request
            for rule, key, start, usd in self._seed:
                budgets.book.seed(rule, key, start, usd)
            self._seed = []
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._fingerprint = fingerprint(watch_paths(cfg))
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock: asyncio.Lock | None = None
        self.admin: Any = None
        # what is down among mitmproxy's listeners (`process.Listeners.problems` sets it)
        self.listener_problems: Callable[[], list[str]] = list

    @property
    def view(self) -> View:
        """The config version in force."""
        return self.dispatcher.view

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start what needs the event loop: shared state, the pipe, the file watcher, the
        re-ranker, SIGHUP reloads and the admin endpoint."""
        from addon.proxy.admin import AdminServer

        self._reload_lock = asyncio.Lock()
        if self.shared is not None:
            await self.shared.start()
        for rule, key, start, usd in self._seed:  # shared: only windows no replica counted
            await self.budgets.seed(rule, key, start, usd)
        await self.dispatcher.pipe.ensure_started()  # hooks that cannot await need its port
        await self.dispatcher.balancing.start()
        await self.dispatcher.cache.start()
        await self.dispatcher.limits.start()
        loop = asyncio.get_running_loop()
        gc.collect()  # the loading's garbage, once, before any request waits on it
        _settle()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._rerank())]
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        s = self.view.config.settings
        if s.admin.enabled:
            host, _, port = s.admin.listen.rpartition(":")
            self.admin = AdminServer(self)
            try:
                await self.admin.start(host.strip("[]"), int(port))
            except OSError as e:
                log.error("admin endpoint %s not started: %s — free the port or change "
                          "`admin.listen` in %s", s.admin.listen, e, self.config_path.name)  # fmt: skip
                self.admin = None
            else:
                log.info("admin endpoint: http://%s:%s/ (status page, /metrics, /status)",
                         host, self.admin.port)  # fmt: skip

    async def stop(self) -> None:
        """Stop the background tasks and close the admin endpoint, pipe, stores and ledger."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.admin is not None:
            await self.admin.stop()
        await self.dispatcher.close()
        await self.dispatcher.balancing.close()
        await self.dispatcher.cache.close()
        await self.dispatcher.limits.close()
        if self.shared is not None:
            await self.shared.close()
        await asyncio.to_thread(self.ledger.close)
        self.reader.close()

    # ------------------------------------------------------------------ reload

    async def reload(self, reason: str) -> tuple[bool, str]:
        """Build and validate the whole config, then swap it in; keep the old one on error."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            old = self.view
            try:
                cfg = await asyncio.to_thread(loader.load, self.config_path)
                self._check_db(cfg)
                view = await asyncio.to_thread(
                    build_view, cfg, environ(), self.dispatcher.latency.values()
                )
            except (ConfigError, benchmarks.BenchmarkDBError) as e:
                self.last_error, self.last_error_at = str(e), time.time()
                self.metrics.reloads.labels("failed").inc()
                log.error("reload (%s) rejected; still serving config %s:\n%s", reason,
                          old.config.version, e)  # fmt: skip
                return False, str(e)
            finally:
                self._fingerprint = fingerprint(watch_paths(self.view.config))
            self.dispatcher.swap(view)
            _settle()
            self._fingerprint = fingerprint(watch_paths(view.config))
            self.loaded_at, self.last_error, self.last_error_at = time.time(), None, None
            self.metrics.reloads.labels("ok").inc()
            changed = [k for k in RESTART_KEYS
                       if getattr(old.config.settings, k) != getattr(view.config.settings, k)]  # fmt: skip
            if changed:
                log.warning("reload: %s changed; these take effect after a restart",
                            ", ".join(changed))  # fmt: skip
            if view.config.settings.intercept != old.config.settings.intercept:
                self.apply_settings(view.config.settings)
            for w in view.catalog.warnings:
                log.warning("%s", w)
            msg = (f"reloaded ({reason}): config {old.config.version} -> {view.config.version}, "
                   f"{len(view.catalog.candidates)} candidates")  # fmt: skip
            log.info("%s", msg)
            return True, msg

    @staticmethod
    def _check_db(cfg: Config) -> None:
        """A benchmark DB that exists but cannot be read keeps the old catalog."""
        path = cfg.benchmarks_path
        if path.exists():
            rows = benchmarks.load_offerings(path)
            if not rows:
                raise benchmarks.BenchmarkDBError(path, "has no offerings",
                                                  "rebuild it with `orchestrator refresh`")  # fmt: skip

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            if fingerprint(watch_paths(self.view.config)) != self._fingerprint:
                await self.reload("file change")

    async def _rerank(self) -> None:
        d = self.dispatcher
        while True:
            await asyncio.sleep(RERANK_EVERY_S)
            if not d.latency.dirty:
                continue
            d.latency.dirty = False
            view = d.view
            latency = d.latency.values()
            # one ranking per event-loop turn: each costs a millisecond or two at most (a few
            # bisections and list copies), so no request waits behind the whole rerank, and
            # no worker thread competes with the loop for the GIL
            done = {}
            for key in view.router.base:
                done[key] = ranking.reranked(view.router, key, latency)
                await asyncio.sleep(0)
            if d.view is view:
                d.swap(dataclasses.replace(view, router=ranking.with_rankings(view.router, done)))

    # ------------------------------------------------------------------ state

    def breakers(self) -> list[dict[str, Any]]:
        """Every target breaker that has a state, by target key, with the seconds left in
        its cooldown (for /status and metrics)."""
        cooldown_s = self.view.config.settings.resilience.breaker.cooldown_s
        return memory.breaker_rows(self.dispatcher.breakers.snapshot(), cooldown_s)

    def live_state(self) -> dict[str, Any]:
        """What the metrics read at scrape time: target and provider breakers, benchmark DB
        age, budgets."""
        view = self.view
        src = view.catalog.source.removeprefix("bundled:")
        try:
            age = time.time() - os.stat(src).st_mtime if src and src != "none" else None
        except OSError:
            age = None
        cooldown_s = view.config.settings.resilience.breaker.cooldown_s
        providers = memory.breaker_rows(self.dispatcher.provider_breakers.snapshot(), cooldown_s,
                                        key_name="provider")  # fmt: skip
        return {"breakers": self.breakers(), "provider_breakers": providers,
                "benchmarks_age_s": age, "budgets": self.budgets.snapshot(time.time())}  # fmt: skip

    def health(self) -> dict[str, Any]:
        """The `/healthz` document: "ok" while every listener mitmproxy was asked for serves
        (and local capture's redirector runs), else "failing" with what is down."""
        down = self.listener_problems()
        return {"status": "failing" if down else "ok", "config": self.view.config.version,
                **({"problems": down} if down else {})}  # fmt: skip

    def status(self) -> dict[str, Any]:
        """The `/status` document: config, providers and keys, catalog, breakers, budgets,
        ledger and shared state."""
        view = self.view
        cfg = view.config
        live = self.live_state()
        return {
            "config": {"path": str(cfg.path), "version": cfg.version, "loaded_at": self.loaded_at,
                       "last_error": self.last_error, "last_error_at": self.last_error_at},
            "mode": cfg.settings.mode,
            "default_profile": cfg.settings.default_profile,
            "providers": [
                {"name": p.name, "base_url": p.base_url,
                 "key": "not needed" if p.keyless else ("set" if p.has_env_key else "missing"),
                 "key_env": p.api_key_env}
                for p in view.catalog.providers.values()
            ],
            "catalog": {"source": view.catalog.source, "candidates": len(view.catalog.candidates),
                        "age_s": live["benchmarks_age_s"]},
            "breakers": live["breakers"],
            "provider_breakers": live["provider_breakers"],
            "budgets": live["budgets"],
            "ledger": {**self.reader.stats(), **self.ledger.health()},
            "state": self.shared.health() if self.shared is not None
                     else {"kind": "in-process"},
            "response_homes": self.dispatcher.homes.health(),
            "rate_limits": self.dispatcher.limits.snapshot(),  # addon.proxy.ratelimitgate
        }  # fmt: skip
