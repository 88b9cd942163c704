"""The `Config` value: everything the router reads from YAML, built whole by
`addon.config.loader` and swapped in one assignment. Pure: no file is read here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from addon.config import rules
from addon.config.schema import Settings


@dataclass(frozen=True)
class Config:
    """Everything the router reads from YAML. Built whole, swapped in one assignment.

    `files` are the YAML files read (the config first); `version` is a digest of their
    paths and contents (12 hex digits), so it changes whenever one of them does.
    """

    path: Path
    base_dir: Path
    rules_dir: Path
    settings: Settings
    profiles: dict[str, rules.Profile]
    policies: tuple[rules.Policy, ...]
    routes: dict[str, tuple[rules.RouteTarget, ...]]
    models: tuple[rules.DeclaredModel, ...]
    files: tuple[Path, ...]
    version: str

    def resolve(self, p: str) -> Path:
        """`p` with `~` expanded, relative to the config file's folder unless absolute."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def benchmarks_path(self) -> Path:
        """The benchmark DB file (`data.benchmarks`, resolved)."""
        return self.resolve(self.settings.data.benchmarks)

    @property
    def ledger_path(self) -> Path:
        """The SQLite ledger file (`data.ledger`, resolved); unused when that is a
        PostgreSQL URL."""
        return self.resolve(self.settings.data.ledger)
