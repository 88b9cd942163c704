"""The APIs the router serves, side by side: what differs between them on the request path.

Every routed endpoint (`addon.config.schema.ENDPOINTS`) belongs to one API, and a request is
read, sent, answered and refused in that API's own terms:

- chat, completions: features from `classify.features`; the provider's key as
  `Authorization: Bearer`; usage and model from the answer or the stream's last chunk
  (`stream_options.include_usage` is injected for these two only), `[DONE]` at the end;
  the router's errors as the OpenAI error object.
- responses: `classify.responses_features`; Bearer; the response object of the JSON answer
  or of `response.created` / `response.completed`; OpenAI error objects, and a Responses
  `error` event to end a stream the router cuts.
- messages (and count_tokens): `classify.messages_features`; the key as `x-api-key`, with
  `anthropic-version: 2023-06-01` added when the client sent none to another host; usage
  from `message_start` plus the last `message_delta`; Anthropic's error body
  (`{"type": "error", "error": {type, message}}`) and error event.
- embeddings: `classify.embeddings_features`; Bearer; usage and vector lengths, no stream;
  OpenAI error objects.

Upstream failures are read in the API's error shape (`routing.fallback`); a stream that
opens with an `error` event (Anthropic's overloaded, a Responses rate limit) is a failed
attempt, so the chain falls back before the client saw a byte. An embeddings answer whose
vectors do not have the expected length is a failed attempt (`embeddings_check`). Streams
are read by `addon.proxy.streamfacts`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from addon.config.schema import ENDPOINTS
from addon.routing import classify
from addon.routing.classify import RequestFeatures
from addon.routing.difficulty import DifficultyModel
from addon.routing.fallback import (
    Outcome,
    OutcomeKind,
    classify_anthropic_failure,
    classify_failure,
    in_band_failure,
)
from addon.wire import chat, embeddings, failures, messages, responses
from addon.wire.embeddings import EmbeddingsRequest
from addon.wire.request import ParsedBody
from addon.wire.responses import ResponsesRequest
from addon.wire.sse import SSEEvent, event_json
from addon.wire.usage import Usage
from addon.wire.usage import answer_facts as usage_and_model

Classify = Callable[[int, bytes, str | None], Outcome]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A routed endpoint: its API and the path appended to a provider's base_url."""

    api: str  # chat | completions | responses | messages | embeddings
    path: str  # e.g. /chat/completions, /messages, /messages/count_tokens

    @property
    def count_tokens(self) -> bool:
        """Whether this is Messages' token counter (free: no budget, no usage)."""
        return self.path == "/messages/count_tokens"


def endpoint(method: str, path: str) -> Endpoint | None:
    """The routed endpoint a request is for (a POST whose path, query aside, ends with one
    of `ENDPOINTS`' suffixes); None for anything else."""
    if method != "POST":
        return None
    bare = path.split("?", 1)[0]
    for suffix, api, tail in ENDPOINTS:
        if bare.endswith(suffix):
            return Endpoint(api, tail)
    return None


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A request as routing reads it: its features, and the API's own facts where the
    request path needs them (Responses state, embeddings dimensions)."""

    features: RequestFeatures
    responses: ResponsesRequest | None = None
    embeddings: EmbeddingsRequest | None = None


def read_request(
    ep: Endpoint, parsed: ParsedBody, difficulty: DifficultyModel | None = None
) -> ReadRequest:
    """Read `parsed` as a request of `ep`'s API (the model was read once, by the parser);
    `difficulty` is the learned scorer (None: the keyword heuristic)."""
    data, model = parsed.data, parsed.model
    if ep.api == "responses":
        r = responses.read_request(data)
        feats = classify.responses_features(r, requested_model=model, difficulty=difficulty)
        return ReadRequest(feats, responses=r)
    if ep.api == "messages":
        m = messages.read_request(data)
        return ReadRequest(
            classify.messages_features(m, requested_model=model, difficulty=difficulty)
        )
    if ep.api == "embeddings":
        e = embeddings.read_request(data)
        return ReadRequest(classify.embeddings_features(e, requested_model=model), embeddings=e)
    return ReadRequest(classify.features(data, requested_model=model, difficulty=difficulty))


def prompt_text(api: str | None, data: dict[str, Any]) -> str:
    """The request's prompt as canonical JSON, for the ledger (`log_prompts`)."""
    if api == "responses":
        return responses.prompt_text(data)
    if api == "messages":
        return messages.prompt_text(data)
    if api == "embeddings":
        return embeddings.prompt_text(data)
    return chat.prompt_text(data)


