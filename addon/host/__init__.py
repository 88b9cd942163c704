"""Setting up the machine the proxy runs on, and checking the setup.

- `capture`   what `orchestrator capture install` sets up, as a plan: which destinations are
              redirected to the proxy (intercepted names resolved now), whose connections
              are captured, and whose never are (the proxy's own user, so it cannot loop)
- `firewall`  what a firewall backend does, the status it reports, running its programs
- `nftables`  the plan as one nftables table of our own: atomic, idempotent install, removal
              that touches nothing else, and a status with packet counters
- `iptables`  the same plan as chains of our own, where `nft` is absent
- `trust`     the CA settings per runtime (`orchestrator trust`) and the system trust store
- `doctor`    `orchestrator doctor`: python, node and curl each ask an intercepted host
              through the running proxy, and each gets OK or what to fix
- `listen`    whether `orchestrator run` may and can listen where it is told (loopback rule
              for `--host`, a busy port) before mitmproxy starts
- `running`   the running proxy's admin endpoint, found even when the config does not load
- `commands`  the click commands `ca`, `trust`, `capture` and `doctor`, registered by the CLI

This package runs programs (`nft`, `iptables`, `update-ca-certificates`, the runtimes) and
reads users, names and sockets of this host. It may import `addon.config`, `addon.errors`
and, for the CA's files, `addon.proxy.ca` (never mitmproxy itself); only `addon.cli`
imports it.
"""
