"""The capture plan as one nftables table of our own, `inet orchestrator_capture`.

Installing replaces that table in one `nft -f` transaction (install twice = the same rules);
removing deletes it, so the rest of the rule set is exactly as it was. A nat chain on the
output hook redirects the captured connections to the proxy on loopback; a filter chain
refuses, with a TCP reset, those of an address family the proxy does not listen on.
"""

from __future__ import annotations

import re

from addon.host.capture import WEB_PORTS, CapturePlan, Target
from addon.host.firewall import CaptureStatus, Runner, checked, run_program

TABLE = "orchestrator_capture"
FAMILY = "inet"
_COUNTER = re.compile(r"counter packets (\d+) bytes \d+")
_PORT = re.compile(r"redirect to :(\d+)")


def _elements(targets: tuple[Target, ...]) -> str:
    return ", ".join(f"{t.address} . {t.port}" for t in targets)


def _owners(p: CapturePlan, chain: str) -> list[str]:
    """The start of an output-hook chain: the proxy's user goes untouched, then the chosen
    users and groups (everyone without `--uid`/`--gid`) jump to `chain`."""
    lines = [f'meta skuid {p.proxy_uid} return comment "the proxy\'s own connections"']
    if not p.uids and not p.gids:
        return [*lines, f"jump {chain}"]
    if p.uids:
        lines.append(f"meta skuid {{ {', '.join(map(str, p.uids))} }} jump {chain}")
    if p.gids:
        lines.append(f"meta skgid {{ {', '.join(map(str, p.gids))} }} jump {chain}")
    return lines


def _chain(name: str, rules: list[str], hook: str | None = None) -> list[str]:
    head = [f"\t\ttype {hook}; policy accept;"] if hook else []
    return [f"\tchain {name} {{", *head, *(f"\t\t{r}" for r in rules), "\t}"]


def script(p: CapturePlan) -> str:
    """The `nft -f` input that replaces our table with this plan's rules, atomically."""
    v4, v6 = p.v4_targets, p.v6_targets
    to = f"counter redirect to :{p.proxy_port}"
    reset = "counter reject with tcp reset"
    web = "tcp dport { " + ", ".join(map(str, WEB_PORTS)) + " }"
    out = [
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
    ]
    if v4:
        out += ["\tset dst4 {", "\t\ttype ipv4_addr . inet_service", f"\t\telements = {{ {_elements(v4)} }}", "\t}"]  # fmt: skip
    if v6:
        out += ["\tset dst6 {", "\t\ttype ipv6_addr . inet_service", f"\t\telements = {{ {_elements(v6)} }}", "\t}"]  # fmt: skip
    captured: list[str] = []
    refused: list[str] = []
    for served, ip, dst, loop, targets in (
        (p.ipv4, "ip", "@dst4", "127.0.0.0/8", v4),
        (p.ipv6, "ip6", "@dst6", "::1", v6),
    ):
        rules = captured if served else refused
        verdict = to if served else reset
        if targets:
            rules.append(f"{ip} daddr . tcp dport {dst} {verdict}")
        if p.everything:
            rules.append(f"{ip} daddr != {loop} {web} {verdict}")
    if captured:
        out += _chain("nat_output", _owners(p, "captured"), "nat hook output priority -100")
        out += _chain("captured", captured)
    if refused:
        out += _chain("filter_output", _owners(p, "refused"), "filter hook output priority 0")
        out += _chain("refused", refused)
    return "\n".join([*out, "}", ""])


class Nftables:
    """The nftables backend (`nft`); `run` runs its commands (a test passes a fake)."""

    name = "nftables"

    def __init__(self, run: Runner = run_program) -> None:
        self._run = run

    def install(self, plan: CapturePlan) -> None:
        """Replace our table with the plan's rules in one transaction."""
        checked(self._run, ["nft", "-f", "-"], script(plan))

    def _listing(self) -> str | None:
        done = self._run(["nft", "list", "table", FAMILY, TABLE], None)
        return done.stdout if done.returncode == 0 else None

    def remove(self) -> bool:
        """Delete our table; False when it was not there."""
        if self._listing() is None:
            return False
        checked(self._run, ["nft", "delete", "table", FAMILY, TABLE])
        return True

    def status(self) -> CaptureStatus:
        """Our table's listing, its proxy port and its counters."""
        listing = self._listing()
        if listing is None:
            return CaptureStatus(False, self.name)
        redirected = refused = 0
        for line in listing.splitlines():
            if m := _COUNTER.search(line):
                if "redirect" in line:
                    redirected += int(m.group(1))
                elif "reject" in line:
                    refused += int(m.group(1))
        port = _PORT.search(listing)
        return CaptureStatus(True, self.name, listing.rstrip("\n"),
                             int(port.group(1)) if port else None, redirected, refused)  # fmt: skip
