"""Replaying a workload through the real routing code.

`build` makes a router exactly as the proxy does (`catalog.build_catalog`,
`ranking.build_router`) from the config's profiles and the benchmark DB's offerings,
restricted to the workload's models (matched by `aliases`, the catalog's name rule): one provider per DB provider that offers one of them at
a known, non-zero price (a price of 0 in the DB is a local server's), plus the models the
config declares in `rules/models.yaml` under those ids. Policies and routes are left out:
the eval measures a profile's scoring, not a deployment's pins.

`outcomes` routes one item once per weight level (`scoring.LEVELS`: 9), as a request of a
complexity inside that level (`scoring.level_complexity`; every other feature, the token
estimate included, as `classify.features` reads the item's messages) with `decide.decide`
under the profile, and reads off the model chosen, its score on the item and the call's
cost: the real catalog prices of the chosen offering times the prompt-token estimate plus
`output_tokens` completion tokens (the data carry no answer lengths). Without policies the
routing code reads complexity only through its weight level (the continuous weight mapping
of `addon.routing.scoring`, quantized as the proxy quantizes it), so these decisions are
every decision the router can make for the item; `metrics.sweep` turns them into a curve
over `scoring.CUTS`, so the eval measures exactly the mapping the proxy applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from addon.config.loaded import Config
from addon.config.schema import Provider
from addon.errors import OrchestratorError
from addon.evaluate.metrics import Outcome
from addon.evaluate.workload import Item
from addon.routing import catalog as catmod
from addon.routing import classify, decide, ranking, scoring
from addon.routing import cost as costmod
from addon.routing.catalog import OfferingRow
from addon.routing.difficulty import DifficultyModel
from addon.wire.usage import Usage

LEVEL_COMPLEXITY = tuple(scoring.level_complexity(k) for k in range(scoring.LEVELS))
EVAL_HOST = "eval.invalid"  # the host of the replayed requests and of every eval provider


@dataclass(frozen=True)
class Setup:
    """The router of one workload: its config (profile `profile`), the strong model (best
    mean score), the weak model (cheapest offering among the workload's models), and each
    model's mean score."""

    router: ranking.Router
    profile: str
    strong: str
    weak: str
    means: Mapping[str, float]
    alias: Mapping[str, str]  # catalog model id -> workload model id

    def model(self, c: catmod.Candidate) -> str | None:
        """The workload model candidate `c` is."""
        return self.alias.get(c.model_id)


def _names(name: str) -> set[str]:
    low = name.lower()
    return {low, low.rsplit("/", 1)[-1]}


def aliases(rows: Iterable[OfferingRow], models: frozenset[str]) -> dict[str, str]:
    """Catalog model id -> the workload model it is: a model whose canonical or provider id
    (or either's last path segment, ignoring case: `Catalog.lookup`'s rule) names one of the
    workload's models. An error when one catalog model would be two workload models."""
    wanted = {n: m for m in models for n in _names(m)}
    out: dict[str, str] = {}
    for r in rows:
        hit = next((wanted[n] for n in (*_names(r.model_id), *_names(r.provider_model_id))
                    if n in wanted), None)  # fmt: skip
        if hit is None:
            continue
        if out.setdefault(r.model_id, hit) != hit:
            raise OrchestratorError(
                f"catalog model {r.model_id} is both {out[r.model_id]} and {hit} of the "
                "workload; score the two under one id"
            )
    return out


def _rows_for(rows: Iterable[OfferingRow], alias: Mapping[str, str]) -> list[OfferingRow]:
    return [
        r
        for r in rows
        if r.model_id in alias
        and r.input_per_mtok is not None
        and r.output_per_mtok is not None
        and (r.input_per_mtok > 0 or r.output_per_mtok > 0)
    ]


def build(cfg: Config, items: list[Item], rows: list[OfferingRow], profile: str | None) -> Setup:
    """The router for `items` (see the module docstring); `rows` are the benchmark DB's
    offerings, `profile` the profile to route under (None: the config's default)."""
    name = profile or cfg.settings.default_profile
    if name not in cfg.profiles:
        raise OrchestratorError(
            f"profile {name!r} is not in {cfg.rules_dir / 'profiles.yaml'}; "
            f"use one of: {', '.join(sorted(cfg.profiles))}"
        )
    models = frozenset(items[0].scores)
    rows = list(rows)
    declared = tuple(m for m in cfg.models if m.id in models)
    alias = aliases(rows, models) | {m.id: m.id for m in declared}
    kept = _rows_for(rows, alias)
    providers: dict[str, Provider] = {
        r.provider: Provider(base_url=f"https://{EVAL_HOST}/{r.provider}/v1") for r in kept
    }
    for m in declared:
        providers.setdefault(m.provider, cfg.settings.providers[m.provider])
    settings = cfg.settings.model_copy(update={"providers": providers})
    ecfg = dataclasses.replace(cfg, settings=settings, policies=(), routes={}, models=declared)
    cat = catmod.build_catalog(ecfg, kept, {})
    have = {alias[c.model_id] for c in cat.candidates if c.price.known}
    missing = sorted(models - have)
    if missing:
        raise OrchestratorError(
            f"model(s) {', '.join(missing)} of the workload have no priced offering in the "
            "benchmark catalog; run `orchestrator refresh`, or declare them with prices and "
            "quality in rules/models.yaml"
        )
    router = ranking.build_router(ecfg, cat, {})
    means = {m: sum(it.scores[m] for it in items) / len(items) for m in sorted(models)}
    cheapest = {
        m: min(
            (c for c in cat.candidates if alias[c.model_id] == m and c.price.known),
            key=lambda c: (c.price.input_per_mtok or 0) * 3 + (c.price.output_per_mtok or 0),
        )
        for m in models
    }
    strong = max(means, key=lambda m: (means[m], m))
    weak = min(cheapest, key=lambda m: (3 * (cheapest[m].price.input_per_mtok or 0)
                                        + (cheapest[m].price.output_per_mtok or 0), m))  # fmt: skip
    if weak == strong:
        weak = min((m for m in means if m != strong), key=lambda m: (means[m], m))
    return Setup(router, name, strong, weak, means, alias)


def features(item: Item, scorer: DifficultyModel | None = None) -> classify.RequestFeatures:
    """The request features of `item` as the proxy reads them (keyword complexity, or the
    learned one with `scorer`)."""
    return classify.features(item.body, requested_model="auto", difficulty=scorer)


class Replayer:
    """Routes items under one setup, memoizing decisions by what they depend on."""

    def __init__(self, setup: Setup, output_tokens: int) -> None:
        self.setup = setup
        self.output_tokens = output_tokens
        self._memo: dict[tuple[object, ...], catmod.Candidate] = {}
        self._headers = {decide.PROFILE_HEADER: setup.profile}

    def _route(self, f: classify.RequestFeatures) -> catmod.Candidate:
        key = (scoring.level(f.complexity), f.complexity_class, f.prompt_tokens, f.max_output_tokens, f.needs_tools,
               f.needs_vision, f.needs_json_schema, f.task, f.messages)  # fmt: skip
        got = self._memo.get(key)
        if got is None:
            req = decide.RoutingRequest(features=f, host=EVAL_HOST, path="/v1/chat/completions",
                                        headers=self._headers, client_addr="127.0.0.1",
                                        client_key=False)  # fmt: skip
            d = decide.decide(self.setup.router, req, lambda c: None, 1)
            if isinstance(d, decide.NoRoute):
                raise OrchestratorError(f"the router refused a replayed request: {d.message}")
            got = d.chain[0].candidate
            self._memo[key] = got
        return got

    def outcomes(self, item: Item, f: classify.RequestFeatures) -> tuple[Outcome, ...]:
        """What the router does with `item` (features `f`) at each weight level, lowest
        first."""
        out = []
        for c in LEVEL_COMPLEXITY:
            cand = self._route(dataclasses.replace(f, complexity=c))
            usage = Usage(prompt_tokens=f.prompt_tokens, completion_tokens=self.output_tokens)
            cost = costmod.cost(usage, cand.price)
            model = self.setup.model(cand)
            if model is None or cost is None:
                raise OrchestratorError(
                    f"item {item.id!r}: routed to {cand.key}, which the workload does not score "
                    "or the catalog does not price"
                )
            out.append(Outcome(item.scores[model], cost, model == self.setup.strong))
        return tuple(out)

    def fixed(self, item: Item, f: classify.RequestFeatures, model: str) -> Outcome:
        """The outcome of sending `item` to `model` (its cheapest priced offering): the
        always-strong and always-weak baselines."""
        cands = [c for c in self.setup.router.catalog.candidates
                 if self.setup.model(c) == model and c.price.known]  # fmt: skip
        cand = min(cands, key=lambda c: costmod.cost(
            Usage(prompt_tokens=f.prompt_tokens, completion_tokens=self.output_tokens), c.price
        ) or 0.0)  # fmt: skip
        usage = Usage(prompt_tokens=f.prompt_tokens, completion_tokens=self.output_tokens)
        return Outcome(
            item.scores[model], costmod.cost(usage, cand.price) or 0.0, model == self.setup.strong
        )
