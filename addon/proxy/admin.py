"""The admin endpoint (default 127.0.0.1:9090), on its own port beside the proxy.

GET  /            status page (self-contained HTML)
GET  /healthz     {"status": "ok", "config": version}; 503 with "status": "failing" and
                  "problems" when a mitmproxy listener (or local capture) is down
GET  /status      config version and last reload error, providers and key presence, breakers,
                  catalog and DB age, ledger size, budgets
GET  /metrics     Prometheus text
GET  /rankings    ?profile=P[&task=T][&complexity=simple|medium|complex][&limit=N]
GET  /costs       ?since=24h&by=model|provider|profile|client|policy
GET  /costs/series ?since=24h&buckets=24
GET  /overview    ?window=1h|24h|7d: the status page's totals, per served model / provider /
                  requested model, and spend and requests over time (`addon.store.windows`)
GET  /requests    ?window=24h&outcome=&model=&client=&limit=50: recent requests, newest first
GET  /requests/ID one request as `orchestrator explain ID` shows it (and its columns)
GET  /budgets     every budget with its live window and state (ok, alerting, blocking)
GET  /limits      every rate limit with its sliding minute and state (ok, near, limited)
POST /reload      reload the config now (also: SIGHUP, or just save a file)

The page's endpoints read the ledger through a short-lived cache (ROWS_TTL_S): several open
pages polling every few seconds cost one ledger read per window, not one per call.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from aiohttp import web

from addon.errors import LedgerError
from addon.proxy import budgetgate, statuspage
from addon.proxy.dispatch import Dispatcher
from addon.proxy.metrics import Metrics
from addon.proxy.view import View
from addon.routing import ranking
from addon.routing.scoring import effective_weights
from addon.state.memory import Budgets
from addon.store import allowances, reports, windows
from addon.store.ledgers import LedgerReader

ROWS_TTL_S = 2.0
BUDGET_LOOKBACK_S = 86400  # refusals are counted over at most the last day of a window


class RunningProxy(Protocol):
    """What the admin endpoint reads from the running proxy (`addon.proxy.runtime.Runtime`
    is one): the config in force, live state, the ledger, and a way to reload."""

    dispatcher: Dispatcher
    metrics: Metrics
    reader: LedgerReader
    budgets: Budgets

    @property
    def view(self) -> View:
        """The config version in force."""
        ...

    def health(self) -> dict[str, Any]:
        """The `/healthz` document: "status" is "ok" unless a listener is down."""
        ...

    def status_io(self) -> dict[str, Any]:
        """The parts of `/status` that read a disk or the network (blocking)."""
        ...

    def status(self, io: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `/status` document, on the event loop, with `io` from `status_io()`."""
        ...

    def live_state(self) -> dict[str, Any]:
        """Breakers, budgets and the DB's age, for `/metrics` (on the event loop)."""
        ...

    async def reload(self, reason: str) -> tuple[bool, str]:
        """Reload the config now: (whether it was swapped in, what happened)."""
        ...


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}},
                             status=status)  # fmt: skip


