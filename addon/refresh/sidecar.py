"""Refresh the benchmark DB: ``orchestrator refresh``, ``python -m addon.refresh`` and
``scripts/refresh_benchmarks.py`` all run ``main``.

* default: fetch the sources of ``rules/sources.yaml`` (OpenRouter, LMArena, LiteLLM,
  Hugging Face, local providers' ``/models``) over https from allowlisted hosts;
* ``--from DIR``: read saved snapshots instead (no network; ``make bundle`` uses this);
* ``--every D``: keep running; refresh each source when ``max(its interval, D)`` has
  passed (with jitter); SIGINT/SIGTERM stop it cleanly.

Every run ends with the per-source summary table. The DB is rebuilt in a temporary file
and swapped in with ``os.replace``; a source that fails keeps its previous rows.
"""

from __future__ import annotations

import argparse
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import TextIO

from addon.config import loader
from addon.config.schema import Provider
from addon.errors import ConfigError, UsageError
from addon.refresh import ingest
from addon.refresh.collect import Interrupted, collect, local_hosts
from addon.refresh.fetch import Fetcher
from addon.refresh.ingest import Progress
from addon.refresh.resolve import AliasRules, AliasRulesError, load_alias_rules
from addon.refresh.schedule import Schedule, epoch
from addon.refresh.snapshots import KINDS, load_stored, read_folder, save
from addon.refresh.sources.schema import KINDS as NETWORK_KINDS
from addon.refresh.sources.schema import SourcesFile, format_duration, load_sources, parse_duration
from addon.refresh.summary import FAILED, RefreshSummary
from addon.refresh.urlguard import Resolver, system_resolver
from addon.store import benchmarks

DEFAULT_CONFIG = "orchestrator.yaml"
EXIT_OK, EXIT_SOURCE_FAILED, EXIT_USAGE, EXIT_NOT_WRITTEN = 0, 1, 2, 3
EXIT_CODES = f"""exit codes:
  {EXIT_OK}    the DB was written; no source failed
  {EXIT_SOURCE_FAILED}    the DB was written, but a source failed (its previous rows were kept)
  {EXIT_USAGE}    bad option or invalid orchestrator.yaml / sources.yaml / aliases.yaml
  {EXIT_NOT_WRITTEN}    nothing written (no price source usable, or the DB could not be written);
       the previous DB is unchanged
  130  interrupted (SIGINT/SIGTERM) during a single run: the DB is the previous one
       or, if the swap had already happened, the complete new one
  --every runs until SIGINT/SIGTERM and then exits {EXIT_OK}."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """What tests inject. The product runs with the defaults: nothing sets allow_loopback."""

    allow_loopback: bool = False  # http and 127.0.0.1 for public sources (tests only)
    resolver: Resolver = system_resolver
    clock: Callable[[], float] = time.time
    wait: Callable[[float], bool] | None = None  # True = stop; None: wait for a signal
    rng: random.Random | None = None
    progress: Progress | None = None  # None: to stderr when it is a terminal


@dataclass(frozen=True, slots=True)
class Job:
    """One invocation's settings, from the flags and orchestrator.yaml."""

    out: Path
    aliases: Path | None
    sources: SourcesFile
    providers: Mapping[str, Provider]
    from_dir: Path | None = None
    only: frozenset[str] | None = None
    every: float | None = None
    report: bool = False
    save: Path | None = None


def _prog() -> str:
    name = Path(sys.argv[0]).name
    return {"orchestrator": "orchestrator refresh",
            "refresh_benchmarks.py": "scripts/refresh_benchmarks.py"}.get(name, "python -m addon.refresh")  # fmt: skip


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or _prog(),
        description="Rebuild the benchmark DB from the public sources (rules/sources.yaml) or\n"
        "from saved snapshots (--from), atomically; a failing source keeps its previous rows.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"orchestrator.yaml: providers, rules dir, data.benchmarks [default: {DEFAULT_CONFIG} if present]")  # fmt: skip
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="benchmark DB to write [default: data.benchmarks from the config]")  # fmt: skip
    p.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="read saved snapshots (openrouter_models_<date>.json, ...) instead of the network")  # fmt: skip
    p.add_argument("--aliases", type=Path, metavar="FILE",
                   help="manual name-matching rules [default: <rules>/aliases.yaml]")  # fmt: skip
    p.add_argument("--sources", type=Path, metavar="FILE",
                   help="source list [default: <rules>/sources.yaml, else built-in defaults]")  # fmt: skip
    p.add_argument("--only", action="append", metavar="KIND",
                   help=f"refresh only these kinds ({', '.join(KINDS)}); comma-separated or repeated; the others keep their data")  # fmt: skip
    p.add_argument("--every", metavar="DURATION",
                   help="keep running; refresh each source every max(its interval, DURATION), e.g. 1h")  # fmt: skip
    p.add_argument("--report", action="store_true",
                   help="also print every match and every unmatched name with its score")  # fmt: skip
    p.add_argument("--save", type=Path, metavar="DIR",
                   help="also write each fetched body to DIR (readable later with --from)")  # fmt: skip
    return p


