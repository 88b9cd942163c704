"""Runtime state shared by the request path: breakers, observed latency, budget counters,
and which provider produced each Responses answer.

- `memory`            the interfaces, and the in-process state (the default, one replica)
- `response_homes`    `ResponseHomes`: the provider behind each response id, in-process
- `redisstate`        `RedisState`: the same state in Redis, for several replicas; it composes
- `redis_connection`  the client: URL and redaction, timeouts, health, running the scripts
- `redis_writes`      the queue of writes applied in order once Redis answers
- `redis_breakers`, `redis_latency`, `redis_budgets`, `redis_response_homes`
                      each interface over Redis, its keys
- `redis_lua`         the atomic Lua scripts they run

May import `addon.routing` (the pure transitions it stores) and `addon.config`.
"""
