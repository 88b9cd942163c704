"""Runtime state shared by the request path: breakers, observed latency, budget counters.

- `memory`      in-process (the default, one replica)
- `redisstate`  Redis, for several replicas; `redis_lua` holds its atomic scripts

May import `addon.routing` (the pure transitions it stores) and `addon.config`.
"""
