"""`orchestrator` — the console script. Thin: parse options, call the library, print."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from addon.config import loader, resolving
from addon.config.loaded import Config
from addon.config.schema import APIS
from addon.errors import ConfigError, OrchestratorError
from addon.evaluate import command as eval_command
from addon.host import commands as host_commands
from addon.host import configcheck, listen, running
from addon.proxy import balancing, ca, statuspage
from addon.proxy.view import build_view, environ
from addon.refresh.resolve_command import resolve_command
from addon.routing import chains, classify, decide, ranking
from addon.routing.scoring import Scored, effective_weights
from addon.store import ledgers, reports

DEFAULT_CONFIG = "orchestrator.yaml"


class Failed(click.ClickException):
    """A command failed; the message says what happened and what to do. Exit 1: not found."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Invalid(Failed):
    """Invalid input: the configuration, an option's value, or a store that cannot be read."""

    exit_code = 2


class NoProxy(Failed):
    """No running proxy answered at the admin endpoint."""

    exit_code = 3


class _Commands(click.Group):
    """The command group: any OrchestratorError a command lets through is reported as a
    `Failed` (its message already names the file, value and remedy), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            raise Invalid(f"invalid configuration\n{e}") from None
        except OrchestratorError as e:
            raise Invalid(str(e)) from None


def _load(config: str) -> Config:
    return loader.load(config)  # a ConfigError exits 2 through _Commands


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="local-ai-orchestrator")
def main() -> None:
    """Local AI Orchestrator: route OpenAI-compatible LLM calls by YAML policy."""


config_option = click.option(
    "-c",
    "--config",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Path of orchestrator.yaml.",
)


@main.command()
@config_option
@click.option("--port", type=int, help="Listen port (overrides `listen:` in the config).")
@click.option("--host", help="Listen address (overrides `listen:` in the config).")
@click.option(
    "--confdir",
    type=click.Path(file_okay=False),
    help="mitmproxy confdir holding this installation's CA [default: data/mitmproxy "
    "next to the config].",
)
@click.option(
    "--set",
    "extra",
    multiple=True,
    metavar="OPTION=VALUE",
    help="Pass a mitmproxy option through (repeatable).",
)
def run(
    config: str, port: int | None, host: str | None, confdir: str | None, extra: tuple[str, ...]
) -> None:
    """Run the proxy (a mitmproxy Master with only the addons the router needs)."""
    cfg = _load(config)
    s = cfg.settings
    for line in resolving.internal_names(s.providers):  # unusable: every connection is refused
        click.echo(f"warning: {line}", err=True)
    bind_host, bind_port = host or s.listen_host, port if port is not None else s.listen_port
    if host is not None:
        listen.refuse_exposed(host, bind_port, has_clients=bool(s.clients))
    if not s.mode.startswith("local"):
        listen.check_free(bind_host, bind_port, cfg.path.name)
    conf = Path(confdir) if confdir else ca.default_confdir(cfg.base_dir)
    ca.ensure_ca(conf)
    from addon.proxy.process import serve

    sys.exit(serve(cfg.path, mode=s.mode, host=bind_host, port=bind_port, confdir=conf.resolve(),
                   extra=extra))  # fmt: skip


@main.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
    add_help_option=False,
)
@click.pass_context
def refresh(ctx: click.Context) -> None:
    """Rebuild the benchmark DB from the public sources (atomically); `refresh --help` lists
    its options."""
    from addon.refresh import sidecar as refresh_mod

    sys.exit(refresh_mod.main(list(ctx.args)))


def _admin_call(config: str, admin: str | None, method: str, path: str) -> dict[str, Any]:
    """Ask the running proxy's admin endpoint; exit 3 with a remedy when it is not there. A
    config that does not load is reported on stderr first: the proxy keeps its last good one."""
    ep = running.endpoint(config, admin)
    if ep.problem:
        click.echo(f"note: {config} does not load now; the running proxy keeps its last good "
                   f"config:\n{ep.problem}", err=True)  # fmt: skip
    answer = running.call(ep, method, path, Path(config).name)
    if isinstance(answer, running.Unreachable):
        raise NoProxy(answer.message)
    return answer


admin_option = click.option("--admin", metavar="URL", help="The admin endpoint [default: "
                            "`admin.listen` of the config, even one that does not load].")  # fmt: skip


@main.command()
@config_option
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Print the JSON the admin endpoint serves.")
def status(config: str, admin: str | None, as_json: bool) -> None:
    """Show the running proxy: config version, reload errors, providers, breakers, budgets
    (even when the file on disk is broken: it shows the rejected edit)."""
    st = _admin_call(config, admin, "GET", "/status")
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(statuspage.status_text(st))


@main.command()
@config_option
@admin_option
def reload(config: str, admin: str | None) -> None:
    """Make the running proxy reload its configuration now."""
    res = _admin_call(config, admin, "POST", "/reload")
    click.echo(res["message"])
    sys.exit(0 if res["ok"] else 2)


@main.command()
@config_option
@click.option("--profile", "-p", help="Profile to rank [default: default_profile].")
@click.option("--task", type=click.Choice(["chat", "code", "math", "creative", "extraction",
                                           "summarize"]), default="chat", show_default=True,
              help="Kind of request to rank for.")  # fmt: skip
@click.option("--complexity", type=click.Choice(ranking.CLASSES), default="medium",
              show_default=True, help="Complexity class (shifts weight, see README).")  # fmt: skip
@click.option("--api", type=click.Choice(APIS), default="chat", show_default=True,
              help="API of the request: only providers that serve it are candidates.")  # fmt: skip
@click.option("--limit", type=int, default=15, show_default=True, help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--chain", is_flag=True, help="The chain a request would try, providers "
              "interleaved, with why each target is there.")  # fmt: skip
def rank(config: str, profile: str | None, task: str, complexity: str, api: str, limit: int,
         as_json: bool, chain: bool) -> None:  # fmt: skip
    """Rank the candidates for a profile, with each metric's contribution and the filters that
    removed the others (live latency is not known here: every target gets its prior)."""
    cfg = _load(config)
    view = build_view(cfg, environ(), {})
    name = profile or cfg.settings.default_profile
    if name not in cfg.profiles:
        raise Invalid(f"unknown profile {name!r}; use one of: {', '.join(sorted(cfg.profiles))}")
    prof = cfg.profiles[name]
    feats = dataclasses.replace(classify.features({"messages": []}, requested_model=None), task=task,
                                complexity={"simple": 0.1, "medium": 0.5, "complex": 0.9}[complexity])  # fmt: skip
    req = decide.RoutingRequest(feats, "", "/v1/chat/completions", {decide.PROFILE_HEADER: name},
                                "127.0.0.1", False)  # fmt: skip

    def usable(c: Any) -> str | None:
        p = view.catalog.providers[c.provider]
        if api not in p.apis:
            return f"provider_does_not_serve_{api}"
        return None if p.keyless or p.has_env_key else "no_key"

    if chain:  # as a request would try them: `decide`, then `chains.tried_order`
        keyed = view.keyed(None, api)
        d = decide.decide(view.router, req, usable, cfg.settings.resilience.max_attempts + 4, keyed,
                          diverse=True)  # fmt: skip
        if isinstance(d, decide.NoRoute):
            raise Failed(d.message)
        shaped = balancing.most_likely(view, chains.tried_order(d.chain, d.mode, keyed), usable)
        click.echo("\n".join((*shaped.chain.lines(), *shaped.lines)))  # deployments: `balance:`
        return
    kept: list[Scored] = []
    removed: Counter[str] = Counter()
    for s in view.router.ranking(name, complexity):
        why = decide.reject_reason(s.candidate, req, None, prof.min_context, usable)
        if why:
            removed[why] += 1
        elif len(kept) < limit:
            kept.append(s)
    if as_json:
        click.echo(json.dumps({
            "profile": name, "complexity": complexity, "task": task, "api": api,
            "candidates": [{"key": s.candidate.key, "model": s.candidate.model_id,
                            "score": s.score, "parts": dict(s.parts)} for s in kept],
            "filtered": dict(removed),
        }, indent=2))  # fmt: skip
        return
    w = effective_weights(prof, complexity)
    click.echo(f"profile {name} ({complexity}, api {api}): weights quality {w.quality:.2f} latency "
               f"{w.latency:.2f} cost {w.cost:.2f} context {w.context:.2f}")  # fmt: skip
    click.echo(f"{'#':>3} {'target':<48} {'score':>6}  quality latency    cost context")
    for i, s in enumerate(kept, 1):
        parts = dict(s.parts)
        click.echo(f"{i:>3} {s.candidate.key[:48]:<48} {s.score:6.3f}  " + " ".join(
            f"{parts[m]:7.3f}" for m in ("quality", "latency", "cost", "context"))
            + (f"  free {parts['free']:.3f}" if "free" in parts else ""))  # fmt: skip
    if removed:
        click.echo("filtered out: " + ", ".join(f"{k} {v}" for k, v in removed.most_common()))
    if not kept:
        click.echo("no candidate: set a provider key (see `orchestrator check`) or declare "
                   "models in rules/models.yaml")  # fmt: skip


@main.command()
@config_option
@click.argument("request_id")
def explain(config: str, request_id: str) -> None:
    """Show how a recorded request was routed: profile and why, attempts, tokens, cost."""
    cfg = _load(config)
    reader = ledgers.open_reader(cfg)
    try:
        rows = reader.read_rows(request_id=request_id)
    finally:
        reader.close()
    if not rows:
        raise Failed(f"no request {request_id!r} in {reader.where} (ids are in the "
                     "x-orchestrator-request-id response header)")  # fmt: skip
    click.echo(reports.explain(rows[0]))


@main.command()
@config_option
@click.option("--since", default="24h", show_default=True,
              help="30m, 24h, 7d, 2w or a UTC date like 2026-11-01.")  # fmt: skip
@click.option("--by", type=click.Choice(reports.GROUP_BY), default="model", show_default=True,
              help="Group rows by.")  # fmt: skip
@click.option("--json", "fmt", flag_value="json", help="JSON output.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV output.")
def costs(config: str, since: str, by: str, fmt: str | None) -> None:
    """Requests, tokens, spend, savings, fallback rate and latency percentiles."""
    cfg = _load(config)
    reader = ledgers.open_reader(cfg)
    try:
        rows = reports.load(reader, reports.parse_since(since, time.time()))
    except ValueError as e:
        raise Invalid(str(e)) from None
    finally:
        reader.close()
    groups, total = reports.cost_report(rows, by), reports.totals(rows)
    if fmt == "json":
        click.echo(json.dumps(reports.as_json(groups, total), indent=2))
    elif fmt == "csv":
        click.echo(reports.render_csv(groups, total), nl=False)
    else:
        click.echo(reports.render_table(groups, total, by=by))


@main.command()
@config_option
@click.option("--older-than", "days", type=int,
              help="Days to keep [default: retention_days from the config]; 0 deletes every row.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Only count the rows that would be deleted.")
@click.option("--yes", is_flag=True, help="Delete every row (--older-than 0) without asking.")
def prune(config: str, days: int | None, dry_run: bool, yes: bool) -> None:
    """Delete ledger rows older than the retention period (the proxy also does it daily)."""
    cfg = _load(config)
    keep = days if days is not None else cfg.settings.retention_days
    if keep < 0:
        raise Invalid(f"--older-than {keep}: give the days to keep, 0 or more (0 deletes "
                      "every row)")  # fmt: skip
    if not ledgers.is_postgres(cfg.settings.data.ledger) and not cfg.ledger_path.exists():
        click.echo(f"nothing to prune: {cfg.ledger_path} does not exist yet")
        return
    reader = ledgers.open_reader(cfg)
    try:
        before = time.time() - keep * 86400
        if dry_run or (keep == 0 and not yes):
            n = reader.count_before(before)
            if dry_run:
                click.echo(f"would prune {n} rows older than {keep} days from {reader.where} "
                           "(dry run: nothing deleted)")  # fmt: skip
                return
            if not _interactive():
                raise Invalid(f"--older-than 0 deletes all {n} rows of {reader.where}: pass --yes "
                              "to confirm (there is no terminal to ask on)")  # fmt: skip
            if not click.confirm(f"delete all {n} rows of {reader.where}?", err=True):
                raise Failed("nothing deleted")
        n = reader.prune(before)
    finally:
        reader.close()
    click.echo(f"pruned {n} rows older than {keep} days from {reader.where}")


def _interactive() -> bool:
    """Whether a person can answer a question: stdin is a terminal and this is not CI."""
    return sys.stdin.isatty() and not os.environ.get("CI")


main.add_command(configcheck.check)
main.add_command(host_commands.ca_command)
main.add_command(host_commands.capture)
main.add_command(host_commands.trust)
main.add_command(host_commands.doctor)
main.add_command(eval_command.eval_command)
main.add_command(resolve_command)


if __name__ == "__main__":  # pragma: no cover
    main()
