"""Configuration: `orchestrator.yaml` and `rules/`.

- `schema`  the pydantic models of `orchestrator.yaml` (pure: pydantic and the standard library)
- `rules`   the pydantic models of `rules/*.yaml` (pure)
- `loaded`  the `Config` value: everything the router reads from YAML (pure)
- `redact`  a URL or message fit for logs: passwords masked (pure)
- `loader`  reads the files with PyYAML, reports `file:line:col` errors, builds `Config`
- `resolving`  provider host names that resolve to internal addresses (DNS, at check time)

The pure modules may import only pydantic, the standard library and `addon.errors`; `loader`
adds yaml, `resolving` the resolver (socket, threads).
"""
