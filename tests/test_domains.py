"""Failure domains: which targets one failure speaks for, storms, breaker verdicts."""

from __future__ import annotations

import pytest

from addon.routing.catalog import Candidate
from addon.routing.cost import Price
from addon.routing.domains import (
    STORM_WINDOW_S,
    Domain,
    RuledOut,
    Verdict,
    dead_providers,
    domain_of,
    judge,
    storm,
)
from addon.routing.fallback import AttemptRecord, Outcome, OutcomeKind

K = OutcomeKind
P, M, R = Domain.PROVIDER, Domain.MODEL, Domain.REQUEST


def att(provider: str, model: str, outcome: Outcome, at: float = 0.0) -> AttemptRecord:
    return AttemptRecord(provider, model, outcome, started=at, elapsed_ms=100.0)


OK = Outcome(K.OK, 200)
E503 = Outcome(K.SERVER_ERROR, 503, "overloaded")
E429 = Outcome(K.RATE_LIMITED, 429, "Rate limit reached for requests")
QUOTA = "You exceeded your current quota, please check your plan and billing details."


@pytest.mark.parametrize(
    ("outcome", "domain"),
    [
        (OK, None),
        (Outcome(K.CONNECT_ERROR, None, "cannot connect to api.openai.com:443"), P),
        (Outcome(K.TIMEOUT, None, "no first token within 20000 ms"), M),
        (E429, M),
        (Outcome(K.RATE_LIMITED, 429, QUOTA), P),
        (Outcome(K.RATE_LIMITED, 429, "insufficient_quota"), P),
        (E503, M),
        (Outcome(K.SERVER_ERROR, 500), M),
        (Outcome(K.AUTH_ERROR, 401, "Incorrect API key provided"), P),
        (Outcome(K.AUTH_ERROR, 403, "Forbidden"), P),
        (Outcome(K.AUTH_ERROR, 403, "Project does not have access to model `gpt-4o`"), M),
        (Outcome(K.NOT_FOUND, 404, "The model `x` does not exist"), M),
        (Outcome(K.CONTEXT_TOO_LONG, 400), M),
        (Outcome(K.CONTENT_POLICY, 400), M),
        (Outcome(K.CLIENT_ERROR, 400, "messages: field required"), R),
        (Outcome(K.CLIENT_ERROR, 402, "Insufficient credits"), P),
        (Outcome(K.PROTOCOL_ERROR, 200, "stream ended before the first event"), M),
    ],
)
def test_domain_of_every_kind(outcome: Outcome, domain: Domain | None) -> None:
    assert domain_of(outcome) is domain


def test_the_table_covers_every_kind() -> None:
    for kind in OutcomeKind:
        domain_of(Outcome(kind, 400))  # no KeyError


@pytest.mark.parametrize(
    ("attempts", "models"),
    [
        ([], ()),
        ([att("a", "m1", E503)], ()),  # one failure is a model's own
        ([att("a", "m1", E503), att("a", "m1", E503, 1)], ()),  # one model twice
        ([att("a", "m1", E503), att("a", "m2", E503, 1)], ("m2", "m1")),
        ([att("a", "m1", E429), att("a", "m2", Outcome(K.TIMEOUT), 1)], ("m2", "m1")),
        # another provider's attempts in between do not matter
        ([att("a", "m1", E503), att("b", "x", E503, 1), att("a", "m2", E503, 2)], ("m2", "m1")),
        # aliases of one model's weights are one model
        ([att("a", "gpt-4o-2024-08-06", E503), att("a", "gpt-4o", E503, 1)], ()),
        # an answer from the provider after the first failure: not provider-wide
        ([att("a", "m1", E503), att("a", "m3", OK, 1), att("a", "m2", E503, 2)], ()),
        # too far apart
        ([att("a", "m1", E503), att("a", "m2", E503, STORM_WINDOW_S + 1)], ()),
        ([att("a", "m1", E503), att("a", "m2", E503, STORM_WINDOW_S - 1)], ("m2", "m1")),
        # the newest attempt is no storm-kind failure: no storm ends in it
        ([att("a", "m1", E503), att("a", "m2", Outcome(K.NOT_FOUND, 404), 1)], ()),
        # non-storm failures in between neither count nor break it
        ([att("a", "m1", E503), att("a", "m3", Outcome(K.NOT_FOUND, 404), 1),
          att("a", "m2", E503, 2)], ("m2", "m1")),
    ],
)  # fmt: skip
def test_storm(attempts: list[AttemptRecord], models: tuple[str, ...]) -> None:
    assert storm("a", attempts) == models


