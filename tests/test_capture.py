"""`orchestrator capture`: the plan from the config and options, its nftables and iptables
renderings, the backends' commands (with a fake runner) and the command's refusals. The
rules at work in a real kernel are in tests/test_e2e_capture.py."""

from __future__ import annotations

import pwd
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from addon import cli
from addon.config.schema import Settings
from addon.errors import OrchestratorError
from addon.host import capture, commands, iptables, nftables
from addon.host.capture import CapturePlan, Target
from addon.host.firewall import CaptureStatus

API = {"api.openai.com": ["192.0.2.10", "2001:db8::10"], "openrouter.ai": ["192.0.2.20"]}


def fake_resolver(host: str) -> list[str]:
    if host not in API:
        raise socket.gaierror(-2, "Name or service not known")
    return API[host]


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"mode": "transparent", "listen": "127.0.0.1:8080",
                            "intercept": ["api.openai.com"]}  # fmt: skip
    return Settings.model_validate({**base, **kw})


def make(s: Settings, **kw: Any) -> CapturePlan:
    return capture.plan(s, config_name="orchestrator.yaml", port=kw.pop("port", None),
                        proxy_user=kw.pop("proxy_user", "root"), resolve=fake_resolver, **kw)  # fmt: skip


# --------------------------------------------------------------------------- the plan


@pytest.mark.parametrize(
    ("entry", "host", "ports"),
    [
        ("api.openai.com", "api.openai.com", (443, 80)),
        ("127.0.0.1:11434", "127.0.0.1", (11434,)),
        ("[2001:db8::1]:8443", "2001:db8::1", (8443,)),
        ("2001:db8::1", "2001:db8::1", (443, 80)),
        ("localhost:8000", "localhost", (8000,)),
    ],
)
def test_an_intercept_entry_names_a_host_and_its_ports(entry: str, host: str,
                                                       ports: tuple[int, ...]) -> None:  # fmt: skip
    assert capture.split_entry(entry) == (host, ports)


@pytest.mark.parametrize(
    ("host", "families"),
    [("127.0.0.1", (True, False)), ("localhost", (True, False)), ("0.0.0.0", (True, False)),
     ("::1", (False, True)), ("::", (True, True))],
)  # fmt: skip
def test_the_listen_address_decides_which_family_is_redirected(
    host: str, families: tuple[bool, bool]
) -> None:
    assert capture.listen_families(host) == families


def test_a_proxy_off_loopback_cannot_take_redirected_connections() -> None:
    with pytest.raises(
        OrchestratorError, match=r"the proxy listens on 10\.0\.0\.5, and redirected"
    ):
        capture.listen_families("10.0.0.5")


def test_names_resolve_now_and_a_name_that_does_not_is_noted() -> None:
    targets, notes = capture.resolve_targets(
        ["api.openai.com", "nowhere.invalid", "127.0.0.1:11434", "api.openai.com"], fake_resolver
    )
    assert targets == (
        Target("127.0.0.1", 11434), Target("192.0.2.10", 80), Target("192.0.2.10", 443),
        Target("2001:db8::10", 80), Target("2001:db8::10", 443),
    )  # fmt: skip
    assert notes == ("nowhere.invalid does not resolve here ([Errno -2] Name or service not "
                     "known); it is not captured — re-run `orchestrator capture install` once "
                     "it does",)  # fmt: skip


def test_the_plan_of_the_default_options() -> None:
    p = make(settings(), uids=["65534"], gids=["0"])
    assert (p.proxy_port, p.proxy_user, p.proxy_uid) == (8080, "root", 0)
    assert p.v4_targets == (Target("192.0.2.10", 80), Target("192.0.2.10", 443))
    assert p.v6_targets == (Target("2001:db8::10", 80), Target("2001:db8::10", 443))
    assert (p.uids, p.gids, p.ipv4, p.ipv6, p.everything) == ((65534,), (0,), True, False, False)
    assert p.notes == ("the proxy does not listen on IPv6: IPv6 connections it would capture are "
                       "refused, so apps fall back to the other family",)  # fmt: skip
    assert make(settings(), port=9999).proxy_port == 9999


