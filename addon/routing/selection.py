"""Which profile and policy a request falls under: the request as routing sees it
(`RoutingRequest`), the policies' `match` (`policy_matches`), and the profile chosen by
header, model alias, policy or default (`select_profile`). Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from addon.config.loaded import Config
from addon.config.rules import Policy
from addon.routing.classify import RequestFeatures
from addon.routing.ranking import glob

PROFILE_HEADER = "x-orchestrator-profile"
ALIAS_PREFIX = "orchestrator/"
AUTO = "auto"


@dataclass(frozen=True)
class RoutingRequest:
    """What routing knows of one request: its features and where and from whom it came."""

    features: RequestFeatures
    host: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    client_addr: str
    client_key: bool  # the client sent its own API key (usable only at `host`)
    client_name: str | None = None  # authenticated router client (`clients:`), if any
    allowed_policies: frozenset[str] | None = None  # that client's `policies:`, None = all
    api: str = "chat"  # the API the request speaks (`addon.config.schema.ENDPOINTS`)


@dataclass(frozen=True)
class NoRoute:
    """No target may serve the request: the status to answer (400 the request, 503 the
    router's state) and a message naming what filtered the candidates out."""

    status: int
    message: str
    code: str
    profile: str | None = None
    policy: str | None = None
    filtered: Mapping[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- policy & profile


def _in_network(addr: str, net: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]) in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return False


def policy_matches(p: Policy, req: RoutingRequest) -> bool:
    """Every condition of the policy's `match` holds (the cheap equality checks first)."""
    m = p.match
    f = req.features
    if m.task is not None and m.task != f.task:
        return False
    if m.complexity is not None and m.complexity != f.complexity_class:
        return False
    for name, pat in m.headers.items():
        value = req.headers.get(name.lower())
        if value is None or not glob(pat, value):
            return False
    if m.host is not None and not glob(m.host, req.host):
        return False
    if m.path is not None and not glob(m.path, req.path):
        return False
    if m.model is not None and not glob(m.model, f.requested_model or ""):
        return False
    return m.client is None or m.client == req.client_name or _in_network(req.client_addr, m.client)


def select_profile(cfg: Config, req: RoutingRequest) -> tuple[str, str, Policy | None] | NoRoute:
    """(profile, why, matching policy) — header > model alias > policy > default."""
    allowed = req.allowed_policies
    policy = next(
        (p for p in cfg.policies
         if (allowed is None or p.name in allowed) and policy_matches(p, req)),
        None,
    )  # fmt: skip
    header = req.headers.get(PROFILE_HEADER)
    if header:
        if header not in cfg.profiles:
            known = ", ".join(sorted(cfg.profiles))
            return NoRoute(
                400,
                f"unknown profile {header!r} in X-Orchestrator-Profile; use one of: {known}",
                "unknown_profile",
            )
        return header, "header X-Orchestrator-Profile", policy
    model = req.features.requested_model or ""
    if model.startswith(ALIAS_PREFIX):
        name = model[len(ALIAS_PREFIX) :]
        if name not in cfg.profiles:
            return NoRoute(
                400,
                f"unknown profile {name!r} in model {model!r}; use one of: "
                f"{', '.join(ALIAS_PREFIX + k for k in sorted(cfg.profiles))}",
                "unknown_profile",
            )
        return name, f"model alias {model}", policy
    if policy and policy.profile:
        return policy.profile, f"policy {policy.name}", policy
    if model == AUTO:
        return cfg.settings.default_profile, "model alias auto (default profile)", policy
    return cfg.settings.default_profile, "default_profile", policy
