"""The Lua scripts behind `addon.state.redisstate`: each runs atomically in Redis, so replicas
agree on breaker transitions, the single half-open probe and budget admission. Amounts are
integer units of 1e-10 USD; times come from Redis `TIME` so replicas' clocks never matter.
"""

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A queued write carries ARGV[1] = its number and ARGV[2] = the lowest number still
-- queued: it is applied once even when sent again; numbers below ARGV[2] are finished.
local function fresh()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
  if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[1]) == 0 then return false end
  redis.call('PEXPIRE', KEYS[1], 86400000)
  return true
end
"""

# KEYS: applied, brk:<t>, probe:<t>, brks   ARGV: seq, low, target, ...
_BREAKER = """
local function state(now)
  local h = redis.call('HMGET', KEYS[2], 'status', 'failures', 'opened_at')
  return {h[1] or 'closed', tonumber(h[2] or '0'), tonumber(h[3] or '0'),
          redis.call('EXISTS', KEYS[3]), now}
end
"""

# Integers stay strings on their way back into Redis (Lua's tostring of a big number
# switches to exponent notation); numbers passed straight to redis.call are exact.
# KEYS: applied, account, holds, amounts, budgets, budget-rules, budget-ids
# ARGV: seq, low, name, scope, start, end, expire_at, rule json, ...
_BUDGET = """
local function purge(a, h, m, now)
  local ids = redis.call('ZRANGEBYSCORE', h, '-inf', now)
  for _, id in ipairs(ids) do
    local amt = redis.call('HGET', m, id)
    if amt then
      redis.call('HDEL', m, id)
      if amt ~= '0' then redis.call('HINCRBY', a, 'held', '-' .. amt) end
    end
  end
  if #ids > 0 then redis.call('ZREMRANGEBYSCORE', h, '-inf', now) end
end
local function touch()
  if redis.call('HSETNX', KEYS[2], 'name', ARGV[3]) == 1 then
    redis.call('HSET', KEYS[2], 'scope', ARGV[4], 'start', ARGV[5], 'end', ARGV[6])
    redis.call('ZADD', KEYS[5], ARGV[6], KEYS[2])
  end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[6], ARGV[3], ARGV[8]) end
  redis.call('EXPIREAT', KEYS[2], ARGV[7])
end
local function unhold(id)
  local amt = redis.call('HGET', KEYS[4], id)
  if amt then
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[3], id)
    if amt ~= '0' then redis.call('HINCRBY', KEYS[2], 'held', '-' .. amt) end
  end
end
local function account()
  local v = redis.call('HMGET', KEYS[2], 'spent', 'held', 'alerted')
  return v[1] or '0', v[2] or '0', v[3] and 1 or 0
end
"""

_SOURCES = {
    # ARGV[4..6]: cooldown ms, lease ms, token -> {1|0, state}
    "brk_acquire": _BREAKER
    + """
local now = now_ms()
local s = state(now)
local ok = 0
if s[1] == 'closed' then
  ok = 1
elseif s[1] == 'half_open' or now - s[3] >= tonumber(ARGV[4]) then
  if s[1] == 'open' then redis.call('HSET', KEYS[2], 'status', 'half_open') end
  if redis.call('SET', KEYS[3], ARGV[6], 'NX', 'PX', ARGV[5]) then ok = 1 end
  s = state(now)
end
return {ok, s}
""",
    # ARGV[4..6]: success 1|0, threshold, ttl ms -> state
    "brk_record": _BREAKER
    + """
local now = now_ms()
if not fresh() then return state(now) end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('SREM', KEYS[4], ARGV[3])
  return state(now)
end
local s = state(now)
local status, failures, opened = s[1], s[2] + 1, s[3]
if status == 'half_open' or failures >= tonumber(ARGV[5]) then
  status, opened = 'open', now
  redis.call('DEL', KEYS[3])
end
redis.call('HSET', KEYS[2], 'status', status, 'failures', failures, 'opened_at', opened)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('SADD', KEYS[4], ARGV[3])
return state(now)
""",
    # ARGV[4]: token -> state
    "brk_release": _BREAKER
    + """
if fresh() and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
return state(now_ms())
""",
    # KEYS: brks   ARGV: brk: prefix, probe: prefix -> {now, flat rows of 5}
    "brk_snapshot": """
