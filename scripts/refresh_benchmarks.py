"""Build the benchmark DB from saved snapshots: a thin wrapper over ``addon.refresh``.

python scripts/refresh_benchmarks.py --from DIR --out PATH [--aliases FILE] [--report]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from addon.refresh import main

    raise SystemExit(main(sys.argv[1:]))