def test_users_and_groups_by_name() -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    p = make(settings(intercept=["192.0.2.1"]), proxy_user="nobody", uids=["root", "nobody"])
    assert (p.proxy_uid, p.uids) == (nobody, tuple(sorted({0, nobody})))
    with pytest.raises(OrchestratorError, match=r"no user 'no-such-user' on this machine"):
        make(settings(), proxy_user="no-such-user")
    with pytest.raises(OrchestratorError, match=r"no group 'no-such-group' on this machine"):
        make(settings(), gids=["no-such-group"])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"mode": "regular"}, "capture hands connections to a proxy in transparent mode, and "
         "orchestrator.yaml says `mode: regular`: set `mode: transparent` there and restart "
         "`orchestrator run` (then it needs no HTTPS_PROXY)"),
        ({"listen": "127.0.0.1:0"}, "orchestrator.yaml says `listen: 127.0.0.1:0` (a port chosen "
         "at start): pass the port the proxy printed with --port"),
        ({"intercept": ["nowhere.invalid"]}, "no address to capture: none of the `intercept:` "
         "names in orchestrator.yaml resolves here (nowhere.invalid)"),
        ({"listen": "0.0.0.0:8080", "clients": [{"name": "a", "key_env": "X"}]},
         "captured apps cannot send a client key (Proxy-Authorization): capture this host's "
         "apps with the proxy on loopback"),
    ],
)  # fmt: skip
def test_a_config_the_capture_cannot_serve_says_what_to_change(kw: dict[str, Any],
                                                               message: str) -> None:  # fmt: skip
    with pytest.raises(OrchestratorError) as e:
        make(settings(**kw))
    assert str(e.value) == message


def test_the_invoking_user_is_the_one_behind_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    assert capture.invoking_user() == "alice"
    monkeypatch.delenv("SUDO_USER")
    assert capture.invoking_user() == pwd.getpwuid(__import__("os").getuid()).pw_name


def test_describe_says_who_is_never_captured() -> None:
    lines = capture.describe(make(settings(intercept=["192.0.2.1"]), port=8081))
    assert lines == [
        "captured: 2 destinations of the intercepted hosts -> the proxy on loopback port 8081, "
        "for every user",
        "never captured: user root (uid 0) — run the proxy as this user (its own connections "
        "must not loop back into it); apps run as this user are not captured, so use a "
        "dedicated user for one or the other",
        "  192.0.2.1 port 80",
        "  192.0.2.1 port 443",
    ]


# --------------------------------------------------------------------------- nftables


PLAN = CapturePlan(8080, "orch", 998, (Target("192.0.2.10", 80), Target("192.0.2.10", 443),
                                       Target("2001:db8::1", 443)), uids=(1000,), gids=(100,))  # fmt: skip


def test_the_nftables_script_replaces_our_table_atomically() -> None:
    assert nftables.script(PLAN) == "\n".join([
        "table inet orchestrator_capture",
        "delete table inet orchestrator_capture",
        "table inet orchestrator_capture {",
        "\tset dst4 {", "\t\ttype ipv4_addr . inet_service",
        "\t\telements = { 192.0.2.10 . 80, 192.0.2.10 . 443 }", "\t}",
        "\tset dst6 {", "\t\ttype ipv6_addr . inet_service",
        "\t\telements = { 2001:db8::1 . 443 }", "\t}",
        "\tchain nat_output {",
        "\t\ttype nat hook output priority -100; policy accept;",
        "\t\tmeta skuid 998 return comment \"the proxy's own connections\"",
        "\t\tmeta skuid { 1000 } jump captured",
        "\t\tmeta skgid { 100 } jump captured",
        "\t}",
        "\tchain captured {", "\t\tip daddr . tcp dport @dst4 counter redirect to :8080", "\t}",
        "\tchain filter_output {",
        "\t\ttype filter hook output priority 0; policy accept;",
        "\t\tmeta skuid 998 return comment \"the proxy's own connections\"",
        "\t\tmeta skuid { 1000 } jump refused",
        "\t\tmeta skgid { 100 } jump refused",
        "\t}",
        "\tchain refused {", "\t\tip6 daddr . tcp dport @dst6 counter reject with tcp reset", "\t}",
        "}", "",
    ])  # fmt: skip


