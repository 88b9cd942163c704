"""The proxy process behind `orchestrator run`: a curated mitmproxy Master and its options.

mitmdump's ~31 default addons each see every hook; the router needs the proxy server, TLS,
the next-layer decision and its own two addons. Dropping the rest cuts the fixed cost per
request (DESIGN.md: "a curated Master ... forwarded 1.5–1.9x faster"). Everything that
mitmdump's `-s addon/entry.py` gives still works that way too (`router_addons`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import exceptions

from addon.proxy.adapter import Orchestrator
from addon.proxy.clientauth import ClientAuth


def router_addons() -> list[ClientAuth | Orchestrator]:
    """The router's addons in hook order: client authentication first, then routing."""
    orchestrator = Orchestrator()
    return [ClientAuth(orchestrator.view), orchestrator]


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
    SIGTERM; the exit code (2 when an option is refused, with the reason on stderr)."""
    from mitmproxy import master, options
    from mitmproxy.addons import core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig

    async def main() -> int:
        logging.getLogger().setLevel(logging.DEBUG)  # handlers filter; as mitmdump does
        for name in ("asyncio", "hpack", "quic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        opts = options.Options()
        m = master.Master(opts, with_termlog=True)
        m.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            disable_h2c.DisableH2C(),
            errorcheck.ErrorCheck(),
            *router_addons(),
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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, m.shutdown)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        await m.run()
        return 0

    return asyncio.run(main())