def make_job(args: argparse.Namespace) -> Job:
    """Resolve flags against orchestrator.yaml; UsageError/ConfigError/AliasRulesError."""
    cfg = None
    cfg_path = Path(args.config or DEFAULT_CONFIG)
    if args.config is not None or cfg_path.exists():
        cfg = loader.load(cfg_path)
    out = args.out or (cfg.benchmarks_path if cfg else None)
    if out is None:
        raise UsageError(f"no {DEFAULT_CONFIG} here — pass --out PATH or -c orchestrator.yaml")
    rules_dir = cfg.rules_dir if cfg else Path("rules")
    aliases = args.aliases or (rules_dir / "aliases.yaml")
    if args.aliases is None and not aliases.exists():
        aliases = None
    if aliases is not None:
        load_alias_rules(aliases)  # report a broken file now, not after fetching
    sources = load_sources(args.sources or rules_dir / "sources.yaml", required=bool(args.sources))
    if args.from_dir is not None and not args.from_dir.is_dir():
        raise UsageError(f"--from {args.from_dir}: not a directory — pass a folder of snapshots")
    every = None
    if args.every is not None:
        if args.from_dir is not None:
            raise UsageError("--every refreshes from the network; drop --from (or --every)")
        try:
            every = parse_duration(args.every)
        except ValueError as exc:
            raise UsageError(f"--every: {exc}") from None
    only = None
    if args.only:
        only = frozenset(k.strip() for v in args.only for k in v.split(",") if k.strip())
        unknown = sorted(only - set(KINDS))
        if unknown:
            raise UsageError(f"--only {','.join(unknown)}: unknown kind — use {', '.join(KINDS)}")
    providers = cfg.settings.providers if cfg else {}
    return Job(Path(out), aliases, sources, providers, args.from_dir, only, every, args.report,
               args.save)  # fmt: skip


def refresh_once(
    job: Job,
    kinds: Collection[str] | None,
    *,
    fetcher: Fetcher | None,
    runtime: Runtime,
    progress: Progress,
    stopping: Callable[[], bool] = lambda: False,
) -> RefreshSummary:
    """One rebuild: ``kinds`` fresh (None: all), the others from the previous DB."""
    previous, problem = load_stored(job.out)
    rules = load_alias_rules(job.aliases) if job.aliases else AliasRules()
    wanted = frozenset(kinds if kinds is not None else KINDS) & (job.only or frozenset(KINDS))
    drop: frozenset[str] = frozenset()
    if job.from_dir is not None:
        fresh = read_folder(job.from_dir, wanted)
    else:
        assert fetcher is not None, "network mode needs a Fetcher"
        fresh = collect(
            job.sources, job.providers, fetcher, wanted, previous,
            now=lambda: datetime.fromtimestamp(runtime.clock(), UTC),
            progress=progress, stopping=stopping,
        )  # fmt: skip
        drop = frozenset(NETWORK_KINDS) - set(job.sources.enabled())
    if job.save is not None:
        save(fresh, job.save)
    summary = ingest.build(fresh, job.out, rules, previous=previous, drop=drop, progress=progress)
    return replace(summary, notes=summary.notes + ((problem,) if problem else ()))


def _print(summary: RefreshSummary, job: Job, out: TextIO) -> None:
    if job.report:
        print(summary.format_report(), file=out)
        print(file=out)
    print(summary.format_table(), file=out, flush=True)


_ERRORS = (ingest.RefreshError, AliasRulesError, benchmarks.BenchmarkDBError, OSError,
           sqlite3.Error)  # fmt: skip


