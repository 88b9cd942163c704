"""`orchestrator check`: validate the configuration and rules, print what the router would
use, and refuse a provider whose host name resolves to an internal address the way the
connect-time guard would (`addon.config.resolving`). `addon.cli` registers it."""

from __future__ import annotations

from collections import Counter

import click

from addon.config import loader, resolving
from addon.config.schema import APIS
from addon.errors import OrchestratorError
from addon.host.commands import config_option
from addon.proxy.view import build_view, environ
from addon.refresh.sources.schema import load_sources


@click.command()
@config_option
def check(config: str) -> None:
    """Validate the configuration and rules; print what the router would use."""
    cfg = loader.load(config)  # a ConfigError exits 2 through the command group
    sources_file = cfg.rules_dir / "sources.yaml"
    sources = load_sources(sources_file)
    view = build_view(cfg, environ(), {})
    cat = view.catalog
    s = cfg.settings
    click.echo(f"config {cfg.path} (version {cfg.version}): OK")
    click.echo(f"  listen {s.listen}, mode {s.mode}, default profile {s.default_profile}")
    click.echo(f"  intercept: {', '.join(s.intercept)}")
    per_provider = Counter(c.provider for c in cat.candidates)
    click.echo("providers:")
    for name, info in cat.providers.items():
        key = (
            "not needed"
            if info.keyless
            else f"${info.api_key_env} set"
            if info.has_env_key
            else f"${info.api_key_env} NOT set (only the client's own key, for {info.host})"
        )
        click.echo(f"  {name:<12} {info.base_url:<40} key: {key}; {per_provider[name]} models")
        click.echo(f"  {'':<12} serves {', '.join(a for a in APIS if a in info.apis)}")
    click.echo("profiles:")
    for name, prof in cfg.profiles.items():
        w = prof.weights
        floor = f", min_context {prof.min_context}" if prof.min_context else ""
        click.echo(
            f"  {name:<12} quality {w.quality} latency {w.latency} cost {w.cost} "
            f"context {w.context}{floor}"
        )
    click.echo(f"policies: {len(cfg.policies)}")
    for p in cfg.policies:
        click.echo(f"  {p.name}: -> {p.profile or ('pin' if p.pin else 'constraints only')}")
    click.echo(f"routes: {len(cfg.routes)}")
    for model, chain in cfg.routes.items():
        resolved = sum(
            1
            for t in chain
            for c in cat.lookup(t.model)
            if t.provider is None or c.provider == t.provider
        )
        click.echo(f"  {model}: {len(chain)} targets, {resolved} offerings in the catalog")
    enabled = [src.kind for src in sources.sources if src.enabled]
    click.echo(f"refresh sources ({sources_file.name}): {', '.join(enabled) or 'none'}")
    click.echo(
        f"catalog: {len(cat.candidates)} offerings from {cat.source} "
        f"+ {len(cfg.models)} declared in rules/models.yaml"
    )
    for warning in cat.warnings:
        click.echo(f"warning: {warning}")
    problems = resolving.internal_names(s.providers)
    for line in problems:
        click.echo(f"error: {line}", err=True)
    if problems:
        raise OrchestratorError(f"{len(problems)} provider(s) resolve to internal addresses")
