"""Exceptions users can see.

    OrchestratorError
    ├── ConfigError          a YAML file is invalid; carries one ConfigIssue per problem
    └── CatalogError         the model catalog cannot be built (no candidates at all, ...)

`addon.benchmarks.BenchmarkDBError` (a corrupt or missing benchmark DB) lives with the
schema it guards. Upstream failures are not exceptions: `addon.upstream` turns them into
`addon.fallback.Outcome` values.
"""

from __future__ import annotations

from dataclasses import dataclass


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
