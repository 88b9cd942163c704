"""The file mitmproxy loads: `mitmdump -s addon/entry.py --set orchestrator_config=PATH`."""

import sys
from pathlib import Path

try:
    from addon.proxy.adapter import Orchestrator
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from addon.proxy.adapter import Orchestrator

addons = [Orchestrator()]
