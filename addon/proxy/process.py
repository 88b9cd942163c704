"""The proxy process: the curated mitmproxy Master behind `orchestrator run`, the router's
addons (for it and for `mitmdump -s addon/entry.py`), and where the proxy listens.

mitmdump's ~31 default addons each see every hook; the router needs the proxy server, TLS,
the next-layer decision and its own addons. Dropping the rest cuts the fixed cost per
request (DESIGN.md: "a curated Master ... forwarded 1.5–1.9x faster"). Everything that
mitmdump's `-s addon/entry.py` gives still works that way too (`router_addons`).

`Listeners` makes every launch path listen as `orchestrator.yaml` says, refuses a listener
other machines could reach without `clients:`, and runs local capture (`mode: local`,
mitmproxy's eBPF redirector) only for real: it starts, or the process exits non-zero with
one line naming what is missing (`local_capture_missing` before it starts, `RedirectorLog`
after).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import connection, ctx, exceptions
from mitmproxy.proxy import mode_specs

from addon.proxy import ca, options
from addon.proxy.adapter import Orchestrator
from addon.proxy.banner import startup_lines
from addon.proxy.clientauth import ClientAuth

log = logging.getLogger("orchestrator")
SETTLE_S = 3.0  # how long local capture's redirector may take to fail after it started
SERVER_LOG = "mitmproxy.addons.proxyserver"  # mitmproxy: "a server failed to start"
REDIRECTOR_LOG = "mitmproxy.packet_sources.linux"  # mitmproxy_rs: the redirector's output
INSTEAD = "use `mode: transparent` with `sudo .venv/bin/orchestrator capture install`"


def router_addons() -> list[ClientAuth | Orchestrator]:
    """The router's addons in hook order: client authentication first, then routing (with
    `Listeners` as its child addon, so its hooks run right after the orchestrator's)."""
    auth, orchestrator, _ = _router()
    return [auth, orchestrator]


def _router() -> tuple[ClientAuth, Orchestrator, Listeners]:
    orchestrator = Orchestrator()
    listeners = Listeners(orchestrator)
    orchestrator.addons = [listeners]
    return ClientAuth(orchestrator.view), orchestrator, listeners


def serve(
    config_path: Path,
    *,
    mode: str,
    host: str,
    port: int,
    confdir: Path,
    extra: Sequence[str] = (),
) -> int:
    """Run a mitmproxy Master holding only the addons the router needs, until SIGINT or
    SIGTERM; the exit code (2 when an option or a listener is refused, with the reason; 1
    when a server or local capture failed)."""
    from mitmproxy import master
    from mitmproxy import options as mitm
    from mitmproxy.addons import core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig

    async def main() -> int:
        logging.getLogger().setLevel(logging.DEBUG)  # handlers filter; as mitmdump does
        for name in ("asyncio", "hpack", "quic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        opts = mitm.Options()
        m = master.Master(opts, with_termlog=True)
        auth, orchestrator, listeners = _router()
        m.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            disable_h2c.DisableH2C(),
            errorcheck.ErrorCheck(),
            auth,
            orchestrator,
        )
        try:
            opts.update(
                mode=[mode],
                listen_host=host,
                listen_port=port,
                confdir=str(confdir),
                connection_strategy="lazy",
                orchestrator_config=str(config_path),
            )
            if extra:
                opts.set(*extra)
        except exceptions.OptionsError as e:
            print(f"orchestrator: {e}", file=sys.stderr)
            return 2
        if listeners.refused:  # already logged, as one line
            return 2
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, m.shutdown)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        await m.run()
        return 1 if listeners.failure else 0

    return asyncio.run(main())


