"""The mitmproxy adapter and everything that serves requests.

mitmproxy glue (the only mitmproxy importers):
- `adapter`     the routing addon (`Orchestrator`): options and hooks, flows to plain values
- `clientauth`  the client-authentication addon (`ClientAuth`, `clients:`), registered first
- `process`     `serve()`, the curated mitmproxy Master of `orchestrator run`; `router_addons`;
                `Listeners` (where the proxy listens, local-capture checks, listener health)
- `ca`          the per-installation CA and the `SSL_CERT_FILE` bundle
- `flowfields`  what the adapter reads from and writes to a mitmproxy request
- `handoff`     a live stream entering its flow as an in-process server connection's answer
- `inject`      the sinks that put a stream's body into its flow (`clientwire`: straight to
                an HTTP/1 client's socket)

The request path, in plain values:
- `dispatch`    one request from features to answer: routing, the attempt engine, the reply
- `apis`        what differs per API (chat, completions, responses, messages, embeddings):
                the endpoint table, features, answers, failures, the router's error bodies
- `eligible`    which providers (and embedding offerings) one request may be sent to
- `responsestate`  Responses state: pins for `previous_response_id` / `conversation`, and
                encrypted reasoning only for the provider that wrote it
- `exchange`    the values the adapter and the dispatcher pass each other
- `view`        everything derived from one config version (catalog, rankings, keys)
- `plan`        the chain's attempts, each built when tried (URL, headers, rewritten body)
- `outbound`    what an attempt sends: which headers, whose key, which URL
- `replies`     what the client gets back: status, `x-orchestrator-*` headers, body
- `upstream`    the attempt engine (aiohttp): connect, first token, stall, fallback
- `pipe`        where an open upstream stream is handed over: the handoff, or the loopback
                server mitmproxy fetches it from
- `relay`       a live stream's events passed on as they arrive: breaks, stalls, the cut
- `rescue`      a stream that broke mid-answer continued on another target and spliced in
- `streamfacts` what a stream of each API tells the ledger, the error event that ends a
                cut one, and the tap that reads a stream passing through
- `modellist`   `GET …/models`: the host's own list, the catalog's models, the aliases
- `screens`     answers before routing: 411/413 for a body's size, 426 for a WebSocket
- `budgetgate`  budget reservations around a request
- `recording`   one ledger row per request, and live latency for the scorer
- `clients`     client keys: digests, and which client a header proves
- `options`     the mitmproxy options and log levels the settings ask for

Around it:
- `runtime`     the running proxy: config reloads, stores, background tasks
- `admin`       the admin endpoint (`/status`, `/metrics`, `/overview`, `/requests`, ...)
                and `statuspage` (the page itself: `statuspage.html`)
- `metrics`     Prometheus metrics

May import everything below it (routing, wire, config, state, store); nothing imports it but
`addon.cli` and `addon.entry`.
"""
