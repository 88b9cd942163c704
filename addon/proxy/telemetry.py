"""OpenTelemetry export (`telemetry:`): a bounded queue and one background thread that
turns finished requests into OTLP/HTTP JSON spans and metrics and POSTs them.

The request path only queues: `record()` puts one small frozen value (`genai.Finished`)
on a bounded queue without waiting; when the queue is full the request's telemetry is
dropped and counted. Everything else — sampling, span and metric building, encoding, the
HTTP send — happens on the exporter thread, which sends spans in batches (at most
`MAX_BATCH` per POST, at least every `export_interval_s`) and the cumulative histograms
every `export_interval_s`. A failed send (receiver down, refused, too slow) is not retried:
its spans are dropped and counted, and a metrics send is simply repeated next time (the
numbers are cumulative). With `telemetry:` unset none of this exists
(`Dispatcher.telemetry` is None).

Counts are on /metrics (`orchestrator_telemetry_dropped_total{kind}`,
`orchestrator_telemetry_exported_total{kind}`, `Collector`) and in /status (`health`).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector as _Collector

from addon.config.redact import redact
from addon.config.schema_telemetry import Telemetry as TelemetrySettings
from addon.proxy import genai, otlp, tracecontext
from addon.routing.catalog import ProviderInfo
from addon.store.sqlite_ledger import LedgerRow

if TYPE_CHECKING:
    from addon.proxy.exchange import Pending

log = logging.getLogger("orchestrator")

MAX_BATCH = 512  # spans per POST
_STOP = object()
Post = Callable[[str, bytes], None]  # (signal path, body): raises OSError on failure


class ExportError(OSError):
    """A send the receiver did not accept (its HTTP status), or that never reached it."""


class Telemetry:
    """The exporter of one running proxy: `start()` in `running`, `record()` per finished
    request, `close()` in `done`. `post` replaces the HTTP sender (tests)."""

    def __init__(self, settings: TelemetrySettings, headers: Mapping[str, str], version: str,
                 *, post: Post | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.version = version
        self._headers = {"Content-Type": "application/json",
                         "User-Agent": f"local-ai-orchestrator/{version}", **headers}  # fmt: skip
        self._post = post or self._http_post
        self._queue: queue.Queue[object] = queue.Queue(settings.queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._resource = otlp.resource(settings.service_name, version)
        self._histograms = otlp.Histograms(time.time_ns())
        self.queue_full = 0  # requests dropped at a full queue (request path only)
        # written by the exporter thread only
        self.failed_spans = 0
        self.failed_metrics = 0
        self.sent_spans = 0
        self.sent_metrics = 0
        self.last_error: str | None = None

    @classmethod
    def for_settings(cls, settings: TelemetrySettings | None, env: Mapping[str, str],
                     version: str) -> Telemetry | None:  # fmt: skip
        """The exporter for `telemetry:` (None when unset); a header whose `headers_env`
        variable is unset is left out, with an error logged naming it."""
        if settings is None:
            return None
        headers = dict(settings.headers)
        for name, var in settings.headers_env.items():
            value = env.get(var)
            if value:
                headers[name] = value
            else:
                log.error("telemetry.headers_env.%s names %s, which is not set; exporting "
                          "without that header — export %s=… before starting", name, var, var)  # fmt: skip
        return cls(settings, headers, version)

    # ------------------------------------------------------------------ request path

    def record(self, row: LedgerRow, pending: Pending, providers: Mapping[str, ProviderInfo]
               ) -> None:  # fmt: skip
        """Queue one finished request for export; never waits (a full queue drops it)."""
        try:
            self._queue.put_nowait(genai.Finished(row, pending.started, tuple(pending.attempts),
                                                  pending.incoming.headers, providers))  # fmt: skip
        except queue.Full:
            self.queue_full += 1

    def trace(self, pending: Pending) -> tracecontext.TraceContext:
        """The request's trace context, as its spans will carry it: what names attempt `n`'s
        span upstream (`attempt_traceparent(n)`, for the attempt engine to send)."""
        return self._context(pending.id, pending.incoming.headers)

    def _context(self, request_id: str, headers: Iterable[tuple[str, str]]
                 ) -> tracecontext.TraceContext:  # fmt: skip
        parent = tracecontext.incoming_parent(headers)
        return tracecontext.context(request_id, parent, self.settings.sampling)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the exporter thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otlp-exporter", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Send what is queued (one last batch of spans and the metrics), then stop; waits
        at most about `timeout_s`."""
        self._stop.set()
        with contextlib.suppress(queue.Full):  # full: the thread sees the flag after an item
            self._queue.put_nowait(_STOP)
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s + 1)
            if self._thread.is_alive():
                log.warning("telemetry exporter did not stop within %gs; %d requests not "
                            "exported", self.settings.timeout_s + 1, self._queue.qsize())  # fmt: skip
            elif self._conn is not None:
                self._conn.close()

    def health(self) -> dict[str, Any]:
        """The `telemetry` part of /status: where it sends, what is queued, sent, dropped."""
        return {"endpoint": redact(self.settings.endpoint), "queued": self.queued(),
                "exported": {"spans": self.sent_spans, "metrics": self.sent_metrics},
                "dropped": self.dropped(), "last_error": self.last_error}  # fmt: skip

    def queued(self) -> int:
        """Finished requests waiting for the exporter thread."""
        return self._queue.qsize()

    def dropped(self) -> dict[str, int]:
        """Finished requests dropped at a full queue, spans whose send failed, metric sends
        that failed."""
        return {"requests": self.queue_full, "spans": self.failed_spans,
                "metrics": self.failed_metrics}  # fmt: skip

    # ------------------------------------------------------------------ exporter thread

    def _run(self) -> None:
        interval = self.settings.export_interval_s
        spans: list[otlp.Span] = []
        due = time.monotonic() + interval
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                item = None
            if isinstance(item, genai.Finished):
                spans.extend(self._take(item))
            if len(spans) >= MAX_BATCH:
                self._send_spans(spans)
                spans = []
            stopping = self._stop.is_set() and self._queue.empty()
            if stopping or time.monotonic() >= due:
                self._send_spans(spans)
                spans = []
                self._send_metrics()
                due = time.monotonic() + interval
            if stopping:
                return

    def _take(self, f: genai.Finished) -> list[otlp.Span]:
        """Add a request to the histograms; its spans if its trace is sampled."""
        try:
            for inst, attrs, value in genai.observations(f.row, f.attempts):
                self._histograms.observe(inst, attrs, value)
            ctx = self._context(f.row.id, f.headers)
            return genai.request_spans(f, ctx) if ctx.sampled else []
        except Exception:  # a bug here must not stop the exporter
            log.exception("telemetry: request %s not exported", f.row.id)
            return []

    def _send_spans(self, spans: list[otlp.Span]) -> None:
        if not spans:
            return
        body = orjson.dumps(otlp.traces_request(self._resource, self.version, spans))
        if self._send("/v1/traces", body):
            self.sent_spans += len(spans)
        else:
            self.failed_spans += len(spans)

    def _send_metrics(self) -> None:
        if not self._histograms.points:
            return
        req = self._histograms.request(self._resource, self.version, time.time_ns())
        if self._send("/v1/metrics", orjson.dumps(req)):
            self.sent_metrics += 1
        else:
            self.failed_metrics += 1

    def _send(self, path: str, body: bytes) -> bool:
        try:
            self._post(path, body)
        except (OSError, http.client.HTTPException) as e:
            err = f"{type(e).__name__}: {e}"
            if self.last_error is None:
                log.warning("telemetry: cannot export to %s%s (%s); dropping and counting "
                            "until it answers", redact(self.settings.endpoint), path, err)  # fmt: skip
            self.last_error = err
            return False
        if self.last_error is not None:
            log.info("telemetry: exporting to %s again", redact(self.settings.endpoint))
            self.last_error = None
        return True

    def _http_post(self, path: str, body: bytes) -> None:
        """POST `body` to the endpoint's `path` on a kept-alive connection; ExportError for
        a status other than 2xx, OSError when it cannot be reached (the connection is
        dropped either way, and a new one made on the next send)."""
        parts = urlsplit(self.settings.endpoint)
        if self._conn is None:
            host, port, timeout = parts.hostname or "", parts.port, self.settings.timeout_s
            self._conn = (http.client.HTTPSConnection(host, port, timeout=timeout,
                                                      context=ssl.create_default_context())
                          if parts.scheme == "https"
                          else http.client.HTTPConnection(host, port, timeout=timeout))  # fmt: skip
        try:
            self._conn.request("POST", parts.path + path, body=body, headers=self._headers)
            resp = self._conn.getresponse()
            resp.read()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        if not 200 <= resp.status < 300:
            self._conn.close()
            self._conn = None
            raise ExportError(f"HTTP {resp.status} {resp.reason}")


class Collector(_Collector):
    """The exporter's counts on /metrics (registered on the proxy's registry)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        t = self.telemetry
        dropped = CounterMetricFamily(
            "orchestrator_telemetry_dropped", "OpenTelemetry data not exported: finished "
            "requests dropped at a full queue, spans and metric sends that failed.",
            labels=["kind"],
        )  # fmt: skip
        for kind, n in t.dropped().items():
            dropped.add_metric([kind], n)
        yield dropped
        sent = CounterMetricFamily("orchestrator_telemetry_exported", "OpenTelemetry spans and "
                                   "metric sends accepted by the receiver.", labels=["kind"])  # fmt: skip
        sent.add_metric(["spans"], t.sent_spans)
        sent.add_metric(["metrics"], t.sent_metrics)
        yield sent
        q = GaugeMetricFamily("orchestrator_telemetry_queued",
                              "Finished requests waiting for the OpenTelemetry exporter.")  # fmt: skip
        q.add_metric([], t.queued())
        yield q


def package_version() -> str:
    """This package's version (`service.version`), "0" when it is not installed."""
    try:
        return importlib.metadata.version("local-ai-orchestrator")
    except importlib.metadata.PackageNotFoundError:
        return "0"
