"""Every exception the product raises, in one tree. Each says what happened, where, and
what to do next; none carries a key or a password (URLs pass through `config.redact`).

    OrchestratorError                 base: an error reported to a person as text
    ├── ConfigError                   a YAML file is invalid (one ConfigIssue per problem).
    │                                 Raised by config.loader; the CLI prints it and exits 2,
    │                                 startup exits with it, a reload keeps the last good config.
    ├── CatalogError                  the model catalog cannot be built. Raised by routing.catalog.
    ├── BenchmarkDBError              the benchmark DB is missing, corrupt or of an unknown
    │                                 schema. Raised by store.benchmarks; the runtime keeps the
    │                                 catalog it has, the CLI prints it.
    ├── LedgerError                   the ledger cannot be read or written. Raised by the store
    │                                 readers; the CLI and the admin endpoint report it.
    ├── StateUnavailable              the shared state store (Redis) cannot answer. Raised by
    │                                 state; the budget gate answers 503 budget_unavailable.
    ├── WireError (ValueError)        a request body the router cannot read (not JSON, not an
    │                                 object, too deep). Raised by wire.request; dispatch passes
    │                                 the request through untouched and records it `unrouted` —
    │                                 but a JSON body holding an integer over 4,300 digits
    │                                 gets 400 `invalid_number` (proxy.screens.unreadable).
    │   └── BodyEncodingError         its Content-Encoding cannot be undone (an unknown coding,
    │                                 corrupt or cut data) or undoes to more than
    │                                 `max_request_bytes`. Raised by wire.bodycoding;
    │                                 proxy.screens answers 400 (or 413 for `too_large`).
    ├── RefreshError                  the refresh sidecar could not build a usable DB; the
    │   │                             previous one is untouched. Raised by refresh.ingest; the
    │   │                             sidecar prints it and exits 1 (nothing written).
    │   ├── FetchError                one URL could not be fetched (refresh.fetch); collect
    │   │                             records it as that source's failure and goes on.
    │   ├── UnsafeURLError            a URL or address the sidecar will not fetch (refresh.urlguard).
    │   ├── SourceFormatError (ValueError)  a snapshot file is unreadable as a whole (sources/).
    │   └── AliasRulesError (ValueError)    rules/aliases.yaml is unreadable or invalid.
    ├── UsageError                    a bad combination of sidecar options (exit 2).
    └── Interrupted                   the sidecar was asked to stop while fetching: nothing is
                                      written, the command exits cleanly.

Upstream failures are not exceptions: `proxy.upstream` maps aiohttp errors and statuses to
`routing.fallback.Outcome` values at the boundary, and fallback decisions look only at those.
The CLI turns an OrchestratorError into click's `ClickException` (message and exit code).
Pure: the standard library only, so every layer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REBUILD = "rebuild it with `orchestrator refresh --from DIR`"


class OrchestratorError(Exception):
    """Base class for errors that are reported to the user as text."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one file, rendered as ``file:line:col key.path: message — hint``."""

    file: str
    line: int
    col: int
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        key = f" {self.path}:" if self.path else ""
        hint = f" — {self.hint}" if self.hint else ""
        return f"{where}{key} {self.message}{hint}"


class ConfigError(OrchestratorError):
    """One or more configuration problems; ``str()`` gives one line per issue."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class CatalogError(OrchestratorError):
    """The candidate catalog could not be built."""


class BenchmarkDBError(OrchestratorError):
    """The benchmark DB at ``path`` cannot be used; ``str()`` says why and what to do."""

    def __init__(self, path: Path | str, problem: str, remedy: str = REBUILD) -> None:
        super().__init__(f"benchmark DB {path}: {problem} — {remedy}")
        self.path = Path(path)
        self.problem = problem
        self.remedy = remedy


class LedgerError(OrchestratorError):
    """The ledger cannot be read or written (missing, unreachable, not a ledger)."""


class StateUnavailable(OrchestratorError):
    """The shared state store cannot answer (a budget cannot be checked)."""


class WireError(OrchestratorError, ValueError):
    """The request body is not something we can route (not JSON, not an object...)."""


class BodyEncodingError(WireError):
    """A request body's Content-Encoding cannot be undone, or undoes to more than the
    size limit (`too_large`); ``str()`` names the coding and the problem."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


class RefreshError(OrchestratorError):
    """No usable DB could be built; the previous DB (if any) is untouched."""


class FetchError(RefreshError):
    """One URL could not be fetched; ``str()`` is ``url: problem — remedy``."""

    def __init__(self, url: str, problem: str, remedy: str) -> None:
        super().__init__(f"{url}: {problem} — {remedy}")
        self.url = url
        self.problem = problem
        self.remedy = remedy


class UnsafeURLError(RefreshError):
    """A URL or address the sidecar will not fetch: ``problem`` names it, ``remedy`` says
    what to do; ``str()`` is ``problem — remedy``."""

    def __init__(self, problem: str, remedy: str) -> None:
        super().__init__(f"{problem} — {remedy}")
        self.problem = problem
        self.remedy = remedy


class SourceFormatError(RefreshError, ValueError):
    """A snapshot file is unreadable as a whole: the message names file, problem, remedy."""

    def __init__(self, name: str, problem: str, remedy: str) -> None:
        super().__init__(f"{name}: {problem} — {remedy}")
        self.name = name
        self.problem = problem
        self.remedy = remedy


class AliasRulesError(RefreshError, ValueError):
    """rules/aliases.yaml is unreadable or invalid; the message names file, key and fix."""


class UsageError(OrchestratorError):
    """A bad combination of options; ``str()`` says what to pass instead."""


class Interrupted(OrchestratorError):
    """The sidecar was asked to stop while fetching; nothing is written."""
