"""The pure routing core: values in, decisions out.

- `classify`  request features: size estimate, needs, task, complexity
- `difficulty`  the learned difficulty scorer (weights in, probability and complexity out)
- `reprlen`   the bounded repr length the token estimate counts tools by
- `catalog`   the candidate catalog (benchmark DB + declared models + providers)
- `scoring`   per-profile scores and each metric's contribution
- `ranking`   the pre-ranked orders per profile, the filter walk, the router and its reranks
- `moves`     observed re-ranking: moving the few observed candidates within an order
- `selection` which profile and policy apply (RoutingRequest, select_profile)
- `decide`    routes and pins, the chain of targets for one request
- `fallback`  attempt outcomes and the next step after each
- `domains`   how far a fault reaches (provider, model, request), what a request rules out
- `chains`    chain diversity: providers interleaved, same-weights aliases recognized
- `continuation`  which targets can continue a broken stream, and the billing of its legs
- `breaker`   circuit-breaker transitions (per target and per provider)
- `cost`      prices and the cost of one call
- `budget`    budget windows and the arithmetic of spend, reservations and alerts

May import: the standard library (no clock, no I/O), pydantic values from `addon.config.schema`,
`addon.wire`, `addon.errors`. Never mitmproxy, aiohttp, httpx, sqlite3, psycopg, redis,
yaml or threading; anything that needs the time takes `now` as an argument.
"""
