"""The proxy running on this host, reached through its admin endpoint (`orchestrator status`,
`reload`): where that endpoint is, read leniently, so a config file broken on disk (exactly
when the running proxy's rejected-edit report matters) still names it, and one call to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addon.config import loader
from addon.config.schema import Admin
from addon.errors import ConfigError


@dataclass(frozen=True)
class Endpoint:
    """The admin endpoint's base URL, and why the config does not load now (None if it does:
    the running proxy keeps its last good config, and `/status` shows what it rejected)."""

    url: str
    problem: str | None = None


@dataclass(frozen=True)
class Unreachable:
    """No usable answer from the admin endpoint; `message` says where and what to do."""

    message: str


def endpoint(config: str | Path, admin: str | None = None) -> Endpoint:
    """`admin` if given; else `admin.listen` of the config: of the loaded config, or of the
    file's `admin:` mapping when the rest does not load, or the default 127.0.0.1:9090."""
    listen, problem = Admin().listen, None
    try:
        listen = loader.load(config).settings.admin.listen
    except ConfigError as e:
        problem = str(e)
        try:
            data, _ = loader.read_yaml(Path(config))
            listen = Admin.model_validate(data.get("admin") or {}).listen
        except (ConfigError, ValueError, AttributeError, TypeError):
            pass  # nothing usable in the file: the default
    if admin:
        return Endpoint(admin.rstrip("/"), problem)
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    return Endpoint(f"http://{f'[{host}]' if ':' in host else host}:{port}", problem)


def call(ep: Endpoint, method: str, path: str, config_name: str) -> dict[str, Any] | Unreachable:
    """The endpoint's JSON answer to `method path`, or why there is none."""
    import httpx

    url = ep.url + path
    try:
        r = httpx.request(method, url, timeout=30, trust_env=False)
    except httpx.HTTPError as e:
        return Unreachable(f"no running proxy answered at {url} ({type(e).__name__}); start it "
                           f"with `orchestrator run -c {config_name}` or check `admin.listen`")  # fmt: skip
    try:
        data: dict[str, Any] = r.json()
    except ValueError:
        return Unreachable(f"{url} answered HTTP {r.status_code} with a non-JSON body; is "
                           "`admin.listen` another service's port?")  # fmt: skip
    return data