def injects_usage(api: str | None) -> bool:
    """Whether a stream of `api` gets `stream_options.include_usage` forced on (the usage
    chunk it adds is kept from the client when it did not ask for it)."""
    return api in (None, "chat", "completions")


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class AnswerFacts:
    """What a whole JSON answer tells the ledger: usage, the model that answered, the
    answer's id (Responses, Messages) and the encrypted reasoning it carries (Responses)."""

    usage: Usage | None = None
    model: str | None = None
    response_id: str | None = None
    encrypted_reasoning: tuple[str, ...] = ()


def answer_facts(api: str | None, body: bytes) -> AnswerFacts:
    """The facts of a whole answer body of `api` (nothing for a body that is not JSON)."""
    if api == "responses":
        r = responses.answer_facts(body)
        if r is None:
            return AnswerFacts()
        return AnswerFacts(r.usage, r.model, r.response_id, r.encrypted_reasoning)
    if api == "messages":
        m = messages.answer_facts(body)
        return AnswerFacts() if m is None else AnswerFacts(m.usage, m.model, m.message_id)
    u, model = usage_and_model(body)
    return AnswerFacts(u, model)


def answer_text(api: str | None, body: bytes) -> str | None:
    """The text of a whole answer body, for the ledger (`log_prompts: full`)."""
    if api == "responses":
        r = responses.answer_facts(body)
        return r.text if r is not None else None
    if api == "messages":
        m = messages.answer_facts(body)
        return m.text if m is not None else None
    if api == "embeddings":
        return None
    return chat.answer_text(body)


def embeddings_check(
    body: bytes, expected: int | None, items: int
) -> tuple[Outcome | None, int | None]:
    """An embeddings answer checked: `items` vectors, each `expected` long (None: all
    alike); anything else is a failed attempt (protocol_error), never an answer. Also the
    length of its first vector (None if unreadable)."""
    ans = embeddings.answer_facts(body)
    if ans is None:
        return Outcome(OutcomeKind.PROTOCOL_ERROR, 200, "answer is not a JSON object"), None
    wrong = ans.dimension_error(expected, items)
    first = ans.lengths[0] if ans.lengths else None
    return (None if wrong is None else Outcome(OutcomeKind.PROTOCOL_ERROR, 200, wrong)), first


# --------------------------------------------------------------------------- failures


def classifier(api: str | None) -> Classify:
    """How an upstream's non-2xx answer of `api` becomes an attempt's Outcome."""
    return classify_anthropic_failure if api == "messages" else classify_failure


def _first_data(events: list[SSEEvent]) -> Any:
    return next((event_json(e) for e in events if e.data), None)


def _messages_opened_with_error(events: list[SSEEvent]) -> Outcome | None:
    f = messages.event_error(_first_data(events))
    return None if f is None else in_band_failure(f.kind, f"{f.error_type}: {f.message}")


def _responses_opened_with_error(events: list[SSEEvent]) -> Outcome | None:
    obj = _first_data(events)
    err = responses.event_error(obj) if responses.event_type(obj) == "error" else None
    if err is None:
        return None
    kind = "rate_limited" if "rate_limit" in err.code else "server_error"
    return in_band_failure(kind, f"{err.code}: {err.message}")


def first_event_check(api: str | None) -> Callable[[list[SSEEvent]], Outcome | None] | None:
    """For a stream of `api`: what makes its first event a failed attempt (an `error`
    event before any answer); None where the API has none (chat, completions)."""
    if api == "messages":
        return _messages_opened_with_error
    if api == "responses":
        return _responses_opened_with_error
    return None


# --------------------------------------------------------------------------- the router's errors


def error_body(
    api: str | None,
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None,
    request_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The router's own error answer in `api`'s format, so the client's SDK raises its
    usual exception: Anthropic's `{"type": "error", "error": {type, message}}` for Messages
    (the type from the status), the OpenAI error object (type_, code) for every other API.
    `extra` adds fields to the error object (e.g. the attempts)."""
    if api == "messages":
        return messages.error_body(status, message, request_id=request_id, detail=extra)
    return failures.error_body(message, type_=type_, code=code, extra=extra)
