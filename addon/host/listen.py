"""Whether `orchestrator run` may and can listen where it is told: the loopback rule for an
address given on the command line (the same rule and words as `listen:` in the file), and
whether the port is free, checked before mitmproxy starts so the message names
`orchestrator run`'s own flags."""

from __future__ import annotations

import errno
import socket

from addon.config.schema import address_kind
from addon.errors import OrchestratorError


def refuse_exposed(host: str, port: int, *, has_clients: bool) -> None:
    """OrchestratorError for `--host` on an address other machines reach while no `clients:`
    are configured (the rule `listen:` in the file gets from the loader)."""
    if has_clients or address_kind(host) == "loopback":
        return
    raise OrchestratorError(
        f"--host {host}: {host}:{port} is reachable from other machines and no `clients:` are "
        "configured, so anyone there could spend your provider keys — add `clients:` (README: "
        "Security) or listen on 127.0.0.1"
    )


def check_free(host: str, port: int, config_name: str) -> None:
    """OrchestratorError, naming `orchestrator run --port`, when the proxy cannot listen on
    host:port (in use, a privileged port, not an address here); port 0 always works. The
    probe binds as the proxy does (SO_REUSEADDR: a port in TIME_WAIT counts as free)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                why = ("is already in use (another proxy, or one still running?): pick a free "
                       f"port with `orchestrator run --port N` or change `listen:` in "
                       f"{config_name}")  # fmt: skip
            elif e.errno == errno.EACCES:
                why = "needs root (a port below 1024): use `orchestrator run --port 8080`"
            else:
                why = f"{e.strerror}; use `orchestrator run --host 127.0.0.1 --port N`"
            raise OrchestratorError(f"cannot listen on {host}:{port}: {why}") from None
