"""The file mitmproxy loads: `mitmdump -s addon/entry.py --set orchestrator_config=PATH`.

It registers the router's two addons in hook order: client authentication, then routing.
"""

import sys
from pathlib import Path

try:
    from addon.proxy.process import router_addons
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from addon.proxy.process import router_addons

addons = router_addons()
