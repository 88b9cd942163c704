"""OTLP/HTTP JSON encoding of spans and histograms. Pure: values in, JSON-ready dicts out.

The JSON mapping of the OTLP protobuf messages (opentelemetry-proto, "JSON Protobuf
Encoding"): field names in lowerCamelCase, trace and span ids as hex strings (not base64),
64-bit integers — timestamps in nanoseconds, `intValue`, counts — as decimal strings, enums
as their numbers. A traces request is `{"resourceSpans": [{resource, scopeSpans: [{scope,
spans}]}]}`, a metrics request `{"resourceMetrics": [{resource, scopeMetrics: [{scope,
metrics}]}]}`; histograms are explicit-bucket with cumulative temporality.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

AttrValue = str | bool | int | float
Attrs = tuple[tuple[str, AttrValue], ...]

SCOPE = "local-ai-orchestrator"
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2
TEMPORALITY_CUMULATIVE = 2


def any_value(v: AttrValue) -> dict[str, object]:
    """One attribute value as an OTLP `AnyValue` (checked by exact type: a bool is no int)."""
    t = type(v)
    if t is str:
        return {"stringValue": v}
    if t is int:
        return {"intValue": str(v)}
    if t is bool:
        return {"boolValue": v}
    if isinstance(v, float):
        return {"doubleValue": v if math.isfinite(v) else str(v)}
    return {"stringValue": str(v)}


def attributes(attrs: Iterable[tuple[str, AttrValue | None]]) -> list[dict[str, object]]:
    """Key/value pairs as OTLP `KeyValue`s; a None value is left out."""
    return [{"key": k, "value": any_value(v)} for k, v in attrs if v is not None]


def resource(service_name: str, version: str) -> dict[str, object]:
    """The resource every span and metric is sent under: the service and this exporter."""
    return {"attributes": attributes((("service.name", service_name),
                                      ("service.version", version),
                                      ("telemetry.sdk.name", SCOPE),
                                      ("telemetry.sdk.language", "python")))}  # fmt: skip


@dataclass(frozen=True)
class Span:
    """A finished span: ids (hex), name, kind, start and end (ns since the epoch), its
    attributes, and the error that set its status to ERROR (None: status unset)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attrs: Attrs
    error: str | None = None


def span_json(s: Span) -> dict[str, object]:
    """One OTLP `Span`."""
    out: dict[str, object] = {"traceId": s.trace_id, "spanId": s.span_id}
    if s.parent_span_id is not None:
        out["parentSpanId"] = s.parent_span_id
    out.update(name=s.name, kind=s.kind, startTimeUnixNano=str(s.start_ns),
               endTimeUnixNano=str(max(s.end_ns, s.start_ns)), attributes=attributes(s.attrs))  # fmt: skip
    if s.error is not None:
        out["status"] = {"code": STATUS_ERROR, "message": s.error}
    return out


def traces_request(
    res: dict[str, object], version: str, spans: Sequence[Span]
) -> dict[str, object]:
    """The body of one POST to `/v1/traces`: every span under one resource and scope."""
    scope = {"scope": {"name": SCOPE, "version": version}, "spans": [span_json(s) for s in spans]}
    return {"resourceSpans": [{"resource": res, "scopeSpans": [scope]}]}


@dataclass(frozen=True)
class Instrument:
    """A histogram's name, unit, description and explicit bucket bounds."""

    name: str
    unit: str
    description: str
    bounds: tuple[float, ...]


@dataclass
class Point:
    """One attribute set's cumulative histogram: counts per bucket (one more than bounds),
    count, sum, min and max."""

    counts: list[int]
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, bounds: Sequence[float], v: float) -> None:
        """Count one observation (a value on a bound falls in the bucket it closes)."""
        self.counts[bisect.bisect_left(bounds, v)] += 1
        self.count += 1
        self.total += v
        self.low, self.high = min(self.low, v), max(self.high, v)


@dataclass
class Histograms:
    """Cumulative explicit-bucket histograms, per instrument and attribute set, since
    `start_ns`. Owned by one thread (the exporter's)."""

    start_ns: int
    points: dict[tuple[Instrument, Attrs], Point] = field(default_factory=dict)

    def observe(self, inst: Instrument, attrs: Attrs, v: float) -> None:
        """Add value `v` to `inst`'s histogram for `attrs`."""
        p = self.points.get((inst, attrs))
        if p is None:
            p = self.points[(inst, attrs)] = Point([0] * (len(inst.bounds) + 1))
        p.add(inst.bounds, v)

    def request(self, res: dict[str, object], version: str, now_ns: int) -> dict[str, object]:
        """The body of one POST to `/v1/metrics`: every histogram as of `now_ns`."""
        by_inst: dict[Instrument, list[dict[str, object]]] = {}
        for (inst, attrs), p in self.points.items():
            by_inst.setdefault(inst, []).append({
                "attributes": attributes(attrs), "startTimeUnixNano": str(self.start_ns),
                "timeUnixNano": str(now_ns), "count": str(p.count), "sum": p.total,
                "bucketCounts": [str(c) for c in p.counts],
                "explicitBounds": list(inst.bounds), "min": p.low, "max": p.high,
            })  # fmt: skip
        metrics = [
            {"name": i.name, "unit": i.unit, "description": i.description,
             "histogram": {"dataPoints": pts, "aggregationTemporality": TEMPORALITY_CUMULATIVE}}
            for i, pts in by_inst.items()
        ]  # fmt: skip
        scope = {"scope": {"name": SCOPE, "version": version}, "metrics": metrics}
        return {"resourceMetrics": [{"resource": res, "scopeMetrics": [scope]}]}