class AdminServer:
    """The admin endpoint's aiohttp server: one route per URL in this module's docstring."""

    def __init__(self, runtime: RunningProxy) -> None:
        self.rt = runtime
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._page = statuspage.render_page()
        self._rows: tuple[float, float, list[dict[str, Any]]] | None = None  # since, at, rows
        self._rows_lock = asyncio.Lock()

    async def start(self, host: str, port: int) -> None:
        """Serve on `host:port` (port 0: any free one; `self.port` says which)."""
        app = web.Application()
        app.add_routes([
            web.get("/", self.page),
            web.get("/healthz", self.healthz),
            web.get("/status", self.status),
            web.get("/metrics", self.metrics),
            web.get("/rankings", self.rankings),
            web.get("/costs", self.costs),
            web.get("/costs/series", self.series),
            web.get("/overview", self.overview),
            web.get("/requests", self.requests),
            web.get("/requests/{id}", self.request_detail),
            web.get("/budgets", self.budgets),
            web.get("/limits", self.limits),
            web.post("/reload", self.reload),
        ])  # fmt: skip
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        server = site._server
        self.port = server.sockets[0].getsockname()[1] if server else port  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def page(self, request: web.Request) -> web.Response:
        """GET /: the status page."""
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def healthz(self, request: web.Request) -> web.Response:
        """GET /healthz: the config version in force; 200 while every listener serves, 503
        (with what is down) when one does not."""
        doc = self.rt.health()
        return web.json_response(doc, status=200 if doc["status"] == "ok" else 503)

    async def status(self, request: web.Request) -> web.Response:
        """GET /status: the runtime's status plus event-loop and connection counts."""
        st = self.rt.status(await asyncio.to_thread(self.rt.status_io))
        d = self.rt.dispatcher
        st["runtime"] = {"tasks": len(asyncio.all_tasks()), "streams_waiting": d.pipe.waiting,
                         "upstream_connections": d.engine.connections()}  # fmt: skip
        return web.json_response(st)

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics: Prometheus text."""
        body = await asyncio.to_thread(self.rt.metrics.render, self.rt.live_state())
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def reload(self, request: web.Request) -> web.Response:
        """POST /reload: reload now; 422 with the reason when the new config is refused."""
        ok, message = await self.rt.reload("admin /reload")
        return web.json_response({"ok": ok, "message": message,
                                  "version": self.rt.view.config.version},
                                 status=200 if ok else 422)  # fmt: skip

    async def rankings(self, request: web.Request) -> web.Response:
        """GET /rankings: a profile's ranked candidates for one complexity class."""
        view = self.rt.view
        q = request.query
        profile = q.get("profile", view.config.settings.default_profile)
        if profile not in view.config.profiles:
            return _error(400, f"unknown profile {profile!r}; use one of: "
                               f"{', '.join(sorted(view.config.profiles))}")  # fmt: skip
        cls = q.get("complexity", "medium")
        if cls not in ranking.CLASSES:
            return _error(400, f"unknown complexity {cls!r}; use simple, medium or complex")
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            return _error(400, f"limit {q.get('limit')!r} is not a number")
        return web.json_response(ranking_json(self.rt, profile, cls, limit))

    async def costs(self, request: web.Request) -> web.Response:
        """GET /costs: spend since `since`, grouped `by` a ledger column."""
        by = request.query.get("by", "model")
        try:
            since = reports.parse_since(request.query.get("since", "24h"), time.time())
            rows = await asyncio.to_thread(reports.load, self.rt.reader, since)
            groups = reports.cost_report(rows, by)
        except ValueError as e:
            return _error(400, str(e))
        return web.json_response(reports.as_json(groups, reports.totals(rows)))

    async def series(self, request: web.Request) -> web.Response:
        """GET /costs/series: spend since `since` in `buckets` equal time slices."""
        now = time.time()
        try:
            since = reports.parse_since(request.query.get("since", "24h"), now)
            buckets = int(request.query.get("buckets", "24"))
            if not 1 <= buckets <= 1000:
                raise ValueError(f"buckets {buckets} is out of range; use 1 to 1000")
        except ValueError as e:
            return _error(400, str(e))
        rows = await asyncio.to_thread(reports.load, self.rt.reader, since)
        return web.json_response({"series": reports.spend_series(rows, since, now, buckets)})

    # ------------------------------------------------------------------ status page

    async def _load(self, since: float) -> list[dict[str, Any]]:
        """Ledger rows at or after `since` (decoded, oldest first), from the last read when it
        covers `since` and is under ROWS_TTL_S old."""
        async with self._rows_lock:
            now = time.monotonic()
            cached = self._rows
            if cached is None or cached[0] > since or now - cached[1] > ROWS_TTL_S:
                rows = await asyncio.to_thread(reports.load, self.rt.reader, since)
                cached = self._rows = (since, now, rows)
        return [r for r in cached[2] if r["ts"] >= since]

    async def overview(self, request: web.Request) -> web.Response:
        """GET /overview: the status page's numbers for one window."""
        now = time.time()
        window = request.query.get("window", "24h")
        try:
            since, _ = windows.window_bounds(window, now)
            rows = await self._load(since)
        except (ValueError, LedgerError) as e:
            return _error(400 if isinstance(e, ValueError) else 503, str(e))
        return web.json_response(windows.overview(rows, window, now))

    async def requests(self, request: web.Request) -> web.Response:
        """GET /requests: the window's newest requests, filtered."""
        q = request.query
        try:
            since, _ = windows.window_bounds(q.get("window", "24h"), time.time())
            text = q.get("limit", "50")
            if not text.isdigit():
                raise ValueError(f"limit {text!r} is not a number")
            limit = int(text)
            rows = await self._load(since)
            doc = windows.recent(rows, outcome=q.get("outcome", ""), model=q.get("model", ""),
                                 client=q.get("client", ""), limit=limit)  # fmt: skip
        except (ValueError, LedgerError) as e:
            return _error(400 if isinstance(e, ValueError) else 503, str(e))
        return web.json_response(doc)

    async def request_detail(self, request: web.Request) -> web.Response:
        """GET /requests/ID: one request's columns and its `explain` text; 404 when unknown."""
        rid = request.match_info["id"]
        try:
            rows = await asyncio.to_thread(self.rt.reader.read_rows, request_id=rid)
        except LedgerError as e:
            return _error(503, str(e))
        if not rows:
            return _error(404, f"no request {rid!r} in the ledger (ids are in the "
                               "x-orchestrator-request-id response header)")  # fmt: skip
        row = rows[0]
        row["attempt_log"] = reports.json_list(row.get("attempt_log"))
        row["reasons"] = reports.json_list(row.get("reasons"))
        return web.json_response(windows.detail(row))

    async def budgets(self, request: web.Request) -> web.Response:
        """GET /budgets: every budget of the config, each live window (or an idle row while
        nothing is spent) with its state and recent refusals."""
        now = time.time()
        live = self.rt.budgets.snapshot(now)
        rules = [r for p in self.rt.view.config.policies if (r := budgetgate.rule_of(p))]
        since = min([b["window_start"] for b in live], default=now - BUDGET_LOOKBACK_S)
        try:
            rows = await self._load(max(since, now - BUDGET_LOOKBACK_S)) if rules or live else []
        except LedgerError:
            rows = []  # the state from spend alone; the page shows the ledger's own problem
        return web.json_response({"budgets": allowances.budget_states(live, rules, rows, now)})

    async def limits(self, request: web.Request) -> web.Response:
        """GET /limits: every rate limit of the config, each account seen in the last minute
        (or an idle row) with its state."""
        gate = self.rt.dispatcher.limits
        live = gate.snapshot()  # bounded rows; the in-process windows live on this loop
        return web.json_response(
            {"limits": allowances.limit_states(live, configured_limits(self.rt.view))}
        )


