"""`orchestrator eval`: the metric math against hand-worked examples, the workload format, the
replay through the real router, and the command on the shared RouteLLM fixtures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from addon.cli import main
from addon.config import loader
from addon.errors import OrchestratorError
from addon.evaluate import metrics, replay, run, workload
from addon.evaluate.metrics import Outcome, Point
from addon.routing import scoring
from addon.store import benchmarks

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "fixtures" / "routing_eval"
STRONG = "openai/gpt-4-1106-preview"
WEAK = "mistralai/mixtral-8x7b-instruct-v0.1"

# --------------------------------------------------------------------------- the math

S = lambda score: Outcome(score, 10.0, True)  # noqa: E731  the strong model costs 10 a call
W = lambda score: Outcome(score, 1.0, False)  # noqa: E731  the weak one 1


def _items(cs: list[float]) -> tuple[list[float], list[tuple[Outcome, Outcome, Outcome]]]:
    """Four items routed simple -> weak, medium -> weak, complex -> strong (as `balanced`
    does today). Scores (strong, weak): (1, 0), (1, 1), (0, 0), (1, 0): weak quality 0.25,
    strong 0.75; only items 0 and 3 gain from the strong model."""
    pairs = [(1.0, 0.0), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0)]
    return cs, [(W(w), W(w), S(s)) for s, w in pairs]


def test_sweep_moves_items_up_in_order_of_complexity() -> None:
    cs, outs = _items([0.9, 0.6, 0.3, 0.1])
    pts = metrics.sweep(cs, outs)
    # each item reaches "complex" at offset 0.66 - c (its "medium" step changes nothing)
    curve = [(p.strong_share, p.quality) for p in pts]
    assert curve[0] == (0.0, 0.25) and curve[-1] == (1.0, 0.75)
    assert sorted(set(curve)) == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.5), (0.75, 0.5), (1.0, 0.75)]
    assert next(round(p.offset, 6) for p in pts if p.strong_share == 0.5) == 0.06  # 0.66 - 0.6
    assert pts[-1].cost == 10.0 and pts[0].cost == 1.0


@pytest.mark.parametrize(
    ("cs", "apgr", "cpt50", "cpt80"),
    [
        # by hand: PGR over shares 0, .25, .5, .75, 1 is 0, .5, .5, .5, 1; trapezoids
        # .0625 + .125 + .125 + .1875 = .5; PGR .5 first at share .25; .8 between (.75, .5)
        # and (1, 1): .75 + .25 * .6 = .9
        ([0.9, 0.6, 0.3, 0.1], 0.5, 0.25, 0.9),
        # the two helped items first: PGR 0, .5, 1, 1, 1 -> .0625 + .1875 + .25 + .25 = .75;
        # .8 between (.25, .5) and (.5, 1): .25 + .25 * .6 = .4
        ([0.9, 0.6, 0.3, 0.95], 0.75, 0.25, 0.4),
    ],
)
def test_apgr_and_cpt_match_the_hand_worked_example(
    cs: list[float], apgr: float, cpt50: float, cpt80: float
) -> None:
    pts = metrics.sweep(*_items(cs))
    assert metrics.apgr(pts, 0.25, 0.75) == pytest.approx(apgr)
    assert metrics.cpt(pts, 0.25, 0.75, 0.5) == pytest.approx(cpt50)
    assert metrics.cpt(pts, 0.25, 0.75, 0.8) == pytest.approx(cpt80)


def test_cost_at_the_quality_target_is_interpolated_on_the_curve() -> None:
    pts = metrics.sweep(*_items([0.9, 0.6, 0.3, 0.1]))
    # 95% of 0.75 = 0.7125, between (.75, q .5, cost 7.75) and (1, q .75, cost 10): t = .85
    at = metrics.at_quality(pts, 0.95 * 0.75)
    assert at is not None
    assert at.strong_share == pytest.approx(0.9625)
    assert at.cost == pytest.approx(7.75 + 0.85 * 2.25)
    assert metrics.at_quality(pts, 0.9) is None  # never reached
    default = metrics.default_point(pts)  # offset 0: only item 0 (c .9) is complex
    assert default is not None and (default.strong_share, default.quality) == (0.25, 0.5)


def test_a_random_router_recovers_half_the_gap() -> None:
    line = [Point(0, x / 10, 0.25 + 0.5 * x / 10, 1 + 9 * x / 10) for x in range(11)]
    assert metrics.apgr(line, 0.25, 0.75) == pytest.approx(0.5)
    assert metrics.cpt(line, 0.25, 0.75, 0.8) == pytest.approx(0.8)


def test_mean_summary_averages_and_keeps_unreached_as_none() -> None:
    a = metrics.Summary(0.4, 0.5, 0.8, Point(0, 0.7, 0.9, 2.0), None)
    b = metrics.Summary(0.6, 0.3, None, Point(0, 0.5, 0.9, 4.0), None)
    m = metrics.mean_summary([a, b])
    assert m.apgr == pytest.approx(0.5) and m.cpt50 == pytest.approx(0.4)
    assert m.cpt80 is None and m.at_target is not None and m.at_target.cost == pytest.approx(3.0)


def test_sweep_refuses_mismatched_input() -> None:
    with pytest.raises(ValueError, match=r"one outcome per level \(3\) for each complexity"):
        metrics.sweep([0.1, 0.2], [(W(0), W(0), S(1))])
    with pytest.raises(ValueError, match=r"one outcome per level \(2\) for each complexity"):
        metrics.sweep([0.1], [(W(0), W(0), S(1))], cuts=(0.5,))


# --------------------------------------------------------------------------- the format


def _line(**over: object) -> str:
    item = {"id": "t/0", "benchmark": "t", "category": "c",
            "messages": [{"role": "user", "content": "What is 2+2?"}],
            "scores": {STRONG: 1.0, WEAK: 0.0}, "scale": "correct"}  # fmt: skip
    item.update(over)
    return json.dumps(item)


def test_judge_scores_are_normalised_to_0_1(tmp_path: Path) -> None:
    f = tmp_path / "w.jsonl"
    f.write_text(_line(scores={STRONG: 10, WEAK: 1}, scale="judge_1_10") + "\n\n"
                 + _line(id="t/1", scores={STRONG: 5.5, WEAK: 7}, scale="judge_1_10") + "\n")  # fmt: skip
    items = workload.read([f])
    assert [dict(it.scores) for it in items] == [
        {STRONG: 1.0, WEAK: 0.0},
        {STRONG: 0.5, WEAK: 2 / 3},
    ]
    assert items[0].last_user == "What is 2+2?"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "w.jsonl:2: "),
        (_line(scale="stars"), "w.jsonl:2: scale 'stars' is not one of correct, judge_1_10"),
        (_line(scores={STRONG: 1}), "w.jsonl:2: `scores` must map at least two model ids"),
        (_line(messages=[]), "w.jsonl:2: `messages` must be a non-empty list"),
        (_line(scores={STRONG: 1, "other/model": 0}), "every item must score the same models"),
    ],
)
def test_a_bad_line_names_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "w.jsonl"
    f.write_text(_line() + "\n" + line + "\n")
    with pytest.raises(OrchestratorError) as e:
        workload.read([f])
    assert message in str(e.value)


def test_held_out_split_is_a_fixed_fifth() -> None:
    ids = [f"mmlu/x/{i}" for i in range(5000)]
    share = sum(map(run.held_out, ids)) / len(ids)
    assert 0.18 < share < 0.22
    assert run.held_out("gsm8k/5") == run.held_out("gsm8k/5")


# --------------------------------------------------------------------------- the replay


@pytest.fixture(scope="module")
def cfg() -> loader.Config:
    return loader.load(REPO / "orchestrator.yaml")


def test_replay_routes_through_the_real_router_with_real_prices(cfg: loader.Config) -> None:
    items = workload.read([DATA / "gsm8k.jsonl"])[:20]
    rows, _, _ = benchmarks.load_catalog_rows(cfg)
    setup = replay.build(cfg, items, rows, "quality")
    assert (setup.strong, setup.weak) == (STRONG, WEAK)
    # only the workload's models are candidates, each at a real, non-zero catalog price
    assert {setup.model(c) for c in setup.router.catalog.candidates} == {STRONG, WEAK}
    assert all(c.price.known and (c.price.input_per_mtok or 0) > 0
               for c in setup.router.catalog.candidates)  # fmt: skip
    r = replay.Replayer(setup, 100)
    f = replay.features(items[0])
    levels = r.outcomes(items[0], f)
    assert len(levels) == scoring.LEVELS
    simple, complex_ = levels[0], levels[-1]
    assert complex_.strong  # the quality profile sends a complex request to GPT-4
    # a stronger model is chosen from some level up, never lost again above it
    strong = [o.strong for o in levels]
    assert strong == sorted(strong)
    # cost = the chosen offering's price x (prompt estimate + 100 completion tokens)
    gpt4 = next(c for c in setup.router.catalog.candidates if setup.model(c) == STRONG)
    expected = (
        f.prompt_tokens * gpt4.price.input_per_mtok + 100 * gpt4.price.output_per_mtok
    ) / 1e6  # type: ignore[operator]
    assert complex_.cost == pytest.approx(expected)
    budget = replay.Replayer(replay.build(cfg, items, rows, "budget"), 100)
    assert not any(o.strong for o in budget.outcomes(items[0], f))  # budget never pays for GPT-4
    assert simple.score in (0.0, 1.0)


def test_replay_refuses_a_workload_model_the_catalog_lacks(
    cfg: loader.Config, tmp_path: Path
) -> None:
    f = tmp_path / "w.jsonl"
    f.write_text(_line(scores={STRONG: 1, "nobody/no-such-model-9000": 0}) + "\n")
    rows, _, _ = benchmarks.load_catalog_rows(cfg)
    with pytest.raises(
        OrchestratorError, match="nobody/no-such-model-9000 of the workload have no priced offering"
    ):
        replay.build(cfg, workload.read([f]), rows, None)


def test_replay_refuses_an_unknown_profile(cfg: loader.Config) -> None:
    items = workload.read([DATA / "gsm8k.jsonl"])[:2]
    with pytest.raises(OrchestratorError, match="profile 'nope' is not in"):
        replay.build(cfg, items, [], "nope")


# --------------------------------------------------------------------------- the command


def _eval(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["eval", "-c", str(REPO / "orchestrator.yaml"), *args])
    return res.exit_code, res.stdout, res.stderr


def test_eval_on_both_fixtures_reports_every_method_and_baseline(tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    code, out, err = _eval("--data", str(DATA / "mmlu.jsonl"), str(DATA / "gsm8k.jsonl"),
                           "--json", "--plot", str(png))  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    names = [b["benchmark"] for b in doc["benchmarks"]]
    assert names == ["mmlu", "gsm8k", "overall"]
    mmlu, gsm8k, overall = doc["benchmarks"]
    # PROVENANCE.md: MMLU 14,037 items, GPT-4 0.8059, Mixtral 0.6809; GSM8K 1,307, .8577/.6373
    assert (mmlu["items"], round(mmlu["strong_quality"], 4), round(mmlu["weak_quality"], 4)) == (
        14037,
        0.8059,
        0.6809,
    )
    assert (gsm8k["items"], round(gsm8k["strong_quality"], 4), round(gsm8k["weak_quality"], 4)) == (
        1307,
        0.8577,
        0.6373,
    )
    assert overall["items"] == 14037 + 1307
    methods = {m["method"]: m for m in mmlu["methods"]}
    assert list(methods) == [
        "always-strong",
        "always-weak",
        "random",
        "keyword",
        "learned",
        "oracle",
    ]
    assert methods["always-strong"]["point"]["strong_share"] == 1.0
    assert 0.45 < methods["random"]["apgr"] < 0.55  # a random router recovers half the gap
    assert methods["oracle"]["apgr"] > 1.0  # the oracle beats GPT-4 alone
    for m in ("keyword", "learned"):
        assert 0 < methods[m]["saving_at_target"] < 1
        assert methods[m]["at_target"]["quality"] >= 0.95 * mmlu["strong_quality"] - 1e-9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot written to" in err and "items evaluated in" in err


def test_eval_table_and_heldout(tmp_path: Path) -> None:
    code, out, err = _eval("--data", str(DATA / "gsm8k.jsonl"), "--heldout", "--no-learned")
    assert code == 0, err
    assert "gsm8k: 279 items" in out
    assert out.splitlines()[3].split() == ["method", "APGR", "CPT(50%)", "CPT(80%)", "strong@95%",
                                           "cost@95%", "saving@95%", "quality@0", "strong@0", "cost@0"]  # fmt: skip
    assert "learned" not in out and "keyword" in out


def test_eval_without_matplotlib_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, out, err = _eval(
        "--data", str(DATA / "gsm8k.jsonl"), "--no-learned", "--plot", str(tmp_path / "x.png")
    )
    assert code == 2
    assert "gsm8k: 1,307 items" in out  # the table is printed before the plot fails
    assert "--plot needs matplotlib, which is not installed" in err
    assert not (tmp_path / "x.png").exists()


def test_eval_rejects_a_bad_scorer_file(tmp_path: Path) -> None:
    bad = tmp_path / "scorer.json"
    bad.write_text('{"format": "something-else"}')
    code, _, err = _eval("--data", str(DATA / "gsm8k.jsonl"), "--scorer", str(bad))
    assert code == 2
    assert f"difficulty scorer {bad}: format is 'something-else'" in err
