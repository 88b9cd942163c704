"""The host-setup commands of the `orchestrator` script — `ca`, `trust`, `capture`, `doctor` — as
thin click commands over this package; `addon.cli` registers them. They report problems as
OrchestratorError, which the command group prints as one `error:` line (exit 2)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import click

from addon.config import loader
from addon.config.loaded import Config
from addon.config.redact import redact
from addon.errors import OrchestratorError
from addon.host import capture as plans
from addon.host import doctor as checks
from addon.host import trust as store
from addon.host.doctor import local_address
from addon.host.firewall import Backend
from addon.host.iptables import Iptables
from addon.host.nftables import Nftables
from addon.proxy import ca

config_option = click.option("-c", "--config", default="orchestrator.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="Path of orchestrator.yaml.")  # fmt: skip
confdir_option = click.option("--confdir", type=click.Path(file_okay=False, readable=False),
                              help="The CA's folder [default: data/mitmproxy next to the config].")  # fmt: skip
backend_option = click.option("--backend", "name", type=click.Choice(["nftables", "iptables"]),
                              help="Firewall to use [default: nftables where `nft` is installed, "
                              "else iptables].")  # fmt: skip


def need_root(what: str, why: str) -> None:
    """OrchestratorError (one line) unless this process runs as root."""
    if os.geteuid() != 0:
        raise OrchestratorError(f"`orchestrator {what}` {why} and needs root: run it with sudo "
                                f"(sudo .venv/bin/orchestrator {what} …)")  # fmt: skip


def ca_files(cfg: Config, confdir: str | None, *, create: bool = True) -> tuple[Path, Path]:
    """This installation's CA certificate and bundle: created or refreshed now, or (not
    `create`) as they are, the bundle written only if missing."""
    conf = Path(confdir) if confdir else ca.default_confdir(cfg.base_dir)
    try:
        if create:
            return ca.ensure_ca(conf), ca.write_bundle(conf)
        cert, bundle = conf / ca.CA_CERT, conf / ca.BUNDLE
        if not cert.exists():
            raise OrchestratorError(f"no CA in {conf} yet: the proxy creates it when it first "
                                    "starts (`orchestrator run`); or pass its --confdir")  # fmt: skip
        return cert, bundle if bundle.exists() else ca.write_bundle(conf)
    except OSError as e:
        raise OrchestratorError(f"cannot use the CA folder {conf}: {e}") from None


def backend(name: str | None) -> Backend:
    """The firewall backend asked for; by default nftables where `nft` is installed, else
    iptables."""
    if name == "iptables" or (name is None and shutil.which("nft") is None):
        return Iptables()
    return Nftables()


@click.group()
def capture() -> None:
    """Capture this host's connections to the intercepted hosts with firewall rules, so apps
    need no HTTPS_PROXY (root; the proxy in `mode: transparent`)."""


@capture.command("install")
@config_option
@click.option("--port", type=int, help="The proxy's port, when it runs with "
              "`orchestrator run --port N` [default: from `listen:`].")  # fmt: skip
@click.option("--all", "everything", is_flag=True, help="Capture every connection to ports 443 "
              "and 80 (the proxy tunnels other hosts untouched), not only the intercepted hosts'.")  # fmt: skip
@click.option("--proxy-user", metavar="USER", help="The user the proxy runs as: its connections "
              "are never captured [default: the invoking user, $SUDO_USER under sudo].")  # fmt: skip
@click.option("--uid", "uids", multiple=True, metavar="USER",
              help="Capture only this user's connections (repeatable; name or number).")  # fmt: skip
@click.option("--gid", "gids", multiple=True, metavar="GROUP",
              help="Capture only this group's connections (repeatable; name or number).")  # fmt: skip
@backend_option
def capture_install(config: str, port: int | None, everything: bool, proxy_user: str | None,
                    uids: tuple[str, ...], gids: tuple[str, ...], name: str | None) -> None:  # fmt: skip
    """Install the capture rules, or replace ours (the names in `intercept:` are resolved now:
    re-run after a DNS change)."""
    need_root("capture install", "changes the firewall")
    cfg = loader.load(config)
    plan = plans.plan(cfg.settings, config_name=cfg.path.name, port=port, everything=everything,
                      proxy_user=proxy_user or plans.invoking_user(), uids=uids, gids=gids)  # fmt: skip
    fw = backend(name)
    fw.install(plan)
    click.echo(f"capture installed with {fw.name}; `orchestrator capture status` shows its "
               "counters, `orchestrator capture remove` takes it out")  # fmt: skip
    for line in plans.describe(plan):
        click.echo(line)
    if not _listening(plan.proxy_port):
        click.echo(f"note: nothing listens on loopback port {plan.proxy_port} yet: start "
                   "`orchestrator run` (mode: transparent); until then captured connections "
                   "are refused")  # fmt: skip


def _present(name: str | None) -> list[Backend]:
    """The backend asked for, else every one whose program is installed (`remove` takes ours
    out of each, `status` shows the one holding ours)."""
    if name:
        return [backend(name)]
    return [backend(n) for n, tool in (("nftables", "nft"), ("iptables", "iptables"))
            if shutil.which(tool)]  # fmt: skip


@capture.command("remove")
@backend_option
def capture_remove(name: str | None) -> None:
    """Remove our rules (and nothing else: the rest of the rule set stays as it was)."""
    need_root("capture remove", "changes the firewall")
    removed = [fw.name for fw in _present(name) if fw.remove()]
    click.echo(f"capture removed ({', '.join(removed)})" if removed
               else "no capture rules of ours were installed")  # fmt: skip


@capture.command("status")
@backend_option
def capture_status(name: str | None) -> None:
    """Show our rules, their counters, and whether the proxy listens where they point."""
    need_root("capture status", "reads the firewall")
    found = [fw.status() for fw in _present(name) or [backend(None)]]
    st = next((s for s in found if s.installed), found[0])
    if not st.installed:
        click.echo(f"capture is not installed ({', '.join(s.backend for s in found)}); "
                   "`sudo orchestrator capture install` sets it up")  # fmt: skip
        sys.exit(1)
    click.echo(st.listing)
    click.echo(f"{st.redirected} connections redirected to the proxy so far"
               + (f", {st.refused} refused (an address family it does not listen on)"
                  if st.refused else "")
               + ("" if st.redirected else ": none yet — is an app of a captured user "
                  "calling an intercepted host?"))  # fmt: skip
    if st.proxy_port is not None:
        click.echo(f"proxy on loopback port {st.proxy_port}: "
                   + ("listening" if _listening(st.proxy_port) else
                      "NOTHING LISTENS — start `orchestrator run` in mode: transparent"))  # fmt: skip


def _listening(port: int) -> bool:
    for host in ("127.0.0.1", "::1"):
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            continue
    return False


@click.command("ca")
@config_option
@confdir_option
@click.option("--paths", is_flag=True, help="Print where the CA and the bundle are, not the PEM.")
def ca_command(config: str, confdir: str | None, paths: bool) -> None:
    """Print this installation's CA certificate (PEM) and write the bundle for SSL_CERT_FILE
    (creating the CA on first use); `--paths` prints where both are instead."""
    cert, bundle = ca_files(loader.load(config), confdir)
    if not paths:
        click.echo(cert.read_text(), nl=False)
        return
    click.echo(f"CA certificate: {cert}")
    click.echo(f"CA bundle (system roots + this CA): {bundle}")
    click.echo(f"  export SSL_CERT_FILE={bundle}          # Python: openai SDK, httpx")
    click.echo(f"  export REQUESTS_CA_BUNDLE={bundle}     # requests")
    click.echo(f"  export NODE_EXTRA_CA_CERTS={cert}      # Node")
    click.echo(f"  curl --cacert {cert} ...")
    click.echo("(`orchestrator trust` prints the settings for every runtime)")


@click.command()
@config_option
@confdir_option
@click.option("--install-system", is_flag=True, help="Also add the CA to the system store "
              "(Debian/Ubuntu: update-ca-certificates; root).")  # fmt: skip
@click.option("--remove-system", is_flag=True, help="Take the CA out of the system store again.")
def trust(config: str, confdir: str | None, install_system: bool, remove_system: bool) -> None:
    """Print the CA, its bundle and the exact setting that makes each runtime trust it
    (Python, Node, Bun, curl, Java); `--install-system` adds it to the system store."""
    if install_system and remove_system:
        raise OrchestratorError("--install-system and --remove-system undo each other: give one")
    cfg = loader.load(config)
    cert, bundle = ca_files(cfg, confdir)
    if install_system or remove_system:
        need_root("trust --install-system" if install_system else "trust --remove-system",
                  f"changes {store.SYSTEM_ANCHORS}")  # fmt: skip
    if install_system:
        path = store.install_system(cert)
        click.echo(f"installed {cert} as {path} and rebuilt the system store (undo: "
                   "`orchestrator trust --remove-system`)")  # fmt: skip
        return
    if remove_system:
        gone = store.remove_system()
        click.echo(f"removed {gone} and rebuilt the system store" if gone
                   else f"nothing to remove: {store.SYSTEM_ANCHORS / store.ANCHOR} is not there")  # fmt: skip
        return
    s = cfg.settings
    proxy = f"http://{local_address(s)}" if s.mode == "regular" else None
    for line in store.runtime_settings(cert, bundle, proxy):
        click.echo(line)


@click.command()
@config_option
@confdir_option
@click.option("--proxy", metavar="URL", help="The running proxy, in regular mode [default: "
              "http://<listen>; with `clients:` http://NAME:KEY@host:port].")  # fmt: skip
@click.option("--host", metavar="HOST",
              help="The intercepted host to ask [default: the first name in `intercept:`].")  # fmt: skip
@click.option("--python", "python", metavar="PATH",
              help="The Python interpreter to check [default: the one running orchestrator].")  # fmt: skip
def doctor(config: str, confdir: str | None, proxy: str | None, host: str | None,
           python: str | None) -> None:  # fmt: skip
    """Check that python, node and curl on this host reach an intercepted host through the
    running proxy, trusting its CA; print OK or what to fix for each (exit 1 if one fails)."""
    cfg = loader.load(config)
    cert, bundle = ca_files(cfg, confdir, create=False)
    probe = checks.probe_for(cfg.settings, proxy=proxy, host=host, cert=cert, bundle=bundle)
    click.echo(f"POST {probe.url} " + (f"through {redact(probe.proxy)}" if probe.proxy else
               "with no proxy variables") + f", trusting {cert}")  # fmt: skip
    results = checks.check_all(probe, python or sys.executable)
    for line in checks.report(results):
        click.echo(line)
    sys.exit(1 if any(r.verdict == "fail" for r in results) else 0)
