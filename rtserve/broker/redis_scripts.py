"""The Lua scripts of RedisBroker (rtserve/broker/redis.py, whose docstring has the key
layout). Each runs atomically on the keys of one channel; times come from Redis (`TIME`)."""

# Lua helpers shared by the scripts: Redis time in ms.
NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# The epoch a stream of a channel starting now gets (rtserve.broker.base.empty_epoch): a hash
# of the prefix's seed (made from `new_seed` when missing), the channel and the time window.
# Under Redis Cluster the seed key lives in another slot than the channel: the node read it
# once and passes it as `given_seed` (seed_key is then nil).
EMPTY_EPOCH = """
local function empty_epoch(seed_key, new_seed, channel, window_ms, given_seed)
  local seed = given_seed
  if not seed then seed = redis.call('GET', seed_key) end
  if not seed then
    redis.call('SET', seed_key, new_seed)
    seed = new_seed
  end
  local slot = math.floor(now_ms() / math.max(1, tonumber(window_ms)))
  local text = seed .. '\\0' .. channel .. '\\0' .. string.format('%d', slot)
  return string.sub(redis.sha1hex(text), 1, 8)
end
"""

# KEYS: meta, stream, idempotency key (the meta key when there is none), epoch seed (not
#       under Cluster).
# ARGV: payload, new seed, history_size, history_ttl ms, stream lifetime ms, idempotency ttl
#       ms (0: no key), pub/sub name, channel, epoch window ms (meta_ttl); under Cluster also
#       the seed and the publish command ('SPUBLISH').
# Returns {offset, epoch, 1 when published / 0 when an earlier position was returned}.
PUBLISH = (
    NOW
    + EMPTY_EPOCH
    + """
local idem_ttl = tonumber(ARGV[6])
if idem_ttl > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local o, e = string.match(seen, '^(%d+):(.*)$')
    return {tonumber(o), e, 0}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    -- The meta was lost before its time (the stream outlived it): its life may have had
    -- this window's epoch, so this one takes a random one.
    epoch = string.sub(ARGV[2], 1, 8)
  else
    epoch = empty_epoch(KEYS[4], ARGV[2], ARGV[8], ARGV[9], ARGV[10])
  end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local size = tonumber(ARGV[3])
local meta_ttl = tonumber(ARGV[5])
if size > 0 then
  local id = string.format('%d-0', offset)
  redis.call('XADD', KEYS[2], 'MAXLEN', size, id, 'p', ARGV[1], 't', now_ms())
  redis.call('HSET', KEYS[1], 'ttl', ARGV[4])
  local ttl = tonumber(ARGV[4])
  if ttl <= 0 or ttl > meta_ttl then ttl = meta_ttl end
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], meta_ttl)
if idem_ttl > 0 then
  redis.call('SET', KEYS[3], string.format('%d:', offset) .. epoch, 'PX', idem_ttl)
end
redis.call(ARGV[11] or 'PUBLISH', ARGV[7],
  '{"o":' .. string.format('%d', offset) .. ',"e":"' .. epoch .. '","p":' .. ARGV[1] .. '}')
return {offset, epoch, 1}
"""
)

# KEYS: meta, stream, epoch seed (not under Cluster). ARGV: since (-1: all), limit (-1: no
# limit), new seed, epoch window ms (meta_ttl), 1 to drop publications older than the history
# TTL, channel; under Cluster also the seed.
# Returns {epoch, offset, offset1, payload1, offset2, payload2, ...}. A channel without meta
# is at offset 0 of the epoch its first publication will start; nothing is written for it.
HISTORY = (
    NOW
    + EMPTY_EPOCH
    + """
local m = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'ttl')
local epoch = m[1]
if not epoch then
  return {empty_epoch(KEYS[3], ARGV[3], ARGV[6], ARGV[4], ARGV[7]), 0}
end
local out = {epoch, tonumber(m[2])}
local limit = tonumber(ARGV[2])
if limit == 0 then return out end
local cutoff = nil
local ttl = tonumber(m[3] or '0')
if ARGV[5] == '1' and ttl > 0 then cutoff = now_ms() - ttl end
local since = tonumber(ARGV[1])
local start = '-'
if since >= 0 then start = string.format('%d-0', since + 1) end
local found = 0
while true do
  local want = 500
  if limit > 0 then want = limit - found end
  local batch = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', want)
  for _, entry in ipairs(batch) do
    local f = entry[2]
    if cutoff == nil or tonumber(f[4]) > cutoff then
      out[#out + 1] = tonumber(string.match(entry[1], '^(%d+)'))
      out[#out + 1] = f[2]
      found = found + 1
    end
  end
  if #batch < want or (limit > 0 and found >= limit) then break end
  start = string.format('%d-0', tonumber(string.match(batch[#batch][1], '^(%d+)')) + 1)
end
return out
"""
)

# KEYS: meta, stream. ARGV: the epoch a node found diverged, a new random epoch, meta_ttl ms.
# Starts the new epoch (offset 0, history dropped) when the channel is still on the diverged
# one or has no meta at all (its first publications were lost with a failed master: the next
# one would make the same window epoch again). Returns {offset, epoch} as they are now.
RENEW = """
local m = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if m[1] and m[1] ~= ARGV[1] then return {tonumber(m[2]), m[1]} end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'offset', 0)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {0, ARGV[2]}
"""

PRUNE = (
    NOW
    + """
local function prune()
  local now = now_ms()
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for i = 1, #dead, 500 do
    redis.call('HDEL', KEYS[1], unpack(dead, i, math.min(i + 499, #dead)))
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
end
"""
)

# KEYS: pres, pres:exp. ARGV: client, info JSON, ttl ms.
PRESENCE_ADD = (
    NOW
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[3]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local at = math.floor(tonumber(last[2]))
redis.call('PEXPIREAT', KEYS[1], at)
redis.call('PEXPIREAT', KEYS[2], at)
return 1
"""
)

# KEYS: pres, pres:exp. ARGV: client.
PRESENCE_REMOVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: pres, pres:exp. Returns HGETALL after dropping expired members.
PRESENCE = (
    PRUNE
    + """
prune()
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: pres, pres:exp. Returns {clients, distinct users}.
PRESENCE_STATS = (
    PRUNE
    + """
prune()
local values = redis.call('HVALS', KEYS[1])
local users, count = {}, 0
for _, value in ipairs(values) do
  local ok, info = pcall(cjson.decode, value)
  if ok and type(info) == 'table' and type(info['user']) == 'string' then
    if not users[info['user']] then
      users[info['user']] = true
      count = count + 1
    end
  end
end
return {#values, count}
"""
)