@pytest.mark.parametrize(
    ("outcome", "tries", "domain", "target", "provider"),
    [
        (OK, 1, None, Verdict.SUCCESS, Verdict.SUCCESS),
        (Outcome(K.CONNECT_ERROR), 1, P, Verdict.FAILURE, Verdict.FAILURE),
        (Outcome(K.AUTH_ERROR, 401), 1, P, Verdict.RELEASE, Verdict.FAILURE),
        (E503, 1, M, Verdict.FAILURE, Verdict.RELEASE),
        (E429, 1, M, Verdict.FAILURE, Verdict.RELEASE),
        (E429, 2, M, Verdict.RELEASE, Verdict.RELEASE),  # a backoff retry's 429
        (Outcome(K.NOT_FOUND, 404), 1, M, Verdict.RELEASE, Verdict.RELEASE),
        (Outcome(K.CLIENT_ERROR, 400), 1, R, Verdict.RELEASE, Verdict.RELEASE),
    ],
)
def test_judge_one_attempt(
    outcome: Outcome, tries: int, domain: Domain | None, target: Verdict, provider: Verdict
) -> None:
    j = judge([att("a", "m1", outcome)], tries_on_target=tries)
    assert (j.domain, j.target, j.provider) == (domain, target, provider)
    assert j.provider_down is (domain is P)


def test_judge_says_why() -> None:
    assert judge([att("a", "m", Outcome(K.CONNECT_ERROR))]).reason == (
        "connect_error: provider a fails for every model (host, key or quota)"
    )
    assert judge([att("a", "m", E503)]).reason == (
        "server_error 503: this model only; the provider's other models may answer"
    )
    stormy = judge([att("a", "m1", E503), att("a", "m2", E503, 1)])
    assert stormy.domain is P and stormy.provider is Verdict.FAILURE
    assert (
        stormy.reason == "server_error 503: a storm at a: failures on 2 models (m2, m1) within 60 s"
    )
    assert judge([att("a", "m", Outcome(K.CLIENT_ERROR, 400))]).reason == (
        "client_error 400: the request itself; any target would refuse it"
    )


def test_dead_providers() -> None:
    attempts = [
        att("a", "m1", Outcome(K.CONNECT_ERROR, None, "dns")),
        att("b", "x1", E503, 1),
        att("c", "y1", Outcome(K.NOT_FOUND, 404), 2),
        att("b", "x2", E503, 3),
        att("d", "z1", Outcome(K.AUTH_ERROR, 401), 4),
    ]
    dead = dead_providers(attempts)
    assert sorted(dead) == ["a", "b", "d"]
    assert dead["b"].startswith("server_error 503: a storm at b")
    assert dead_providers([]) == {}


# --------------------------------------------------------------------------- one request


def cand(key: str) -> Candidate:
    provider, model = key.split(":", 1)
    return Candidate(key, model, model, provider, model, Price(1.0, 2.0), 8000, None,
                     True, False, False, False, None, 0.5, "models.yaml")  # fmt: skip


def test_ruled_out_skips_a_dead_provider_and_a_failed_models_aliases() -> None:
    ruled = RuledOut()
    a1, a2, dated, b1 = (cand(k) for k in ("a:m1", "a:m2", "b:x-2025-01-31", "b:x"))
    assert ruled.skip(a1) is None and ruled.any_left([a1])
    j = ruled.judge(dated, [att("b", dated.provider_model_id, E503)], 1)
    assert j.domain is M and ruled.failed == [dated]
    assert ruled.skip(b1) == "same weights as b:x-2025-01-31, which failed in this request"
    j = ruled.judge(a1, [att("a", "m1", Outcome(K.CONNECT_ERROR, None, "refused"))], 1)
    assert j.provider_down and list(ruled.dead) == ["a"]
    assert ruled.skip(a2) == f"provider a is down for this request ({j.reason})"
    assert not ruled.any_left([a2, b1])
    # a provider's first verdict is the one kept; a success rules nothing out
    ruled.judge(a2, [att("a", "m2", Outcome(K.AUTH_ERROR, 401))], 1)
    assert ruled.dead["a"] == j.reason
    ok = ruled.judge(cand("c:y"), [att("c", "y", OK)], 1)
    assert ok.domain is None and ruled.skip(cand("c:y")) is None


def test_ruled_out_counts_a_storm_once_two_models_failed() -> None:
    ruled = RuledOut()
    attempts = [att("a", "m1", E503)]
    assert ruled.judge(cand("a:m1"), attempts, 1).domain is M
    attempts.append(att("a", "m2", E503, 1))
    j = ruled.judge(cand("a:m2"), attempts, 1)
    assert j.provider_down and j.provider is Verdict.FAILURE
    assert ruled.skip(cand("a:m3")) is not None
