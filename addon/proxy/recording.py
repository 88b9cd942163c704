"""What one finished request becomes in the ledger: outcome, usage, cost, savings, timing.

Usage and the answering model are read in the request's API's terms (`addon.proxy.apis`
for a whole answer, `addon.proxy.streamfacts` for a stream): a Messages answer's cache
writes and reads, a Responses answer's cached and reasoning tokens. A stream rescued on
another target (`addon.proxy.rescue`) is `rescued`: its usage is every attempt's summed,
its cost each attempt's at that target's price, and each attempt's entry in the attempt log
carries its tokens (`usage_estimated` when the attempt broke before reporting them).
"""

from __future__ import annotations

import hashlib
import logging
import time

from addon.config.schema import Settings
from addon.proxy import apis
from addon.proxy.exchange import Pending
from addon.proxy.streamfacts import Leg, reader_for
from addon.routing import cost
from addon.routing.catalog import Catalog, requested_candidate
from addon.store.sqlite_ledger import LedgerRow
from addon.wire.usage import Usage

log = logging.getLogger("orchestrator")


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
        elif report.rescued and report.outcome == "ok":
            outcome = "rescued"
    elif body is not None:
        facts = apis.answer_facts(api, body)
        usage = facts.usage
        routed_model = facts.model or routed_model
    if client_abort and report is not None and report.delivered:
        error = None  # it left after the stream's end reached it: a complete answer
    elif client_abort and outcome == "ok":
        outcome = "client_abort"
    if (
        pending.kind == "routed"
        and outcome == "ok"
        and (status is None or status >= 400 or error or pending.error)
    ):
        outcome = "error"
    usd = requested_usd = None
    unpriced = False
    legs = report.legs if report is not None else []
    if usage is not None and legs:  # a rescued stream: each attempt at its own price
        usd = legs_cost(legs)
        unpriced = usd is None
    elif usage is not None:
        price = s.candidate.price if s else None
        if price is None and pending.kind == "unrouted":
            asked = requested_candidate(catalog, pending.requested_model, inc.host)
            price = asked.price if asked is not None else None
        usd = cost.cost(usage, price) if price is not None else None
        unpriced = usd is None
        req_c = pending.decision.requested if pending.decision else None
        if req_c is not None:
            requested_usd = cost.cost(usage, req_c.price)
    leg_usage = {leg.attempt: leg_columns(leg) for leg in legs}
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
                **leg_usage.get(i, {}),
            }
            for i, a in enumerate(pending.attempts)
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


def legs_cost(legs: list[Leg]) -> float | None:
    """A rescued stream's cost (USD): each attempt's usage at its own target's price;
    None when any of them is unpriced."""
    total = 0.0
    for leg in legs:
        if leg.usage is None:
            continue
        usd = cost.cost(leg.usage, leg.candidate.price)
        if usd is None:
            return None
        total += usd
    return total


def leg_columns(leg: Leg) -> dict[str, int | bool | None]:
    """What a rescued stream's attempt adds to its `attempt_log` entry: the tokens it is
    billed for, and whether they were estimated (it broke before reporting them)."""
    u = leg.usage
    return {"prompt_tokens": u.prompt_tokens if u else None,
            "completion_tokens": u.completion_tokens if u else None,
            "usage_estimated": leg.estimated}  # fmt: skip


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


def log_line(row: LedgerRow, status: int | None) -> None:
    """The request's one log line, at debug only: every log record costs mitmproxy a hook
    dispatch across all its addons (~0.8 ms), and the ledger has all of it anyway."""
    log.debug(
        "%s %s %s -> %s/%s status=%s outcome=%s attempts=%d tokens=%s/%s cost=%s %.0fms",
        row.id, row.profile or "-", row.requested_model, row.provider or "-",
        row.routed_model or "-", status, row.outcome, row.attempts, row.prompt_tokens,
        row.completion_tokens, "unpriced" if row.unpriced else row.cost_usd,
        row.latency_ms or 0,
    )  # fmt: skip
