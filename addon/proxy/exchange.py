"""The values the mitmproxy adapter and the dispatcher exchange for one request."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from addon.proxy.pipe import StreamReport
from addon.routing import budget, decide
from addon.routing.fallback import AttemptRecord
from addon.routing.scoring import Scored
from addon.wire.failures import error_body


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
    """An OpenAI-format error answer made by the router itself."""
    pending.error = message
    pending.reasons.append(message)
    return Reply(status, [("content-type", "application/json"),
                          ("x-orchestrator-request-id", pending.id), *headers],
                 error_body(message, type_=type_, code=code), pending)  # fmt: skip


def internal_error_reply(pending: Pending, exc_type: str) -> Reply:
    """The router's 500 when it failed on a call itself, in OpenAI's error format. It names
    the request (header and message: the proxy log has the traceback under that id) and the
    exception's type only, never its text, which could quote a key."""
    message = f"internal router error ({exc_type}); see the proxy log for request {pending.id}"
    pending.error = message
    pending.reasons.append(f"internal_error: {exc_type}")
    return Reply(500, [("content-type", "application/json"),
                       ("x-orchestrator-request-id", pending.id)],
                 error_body(message, type_="server_error", code="orchestrator_internal_error"),
                 pending)  # fmt: skip
