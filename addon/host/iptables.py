"""The capture plan as iptables/ip6tables chains of our own, for hosts without `nft`.

Two chains per table, `ORCHESTRATOR` (whose connections: the proxy's user returns, the
chosen users and groups go on) and `ORCHESTRATOR_DST` (which destinations), reached by one
`-p tcp -j ORCHESTRATOR` rule in OUTPUT: the nat table redirects a family the proxy listens
on, the filter table resets one it does not. Installing loads each table's chains with
`iptables-restore --noflush` (which empties our chains first: install twice = the same
rules); removing deletes the OUTPUT rule and our chains, and touches nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from addon.errors import OrchestratorError
from addon.host.capture import WEB_PORTS, CapturePlan, Target
from addon.host.firewall import CaptureStatus, Runner, checked, run_program

CHAIN = "ORCHESTRATOR"
DST = "ORCHESTRATOR_DST"
JUMP = ("-p", "tcp", "-j", CHAIN)
TOOLS = {"iptables": ("127.0.0.0/8", "32"), "ip6tables": ("::1/128", "128")}
_PORT = re.compile(r"redir ports (\d+)")


@dataclass(frozen=True)
class Unit:
    """Our two chains in one table of one tool, and their rules (`-A` lines)."""

    tool: str  # iptables or ip6tables
    table: str  # nat or filter
    rules: tuple[str, ...]

    def restore_input(self) -> str:
        """The `iptables-restore --noflush` input: declaring a chain empties it."""
        return "\n".join([f"*{self.table}", f":{CHAIN} - [0:0]", f":{DST} - [0:0]",
                          *self.rules, "COMMIT", ""])  # fmt: skip


def _dst_rules(targets: tuple[Target, ...], everything: bool, verdict: str, tool: str) -> list[str]:
    loop, bits = TOOLS[tool]
    rules = [f"-A {DST} -d {t.address}/{bits} -p tcp -m tcp --dport {t.port} {verdict}"
             for t in targets]  # fmt: skip
    if everything:
        ports = ",".join(map(str, WEB_PORTS))
        rules.append(f"-A {DST} ! -d {loop} -p tcp -m multiport --dports {ports} {verdict}")
    return rules


def units(p: CapturePlan) -> list[Unit]:
    """The chains the plan needs, per tool and table (none for a family with nothing to do)."""
    owners = [f'-A {CHAIN} -m owner --uid-owner {p.proxy_uid} -m comment --comment '
              f'"orchestrator: the proxy user" -j RETURN']  # fmt: skip
    owners += [f"-A {CHAIN} -m owner --uid-owner {u} -j {DST}" for u in p.uids]
    owners += [f"-A {CHAIN} -m owner --gid-owner {g} -j {DST}" for g in p.gids]
    if not p.uids and not p.gids:
        owners.append(f"-A {CHAIN} -j {DST}")
    out = []
    for tool, served, targets in (("iptables", p.ipv4, p.v4_targets),
                                  ("ip6tables", p.ipv6, p.v6_targets)):  # fmt: skip
        verdict = (f"-j REDIRECT --to-ports {p.proxy_port}" if served
                   else "-j REJECT --reject-with tcp-reset")  # fmt: skip
        dst = _dst_rules(targets, p.everything, verdict, tool)
        if dst:
            out.append(Unit(tool, "nat" if served else "filter", (*owners, *dst)))
    return out


class Iptables:
    """The iptables backend; `run` runs its commands (a test passes a fake)."""

    name = "iptables"

    def __init__(self, run: Runner = run_program) -> None:
        self._run = run

    def _ours(self) -> Iterator[tuple[str, str]]:
        """(tool, table) pairs where our chain exists."""
        for tool in TOOLS:
            for table in ("nat", "filter"):
                try:
                    found = self._run([tool, "-t", table, "-S", CHAIN], None).returncode == 0
                except OrchestratorError:  # the tool is not installed: nothing of ours there
                    found = False
                if found:
                    yield tool, table

    def install(self, plan: CapturePlan) -> None:
        """Load our chains into each table the plan needs, and drop ours from the others."""
        wanted = units(plan)
        for tool, table in list(self._ours()):
            if not any(u.tool == tool and u.table == table for u in wanted):
                self._drop(tool, table)
        for u in wanted:
            checked(self._run, [f"{u.tool}-restore", "--noflush"], u.restore_input())
            if self._run([u.tool, "-t", u.table, "-C", "OUTPUT", *JUMP], None).returncode != 0:
                checked(self._run, [u.tool, "-t", u.table, "-A", "OUTPUT", *JUMP])

    def _drop(self, tool: str, table: str) -> None:
        while self._run([tool, "-t", table, "-D", "OUTPUT", *JUMP], None).returncode == 0:
            pass
        for args in (("-F", CHAIN), ("-F", DST), ("-X", CHAIN), ("-X", DST)):
            self._run([tool, "-t", table, *args], None)

    def remove(self) -> bool:
        """Delete our OUTPUT rules and chains; False when there were none."""
        found = list(self._ours())
        for tool, table in found:
            self._drop(tool, table)
        return bool(found)

    def status(self) -> CaptureStatus:
        """Our chains' listings (`-L -n -v -x`), the proxy port and the counters."""
        parts: list[str] = []
        redirected = refused = 0
        for tool, table in self._ours():
            text = checked(self._run, [tool, "-t", table, "-L", DST, "-n", "-v", "-x"])
            parts.append(f"{tool} -t {table}:\n{text.rstrip()}")
            for line in text.splitlines():
                cols = line.split()
                if len(cols) > 2 and cols[0].isdigit():
                    if cols[2] == "REDIRECT":
                        redirected += int(cols[0])
                    elif cols[2] == "REJECT":
                        refused += int(cols[0])
        if not parts:
            return CaptureStatus(False, self.name)
        listing = "\n".join(parts)
        port = _PORT.search(listing)
        return CaptureStatus(True, self.name, listing, int(port.group(1)) if port else None,
                             redirected, refused)  # fmt: skip
