"""`orchestrator eval`: replay labelled prompts through the router and report routing quality
(README "Routing quality")."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from addon.config import loader
from addon.errors import OrchestratorError
from addon.evaluate import plot, report, run, workload
from addon.evaluate.replay import Replayer, build
from addon.routing.difficulty import DifficultyModel
from addon.store import benchmarks
from addon.store import scorer as scorer_store

DEFAULT_OUTPUT_TOKENS = 256


@click.command("eval")
@click.option("-c", "--config", default="orchestrator.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Path of orchestrator.yaml (its profiles and benchmark DB).")  # fmt: skip
@click.option("--data", "data", multiple=True, required=True, type=click.Path(dir_okay=False, exists=True),
              help="A JSONL workload file (repeat the option, or pass several after one --data).")  # fmt: skip
@click.argument("more", nargs=-1, type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--curves", is_flag=True, help="With --json: every point of every curve too.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the curves to this PNG file.")  # fmt: skip
@click.option("--scorer", "scorer_path", type=click.Path(dir_okay=False, exists=True),
              help="A difficulty scorer JSON (default: the bundled one).")  # fmt: skip
@click.option("--no-learned", is_flag=True, help="Leave the learned scorer out.")
@click.option("--heldout", is_flag=True,
              help="Only the items held out of the scorer's training (crc32(id) % 5 == 0).")  # fmt: skip
@click.option("--profile", default=None, help="Profile to route under (default: default_profile).")
@click.option("--output-tokens", default=DEFAULT_OUTPUT_TOKENS, show_default=True,
              type=click.IntRange(min=0), help="Completion tokens assumed per call, for cost.")  # fmt: skip
def eval_command(config: str, data: tuple[str, ...], more: tuple[str, ...], as_json: bool,
                 curves: bool, plot_path: str | None, scorer_path: str | None, no_learned: bool,
                 heldout: bool, profile: str | None, output_tokens: int) -> None:  # fmt: skip
    """Replay labelled prompts through the router and report quality against cost.

    Each item is routed by the real routing code (the config's profile, the catalog
    restricted to the workload's models, their real prices) with its complexity swept from
    "everything simple" to "everything complex"; the table shows APGR, CPT(50%)/CPT(80%),
    the cost at 95% of the strong model's quality, and the router as configured (offset 0),
    for the keyword heuristic, the learned scorer, random routing and the oracle, beside
    always-strong and always-weak.
    """
    started = time.monotonic()
    cfg = loader.load(config)
    items = workload.read([*data, *more])
    if heldout:
        items = [it for it in items if run.held_out(it.id)]
        if not items:
            raise OrchestratorError("--heldout left no items")
    scorer: DifficultyModel | None = None
    if not no_learned:
        scorer = scorer_store.load(scorer_path) if scorer_path else scorer_store.load()
    rows, _source, _warnings = benchmarks.load_catalog_rows(cfg)
    setup = build(cfg, items, rows, profile)
    prepared = run.prepare(items, Replayer(setup, output_tokens), scorer)
    results = run.evaluate(prepared, setup)
    if as_json:
        doc = report.as_json(results, setup.profile, output_tokens, curves=curves)
        doc["scorer"] = (
            None if scorer is None else (scorer_path or str(scorer_store.BUNDLED_SCORER))
        )
        doc["heldout"] = heldout
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(report.table(results, setup.profile, output_tokens))
    if plot_path:
        out = plot.write(results, Path(plot_path))
        click.echo(f"plot written to {out}", err=True)
    click.echo(f"{len(items):,} items evaluated in {time.monotonic() - started:.1f} s", err=True)
