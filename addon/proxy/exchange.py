"""The values the mitmproxy adapter and the dispatcher exchange for one request."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from addon.proxy.apis import Endpoint, error_body
from addon.proxy.streamfacts import StreamReport
from addon.routing import budget, decide
from addon.routing.fallback import AttemptRecord
from addon.routing.scoring import Scored


@dataclass(frozen=True)
class Incoming:
    """One intercepted request as plain values (the adapter builds it from the flow)."""

    method: str
    host: str  # host[:port] the client addressed (default port omitted)
    path: str  # path with query
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client_addr: str
    reverse: bool = False
    client_name: str | None = None  # authenticated router client (`clients:`)
    scheme: str = "https"  # of the URL the client addressed

    @property
    def client(self) -> str:
        """The identity for the ledger, policies and budgets: the client's name if it
        authenticated, else its address."""
        return self.client_name or self.client_addr


@dataclass
class Pending:
    """What the ledger needs when the flow ends. Lives only in the addon, never in metadata."""

    id: str
    started: float
    incoming: Incoming
    kind: str  # routed | unrouted
    requested_model: str | None = None
    stream: bool = False
    decision: decide.RoutingDecision | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    answered_by: Scored | None = None
    report: StreamReport | None = None
    error: str | None = None
    reasons: list[str] = field(default_factory=list)
    token: str | None = None
    reservation: budget.Reservation | None = None
    prompt: str | None = None  # only with log_prompts: hash | full
    extra: list[budget.Reservation] = field(default_factory=list)  # top-ups for dearer fallbacks
    budget_scope: tuple[budget.BudgetRule, str] | None = None
    charge: tuple[budget.BudgetRule, str] | None = None  # downgraded call: count its spend
    endpoint: Endpoint | None = None  # the routed endpoint the request is for (its API)
    stripped: dict[str, int] = field(default_factory=dict)  # provider -> reasoning items cut
    stored: bool = True  # Responses: the answer is kept upstream (`store` is not false)
    pinned: str | None = None  # Responses: why the turn may go to its pinned providers only

    @property
    def api(self) -> str | None:
        """The API the request speaks (chat, responses, messages, …); None if unknown."""
        return self.endpoint.api if self.endpoint is not None else None


@dataclass(frozen=True)
class Passthrough:
    """Let mitmproxy forward the request as it is; record it if `pending` is given."""

    pending: Pending | None


@dataclass(frozen=True)
class Reply:
    """Answer the client with this, made by the router or taken from an upstream."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    pending: Pending


@dataclass(frozen=True)
class Canned:
    """The router's own answer to a request that is no LLM call (a model listing, a refused
    WebSocket upgrade): status, headers, body; it has no ledger row."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class ToPipe:
    """Point the flow at the loopback pipe (`port`), which relays stream `token`."""

    port: int
    token: str
    pending: Pending


def request_id() -> str:
    """A fresh request id (`orq-` + 16 hex digits), as the ledger and headers show it."""
    return "orq-" + secrets.token_hex(8)


def json_reply(status: int, message: str, *, type_: str, code: str, pending: Pending,
               headers: tuple[tuple[str, str], ...] = ()) -> Reply:  # fmt: skip
    """An error answer made by the router itself, in the request's API's format (OpenAI's
    error object; Anthropic's for Messages)."""
    pending.error = message
    pending.reasons.append(message)
    body = error_body(pending.api, status, message, type_=type_, code=code, request_id=pending.id)
    return Reply(status, [("content-type", "application/json"),
                          ("x-orchestrator-request-id", pending.id), *headers], body, pending)  # fmt: skip


def internal_error_reply(pending: Pending, exc_type: str) -> Reply:
    """The router's 500 when it failed on a call itself, in the request's API's error
    format. It names the request (header and message: the proxy log has the traceback under
    that id) and the exception's type only, never its text, which could quote a key."""
    message = f"internal router error ({exc_type}); see the proxy log for request {pending.id}"
    pending.error = message
    pending.reasons.append(f"internal_error: {exc_type}")
    body = error_body(pending.api, 500, message, type_="server_error",
                      code="orchestrator_internal_error", request_id=pending.id)  # fmt: skip
    return Reply(500, [("content-type", "application/json"),
                       ("x-orchestrator-request-id", pending.id)], body, pending)  # fmt: skip