def test_the_nftables_script_of_all_web_traffic_for_a_dual_stack_proxy() -> None:
    p = CapturePlan(8080, "root", 0, (), everything=True, ipv6=True)
    text = nftables.script(p)
    assert "\t\tjump captured\n" in text and "set dst" not in text and "refused" not in text
    assert "\t\tip daddr != 127.0.0.0/8 tcp dport { 443, 80 } counter redirect to :8080" in text
    assert "\t\tip6 daddr != ::1 tcp dport { 443, 80 } counter redirect to :8080" in text


class FakeRun:
    """Records commands; answers from a table of (argv prefix -> exit code, stdout)."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str]] | None = None) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.answers = answers or {}

    def __call__(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), stdin))
        code, out = next((v for k, v in self.answers.items() if tuple(argv[: len(k)]) == k),
                         (0, ""))  # fmt: skip
        return subprocess.CompletedProcess(list(argv), code, out, "boom" if code else "")


LISTING = """table inet orchestrator_capture {
\tchain captured {
\t\tip daddr . tcp dport @dst4 counter packets 5 bytes 300 redirect to :8080
\t}
\tchain refused {
\t\tip6 daddr . tcp dport @dst6 counter packets 2 bytes 160 reject with tcp reset
\t}
}
"""


def test_the_nftables_backend_commands() -> None:
    run = FakeRun({("nft", "list"): (0, LISTING)})
    fw = nftables.Nftables(run)
    fw.install(PLAN)
    assert run.calls[0] == (["nft", "-f", "-"], nftables.script(PLAN))
    assert fw.status() == CaptureStatus(True, "nftables", LISTING.rstrip("\n"), 8080, 5, 2)
    assert fw.remove() is True
    assert run.calls[-1][0] == ["nft", "delete", "table", "inet", "orchestrator_capture"]
    absent = nftables.Nftables(FakeRun({("nft", "list"): (1, "")}))
    assert absent.remove() is False and absent.status() == CaptureStatus(False, "nftables")


def test_a_refused_install_says_what_nft_said() -> None:
    fw = nftables.Nftables(FakeRun({("nft", "-f"): (1, "")}))
    with pytest.raises(OrchestratorError, match=r"^`nft -f -` failed \(exit 1\): boom$"):
        fw.install(PLAN)


# --------------------------------------------------------------------------- iptables


def test_the_iptables_units() -> None:
    units = iptables.units(PLAN)
    assert [(u.tool, u.table) for u in units] == [("iptables", "nat"), ("ip6tables", "filter")]
    assert units[0].restore_input() == "\n".join([
        "*nat", ":ORCHESTRATOR - [0:0]", ":ORCHESTRATOR_DST - [0:0]",
        '-A ORCHESTRATOR -m owner --uid-owner 998 -m comment --comment "orchestrator: the '
        'proxy user" -j RETURN',
        "-A ORCHESTRATOR -m owner --uid-owner 1000 -j ORCHESTRATOR_DST",
        "-A ORCHESTRATOR -m owner --gid-owner 100 -j ORCHESTRATOR_DST",
        "-A ORCHESTRATOR_DST -d 192.0.2.10/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080",
        "-A ORCHESTRATOR_DST -d 192.0.2.10/32 -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 8080",
        "COMMIT", "",
    ])  # fmt: skip
    assert units[1].rules[-1] == ("-A ORCHESTRATOR_DST -d 2001:db8::1/128 -p tcp -m tcp --dport "
                                  "443 -j REJECT --reject-with tcp-reset")  # fmt: skip
    every = iptables.units(CapturePlan(8080, "root", 0, (), everything=True))
    assert [u.rules[-1] for u in every] == [
        "-A ORCHESTRATOR_DST ! -d 127.0.0.0/8 -p tcp -m multiport --dports 443,80 -j REDIRECT "
        "--to-ports 8080",
        "-A ORCHESTRATOR_DST ! -d ::1/128 -p tcp -m multiport --dports 443,80 -j REJECT "
        "--reject-with tcp-reset",
    ]


def test_the_iptables_backend_adds_its_output_rule_once() -> None:
    # our chain exists in iptables' nat table only, and its OUTPUT rule is already there
    run = FakeRun({("iptables", "-t", "nat", "-S"): (0, ""), ("iptables", "-t", "nat", "-C"): (0, ""),
                   ("iptables", "-t", "filter", "-S"): (1, ""), ("ip6tables", "-t", "nat"): (1, ""),
                   ("ip6tables", "-t", "filter", "-S"): (1, ""),
                   ("ip6tables", "-t", "filter", "-C"): (1, "")})  # fmt: skip
    iptables.Iptables(run).install(PLAN)
    argvs = [c[0] for c in run.calls]
    assert ["iptables-restore", "--noflush"] in argvs and [
        "ip6tables-restore",
        "--noflush",
    ] in argvs
    assert ["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "ORCHESTRATOR"] not in argvs
    assert ["ip6tables", "-t", "filter", "-A", "OUTPUT", "-p", "tcp", "-j", "ORCHESTRATOR"] in argvs


# --------------------------------------------------------------------------- the command


def _config(tmp_path: Path, mode: str = "transparent") -> Path:
    (tmp_path / "rules").mkdir(parents=True)
    for name in ("profiles.yaml",):
        (tmp_path / "rules" / name).write_text(
            (Path(__file__).parents[1] / "rules" / name).read_text()
        )
    path = tmp_path / "orchestrator.yaml"
    path.write_text(f"mode: {mode}\nlisten: 127.0.0.1:8080\nintercept: [api.openai.com]\n")
    return path


@pytest.mark.parametrize("verb", [["install"], ["remove"], ["status"]])
def test_capture_without_root_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                  verb: list[str]) -> None:  # fmt: skip
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    out = CliRunner().invoke(cli.main, ["capture", *verb])
    assert out.exit_code == 2
    assert out.output.count("\n") == 1 and out.output.startswith(
        f"error: `orchestrator capture {verb[0]}` "
    )
    assert out.output.endswith(f"and needs root: run it with sudo (sudo .venv/bin/orchestrator "
                               f"capture {verb[0]} …)\n")  # fmt: skip


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.plans: list[CapturePlan] = []

    def install(self, plan: CapturePlan) -> None:
        self.plans.append(plan)

    def remove(self) -> bool:
        return True

    def status(self) -> CaptureStatus:
        return CaptureStatus(True, "fake", "table …", 1, 0, 0)


def test_capture_install_checks_the_config_and_installs(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    if __import__("os").geteuid() != 0:
        monkeypatch.setattr("os.geteuid", lambda: 0)
    fake = FakeBackend()
    monkeypatch.setattr(commands, "backend", lambda name: fake)
    monkeypatch.setattr(capture, "system_resolver", fake_resolver)
    out = CliRunner().invoke(cli.main, ["capture", "install", "-c", str(_config(tmp_path)),
                                        "--proxy-user", "root", "--uid", "65534", "--all"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert out.output.startswith("capture installed with fake; ")
    assert fake.plans[0].everything and fake.plans[0].uids == (65534,)
    regular = CliRunner().invoke(cli.main, ["capture", "install", "-c",
                                            str(_config(tmp_path / "r", "regular"))])  # fmt: skip
    assert regular.exit_code == 2 and "set `mode: transparent` there" in regular.output
    status = CliRunner().invoke(cli.main, ["capture", "status"])
    assert "0 connections redirected to the proxy so far: none yet" in status.output
    assert "proxy on loopback port 1: NOTHING LISTENS" in status.output


def test_the_backend_is_nftables_where_nft_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None if name == "nft" else f"/usr/sbin/{name}")
    assert commands.backend(None).name == "iptables"
    assert commands.backend("nftables").name == "nftables"


def test_the_iptables_backend_drops_our_chains_a_new_plan_does_not_need() -> None:
    # a dual-stack plan left chains in ip6tables' nat table; this plan needs only iptables'
    run = FakeRun({("iptables", "-t", "filter", "-S"): (1, ""), ("ip6tables", "-t", "filter"): (1, ""),
                   ("ip6tables", "-t", "nat", "-D"): (1, ""), ("iptables", "-t", "nat", "-C"): (1, "")})  # fmt: skip
    iptables.Iptables(run).install(CapturePlan(8080, "root", 0, (Target("192.0.2.1", 443),)))
    argvs = [c[0] for c in run.calls]
    assert ["ip6tables", "-t", "nat", "-X", "ORCHESTRATOR"] in argvs
    assert ["iptables", "-t", "nat", "-X", "ORCHESTRATOR"] not in argvs
    assert argvs[-1] == ["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "ORCHESTRATOR"]
