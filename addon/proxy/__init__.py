"""The mitmproxy adapter and everything that serves requests.

- `adapter`     the mitmproxy addon class and `serve()` (the only mitmproxy importer but `ca`)
- `dispatch`    one request from features to answer: routing, the attempt engine, the reply
- `exchange`    the values the adapter and the dispatcher pass each other
- `upstream`    the attempt engine (aiohttp): connect, first token, stall, fallback
- `pipe`        the loopback pipe that hands an open upstream stream to mitmproxy
- `budgetgate`  budget reservations around a request
- `recording`   one ledger row per request, and live latency for the scorer
- `clients`     client authentication (`clients:`)
- `runtime`     the running proxy: config reloads, stores, background tasks
- `admin`       the admin endpoint (`/status`, `/metrics`, `/rankings`) and `statuspage`
- `metrics`     Prometheus metrics
- `ca`          the per-installation CA

May import everything below it (routing, wire, config, state, store); nothing imports it but
`addon.cli` and `addon.entry`.
"""
