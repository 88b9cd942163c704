"""Configuration: `orchestrator.yaml` and `rules/`.

- `schema`  the pydantic models of every YAML file (pure: pydantic and the standard library)
- `loader`  reads the files with PyYAML, reports `file:line:col` errors, builds `Config`

`schema` may import only pydantic, the standard library and `addon.errors`; `loader` adds yaml.
"""
