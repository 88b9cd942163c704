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

from addon.config import loader
from addon.config.loaded import Config
from addon.config.schema import Settings
from addon.errors import ConfigError
from addon.proxy import budgetgate, dispatch
from addon.proxy.balancing import Balancing
from addon.proxy.cachegate import CacheGate
from addon.proxy.metrics import Metrics
from addon.proxy.ratelimitgate import RateLimitGate
from addon.proxy.telemetry import Collector, Telemetry, package_version
from addon.proxy.view import View, build_view, environ
from addon.routing import ranking
from addon.state import memory
from addon.state.response_homes import LocalResponseHomes
from addon.store import benchmarks, ledgers

log = logging.getLogger("orchestrator")

WATCH_EVERY_S = 0.25
RERANK_EVERY_S = 5.0
RESTART_KEYS = ("listen", "mode", "admin", "data", "state", "telemetry")


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
        # `telemetry:` unset: None, and the request path does no telemetry work
        self.telemetry = Telemetry.for_settings(cfg.settings.telemetry, environ(),
                                                package_version())  # fmt: skip
        if self.telemetry is not None:
            self.metrics.registry.register(Collector(self.telemetry))  # its drop counts
        self.dispatcher.telemetry = self.telemetry
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
        if self.telemetry is not None:
            self.telemetry.start()
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
        if self.telemetry is not None:  # after the last request: its spans go too
            await asyncio.to_thread(self.telemetry.close)
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

    def status_io(self) -> dict[str, Any]:
        """The parts of `/status` that read a disk or the network (a worker thread's job)."""
        return {
            "ledger": {**self.reader.stats(), **self.ledger.health()},
            "state": self.shared.health() if self.shared is not None else {"kind": "in-process"},
        }

    def status(self, io: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `/status` document: config, providers and keys, catalog, breakers, budgets,
        ledger and shared state. Call it on the event loop, which owns the breaker, budget
        and limit tables, with `io` from `status_io()` run off it."""
        view = self.view
        cfg = view.config
        live = self.live_state()
        io = io if io is not None else self.status_io()
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
            "ledger": io["ledger"],
            "state": io["state"],
            "response_homes": self.dispatcher.homes.health(),
            "rate_limits": self.dispatcher.limits.snapshot(),  # addon.proxy.ratelimitgate
            "cache": self.dispatcher.cache.health(),  # addon.proxy.cachegate: kind, where, errors
            "telemetry": self.telemetry.health() if self.telemetry is not None else None,
        }  # fmt: skip
