"""What a firewall backend of `orchestrator capture` does (`nftables`, `iptables`), the
status it reports, and running its programs."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from addon.errors import OrchestratorError
from addon.host.capture import CapturePlan

# argv and standard input -> the finished program (a test swaps in a fake)
Runner = Callable[[Sequence[str], str | None], "subprocess.CompletedProcess[str]"]


# the Debian package of each program, for the message when one is missing
PACKAGES = {"nft": "nftables", "iptables": "iptables", "ip6tables": "iptables",
            "iptables-restore": "iptables", "ip6tables-restore": "iptables"}  # fmt: skip


def run_program(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program to completion, capturing its output (never raises on its exit code;
    OrchestratorError when it is not installed)."""
    if shutil.which(argv[0]) is None:
        raise OrchestratorError(f"{argv[0]} is not installed; on Debian/Ubuntu: "
                                f"apt-get install {PACKAGES.get(argv[0], argv[0])}")  # fmt: skip
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              check=False, timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise OrchestratorError(f"`{' '.join(argv)}` did not finish within 60 s") from None


def checked(run: Runner, argv: Sequence[str], stdin: str | None = None) -> str:
    """`run` the program; its stdout, or OrchestratorError with its stderr if it failed."""
    done = run(argv, stdin)
    if done.returncode != 0:
        raise OrchestratorError(f"`{' '.join(argv)}` failed (exit {done.returncode}): "
                                f"{(done.stderr or done.stdout).strip()}")  # fmt: skip
    return done.stdout


@dataclass(frozen=True)
class CaptureStatus:
    """What `capture status` shows: whether our rules are installed, their listing, the
    proxy port they redirect to, and the packets they matched (the first packet of each
    redirected or refused connection)."""

    installed: bool
    backend: str
    listing: str = ""
    proxy_port: int | None = None
    redirected: int = 0  # connections handed to the proxy
    refused: int = 0  # connections of a family the proxy does not listen on, reset


class Backend(Protocol):
    """One way of installing the plan: only its own table or chains, never anything else."""

    name: str

    def install(self, plan: CapturePlan) -> None:
        """Put the plan's rules in place, replacing ours if present (idempotent)."""

    def remove(self) -> bool:
        """Remove our rules; False when there were none."""

    def status(self) -> CaptureStatus:
        """Our rules and their counters."""