def configured_limits(view: View) -> list[dict[str, Any]]:
    """The rate limits `view`'s config declares, as `{scope, name, rpm, tpm}` rows named like
    the accounts `RateLimits.snapshot` shows; a limit counted per client address or per client
    of a policy is one row named for what it applies to, with `each`, the prefix of its
    accounts' names."""
    cfg = view.config
    s = cfg.settings
    out = []
    default = s.default_client_limits
    for c in s.clients:
        if (lim := c.limits or default) is not None:
            out.append({"scope": "client", "name": c.name, "rpm": lim.rpm, "tpm": lim.tpm})
    if default is not None:  # anonymous clients, counted per address
        out.append({"scope": "client", "name": "(each client address)", "rpm": default.rpm,
                    "tpm": default.tpm, "each": ""})  # fmt: skip
    for name, p in s.providers.items():
        if p.limits is not None:
            out.append({"scope": "provider", "name": name, "rpm": p.limits.rpm,
                        "tpm": p.limits.tpm})  # fmt: skip
    for pol in cfg.policies:
        if (pl := pol.limits) is not None:
            row = {"scope": "policy", "name": pol.name, "rpm": pl.rpm, "tpm": pl.tpm}
            if pl.scope == "client":
                row |= {"name": f"{pol.name}:(each client)", "each": f"{pol.name}:"}
            out.append(row)
    return out


def ranking_json(rt: RunningProxy, profile: str, cls: str, limit: int) -> dict[str, Any]:
    """The first `limit` candidates of `profile` at complexity `cls`, each with its score's
    parts, price, context, key and breaker state, and the profile's effective weights."""
    view = rt.view
    w = effective_weights(view.config.profiles[profile], cls)
    out = []
    for s in view.router.ranking(profile, cls)[:limit]:
        c = s.candidate
        prov = view.catalog.providers[c.provider]
        out.append({
            "key": c.key, "model": c.model_id, "provider": c.provider,
            "provider_model_id": c.provider_model_id, "score": s.score, "parts": dict(s.parts),
            "input_per_mtok": c.price.input_per_mtok, "output_per_mtok": c.price.output_per_mtok,
            "context_tokens": c.context_tokens, "quality": c.quality,
            "key_available": prov.keyless or prov.has_env_key,
            "breaker": (st.status.value if (st := rt.dispatcher.breakers.get(c.key)) else "closed"),
        })  # fmt: skip
    return {"profile": profile, "complexity": cls,
            "weights": {"quality": w.quality, "latency": w.latency, "cost": w.cost,
                        "context": w.context},
            "candidates": out}  # fmt: skip
