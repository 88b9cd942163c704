"""What one finished request becomes in the ledger: outcome, usage, cost, savings, timing.

Usage and the answering model are read in the request's API's terms (`addon.proxy.apis`
for a whole answer, `addon.proxy.streamfacts` for a stream): a Messages answer's cache
writes and reads, a Responses answer's cached and reasoning tokens.
"""

from __future__ import annotations

import hashlib
import time

from addon.config.schema import Settings
from addon.proxy import apis
from addon.proxy.exchange import Pending
from addon.proxy.streamfacts import reader_for
from addon.routing import cost
from addon.routing.catalog import Catalog, requested_candidate
from addon.store.sqlite_ledger import LedgerRow
from addon.wire.usage import Usage


def build_row(
    catalog: Catalog,
    settings: Settings,
    pending: Pending,
    *,
    status: int | None,
    body: bytes | None,
    error: str | None = None,
    client_abort: bool = False,
) -> tuple[LedgerRow, Usage | None]:
    """The one ledger row for this request, and the usage it was billed for (if any)."""
    inc = pending.incoming
    api = pending.api
    now = time.monotonic()
    s = pending.answered_by
    usage: Usage | None = None
    ttft = None
    outcome = "unrouted" if pending.kind == "unrouted" else "ok"
    report = pending.report
    routed_model = s.candidate.provider_model_id if s else None
    if report is not None:
        usage = report.usage
        if report.first_event_at is not None:
            ttft = (report.first_event_at - pending.started) * 1000
        if report.model:
            routed_model = report.model
        if report.malformed:
            pending.reasons.append(f"dropped {report.malformed} malformed SSE event(s)")
        if report.outcome == "ok" and not report.saw_done and pending.kind == "routed":
            pending.reasons.append(f"upstream ended the stream without {reader_for(api).end}")
        if report.outcome in ("truncated", "client_abort"):
            outcome = report.outcome
            error = report.error or error
        elif report.failure:
            error = error or f"upstream reported an error in the stream: {report.failure}"
    elif body is not None:
        facts = apis.answer_facts(api, body)
        usage = facts.usage
        routed_model = facts.model or routed_model
    if client_abort and outcome == "ok":
        outcome = "client_abort"
    if (
        pending.kind == "routed"
        and outcome == "ok"
        and (status is None or status >= 400 or error or pending.error)
    ):
        outcome = "error"
    usd = requested_usd = None
    unpriced = False
    if usage is not None:
        price = s.candidate.price if s else None
        if price is None and pending.kind == "unrouted":
            asked = requested_candidate(catalog, pending.requested_model, inc.host)
            price = asked.price if asked is not None else None
        usd = cost.cost(usage, price) if price is not None else None
        unpriced = usd is None
        req_c = pending.decision.requested if pending.decision else None
        if req_c is not None:
            requested_usd = cost.cost(usage, req_c.price)
    d = pending.decision
    row = LedgerRow(
        id=pending.id,
        ts=time.time(),
        outcome=outcome,
        client=inc.client,
        host=inc.host,
        path=inc.path.split("?", 1)[0],
        profile=d.profile if d else None,
        profile_reason=d.profile_reason if d else None,
        policy=d.policy if d else None,
        requested_model=pending.requested_model,
        routed_model=routed_model,
        provider=s.candidate.provider if s else None,
        attempts=len(pending.attempts),
        attempt_log=[
            {
                "provider": a.provider,
                "model": a.model,
                "outcome": a.outcome.kind.value,
                "status": a.outcome.status,
                "ms": a.elapsed_ms,
                "message": a.outcome.message[:300],
            }
            for a in pending.attempts
        ],
        status=status,
        stream=pending.stream,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        cached_tokens=usage.cached_tokens if usage else None,
        reasoning_tokens=usage.reasoning_tokens if usage else None,
        cost_usd=usd,
        unpriced=unpriced,
        requested_cost_usd=requested_usd,
        ttft_ms=round(ttft, 1) if ttft is not None else None,
        latency_ms=round((now - pending.started) * 1000, 1),
        reasons=pending.reasons,
        cache_write_tokens=usage.cache_write_tokens if usage else None,
        api=api,
        **prompt_columns(settings.log_prompts, pending, body),
        error=error or pending.error,
    )
    return row, usage


def prompt_columns(mode: str, pending: Pending, body: bytes | None) -> dict[str, str | None]:
    """Prompt and completion text only when `log_prompts` opts in (README: Security)."""
    if mode == "off" or pending.prompt is None:
        return {}
    out: dict[str, str | None] = {
        "prompt_sha256": hashlib.sha256(pending.prompt.encode()).hexdigest()
    }
    if mode == "full":
        out["prompt"] = pending.prompt
        r = pending.report
        out["completion"] = (
            "".join(r.text)
            if r is not None
            else (apis.answer_text(pending.api, body) if body is not None else None)
        )
    return out
