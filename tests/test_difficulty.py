"""The learned difficulty scorer: the pure model, its artifact, its place in the request
features and the proxy's view, and that the shipped artifact is what the training script
makes from the same data."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from addon.config import loader
from addon.config.rules import Profile
from addon.errors import OrchestratorError
from addon.evaluate import run, workload
from addon.proxy import apis
from addon.proxy.view import build_view
from addon.routing import classify, decide, difficulty
from addon.store import scorer as scorer_store
from addon.wire.request import parse_request

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "fixtures" / "routing_eval"


def _tiny(**over: object) -> dict[str, object]:
    art: dict[str, object] = {
        "format": difficulty.FORMAT, "bias": -1.0, "words": {"prove": 2.0, "step by": 0.5},
        "dense": {name: [0.0, 1.0, 0.0] for name in difficulty.DENSE},
        "p_simple": 0.2, "p_complex": 0.6, "sample_chars": 1000,
    }  # fmt: skip
    art.update(over)
    return art


def test_probability_sums_each_distinct_gram_once() -> None:
    m = difficulty.from_dict(_tiny())
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert difficulty.probability(m, "hello there") == pytest.approx(sig(-1.0))
    assert difficulty.probability(m, "Prove it. PROVE it!") == pytest.approx(sig(1.0))  # once
    assert difficulty.probability(m, "prove it step by step") == pytest.approx(sig(1.5))


def test_dense_features_standardized_by_the_artifact() -> None:
    dense = {name: [0.0, 1.0, 0.0] for name in difficulty.DENSE}
    dense["options"] = [1.0, 2.0, 1.0]  # (x - 1) / 2
    m = difficulty.from_dict(_tiny(words={}, bias=0.0, dense=dense))
    text = "Which?\nA. one\nB. two\nC. three\nD. four\nAnswer:"
    raw = difficulty.encode(text)
    x = dict(
        zip(
            difficulty.DENSE,
            difficulty.dense_features(raw, difficulty.tokens(raw), len(text)),
            strict=True,
        )
    )
    assert x["options"] == 4.0 and x["question_marks"] == 1.0
    assert difficulty.probability(m, text) == pytest.approx(1 / (1 + math.exp(-1.5)))


def test_tokens_fold_case_and_digits_and_strip_punctuation() -> None:
    raw = difficulty.encode("Solve 3x+12 = 45, then? April,\n“Café” naïve")
    assert difficulty.tokens(raw) == [b"solve", b"0x+00", b"", b"00", b"then", b"april",
                                      "“café”".encode(), "naïve".encode()]  # fmt: skip
    assert difficulty.pairs([b"a", b"b", b"a", b"b"]) == {b"a b", b"b a"}


def _reference(m: difficulty.DifficultyModel, text: str) -> float:
    """p the slow way, as the module docstring words it: each distinct word and each distinct
    "word word" pair looked up in `words` (the artifact's keys), then the dense features."""
    raw = difficulty.encode(difficulty.sample(text, m.sample_chars))
    toks = [t.strip(difficulty._PUNCT) for t in raw.lower().translate(difficulty._DIGITS).split()]
    z = m.bias + sum(m.words.get(g, 0.0) for g in set(toks) | difficulty.pairs(toks))
    for x, (mean, scale, w) in zip(difficulty.dense_features(raw, toks, len(text)), m.dense,
                                   strict=True):  # fmt: skip
        z += w * (x - mean) / scale
    return 1 / (1 + math.exp(-z))


@pytest.mark.parametrize(
    "text",
    [
        "prove it step by step",
        "Step BY step: 12 + 30 = ?",
        "? ? step by",  # pairs with an empty word (punctuation only)
        "",
        "x",
        "Café naïve 😀 step by step " * 40,  # longer than two samples: head and tail
    ],
)
def test_the_fast_lookup_equals_the_documented_formula(text: str) -> None:
    tiny = difficulty.from_dict(_tiny(words={"prove": 2.0, "step by": 0.5, " step": -0.3, "": 0.2,
                                             "0 +": 0.7}, sample_chars=50))  # fmt: skip
    assert difficulty.probability(tiny, text) == pytest.approx(_reference(tiny, text), abs=1e-12)
    bundled = scorer_store.load()
    assert difficulty.probability(bundled, text) == pytest.approx(
        _reference(bundled, text), abs=1e-12
    )


@pytest.mark.parametrize(
    ("p", "c"),
    [(0.0, 0.0), (0.1, 0.165), (0.2, 0.33), (0.4, 0.495), (0.6, 0.66), (0.8, 0.83), (1.0, 1.0)],
)
def test_complexity_is_piecewise_linear_through_the_knots(p: float, c: float) -> None:
    m = difficulty.from_dict(_tiny())
    assert difficulty.complexity(m, p) == pytest.approx(c)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"format": "v0"}, "format is 'v0'"),
        ({"p_simple": 0.7}, "need 0 < p_simple <= p_complex < 1"),
        ({"words": {"a": "x"}}, "`words` must map strings to numbers"),
        ({"dense": {"log_chars": [0, 1, 0]}}, "`dense` must have exactly the keys"),
        ({"sample_chars": 0}, "sample_chars must be positive"),
    ],
)
def test_a_bad_artifact_is_refused_with_the_reason(over: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        difficulty.from_dict(_tiny(**over))
    with pytest.raises(ValueError, match="missing key 'bias'"):
        difficulty.from_dict({k: v for k, v in _tiny().items() if k != "bias"})


def test_store_names_the_file_and_the_remedy(tmp_path: Path) -> None:
    bad = tmp_path / "s.json"
    bad.write_text("{")
    with pytest.raises(
        OrchestratorError, match=r"s\.json: not readable JSON .* `scripts/train_router\.py`"
    ):
        scorer_store.load(bad)
    with pytest.raises(OrchestratorError, match="cannot read it"):
        scorer_store.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------- the shipped one


@pytest.fixture(scope="module")
def bundled() -> difficulty.DifficultyModel:
    return scorer_store.load()


def test_the_bundled_artifact_is_small_and_trained_without_the_held_out_items(
    bundled: difficulty.DifficultyModel,
) -> None:
    assert scorer_store.BUNDLED_SCORER.stat().st_size < 5 * 1024 * 1024
    assert bundled.meta["split"] == "train" and bundled.meta["benchmarks"] == ["gsm8k", "mmlu"]
    assert 0 < bundled.p_simple <= bundled.p_complex < 1


def test_learned_complexity_feeds_the_request_features(bundled: difficulty.DifficultyModel) -> None:
    text = (
        "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many?"
    )
    body = {"messages": [{"role": "user", "content": text}]}
    p = difficulty.probability(bundled, text)
    learned = classify.features(body, requested_model=None, difficulty=bundled)
    assert learned.complexity == round(difficulty.complexity(bundled, p), 3)
    assert learned.difficulty == round(p, 4)  # carried for the explanation
    keyword = classify.features(body, requested_model=None)
    assert keyword.difficulty is None
    assert keyword.complexity != learned.complexity  # the keyword heuristic calls this ~0
    # the structure terms stay: tools add 0.15 on top of the learned value
    tools = classify.features({**body, "tools": [{"type": "function", "function": {"name": "f"}}]},
                              requested_model=None, difficulty=bundled)  # fmt: skip
    assert tools.complexity == pytest.approx(min(1.0, learned.complexity + 0.15), abs=0.002)


def test_the_proxy_reads_requests_with_the_learned_scorer_unless_told_keyword(
    tmp_path: Path,
) -> None:
    cfg = loader.load(REPO / "orchestrator.yaml")
    view = build_view(cfg, {}, {})
    assert view.difficulty is not None  # complexity: learned is the default
    parsed = parse_request(json.dumps({"model": "auto", "messages": [
        {"role": "user", "content": "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field."}]}).encode())  # fmt: skip
    ep = apis.endpoint("POST", "/v1/chat/completions")
    assert ep is not None
    got = apis.read_request(ep, parsed, view.difficulty).features.complexity
    text = parsed.data["messages"][0]["content"]
    assert got == round(
        difficulty.complexity(view.difficulty, difficulty.probability(view.difficulty, text)), 3
    )
    src = (REPO / "orchestrator.yaml").read_text()
    (tmp_path / "orchestrator.yaml").write_text(src + "\ncomplexity: keyword\n")
    (tmp_path / "rules").symlink_to(REPO / "rules")
    kcfg = loader.load(tmp_path / "orchestrator.yaml")
    assert kcfg.settings.complexity == "keyword"
    assert build_view(kcfg, {}, {}).difficulty is None


def _train_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "train_router", REPO / "scripts" / "train_router.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_shipped_artifact_is_what_the_training_script_makes(
    bundled: difficulty.DifficultyModel,
) -> None:
    tr = _train_module()
    items = workload.read(tr.DEFAULT_DATA)
    art = tr.train(tr.select(items, None, "train"), meta={})
    fresh = difficulty.from_dict(art)
    assert fresh.p_simple == pytest.approx(bundled.p_simple, abs=1e-3)
    assert fresh.p_complex == pytest.approx(bundled.p_complex, abs=1e-3)
    held = [it for it in items if run.held_out(it.id)][::10]
    assert len(held) > 250
    for it in held:
        assert difficulty.probability(fresh, it.last_user) == pytest.approx(
            difficulty.probability(bundled, it.last_user), abs=1e-3
        ), it.id


def test_the_complexity_reason_names_the_learned_p(bundled: difficulty.DifficultyModel) -> None:
    body = {
        "messages": [{"role": "user", "content": "Prove that there are infinitely many primes."}]
    }
    f = classify.features(body, requested_model=None, difficulty=bundled)
    line = decide.complexity_reason(
        f, Profile(weights={"quality": 0.4, "cost": 0.3, "latency": 0.3})
    )
    assert f"({f.complexity_class}; learned p {f.difficulty:.3f}): weights quality " in line
    plain = classify.features(body, requested_model=None)
    assert "learned p" not in decide.complexity_reason(plain, Profile(weights={"quality": 1}))
