"""The mitmproxy adapter: options, hooks and commands. The only module importing mitmproxy.

Everything that decides or does I/O lives elsewhere (`addon.dispatch` and below); this class
translates flows to plain values and back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addon.config import loader
from addon.config.schema import Settings
from addon.errors import ConfigError
from addon.proxy import ca, clients, dispatch
from addon.proxy.pipe import StreamReport
from addon.proxy.runtime import Runtime
from addon.wire.sse import SSEParser, event_json
from addon.wire.usage import Usage

log = logging.getLogger("orchestrator")
META = "orchestrator"
AUTH_META = "orchestrator_auth"


def allow_hosts_for(intercept: list[str]) -> list[str]:
    """mitmproxy `allow_hosts` regexes: only these hosts are TLS-intercepted."""
    out = []
    for entry in intercept:
        if re.search(r":\d+$", entry):
            out.append("^" + re.escape(entry) + "$")
        else:
            out.append("^" + re.escape(entry) + r":\d+$")
    return out


class Orchestrator:
    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self._pending: dict[str, dispatch.Pending] = {}
        self._conn_clients: dict[str, str] = {}  # client connection id -> authenticated client
        self._start_task: asyncio.Task[None] | None = None

    @property
    def dispatcher(self) -> dispatch.Dispatcher | None:
        return self.runtime.dispatcher if self.runtime is not None else None

    # ------------------------------------------------------------------ lifecycle

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "orchestrator_config",
            str,
            "orchestrator.yaml",
            "Path of the Local AI Orchestrator config (orchestrator.yaml).",
        )

    def configure(self, updated: set[str]) -> None:
        if "orchestrator_config" not in updated:
            return
        path = Path(ctx.options.orchestrator_config)
        try:
            cfg = loader.load(path)
        except ConfigError as e:
            raise exceptions.OptionsError(f"invalid configuration:\n{e}") from None
        if self.runtime is None:
            view = dispatch.build_view(cfg, dispatch.environ(), {})
            for w in view.catalog.warnings:
                log.warning("%s", w)
            self.runtime = Runtime(cfg, view, self._apply_settings)
        else:  # the option now names another file: load it like an edit
            self.runtime.config_path = cfg.path
            asyncio.get_running_loop().create_task(self.runtime.reload("orchestrator_config"))
        self._apply_settings(cfg.settings)

    def _apply_settings(self, s: Settings) -> None:
        if s.mode.startswith("reverse:"):
            ctx.options.update(connection_strategy="lazy")
        else:
            ctx.options.update(
                connection_strategy="lazy", allow_hosts=allow_hosts_for(list(s.intercept))
            )
        for name in ("httpx", "hpack", "aiohttp", "aiohttp.access", "asyncio"):
            logging.getLogger(name).setLevel(logging.WARNING)
        log.setLevel(s.log_level.upper())
        # mitmproxy's per-connection lines ("client connect", "Streaming response from …")
        # cost as much as a routed request's own work: only at debug
        logging.getLogger("mitmproxy.proxy.server").setLevel(
            logging.DEBUG if s.log_level == "debug" else logging.WARNING
        )

    def running(self) -> None:
        if self.runtime is None:
            return
        view = self.runtime.view
        cfg = view.config
        bundle = self._write_ca_bundle()
        cat = view.catalog
        usable = sorted(n for n, p in cat.providers.items() if p.keyless or p.has_env_key)
        host, port = _listen()
        log.info(
            "Local AI Orchestrator %s: listening on %s:%s, mode %s, default profile %s, "
            "%d candidates (%s), providers usable without a client key: %s, config %s",
            cfg.version,
            host,
            port,
            cfg.settings.mode,
            cfg.settings.default_profile,
            len(cat.candidates),
            cat.source,
            ", ".join(usable) or "none",
            cfg.path,
        )
        if not cfg.settings.mode.startswith("reverse:"):
            log.info(
                "Point an app at it:\n  export HTTPS_PROXY=http://%s:%s\n"
                "  export SSL_CERT_FILE=%s\n  export NO_PROXY=localhost,127.0.0.1\n"
                "(SSL_CERT_FILE = system roots + this proxy's CA; Node: NODE_EXTRA_CA_CERTS)",
                host,
                port,
                bundle,
            )
        self._start_task = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        assert self.runtime is not None
        await self.runtime.start()
        admin = self.runtime.admin
        if admin is not None:
            log.info("admin endpoint: http://%s:%s/ (status page, /metrics, /status)",
                     self.runtime.view.config.settings.admin.listen.rpartition(":")[0],
                     admin.port)  # fmt: skip

    async def done(self) -> None:
        if self.runtime is not None:
            await self.runtime.stop()

    def _write_ca_bundle(self) -> str:
        confdir = Path(ctx.options.confdir).expanduser()
        try:
            return str(ca.write_bundle(confdir))
        except OSError as e:
            log.warning("could not write the CA bundle in %s: %s", confdir, e)
            return str(confdir / ca.CA_CERT)

    # ------------------------------------------------------------------ hooks

    def _incoming(self, flow: http.HTTPFlow, with_body: bool) -> dispatch.Incoming | None:
        """The flow as plain values, or None when it is not ours (host not intercepted)."""
        d = self.dispatcher
        if d is None or flow.response is not None or flow.error is not None:
            return None
        req = flow.request
        settings = d.view.config.settings
        reverse = settings.mode.startswith("reverse:")
        host = _authority(req)
        if not reverse and not dispatch.intercepted(host, settings.intercept):
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
        )

    # ------------------------------------------------------------------ client auth

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """Regular mode: with `clients:` configured, a CONNECT must prove a client key."""
        d = self.dispatcher
        if d is None or not d.view.config.settings.clients:
            return
        name = clients.identify(flow.request.headers.get("proxy-authorization"),
                                d.view.client_digests)  # fmt: skip
        if name is None:
            flow.response = _auth_required(proxy=True)
            return
        self._conn_clients[flow.client_conn.id] = name

    def client_disconnected(self, client: Any) -> None:
        self._conn_clients.pop(str(getattr(client, "id", "")), None)

    def _authenticate(self, flow: http.HTTPFlow) -> tuple[bool, str | None]:
        """(allowed, client name). Proxy credentials never travel further."""
        d = self.dispatcher
        assert d is not None
        view = d.view
        req = flow.request
        reverse = view.config.settings.mode.startswith("reverse:")
        header = "authorization" if reverse else "proxy-authorization"
        presented = req.headers.get(header)
        if not reverse:
            req.headers.pop("proxy-authorization", None)
        if not view.config.settings.clients:
            return True, None
        name = self._conn_clients.get(flow.client_conn.id) or clients.identify(
            presented, view.client_digests
        )
        if reverse:
            req.headers.pop("authorization", None)  # a router key, never forwarded
        if name is None:
            flow.response = _auth_required(proxy=not reverse)
            return False, None
        return True, name

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """An LLM request that announces a body over `max_request_bytes` (413) or no size at
        all (411) is answered without buffering the body: it streams into the pipe, which
        drops it."""
        d = self.dispatcher
        if d is None or flow.response is not None:
            return
        allowed, name = self._authenticate(flow)
        if not allowed:
            return
        if name is not None:
            flow.metadata[AUTH_META] = {"client": name}
        inc = self._incoming(flow, with_body=False)
        if inc is None or d.pipe.port == 0:
            return
        headers = flow.request.headers
        if "content-length" not in headers and "chunked" in headers.get("transfer-encoding", ""):
            # an LLM request of unknown size could grow without bound in memory: refuse it
            # (every OpenAI SDK sends Content-Length)
            out = d.length_required(inc)
        else:
            try:
                size = int(headers.get("content-length", "0"))
            except ValueError:
                return
            out = d.too_large(inc, size)
        if out is None:
            return
        self._track(flow, out.pending)
        token = d.pipe.register_reply(out.status, out.headers, out.body)
        _point_at_pipe(flow.request, d.pipe.port, f"/reply/{token}", keep_length=True)
        flow.request.stream = True

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.id in self._pending:  # already answered in requestheaders
            return
        d = self.dispatcher
        inc = self._incoming(flow, with_body=True)
        if d is None or inc is None:
            return
        try:
            out = await d.handle(inc)
            self._apply(flow, out)
        except Exception as e:  # never take the flow (or the proxy) down
            log.exception("internal error while routing %s %s", inc.method, inc.path)
            flow.response = http.Response.make(
                500, _internal_error(e), {"content-type": "application/json"}
            )

    def _apply(
        self, flow: http.HTTPFlow, out: dispatch.Passthrough | dispatch.Reply | dispatch.ToPipe
    ) -> None:
        if isinstance(out, dispatch.Passthrough):
            if out.pending is not None:
                self._track(flow, out.pending)
            return
        self._track(flow, out.pending)
        if isinstance(out, dispatch.Reply):
            flow.response = http.Response.make(out.status, out.body, _headers(out.headers))
            return
        # a live stream: point the flow at the loopback pipe
        _point_at_pipe(flow.request, out.port, f"/pipe/{out.token}", keep_length=False)
        flow.request.content = b""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None:
            return
        p = self._pending.get(flow.id)
        if p is not None and p.token is not None:
            resp.stream = True  # our pipe: already relayed event by event
        elif "text/event-stream" in resp.headers.get("content-type", ""):
            # a stream passing through untouched (e.g. /responses): never buffer it; read
            # usage on the side for its ledger row
            resp.stream = _usage_tap(p) if p is not None else True

    def response(self, flow: http.HTTPFlow) -> None:
        p = self._pending.pop(flow.id, None)
        if p is None or self.dispatcher is None or flow.response is None:
            return
        body = None if p.token is not None else flow.response.raw_content
        self.dispatcher.finish(p, status=flow.response.status_code, body=body)

    def error(self, flow: http.HTTPFlow) -> None:
        p = self._pending.pop(flow.id, None)
        if p is None or self.dispatcher is None:
            return
        if p.token is not None:
            self.dispatcher.pipe.discard(p.token)
        msg = flow.error.msg if flow.error else "unknown error"
        client_gone = (
            "client disconnected" in msg.lower() or "connection closed by client" in msg.lower()
        )
        status = flow.response.status_code if flow.response else None
        self.dispatcher.finish(p, status=status, body=None, error=msg, client_abort=client_gone)

    def _track(self, flow: http.HTTPFlow, p: dispatch.Pending) -> None:
        self._pending[flow.id] = p
        flow.metadata[META] = {"request_id": p.id, "kind": p.kind}


def _usage_tap(p: dispatch.Pending) -> Callable[[bytes], bytes]:
    """Pass SSE bytes through unchanged, noting usage and model as they go by."""
    report = StreamReport(outcome="ok")
    parser = SSEParser()
    p.report = report

    def tap(chunk: bytes) -> bytes:
        for ev in parser.feed(chunk) if chunk else parser.flush():
            obj = event_json(ev)
            if isinstance(obj, dict):
                inner = obj.get("response")  # the Responses API nests it
                usage = Usage.from_obj(
                    obj.get("usage") or (inner.get("usage") if isinstance(inner, dict) else None)
                )
                if usage is not None:
                    report.usage = usage
                if report.model is None and isinstance(obj.get("model"), str):
                    report.model = obj["model"]
            elif ev.done:
                report.saw_done = True
        return chunk

    return tap


def _authority(req: http.Request) -> str:
    host = req.pretty_host.lower()
    default = 443 if req.scheme == "https" else 80
    return host if req.port == default else f"{host}:{req.port}"


def _auth_required(*, proxy: bool) -> http.Response:
    from addon.wire.failures import error_body

    where = ("Proxy-Authorization (e.g. HTTPS_PROXY=http://NAME:KEY@host:port)" if proxy
             else "Authorization: Bearer <router key>")  # fmt: skip
    body = error_body(f"this router needs a client key: send {where}; ask its operator for one",
                      type_="invalid_request_error", code="client_auth_required")  # fmt: skip
    headers = {"content-type": "application/json"}
    if proxy:
        headers["proxy-authenticate"] = 'Basic realm="local-ai-orchestrator"'
    return http.Response.make(407 if proxy else 401, body, headers)


def _point_at_pipe(req: http.Request, port: int, path: str, *, keep_length: bool) -> None:
    """Send this flow to the in-process loopback pipe instead of any upstream."""
    framing = {"content-length", "transfer-encoding"} if keep_length else set()
    keep = {"content-type", "accept"} | framing
    pairs = [(k, v) for k, v in req.headers.items(multi=True) if k.lower() in keep]
    req.scheme = "http"
    req.host = "127.0.0.1"
    req.port = port
    req.path = path
    req.headers = _headers([*pairs, ("host", f"127.0.0.1:{port}")])


def _headers(pairs: list[tuple[str, str]]) -> http.Headers:
    return http.Headers([(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in pairs])


def _listen() -> tuple[str, int]:
    """The address the proxy actually bound (the configured port may be 0)."""
    server = ctx.master.addons.get("proxyserver")
    addrs = server.listen_addrs() if server is not None else []
    if addrs:
        host, port = addrs[0][:2]
        return host, port
    return ctx.options.listen_host or "0.0.0.0", ctx.options.listen_port or 8080


def _internal_error(e: Exception) -> bytes:
    from addon.wire.failures import error_body

    return error_body(
        f"internal router error ({type(e).__name__}); see the proxy log",
        type_="server_error",
        code="orchestrator_internal_error",
    )


# --------------------------------------------------------------------------- the proxy process


def serve(
    config_path: Path,
    *,
    mode: str,
    host: str,
    port: int,
    confdir: Path,
    extra: Sequence[str] = (),
) -> int:
    """Run a mitmproxy Master holding only the addons the router needs.

    mitmdump's ~31 default addons each see every hook; the router needs the proxy server,
    TLS, the next-layer decision and its own addon. Dropping the rest cuts the fixed cost per
    request (DESIGN.md: "a curated Master ... forwarded 1.5–1.9x faster"). Everything that
    mitmdump's `-s addon/entry.py` gives still works that way too.
    """
    from mitmproxy import master, options
    from mitmproxy.addons import core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig

    async def main() -> int:
        logging.getLogger().setLevel(logging.DEBUG)  # handlers filter; as mitmdump does
        for name in ("asyncio", "hpack", "quic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        opts = options.Options()
        m = master.Master(opts, with_termlog=True)
        m.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            disable_h2c.DisableH2C(),
            errorcheck.ErrorCheck(),
            Orchestrator(),
        )
        try:
            opts.update(
                mode=[mode],
                listen_host=host,
                listen_port=port,
                confdir=str(confdir),
                connection_strategy="lazy",
                orchestrator_config=str(config_path),
            )
            if extra:
                opts.set(*extra)
        except exceptions.OptionsError as e:
            print(f"orchestrator: {e}", file=sys.stderr)
            return 2
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, m.shutdown)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        await m.run()
        return 0

    return asyncio.run(main())