class Listeners:
    """Where the proxy listens, and whether it does.

    - `listen:` and `mode:` become mitmproxy's `listen_host`, `listen_port` and `mode` where
      the operator left those at their defaults (plain `mitmdump -s` / `mitmweb -s`, which
      start their servers before they load the addon: those are then started again, and no
      connection is served in between);
    - a listener other machines reach is refused without `clients:`, however it was set;
    - local capture is checked before it starts (`local_capture_missing`) and watched after
      (`RedirectorLog`): a failure is one error line, then the process exits non-zero;
    - `problems()` is what /healthz reports; the banner (`startup_lines`) is logged once
      all of that is settled.
    """

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator
        self._starting = True  # until `running`
        self._restart = False  # mitmproxy's servers started before `listen:` was applied
        self._local = False
        self._watch: RedirectorLog | None = None
        self._master: Any = None
        self.refused: str | None = None  # why startup was refused (plain mitmdump/mitmweb)
        self.failure: str | None = None  # why local capture failed

    def configure(self, updated: set[str]) -> None:
        """Apply `listen:`/`mode:` at the first load, then check every listener change."""
        rt = self._orchestrator.runtime
        if rt is None:
            return
        settings = rt.view.config.settings
        if self._master is None:
            self._master = ctx.master
            rt.listener_problems = self.problems
            explicit = [k for k in options.LAUNCH_OPTIONS if ctx.options.has_changed(k)]
            wanted = {k: v for k, v in options.launch_options(settings, explicit=explicit).items()
                      if getattr(ctx.options, k) != v}  # fmt: skip
            if wanted:
                ps = ctx.master.addons.get("proxyserver")
                self._restart = ps is not None and (ps.servers.is_updating or len(ps.servers) > 0)
                ctx.options.update(**wanted)  # configure runs again: that run checks them
                return
        elif not updated & {*options.LAUNCH_OPTIONS, "orchestrator_config"}:
            return
        modes = _modes(ctx.options.mode)
        problem = options.exposed(
            [(m.listen_host(ctx.options.listen_host), m.listen_port(ctx.options.listen_port))
             for m in modes if not isinstance(m, mode_specs.LocalMode)],
            has_clients=bool(settings.clients), config_name=rt.config_path.name,
        )  # fmt: skip
        local = any(isinstance(m, mode_specs.LocalMode) for m in modes)
        if local and self._watch is None:  # before mitmproxy may try to start it
            self._watch = RedirectorLog(self._failed, verbose=settings.log_level == "debug")
            self._watch.install()
        if problem is None and local and not self._local:
            problem = local_capture_missing()
        self._local = local
        if problem is not None:
            self._refuse(problem)

    def _refuse(self, message: str) -> None:
        """At startup: one error line, and nothing is served (`orchestrator run` then exits 2,
        plain mitmdump/mitmweb exit 1 on their startup check; raising would make mitmproxy
        roll the options back and configure again, and log a script's error with its
        traceback). Once serving: OptionsError, so a live edit of an option is rolled back."""
        if not self._starting:
            raise exceptions.OptionsError(message)
        if self.refused is None:  # mitmproxy configures a script twice as it loads it
            log.error("%s", message)
        self.refused = message
        if ctx.master.addons.get("errorcheck") is None:
            ctx.master.shutdown()

    def _failed(self, line: str) -> bool:
        """Local capture failed (called from mitmproxy_rs's threads too): record it; once
        serving, stop the process (during startup mitmproxy's check exits on the line).
        Whether to log the line: not after a refusal, which said why already."""
        if self.refused:
            return False
        self.failure = line
        if not self._starting and self._master is not None:
            self._master.shutdown()
        return True

    def client_connected(self, client: connection.Client) -> None:
        """Serve no connection before the servers listen where they should, or once refused."""
        if self.refused or self._restart:
            client.error = "the router is not serving (yet)"

    async def running(self) -> None:
        """Restart servers started before `listen:` was applied, let local capture settle,
        then log the banner (with the address actually bound)."""
        rt = self._orchestrator.runtime
        if rt is None or self.refused:
            return
        ps = ctx.master.addons.get("proxyserver")
        if self._restart and ps is not None:
            await ps.servers.update([])
            await ps.servers.update(_modes(ctx.options.mode))  # failures: logged, exit 1
        self._restart = False
        if self._local:
            for _ in range(int(SETTLE_S / 0.05)):
                if self.failure:
                    break
                await asyncio.sleep(0.05)
        self._starting = False
        if self.failure:
            return
        addrs = ps.listen_addrs() if ps is not None else []
        host, port = addrs[0][:2] if addrs else (ctx.options.listen_host, ctx.options.listen_port)
        bundle = ca.bundle_or_cert(Path(ctx.options.confdir).expanduser())
        for line in startup_lines(rt.view, host, port, str(bundle)):
            log.info("%s", line)

    def problems(self) -> list[str]:
        """What /healthz reports as down, one line each: local capture that failed, and the
        mitmproxy servers that do not run (`down`). Empty while every listener serves."""
        ps = self._master.addons.get("proxyserver") if self._master is not None else None
        servers = ps.servers if ps is not None and not self._restart else ()
        return ([self.failure] if self.failure else []) + down(servers)

    def done(self) -> None:
        """Stop reading the redirector's log."""
        if self._watch is not None:
            self._watch.uninstall()
            self._watch = None


def down(servers: Iterable[Any]) -> list[str]:
    """One line per mitmproxy server instance (`mode_servers.ServerInstance`) that is not
    running, with the first line of its error."""
    out = []
    for server in servers:
        if not server.is_running:
            why = str(server.last_exception or "stopped").strip().splitlines()[0]
            out.append(f"{server.mode.description} ({server.mode.full_spec}) is not running: {why}")
    return out


def _modes(specs: Sequence[str]) -> list[mode_specs.ProxyMode]:
    """mitmproxy's mode specs as values (mitmproxy itself refuses a malformed one)."""
    out = []
    for spec in specs:
        try:
            out.append(mode_specs.ProxyMode.parse(spec))
        except ValueError:
            continue
    return out


# --------------------------------------------------------------------------- local capture


