"""Fetch the sources of ``rules/sources.yaml`` into snapshots (network mode of refresh).

One ``Collected`` per kind asked for. A failure is recorded with its key (the kind, one
Hugging Face repo, or one local provider) so ``addon.refresh.ingest`` reuses exactly the previous
data that could not be refreshed. Hugging Face repos are the configured ``repos`` plus,
with ``from_openrouter``, every ``hugging_face_id`` OpenRouter lists (from this run's
OpenRouter snapshot, else the previous one), capped at ``max_repos``. Local providers are
every provider with ``local: true`` in orchestrator.yaml: ``GET {base_url}/models``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import urlsplit

from addon.config.schema import Provider
from addon.errors import Interrupted
from addon.refresh.fetch import Fetcher, FetchError
from addon.refresh.snapshots import Collected, Failure, Snapshot, dated_name, hf_name, local_name
from addon.refresh.sources import SourceFormatError
from addon.refresh.sources import openrouter as openrouter_source
from addon.refresh.sources.schema import REPO_ID, Source, SourcesFile

Progress = Callable[[str], None]


def collect(
    sources: SourcesFile,
    providers: Mapping[str, Provider],
    fetcher: Fetcher,
    kinds: Collection[str],
    previous: Mapping[str, tuple[Snapshot, ...]],
    *,
    now: Callable[[], datetime],
    progress: Progress,
    stopping: Callable[[], bool] = lambda: False,
) -> dict[str, Collected]:
    """Fetch the enabled sources among ``kinds`` (OpenRouter first: HF ids come from it)."""
    enabled = sources.enabled()
    got: dict[str, Collected] = {}
    for kind in ("openrouter", "lmarena", "litellm", "huggingface", "local"):
        if kind not in kinds or kind not in enabled:
            continue
        if stopping():
            raise Interrupted(f"stopped before fetching {kind}")
        source = enabled[kind]
        if kind == "huggingface":
            reference = got["openrouter"].snapshots if "openrouter" in got else ()
            repos = hf_repos(source, reference or previous.get("openrouter", ()))
            got[kind] = _fetch_many(
                kind,
                [(hf_name(r), (source.url or "").replace("{repo}", r)) for r in repos],
                fetcher, now, progress, stopping, sources.fetch.concurrency, local=False,
            )  # fmt: skip
        elif kind == "local":
            targets = [(local_name(name), f"{p.base_url}/models")
                       for name, p in sorted(providers.items()) if p.local]  # fmt: skip
            got[kind] = _fetch_many(kind, targets, fetcher, now, progress, stopping,
                                    sources.fetch.concurrency, local=True)  # fmt: skip
        else:
            got[kind] = _fetch_single(kind, source.url or "", fetcher, now, progress)
    return got


def local_hosts(providers: Mapping[str, Provider]) -> frozenset[str]:
    """Hosts of providers marked ``local: true`` (they may be loopback or private)."""
    return frozenset((urlsplit(p.base_url).hostname or "").lower()
                     for p in providers.values() if p.local)  # fmt: skip


def hf_repos(source: Source, openrouter_snapshots: tuple[Snapshot, ...]) -> list[str]:
    """Configured repos first, then OpenRouter's ``hugging_face_id`` values; no duplicates."""
    repos = list(source.repos)
    if source.from_openrouter:
        for snap in openrouter_snapshots:
            try:
                parsed = openrouter_source.parse(snap.body, snap.name)
            except SourceFormatError:
                continue
            repos += sorted(r.hugging_face_id for r in parsed.records
                            if r.hugging_face_id and REPO_ID.match(r.hugging_face_id))  # fmt: skip
    unique: dict[str, str] = {}
    for repo in repos:
        unique.setdefault(repo.lower(), repo)
    return list(unique.values())[: source.max_repos]


def _stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fetch_single(
    kind: str, url: str, fetcher: Fetcher, now: Callable[[], datetime], progress: Progress
) -> Collected:
    progress(f"{kind}: GET {url}")
    try:
        got = fetcher.get(url)
    except FetchError as exc:
        progress(f"{kind}: failed")
        return Collected(kind, failures=(Failure(kind, str(exc)),))
    when = now()
    suffix = ".csv" if urlsplit(got.url).path.lower().endswith(".csv") else ".json"
    name = dated_name(kind, when.astimezone(UTC).date().isoformat(), suffix)
    progress(f"{kind}: {len(got.body) / 1024:.0f} KiB in {got.seconds:.1f} s")
    return Collected(kind, (Snapshot(kind, name, got.body, _stamp(when), url),))


def _fetch_many(
    kind: str,
    targets: list[tuple[str, str]],
    fetcher: Fetcher,
    now: Callable[[], datetime],
    progress: Progress,
    stopping: Callable[[], bool],
    workers: int,
    *,
    local: bool,
) -> Collected:
    """Fetch (name, url) pairs a few at a time; each failure is keyed by its name."""
    if not targets:
        return Collected(kind)
    progress(f"{kind}: fetching {len(targets)} URLs")

    def one(target: tuple[str, str]) -> Snapshot | Failure:
        name, url = target
        if stopping():
            return Failure(name, f"{url}: not fetched, the sidecar is stopping")
        try:
            got = fetcher.get(url, local=local)
        except FetchError as exc:
            return Failure(name, str(exc))
        return Snapshot(kind, name, got.body, _stamp(now()), url)

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets))))
    try:
        results = list(pool.map(one, targets))
    finally:  # interrupted: drop queued fetches; closing the Fetcher ends those in flight
        pool.shutdown(wait=False, cancel_futures=True)
    if stopping():
        raise Interrupted(f"stopped while fetching {kind}")
    snaps = tuple(r for r in results if isinstance(r, Snapshot))
    failures = tuple(r for r in results if isinstance(r, Failure))
    progress(f"{kind}: {len(snaps)} fetched, {len(failures)} failed")
    return Collected(kind, snaps, failures)
