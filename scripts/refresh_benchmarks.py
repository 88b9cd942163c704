"""Refresh the benchmark DB: a thin wrapper over ``addon.refresh.main`` (the same code as
``orchestrator refresh``; ``--help`` lists every option and the exit codes).

python scripts/refresh_benchmarks.py [-c orchestrator.yaml] [--from DIR] [--out PATH]
    [--aliases FILE] [--sources FILE] [--only KIND] [--every DURATION] [--report] [--save DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from addon.refresh.sidecar import main

    raise SystemExit(main(sys.argv[1:]))