def run_once(job: Job, fetcher: Fetcher | None, runtime: Runtime, progress: Progress) -> int:
    try:
        summary = refresh_once(job, None, fetcher=fetcher, runtime=runtime, progress=progress)
    except _ERRORS as exc:
        print(f"refresh failed: {exc}", file=sys.stderr)
        return EXIT_NOT_WRITTEN
    _print(summary, job, sys.stdout)
    return EXIT_OK if summary.ok else EXIT_SOURCE_FAILED


def run_every(
    job: Job, fetcher: Fetcher, runtime: Runtime, progress: Progress, stop: threading.Event
) -> int:
    """Refresh each source when it is due until ``wait`` reports a stop; returns 0."""
    assert job.every is not None
    wait = runtime.wait or stop.wait
    clock = runtime.clock
    previous, _ = load_stored(job.out)
    intervals = {kind: s.interval_s for kind, s in job.sources.enabled().items()
                 if job.only is None or kind in job.only}  # fmt: skip
    if not intervals:
        print("refresh: no enabled source to refresh — check rules/sources.yaml and --only",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    last = {kind: max((e for s in previous.get(kind, ()) if (e := epoch(s.fetched_at))),
                      default=None) for kind in intervals}  # fmt: skip
    schedule = Schedule(intervals, every=job.every, jitter=job.sources.jitter,
                        retry_failed_after=job.sources.retry_failed_after,
                        rng=runtime.rng or random.Random(), last_fetched=last, now=clock())  # fmt: skip
    plan = ", ".join(f"{k} every {format_duration(p)}" for k, p in sorted(schedule.periods.items()))
    print(f"refresh: running; {plan} (±{job.sources.jitter:.0%})", file=sys.stderr, flush=True)
    while True:
        due = schedule.due(clock())
        if due:
            stamp = datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            print(f"[{stamp}] refreshing {', '.join(sorted(due))}", flush=True)
            try:
                summary = refresh_once(job, due, fetcher=fetcher, runtime=runtime,
                                       progress=progress, stopping=stop.is_set)  # fmt: skip
            except Interrupted:
                return EXIT_OK
            except _ERRORS as exc:
                print(f"refresh failed: {exc}", file=sys.stderr, flush=True)
                failed = due
            else:
                _print(summary, job, sys.stdout)
                failed = frozenset(s.source for s in summary.sources if s.status == FAILED)
            for kind in due:
                schedule.done(kind, clock(), ok=kind not in failed)
        if stop.is_set() or wait(max(0.0, schedule.next_wake() - clock())):
            return EXIT_OK


class _Signals:
    """SIGINT/SIGTERM: in a loop the first one asks it to stop; otherwise (or a second
    time) abort now with KeyboardInterrupt, which removes the temporary file."""

    def __init__(self, stop: threading.Event, loop: bool) -> None:
        self.stop = stop
        self.loop = loop
        self.saved: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.loop and not self.stop.is_set():
            self.stop.set()
            print("refresh: stopping after the current step (signal again to abort)",
                  file=sys.stderr, flush=True)  # fmt: skip
            return
        raise KeyboardInterrupt

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def _stderr(message: str) -> None:
    print(f"refresh: {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    """Non-interactive runs print only the summary."""


def main(argv: list[str] | None = None, *, runtime: Runtime | None = None) -> int:
    runtime = runtime or Runtime()
    args = build_parser().parse_args(argv)
    try:
        job = make_job(args)
    except ConfigError as exc:
        print(f"error: invalid configuration\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, AliasRulesError) as exc:
        print(f"refresh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = runtime.progress or (_stderr if sys.stderr.isatty() else _quiet)
    stop = threading.Event()
    with _Signals(stop, loop=job.every is not None):
        try:
            if job.from_dir is not None:
                return run_once(job, None, runtime, progress)
            with Fetcher(
                job.sources.fetch, job.sources.allowed_hosts,
                local_hosts=local_hosts(job.providers), allow_loopback=runtime.allow_loopback,
                resolver=runtime.resolver, sleep=runtime.wait or stop.wait, rng=runtime.rng,
            ) as fetcher:  # fmt: skip
                if job.every is not None:
                    return run_every(job, fetcher, runtime, progress, stop)
                return run_once(job, fetcher, runtime, progress)
        except KeyboardInterrupt:
            print("refresh: interrupted; the DB is the previous one or the complete new one, "
                  "never a mix", file=sys.stderr)  # fmt: skip
            return 130
