"""``orchestrator resolve NAME... [--source S] [--json]``: the canonical model each name denotes
in the benchmark DB in use, how it was matched, and the near candidates refused and why.

The DB is ``--db`` if given, else the config's ``data.benchmarks`` when that file exists, else
the bundled ``addon/bundled/benchmarks.db`` (what the proxy would route with). Exit 0 when
every name resolves, 1 when one does not, 2 when the config or the DB cannot be read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from addon.config import loader
from addon.errors import BenchmarkDBError, ConfigError
from addon.refresh.lookup import Answer, Lookup
from addon.store.benchmarks import BUNDLED_DB

SOURCES = ("openrouter", "litellm", "lmarena", "huggingface", "local")


def database(config: str, explicit_config: bool, db: str | None) -> tuple[Path, str | None]:
    """The DB to answer from, and a note when it is not the configured one."""
    if db is not None:
        return Path(db), None
    if not explicit_config and not Path(config).exists():
        return BUNDLED_DB, f"no {config} here: answering from the bundled DB {BUNDLED_DB}"
    path = loader.load(config).benchmarks_path
    if path.exists():
        return path, None
    return BUNDLED_DB, (f"benchmark DB {path} does not exist yet: answering from the bundled "
                        f"DB {BUNDLED_DB} (run `orchestrator refresh` to build one)")  # fmt: skip


def render(answer: Answer) -> list[str]:
    """An answer as the text `resolve` prints: one header line, then indented details."""
    lines = [answer.name]
    if answer.model_id is not None:
        named = f" ({answer.model_name})" if answer.model_name else ""
        lines.append(f"  model    {answer.model_id}{named}")
        how = {"alias": f"recorded by the refresh for source {answer.source}",
               "model": "a canonical model id",
               "index": "resolved now against the DB's names"}[answer.via]  # fmt: skip
        lines.append(f"  method   {answer.method}  score {answer.score:.1f}  ({how})")
    else:
        lines.append("  model    -")
        lines.append(f"  why      {answer.reason}")
    for i, r in enumerate(answer.refused):
        spelled = "" if r.name.lower() == r.model_id.lower() else f" (as {r.name})"
        lines.append(f"  {'refused' if i == 0 else '':8} {r.model_id}{spelled}: {r.reason}")
    return lines


@click.command("resolve")
@click.argument("names", nargs=-1, required=True)
@click.option("-c", "--config", default="orchestrator.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Path of orchestrator.yaml (its "
              "data.benchmarks is the DB asked).")  # fmt: skip
@click.option("--db", type=click.Path(dir_okay=False), help="Ask this benchmark DB instead.")
@click.option("--source", type=click.Choice(SOURCES),
              help="Resolve the names as this source spells them (default: any source).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def resolve_command(ctx: click.Context, names: tuple[str, ...], config: str, db: str | None,
                    source: str | None, as_json: bool) -> None:  # fmt: skip
    """Which canonical model each NAME denotes, the method and score, and the near
    candidates refused and why."""
    explicit = ctx.get_parameter_source("config") is not click.core.ParameterSource.DEFAULT
    try:
        path, note = database(config, explicit, db)
        lookup = Lookup(path)
    except (ConfigError, BenchmarkDBError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if note:
        click.echo(f"note: {note}", err=True)
    answers = [lookup.answer(name, source) for name in names]
    if as_json:
        click.echo(json.dumps({"db": str(path), "answers": [a.as_dict() for a in answers]},
                              indent=2))  # fmt: skip
    else:
        click.echo("\n\n".join("\n".join(render(a)) for a in answers))
    sys.exit(0 if all(a.model_id is not None for a in answers) else 1)
