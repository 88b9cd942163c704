"""What `orchestrator capture install` sets up: a plan of which outbound TCP connections are
redirected to the proxy, built from the config, the command's options and the names as they
resolve now (a DNS change needs a re-install).

The proxy runs in `mode: transparent` on loopback; the kernel's REDIRECT hands it each
captured connection with its original destination. The proxy's own connections (to the
providers, and to the original host of a connection it tunnels) must never be captured, or
they would loop back into it: they are told apart by the user the proxy runs as, so that
user's connections are never captured, and apps run as that user are not captured either.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from addon.config.schema import Settings, address_kind
from addon.errors import OrchestratorError

WEB_PORTS = (443, 80)  # what an entry without a port captures
Resolver = Callable[[str], list[str]]  # host name -> its IP addresses


@dataclass(frozen=True)
class Target:
    """One destination whose connections are redirected: an IP address and a TCP port."""

    address: str
    port: int

    @property
    def ipv6(self) -> bool:
        """Whether the address is IPv6."""
        return ":" in self.address


@dataclass(frozen=True)
class CapturePlan:
    """Everything the firewall rules say, as values.

    `targets` are redirected to `proxy_port` on loopback; with `everything`, so is every TCP
    connection to ports 443 and 80 of a non-loopback address. Connections of `proxy_uid` are
    never captured. With `uids` or `gids`, only connections of those users, or of those
    groups, are. IPv6 connections are redirected only when the proxy listens on IPv6
    (`ipv6`); otherwise those it would capture are refused with a TCP reset, so the app
    falls back to IPv4 and is captured there.
    """

    proxy_port: int
    proxy_user: str
    proxy_uid: int
    targets: tuple[Target, ...]
    everything: bool = False
    uids: tuple[int, ...] = ()
    gids: tuple[int, ...] = ()
    ipv4: bool = True
    ipv6: bool = False
    notes: tuple[str, ...] = ()  # what the operator should know: unresolved names, IPv6

    @property
    def v4_targets(self) -> tuple[Target, ...]:
        """The IPv4 destinations."""
        return tuple(t for t in self.targets if not t.ipv6)

    @property
    def v6_targets(self) -> tuple[Target, ...]:
        """The IPv6 destinations."""
        return tuple(t for t in self.targets if t.ipv6)


def system_resolver(host: str) -> list[str]:
    """The addresses `host` resolves to here (the system resolver, /etc/hosts included)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def invoking_user() -> str:
    """The user who ran the command: the one behind `sudo` (SUDO_USER), else this process's."""
    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


def user_id(user: str) -> int:
    """A user name or number as a uid; OrchestratorError naming it when there is none."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise OrchestratorError(f"no user {user!r} on this machine; give a user name or "
                                "a number (`id -u NAME` shows it)") from None  # fmt: skip


def group_id(group: str) -> int:
    """A group name or number as a gid; OrchestratorError naming it when there is none."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise OrchestratorError(f"no group {group!r} on this machine; give a group name or "
                                "a number (`getent group NAME` shows it)") from None  # fmt: skip


def split_entry(entry: str) -> tuple[str, tuple[int, ...]]:
    """An `intercept:` entry as (host, ports): `host:port` captures that port, a bare host
    (or IPv6 literal) ports 443 and 80."""
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and (host.startswith("[") or ":" not in host):
        return host.strip("[]"), (int(port),)
    return entry.strip("[]"), WEB_PORTS


def listen_families(host: str) -> tuple[bool, bool]:
    """(IPv4, IPv6): which redirected connections a proxy listening on `host` accepts.
    REDIRECT delivers to 127.0.0.1 or ::1, so only a loopback or wildcard address works."""
    if host in ("", "::"):
        return True, True
    if host in ("0.0.0.0", "localhost") or host.startswith("127."):
        return True, False
    if host == "::1":
        return False, True
    raise OrchestratorError(
        f"the proxy listens on {host}, and redirected connections arrive on loopback: set "
        "`listen: 127.0.0.1:PORT` in orchestrator.yaml (or run it with `--host 127.0.0.1`)"
    )


