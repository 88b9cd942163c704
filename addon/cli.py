"""`orchestrator` — the console script. Thin: parse options, call the library, print."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from addon import configload, dispatch
from addon.errors import ConfigError

DEFAULT_CONFIG = "orchestrator.yaml"
ENTRY = Path(__file__).resolve().parent / "entry.py"


def _load(config: str) -> configload.Config:
    try:
        return configload.load(config)
    except ConfigError as e:
        click.echo(f"error: invalid configuration\n{e}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    """Run the proxy (mitmdump with the orchestrator addon)."""
    cfg = _load(config)
    s = cfg.settings
    conf = Path(confdir) if confdir else cfg.base_dir / "data" / "mitmproxy"
    conf.mkdir(parents=True, exist_ok=True)
    args = [
        "--mode",
        s.mode,
        "--listen-host",
        host or s.listen_host,
        "--listen-port",
        str(port if port is not None else s.listen_port),
        "-s",
        str(ENTRY),
        "--set",
        f"orchestrator_config={cfg.path}",
        "--set",
        f"confdir={conf.resolve()}",
        "--set",
        "connection_strategy=lazy",
        "--set",
        "flow_detail=0",
    ]
    for opt in extra:
        args += ["--set", opt]
    from mitmproxy.tools.main import mitmdump

    mitmdump(args)


@main.command()
@config_option
def check(config: str) -> None:
    """Validate the configuration and rules; print what the router would use."""
    cfg = _load(config)
    env = dispatch.environ()
    view = dispatch.build_view(cfg, env, {})
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
    click.echo(
        f"catalog: {len(cat.candidates)} offerings from {cat.source} "
        f"+ {len(cfg.models)} declared in rules/models.yaml"
    )
    for warning in cat.warnings:
        click.echo(f"warning: {warning}")


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
    from addon import refresh as refresh_mod

    sys.exit(refresh_mod.main(list(ctx.args)))


if __name__ == "__main__":  # pragma: no cover
    main()
