"""The benchmark refresh sidecar (`orchestrator refresh`, `python -m addon.refresh`).

- `sidecar`      the command: options, the loop, exit codes
- `fetch`        HTTP fetching with retries and a size cap; `urlguard` refuses internal addresses
- `collect`      fetch every source into snapshots; `snapshots` saves and reads them
- `sources/`     one parser per source (OpenRouter, LMArena, LiteLLM, Hugging Face, local)
- `ingest`       build the new benchmark DB atomically from snapshots
- `canonical`, `merge`  assemble canonical models from every source's rows (`merge`: the
  per-source steps)
- `model_names`, `model_orgs`, `resolve`  name parsing and entity resolution
- `summary`      the refresh report; `schedule` the `--every` clock

May import `addon.store.benchmarks`, `addon.config`, `addon.errors`; never `addon.proxy`.
"""
