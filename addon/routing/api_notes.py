"""What a decision says about the providers left out for not speaking a request's API. Pure.

Split from `addon.routing.decide`: the reason line of a decision (`api_reason`) and the hint
a refusal adds (`api_hint`).
"""

from __future__ import annotations

from collections.abc import Mapping

from addon.routing.ranking import Router


def api_reason(
    router: Router, api: str, speaking: frozenset[str] | None, filtered: Mapping[str, int]
) -> tuple[str, ...]:
    """The reason naming the providers left out for not speaking the request's API."""
    if speaking is None or not filtered.get("api"):
        return ()
    silent = ", ".join(sorted(set(router.catalog.providers) - speaking))
    return (f"api {api}: {filtered['api']} candidate(s) left out at providers that do not "
            f"speak it ({silent})",)  # fmt: skip


def api_hint(
    router: Router, api: str, speaking: frozenset[str] | None, filtered: Mapping[str, int]
) -> str:
    """What a refusal adds when providers were left out for not speaking the API: which do,
    and the key that declares it."""
    if speaking is None or not (filtered.get("api") or not speaking):
        return ""
    who = ", ".join(sorted(speaking)) or "none is configured"
    return (f"; only providers that speak the {api} API can serve it ({who}): list {api} in "
            "`apis:` of a provider that serves it in orchestrator.yaml")  # fmt: skip