def local_capture_missing() -> str | None:
    """What this host lacks for local capture, as one line with the remedy; None when
    nothing is known to be missing. mitmproxy's Linux redirector loads an eBPF program as
    root, through `sudo` even for root, and attaches it to the cgroup v2 root
    /sys/fs/cgroup; whether the kernel accepts the program shows only once it runs
    (`RedirectorLog`)."""
    try:
        from mitmproxy_rs.local import LocalRedirector
    except ImportError:
        return f"local mode needs mitmproxy_rs's local redirector (not installed) — {INSTEAD}"
    reason = LocalRedirector.unavailable_reason()
    if reason:
        return f"local mode is not available here: {reason} — {INSTEAD}"
    if sys.platform != "linux":
        return None
    if shutil.which("sudo") is None:
        return ("local mode needs `sudo`: mitmproxy starts its eBPF redirector with sudo (even "
                f"as root) and this host has none — install sudo, or {INSTEAD}")  # fmt: skip
    fstype = _mounted("/sys/fs/cgroup")
    if fstype != "cgroup2":
        return ("local mode needs the cgroup v2 hierarchy mounted at /sys/fs/cgroup (mitmproxy's "
                f"eBPF program attaches to its root) and this host has {fstype or 'nothing'} "
                "there — boot with the unified hierarchy (systemd.unified_cgroup_hierarchy=1), "
                f"or {INSTEAD}")  # fmt: skip
    if os.geteuid() != 0 and not sys.stdin.isatty() and not _sudo_ready():
        return ("local mode needs root: sudo wants a password and there is no terminal to type "
                "it — start the proxy from a terminal, run `sudo -v` just before, or start it "
                f"with `sudo -E`, or {INSTEAD}")  # fmt: skip
    return None


def _mounted(path: str) -> str | None:
    """The file system type mounted at `path` (the last mount there wins), None if none."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return None
    found = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == path:
            found = fields[2]
    return found


def _sudo_ready() -> bool:
    """Whether sudo runs a command without asking for a password."""
    try:
        done = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class RedirectorLog(logging.Filter):
    """A filter on what mitmproxy logs of local capture: the redirector's own output (its
    error, `Error: …` and the `Caused by:` chain, is kept as the reason; the rest — BTF dumps,
    backtraces — shows only at `log_level: debug`), its exit, and a redirector that could not
    start (mitmproxy logs mitmproxy_rs's error with its backtrace). Each failure becomes one
    error line with the remedy, and `on_failure(line)` is told (it answers whether to log
    the line at all)."""

    def __init__(self, on_failure: Callable[[str], bool], *, verbose: bool) -> None:
        super().__init__()
        self._on_failure = on_failure
        self._verbose = verbose
        self._why: list[str] = []
        self._causes = False

    def install(self) -> None:
        """Start filtering both loggers."""
        for name in (SERVER_LOG, REDIRECTOR_LOG):
            logging.getLogger(name).addFilter(self)

    def uninstall(self) -> None:
        """Stop filtering."""
        for name in (SERVER_LOG, REDIRECTOR_LOG):
            logging.getLogger(name).removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep, drop or rewrite one record (see the class docstring)."""
        text = record.getMessage()
        if record.name == SERVER_LOG:
            if record.levelno >= logging.ERROR and _redirector_error(text):
                first = text.strip().splitlines()[0].rstrip(".")
                return self._fail(record, f"local mode could not start ({first}): mitmproxy "
                                  "runs its eBPF redirector as root through `sudo` — start the "
                                  "proxy where sudo works (a terminal, after `sudo -v`, or as "
                                  f"root), or {INSTEAD}")  # fmt: skip
            return True
        if record.levelno >= logging.ERROR and text.startswith("[linux-redirector] exited"):
            why = ": ".join(self._why) or text.removeprefix("[linux-redirector] ")
            return self._fail(record, "local mode failed: mitmproxy's eBPF redirector stopped "
                              f"({why}); this kernel does not let it capture (it needs BPF "
                              "with BTF, the cgroup v2 root at /sys/fs/cgroup, and root) — "
                              f"{INSTEAD}")  # fmt: skip
        reported = self._note(text)
        return self._verbose or (record.levelno >= logging.ERROR and not reported)

    def _note(self, text: str) -> bool:
        """Collect the redirector's error report (`Error: …`, its causes, its backtrace) from
        its stderr lines; whether `text` is part of one."""
        stripped = text.strip()
        if text.startswith("Error: "):
            self._why, self._causes = [text.removeprefix("Error: ").strip()], False
        elif not self._why:
            return False
        elif stripped == "Caused by:":
            self._causes = True
        elif stripped.startswith("Stack backtrace"):
            self._causes = False
        elif self._causes and text.startswith("    "):
            self._why.append(re.sub(r"^\d+: ", "", stripped))
        return True

    def _fail(self, record: logging.LogRecord, line: str) -> bool:
        """Make `record` the one line saying so; whether to keep it."""
        record.msg, record.args, record.exc_info, record.exc_text = line, (), None, None
        return self._on_failure(line)


def _redirector_error(text: str) -> bool:
    """Whether a server's start error is local capture's (mitmproxy_rs's error chain, or its
    words for the redirector and sudo)."""
    return any(w in text for w in ("Caused by:", "Stack backtrace:", "sudo", "privileges",
                                   "redirector"))  # fmt: skip