local now = now_ms()
local rows = {}
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HMGET', ARGV[1] .. k, 'status', 'failures', 'opened_at')
  if h[1] then
    rows[#rows + 1] = k
    rows[#rows + 1] = h[1]
    rows[#rows + 1] = h[2] or '0'
    rows[#rows + 1] = h[3] or '0'
    rows[#rows + 1] = redis.call('EXISTS', ARGV[2] .. k)
  else
    redis.call('SREM', KEYS[1], k)
  end
end
return {now, rows}
""",
    # KEYS: lat   ARGV: alpha, ttl ms, then per target: key, n, n samples -> HGETALL
    "lat_push": """
local alpha = tonumber(ARGV[1])
local i = 3
while i <= #ARGV do
  local k, n = ARGV[i], tonumber(ARGV[i + 1])
  local v = tonumber(redis.call('HGET', KEYS[1], k) or '')
  for j = 1, n do
    local s = tonumber(ARGV[i + 1 + j])
    if v then v = alpha * s + (1 - alpha) * v else v = s end
  end
  if v then redis.call('HSET', KEYS[1], k, string.format('%.17g', v)) end
  i = i + 2 + n
end
if #ARGV > 2 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('HGETALL', KEYS[1])
""",
    # KEYS: resp:<id>   ARGV: seq, low, provider, ttl s (a home never changes: sent twice is
    # harmless, so no `applied` check)
    "resp_set": """
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
return 1
""",
    # KEYS: resp:<id> -> the provider, or nil when unknown or expired
    "resp_get": """
return redis.call('GET', KEYS[1])
""",
    # ARGV[9..11]: units, limit units, hold ttl ms -> {id or 0, spent, held, alerted}
    "bud_reserve": _BUDGET
    + """
local now = now_ms()
purge(KEYS[2], KEYS[3], KEYS[4], now)
local spent, held, alerted = account()
if tonumber(spent) + tonumber(held) + tonumber(ARGV[9]) > tonumber(ARGV[10]) then
  return {0, spent, held, alerted}
end
touch()
local id = redis.call('INCR', KEYS[7])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[11]), id)
redis.call('HSET', KEYS[4], id, ARGV[9])
held = redis.call('HINCRBY', KEYS[2], 'held', ARGV[9])
redis.call('EXPIREAT', KEYS[3], ARGV[7])
redis.call('EXPIREAT', KEYS[4], ARGV[7])
return {id, spent, held, alerted}
""",
    # ARGV[9..11]: id, units charged, alert threshold or '' -> {applied, alert now, spent}
    "bud_settle": _BUDGET
    + """
if not fresh() then return {0, 0, 0} end
unhold(ARGV[9])
touch()
local spent = redis.call('HINCRBY', KEYS[2], 'spent', ARGV[10])
local alert = 0
if ARGV[11] ~= '' and spent >= tonumber(ARGV[11]) then
  alert = redis.call('HSETNX', KEYS[2], 'alerted', '1')
end
return {1, alert, spent}
""",
    # ARGV[9]: id
    "bud_release": _BUDGET
    + """
if fresh() then unhold(ARGV[9]) end
return 1
""",
    # ARGV[9..10]: units, alert threshold or '' (passing it marks the alert as sent)
    "bud_charge": _BUDGET
    + """
if not fresh() then return 0 end
touch()
local spent = redis.call('HINCRBY', KEYS[2], 'spent', ARGV[9])
if ARGV[10] ~= '' and spent >= tonumber(ARGV[10]) then
  redis.call('HSET', KEYS[2], 'alerted', '1')
end
return 1
""",
    # ARGV[9..10]: units, alert threshold or '' -> 1 when seeded, 0 when counted already
    "bud_seed": _BUDGET
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
touch()
redis.call('HSET', KEYS[2], 'spent', ARGV[9], 'held', '0', 'seeded', '1')
if ARGV[10] ~= '' and tonumber(ARGV[9]) >= tonumber(ARGV[10]) then
  redis.call('HSET', KEYS[2], 'alerted', '1')
end
return 1
""",
    # KEYS: budgets, budget-rules -> {flat rows of 7, HGETALL budget-rules}
    "bud_refresh": _BUDGET
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', math.floor(now / 1000))
local rows = {}
for _, a in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  purge(a, a .. ':h', a .. ':m', now)
  local v = redis.call('HMGET', a, 'name', 'scope', 'start', 'end', 'spent', 'held', 'alerted')
  if v[1] then
    for i = 1, 7 do rows[#rows + 1] = v[i] or '' end
  else
    redis.call('ZREM', KEYS[1], a)
  end
end
return {rows, redis.call('HGETALL', KEYS[2])}
""",
}
SCRIPTS = {name: _PRELUDE + body for name, body in _SOURCES.items()}  # name -> full source
