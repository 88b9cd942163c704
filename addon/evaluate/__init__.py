"""Offline routing evaluation (`orchestrator eval`): replay labelled prompts through the real
router and measure quality against cost (README "Routing quality").

- `workload`  the JSONL format: items, their models' scores, normalisation (reads files)
- `metrics`   PURE: the curve sweep, PGR, APGR, CPT, the cost at a quality target
- `replay`    the router restricted to a workload's models, and each item's decisions
- `run`       the methods (keyword, learned, random, oracle) and baselines per benchmark
- `report`    the text table and the JSON document
- `plot`      the PNG of the curves (matplotlib, optional)
- `command`   the click command

May import `addon.config`, `addon.routing`, `addon.store`, `addon.wire`, `addon.errors`.
"""
