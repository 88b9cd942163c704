"""The learned difficulty scorer's artifact: the JSON file `scripts/train_router.py` writes
(`addon/bundled/router_scorer.json` ships with the package), read into the pure
`addon.routing.difficulty.DifficultyModel` at config load.

A file that cannot be read or is not a scorer is an `OrchestratorError` naming the file and
the remedy; the proxy's view then routes with the keyword heuristic and logs why
(`addon.proxy.view.build_view`), it never stops for it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from addon.config.loaded import Config
from addon.errors import OrchestratorError
from addon.routing.difficulty import DifficultyModel, from_dict

BUNDLED_SCORER = Path(__file__).resolve().parents[1] / "bundled" / "router_scorer.json"


def load(path: Path | str = BUNDLED_SCORER) -> DifficultyModel:
    """The scorer in the JSON file at `path` (memoized per path and modification time: a
    config reload does not parse the same file again)."""
    p = Path(path)
    try:
        stamp = p.stat().st_mtime_ns
    except OSError as e:
        raise OrchestratorError(
            f"difficulty scorer {p}: cannot read it ({e.strerror or e}); "
            "train one with `scripts/train_router.py` or set `complexity: keyword`"
        ) from None
    return _load(str(p), stamp)


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: int) -> DifficultyModel:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OrchestratorError(
            f"difficulty scorer {path}: not readable JSON ({e}); "
            "rebuild it with `scripts/train_router.py`"
        ) from None
    try:
        return from_dict(data)
    except ValueError as e:
        raise OrchestratorError(
            f"difficulty scorer {path}: {e}; rebuild it with `scripts/train_router.py`"
        ) from None


def for_config(cfg: Config) -> DifficultyModel | None:
    """The scorer `cfg` routes with: the bundled one under `complexity: learned` (the
    default), None under `complexity: keyword`."""
    if getattr(cfg.settings, "complexity", "learned") == "keyword":
        return None
    return load(BUNDLED_SCORER)
