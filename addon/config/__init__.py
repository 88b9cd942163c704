"""Configuration: `orchestrator.yaml` and `rules/`.

- `schema`  the pydantic models of `orchestrator.yaml` (pure: pydantic and the standard library)
- `rules`   the pydantic models of `rules/*.yaml` (pure)
- `loaded`  the `Config` value: everything the router reads from YAML (pure)
- `redact`  a URL or message fit for logs: passwords masked (pure)
- `loader`  reads the files with PyYAML, reports `file:line:col` errors, builds `Config`

`schema` may import only pydantic, the standard library and `addon.errors`; `loader` adds yaml.
"""