def resolve_targets(
    intercept: Sequence[str], resolve: Resolver
) -> tuple[tuple[Target, ...], tuple[str, ...]]:
    """Every `intercept:` entry's addresses and ports (deduplicated, sorted), and a note
    for each name that does not resolve here."""
    targets: set[Target] = set()
    notes: list[str] = []
    for entry in intercept:
        host, ports = split_entry(entry)
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = resolve(host)
            except OSError as e:
                notes.append(f"{host} does not resolve here ({e}); it is not captured — "
                             "re-run `orchestrator capture install` once it does")  # fmt: skip
                continue
        targets.update(Target(a, p) for a in addresses for p in ports)
    ordered = sorted(targets, key=lambda t: (t.ipv6, ipaddress.ip_address(t.address), t.port))
    return tuple(ordered), tuple(notes)


def plan(
    settings: Settings,
    *,
    config_name: str,
    port: int | None,
    proxy_user: str,
    uids: Sequence[str] = (),
    gids: Sequence[str] = (),
    everything: bool = False,
    resolve: Resolver | None = None,
) -> CapturePlan:
    """The capture plan for this config and these options (`resolve`: the system resolver
    unless a test gives one); OrchestratorError saying what to change when the proxy cannot
    receive redirected connections as configured."""
    if settings.mode != "transparent":
        raise OrchestratorError(
            f"capture hands connections to a proxy in transparent mode, and {config_name} says "
            f"`mode: {settings.mode}`: set `mode: transparent` there and restart "
            "`orchestrator run` (then it needs no HTTPS_PROXY)"
        )
    proxy_port = port if port is not None else settings.listen_port
    if proxy_port == 0:
        raise OrchestratorError(f"{config_name} says `listen: {settings.listen}` (a port chosen "
                                "at start): pass the port the proxy printed with --port")  # fmt: skip
    if settings.clients and address_kind(settings.listen_host) != "loopback":
        raise OrchestratorError("captured apps cannot send a client key (Proxy-Authorization): "
                                "capture this host's apps with the proxy on loopback")  # fmt: skip
    v4, v6 = listen_families(settings.listen_host)
    targets, notes = resolve_targets(settings.intercept, resolve or system_resolver)
    if not targets and not everything:
        raise OrchestratorError(f"no address to capture: none of the `intercept:` names in "
                                f"{config_name} resolves here ({', '.join(settings.intercept)})")  # fmt: skip
    unserved = "IPv6" if not v6 else "IPv4"
    if not (v4 and v6) and (everything or any(t.ipv6 != v6 for t in targets)):
        notes = (*notes, f"the proxy does not listen on {unserved}: {unserved} connections it "
                         "would capture are refused, so apps fall back to the other family")  # fmt: skip
    return CapturePlan(
        proxy_port=proxy_port,
        proxy_user=proxy_user,
        proxy_uid=user_id(proxy_user),
        targets=targets,
        everything=everything,
        uids=tuple(sorted({user_id(u) for u in uids})),
        gids=tuple(sorted({group_id(g) for g in gids})),
        ipv4=v4,
        ipv6=v6,
        notes=notes,
    )


def describe(p: CapturePlan) -> list[str]:
    """What the plan does, in the lines `capture install` prints after installing it."""
    what = ("every TCP connection to port 443 or 80" if p.everything
            else f"{len(p.targets)} destinations of the intercepted hosts")  # fmt: skip
    whose = ", ".join([*(f"uid {u}" for u in p.uids), *(f"gid {g}" for g in p.gids)])
    lines = [
        f"captured: {what} -> the proxy on loopback port {p.proxy_port}"
        + (f", only for {whose}" if whose else ", for every user"),
        f"never captured: user {p.proxy_user} (uid {p.proxy_uid}) — run the proxy as this "
        "user (its own connections must not loop back into it); apps run as this user are "
        "not captured, so use a dedicated user for one or the other",
    ]
    lines.extend(f"  {t.address} port {t.port}" for t in p.targets)
    lines.extend(f"note: {n}" for n in p.notes)
    return lines
