"""What the client gets back once the attempt engine is done: status, headers and body.

`reply_for` is a plain function of the engine's result. Every answer carries
`x-orchestrator-profile`, `-attempts` and `-request-id`; an answer a target gave also names
it (`x-orchestrator-model`, `-provider`) and keeps its body untouched, so the body's `model`
is the model that actually answered. The router's own answers are in the request's API's
error format (`addon.proxy.apis.error_body`).
"""

from __future__ import annotations

from dataclasses import dataclass

from addon.proxy.apis import error_body
from addon.proxy.upstream import EngineResult, LiveStream
from addon.routing.fallback import OutcomeKind
from addon.routing.scoring import Scored

# A failure that describes the request itself: the target's own answer is passed on.
REQUEST_FAULTS = (
    OutcomeKind.CLIENT_ERROR,
    OutcomeKind.CONTENT_POLICY,
    OutcomeKind.CONTEXT_TOO_LONG,
)


@dataclass(frozen=True)
class ClientReply:
    """One request's answer to the client, and what the ledger needs to know about it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes  # b"" when `stream` carries the answer
    answered_by: Scored | None  # the chain entry whose answer this is; None if the router's
    error: str | None = None  # why this is not a success (the ledger's `error`)
    stream: LiveStream | None = None  # an open upstream stream for the pipe to relay


def reply_for(result: EngineResult, *, request_id: str, profile: str, api: str | None = None,
              note: str | None = None) -> ClientReply:  # fmt: skip
    """The client's answer: the first 2xx (body or open stream) with the router's headers;
    else the last target's own refusal when the request itself was at fault (4xx, content
    policy, context too long); else the router's 502/504 (or the last upstream status)
    listing every attempt, with `Retry-After` when the last target gave one, in `api`'s
    error format; `note` ends the router's message (e.g. why nothing else was tried)."""
    extra = [
        ("x-orchestrator-profile", profile),
        ("x-orchestrator-attempts", str(len(result.attempts))),
        ("x-orchestrator-request-id", request_id),
    ]
    ans = result.answer
    if ans is not None:
        chosen = ans.target.scored
        named = [
            ("x-orchestrator-model", chosen.candidate.provider_model_id),
            ("x-orchestrator-provider", chosen.candidate.provider),
        ]
        return ClientReply(ans.status, [*ans.headers, *named, *extra], ans.body, chosen,
                           stream=ans.stream)  # fmt: skip
    last = result.last
    failed = result.failed_answer
    if failed is not None and last is not None and last.kind in REQUEST_FAULTS:
        return ClientReply(failed.status, [*failed.headers, *extra], failed.body,
                           failed.target.scored, error=last.message)  # fmt: skip
    if last and last.status:
        status = last.status
    else:
        status = 504 if last and last.kind is OutcomeKind.TIMEOUT else 502
    attempts = [
        {
            "provider": a.provider,
            "model": a.model,
            "outcome": a.outcome.kind.value,
            "status": a.outcome.status,
            "message": a.outcome.message,
        }
        for a in result.attempts
    ]
    if not attempts:  # every target was skipped: half-open probes already in flight
        msg = ("no upstream could be tried: every target in the chain is waiting for its "
               "breaker's half-open probe to finish; retry in a few seconds")  # fmt: skip
        msg += f"; {note}" if note else ""
        body = error_body(api, 503, msg, type_="service_unavailable",
                          code="all_targets_cooling_down", request_id=request_id)  # fmt: skip
        return ClientReply(503, [("content-type", "application/json"), ("retry-after", "1"),
                                 *extra], body, None, error=msg)  # fmt: skip
    msg = (
        f"all {len(attempts)} upstream attempts failed; last: "
        f"{attempts[-1]['provider']}/{attempts[-1]['model']} "
        f"{last.kind.value if last else '?'}"
        f"{f' {last.status}' if last and last.status else ''}: {last.message if last else ''}"
        f"{f'; {note}' if note else ''}"
    )
    headers = [("content-type", "application/json"), *extra]
    if last and last.retry_after is not None:
        headers.append(("retry-after", str(int(last.retry_after + 0.999))))
    body = error_body(api, status, msg, type_="upstream_error", code="all_attempts_failed",
                      request_id=request_id, extra={"attempts": attempts})  # fmt: skip
    return ClientReply(status, headers, body, None, error=msg)
