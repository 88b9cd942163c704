"""The mitmproxy adapter: the router's options and hooks. With `clientauth`, the only
modules importing mitmproxy (and `ca`, `process`).

Everything that decides or does I/O lives elsewhere (`addon.proxy.dispatch` and below); this
class translates flows to plain values and back.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addon.config import loader
from addon.config.schema import Settings
from addon.errors import ConfigError
from addon.proxy import dispatch, handoff, inject, options
from addon.proxy.clientauth import AUTH_META
from addon.proxy.flowfields import Authorities, as_headers, point_at_pipe
from addon.proxy.runtime import Runtime
from addon.proxy.streamfacts import StreamReport, reader_for, usage_tap
from addon.proxy.view import View, build_view, environ, intercepted

log = logging.getLogger("orchestrator")
META = "orchestrator"


class Orchestrator:
    """The routing addon: loads the config, hands LLM calls to the dispatcher, and records
    each one when its flow ends. Register it after `ClientAuth` (`process.router_addons`,
    which also gives it `process.Listeners` as its child addon in `addons`)."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.addons: list[object] = []  # child addons: mitmproxy runs their hooks after ours
        self._pending: dict[str, dispatch.Pending] = {}
        self._start_task: asyncio.Task[None] | None = None
        self._authorities = Authorities()

    @property
    def dispatcher(self) -> dispatch.Dispatcher | None:
        """The request path of the config in force; None before the first load."""
        return self.runtime.dispatcher if self.runtime is not None else None

    def view(self) -> View | None:
        """The config in force, None before the first load (what `ClientAuth` checks)."""
        return self.runtime.view if self.runtime is not None else None

    # ------------------------------------------------------------------ lifecycle

    def load(self, loader: Loader) -> None:
        """Declare `orchestrator_config`, the path of `orchestrator.yaml`."""
        loader.add_option("orchestrator_config", str, "orchestrator.yaml",
                          "Path of the Local AI Orchestrator config (orchestrator.yaml).")  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        """Load the config named by `orchestrator_config` (a bad one raises OptionsError, so
        mitmproxy keeps the old value); later changes of the option reload like an edit."""
        if "orchestrator_config" not in updated:
            return
        path = Path(ctx.options.orchestrator_config)
        try:
            cfg = loader.load(path)
        except ConfigError as e:
            raise exceptions.OptionsError(f"invalid configuration:\n{e}") from None
        if self.runtime is None:
            view = build_view(cfg, environ(), {})
            for w in view.catalog.warnings:
                log.warning("%s", w)
            self.runtime = Runtime(cfg, view, self._apply_settings)
        else:  # the option now names another file: load it like an edit
            self.runtime.config_path = cfg.path
            asyncio.get_running_loop().create_task(self.runtime.reload("orchestrator_config"))
        self._apply_settings(cfg.settings)

    def _apply_settings(self, s: Settings) -> None:
        ctx.options.update(**options.mitm_options(s))
        for name, level in options.log_levels(s.log_level).items():
            logging.getLogger(name).setLevel(level)

    def running(self) -> None:
        """Start the runtime's background work (`Listeners` logs what is served)."""
        if self.runtime is None:
            return
        self._start_task = asyncio.get_running_loop().create_task(self.runtime.start())

    async def done(self) -> None:
        """Stop the runtime: background tasks, admin endpoint, pipe, ledger."""
        if self.runtime is not None:
            await self.runtime.stop()

    # ------------------------------------------------------------------ hooks

    def _incoming(self, flow: http.HTTPFlow, with_body: bool) -> dispatch.Incoming | None:
        """The flow as plain values, or None when it is not ours (host not intercepted)."""
        d = self.dispatcher
        if d is None or flow.response is not None or flow.error is not None:
            return None
        req = flow.request
        settings = d.view.config.settings
        reverse = settings.mode.startswith("reverse:")
        host = self._authorities.of(req)
        if not reverse and not intercepted(host, settings.intercept):
            return None
        return dispatch.Incoming(
            client_name=flow.metadata.get(AUTH_META, {}).get("client"),
            method=req.method,
            host=host,
            path=req.path,
            headers=tuple(req.headers.items(multi=True)),
            body=(req.raw_content or b"") if with_body else b"",
            client_addr=flow.client_conn.peername[0] if flow.client_conn.peername else "",
            reverse=reverse,
            scheme=req.scheme,
        )

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """An LLM request that announces a body over `max_request_bytes` (413) or no size at
        all (411) is answered without buffering the body: it streams into the pipe, which
        drops it."""
        d = self.dispatcher
        if d is None or flow.response is not None:
            return
        length = flow.request.headers.get("content-length")
        if (
            length is not None
            and length.isascii()
            and length.isdigit()
            and (int(length) <= d.view.config.settings.max_request_bytes)
        ):  # the common case, a body of announced size within the limit: nothing to screen
            return
        inc = self._incoming(flow, with_body=False)
        if inc is None or d.pipe.port == 0:
            return
        out = d.screen(inc)
        if out is None:
            return
        self._track(flow, out.pending)
        token = d.pipe.register_reply(out.status, out.headers, out.body)
        point_at_pipe(flow.request, d.pipe.port, f"/reply/{token}", keep_length=True)
        flow.request.stream = True

    async def request(self, flow: http.HTTPFlow) -> None:
        """Route an LLM call: answer it, point it at the pipe, or let it through; a failure of
        the router itself becomes a 500 with its own request id and ledger row."""
        if flow.id in self._pending:  # already answered in requestheaders
            return
        d = self.dispatcher
        inc = self._incoming(flow, with_body=True)
        if d is None or inc is None:
            return
        pending = d.begin(inc)
        if pending is None:  # no LLM call: forwarded untouched (a model list: answered)
            own = await d.own_answer(inc)
            if own is not None:
                flow.response = http.Response.make(own.status, own.body, as_headers(own.headers))
            return
        try:
            self._apply(flow, await d.handle(pending))
        except Exception as e:  # never take the flow (or the proxy) down
            log.exception("internal error while routing %s %s (request %s)", inc.method,
                          inc.path, pending.id)  # fmt: skip
            self._apply(flow, d.internal_error(pending, e))

    def _apply(
        self, flow: http.HTTPFlow, out: dispatch.Passthrough | dispatch.Reply | dispatch.ToPipe
    ) -> None:
        if isinstance(out, dispatch.Passthrough):
            if out.pending is not None:
                self._track(flow, out.pending)
            return
        self._track(flow, out.pending)
        if isinstance(out, dispatch.Reply):
            flow.response = http.Response.make(out.status, out.body, as_headers(out.headers))
            return
        # a live stream: handed to the flow as its in-process server's answer (`handoff`),
        # else the loopback pipe serves it
        d = self.dispatcher
        assert d is not None
        head = d.pipe.head(out.token) if d.view.config.settings.stream_handoff else None
        h = handoff.prepare(flow, *head) if head is not None else None
        if h is not None:
            d.pipe.hand_off(out.token, h)
            return
        point_at_pipe(flow.request, out.port, f"/pipe/{out.token}", keep_length=False)
        flow.request.content = b""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Never buffer a stream: ours from the pipe as is, a passed-through SSE tapped."""
        resp = flow.response
        if resp is None:
            return
        p = self._pending.get(flow.id)
        if p is not None and p.token is not None:
            resp.stream = True  # our pipe: its body is injected into the flow (`inject`)
            self.dispatcher.pipe.attach(p.token, inject.sink_for(flow))  # type: ignore[union-attr]
        elif "text/event-stream" in resp.headers.get("content-type", ""):
            # a stream passing through untouched (e.g. a body the router cannot read): never
            # buffer it; read usage on the side for its ledger row
            if p is None:
                resp.stream = True
            else:
                p.report = StreamReport(outcome="ok")
                resp.stream = usage_tap(p.report, reader_for(p.api))

    def response(self, flow: http.HTTPFlow) -> None:
        """The flow's answer reached the client: write its ledger row."""
        p = self._pending.pop(flow.id, None)
        if p is None or self.dispatcher is None or flow.response is None:
            return
        body = None if p.token is not None else flow.response.raw_content
        self.dispatcher.finish(p, status=flow.response.status_code, body=body)

    def error(self, flow: http.HTTPFlow) -> None:
        """The flow failed (often: the client went away): write its ledger row."""
        p = self._pending.pop(flow.id, None)
        if p is None or self.dispatcher is None:
            return
        status = flow.response.status_code if flow.response else None
        self.dispatcher.failed(
            p, status=status, error=flow.error.msg if flow.error else "unknown error"
        )

    def _track(self, flow: http.HTTPFlow, p: dispatch.Pending) -> None:
        self._pending[flow.id] = p
        flow.metadata[META] = {"request_id": p.id, "kind": p.kind}
