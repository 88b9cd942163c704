"""Who may use the router: client keys from `clients:` in orchestrator.yaml.

Keys are held only as SHA-256 digests. In regular mode a client authenticates with
`Proxy-Authorization` (Basic `name:key`, as `HTTPS_PROXY=http://name:key@host:port` sends it,
or Bearer `key`); in reverse mode with `Authorization: Bearer <router key>`, which is
removed before anything is forwarded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Mapping

from addon.config.schema import Settings

log = logging.getLogger("orchestrator")


def digest(key: str) -> str:
    """The hex SHA-256 of a client key: the only form the router keeps."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_digests(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """sha256(key) -> client name, for every client whose key is available."""
    out: dict[str, str] = {}
    for c in settings.clients:
        if c.key_sha256:
            out[c.key_sha256] = c.name
        elif c.key_env and env.get(c.key_env):
            out[digest(env[c.key_env])] = c.name
        else:
            log.warning("client %s: $%s is not set, so it cannot authenticate", c.name, c.key_env)
    return out


def identify(header: str | None, digests: Mapping[str, str]) -> str | None:
    """The client a `Proxy-Authorization` / `Authorization` value proves, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return digests.get(digest(value))
    if scheme.lower() == "basic":
        try:
            user, _, key = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        name = digests.get(digest(key))
        return name if name is not None and name == user else None
    return None
