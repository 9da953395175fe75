"""The Lua scripts that change shared state in Redis: each runs atomically, all keys under ``{etl}``.

Python builds task records (transitions, history) exactly as the local store does; these scripts
decide (admission, fencing, lease expiry) and commit. Times come from Redis ``TIME``, so the clocks
of API and worker hosts never matter. Every key shares the ``{etl}`` hash tag, so a Redis Cluster
would keep them in one slot.
"""

# Shared prologue: the key prefix and Redis time in milliseconds.
_PROLOGUE = """
local P = '{etl}:'
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function add_counts(deltas)
  if deltas == nil or deltas == '' then return end
  for field, delta in pairs(cjson.decode(deltas)) do
    if delta ~= 0 then redis.call('HINCRBYFLOAT', P .. 'counters', field, delta) end
  end
end
local function changed(id, rev)
  redis.call('XADD', P .. 'changes', 'MAXLEN', '~', '100000', '*', 'id', id, 'rev', rev)
end
-- The change feed (GET /events): a ring of numbered rows; the task record gets its event id,
-- put in place of the sentinel that ends its JSON (records.EVENT_SENTINEL).
local SENTINEL = '"event_id":-7305620094812345}'
local function feed(event, record)
  local seq = redis.call('INCR', P .. 'event_seq')
  redis.call('SET', P .. 'event:' .. (seq % 20000), '{"id":' .. seq .. ',' .. string.sub(event, 2))
  if string.sub(record, -#SENTINEL) == SENTINEL then
    record = string.sub(record, 1, -#SENTINEL - 1) .. '"event_id":' .. seq .. '}'
  end
  return seq, record
end
-- Concurrency keys: a task with a key holds one unit of it from its dispatch to its end
-- (keyheld:<key>) and waits for it while queued (keywait:<key>, scored in queue order).
local function key_of(id) return redis.call('HGET', P .. 'taskkey', id) end
local function key_limit(key, id)
  return tonumber(redis.call('HGET', P .. 'keylimit', key) or redis.call('HGET', P .. 'tasklimit', id) or '1')
end
local function key_free(key, id)
  return not key or redis.call('SCARD', P .. 'keyheld:' .. key) < key_limit(key, id)
end
local function enqueue(id)
  redis.call('RPUSH', P .. 'queue', id)
  local key = key_of(id)
  if key then redis.call('ZADD', P .. 'keywait:' .. key, redis.call('INCR', P .. 'qseq'), id) end
end
local function hold_key(id)
  local key = key_of(id)
  if key then
    redis.call('ZREM', P .. 'keywait:' .. key, id)
    redis.call('SADD', P .. 'keyheld:' .. key, id)
  end
end
local function release_key(id)
  local key = key_of(id)
  if key then
    redis.call('SREM', P .. 'keyheld:' .. key, id)
    redis.call('ZREM', P .. 'keywait:' .. key, id)
  end
end
"""

# ARGV: id, step, rev, json_run, json_queued, deltas_run, deltas_queued, max_queued, default_cap,
#       dispatch_ms, idem_key, fingerprint, idem_json, rate_bucket, rate_per_minute, event_run, event_queued,
#       concurrency key, its limit, singleton ('1')
# -> {'run', token, event id} | {'queue', '', event id} | {'full', queued} | {'replay', json} | {'conflict', id}
#    | {'rate', wait_s} | {'singleton', id of the task holding or awaiting the key}
SUBMIT = _PROLOGUE + """
local id, step, rev = ARGV[1], ARGV[2], ARGV[3]
if ARGV[11] ~= '' then
  local seen = redis.call('GET', P .. 'idem:' .. ARGV[11])
  if seen then
    local earlier = cjson.decode(seen)
    local record = redis.call('HGET', P .. 'task:' .. earlier['task_id'], 'json')
    local expires = redis.call('ZSCORE', P .. 'expires', earlier['task_id'])
    if record and not (expires and tonumber(expires) * 1000 <= now_ms) then
      if earlier['fingerprint'] ~= ARGV[12] then return {'conflict', earlier['task_id']} end
      return {'replay', record}
    end
  end
end
if ARGV[14] ~= '' then
  local per_minute = tonumber(ARGV[15])
  local key = P .. 'rate:' .. ARGV[14]
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(state[1]) or per_minute, tonumber(state[2]) or now_ms
  tokens = math.min(per_minute, tokens + (now_ms - at) / 60000 * per_minute)
  if tokens < 1 then return {'rate', tostring(math.ceil((1 - tokens) * 60 / per_minute))} end
  redis.call('HSET', key, 'tokens', tostring(tokens - 1), 'at', now_ms)
  redis.call('PEXPIRE', key, 120000)
end
local key = ARGV[18]
if key == '' then key = nil end
if key and ARGV[20] == '1' then
  local busy = redis.call('SMEMBERS', P .. 'keyheld:' .. key)
  if #busy == 0 then busy = redis.call('ZRANGE', P .. 'keywait:' .. key, 0, 0) end
  if #busy > 0 then
    table.sort(busy)
    return {'singleton', busy[1]}
  end
end
local cap = tonumber(redis.call('GET', P .. 'cap') or ARGV[9])
local running = redis.call('ZCARD', P .. 'running')
local queued = redis.call('LLEN', P .. 'queue')
local free = (not key) or redis.call('SCARD', P .. 'keyheld:' .. key) < tonumber(redis.call('HGET', P .. 'keylimit', key) or ARGV[19])
if queued >= tonumber(ARGV[8]) and not (queued == 0 and running < cap and free) then
  return {'full', tostring(queued)}
end
if key then
  redis.call('HSET', P .. 'taskkey', id, key)
  redis.call('HSET', P .. 'tasklimit', id, ARGV[19])
end
local answer
if queued == 0 and running < cap and free then
  hold_key(id)
  local token = redis.call('INCR', P .. 'fence')
  redis.call('HSET', P .. 'run:' .. id, 'token', token)
  redis.call('ZADD', P .. 'running', now_ms + tonumber(ARGV[10]), id)
  local seq, record = feed(ARGV[16], ARGV[4])
  redis.call('HSET', P .. 'task:' .. id, 'json', record, 'rev', rev)
  redis.call('ZADD', P .. 'status:running', 0, id)
  add_counts(ARGV[6])
  answer = {'run', tostring(token), tostring(seq)}
else
  enqueue(id)
  local seq, record = feed(ARGV[17], ARGV[5])
  redis.call('HSET', P .. 'task:' .. id, 'json', record, 'rev', rev)
  redis.call('ZADD', P .. 'status:queued', 0, id)
  add_counts(ARGV[7])
  answer = {'queue', '', tostring(seq)}
end
redis.call('ZADD', P .. 'all', 0, id)
redis.call('ZADD', P .. 'step:' .. step, 0, id)
if ARGV[11] ~= '' then redis.call('SET', P .. 'idem:' .. ARGV[11], ARGV[13]) end
changed(id, rev)
return answer
"""

# ARGV: id, expected_rev, new_rev, json, old_status, new_status, step, guard, guard_value, flags,
#       owner, lease_ms, expires_epoch_s, deltas, stop_json, event_json, ops_json
# guard: '' | 'owner' (run owner == value) | 'token' (run token == value, no owner yet)
#        | 'unclaimed' (dispatched, no owner) | 'expired' (lease passed, owner == value)
#        | 'due' (a waiting retry whose time came: it leaves the due set, once)
# ops (orchestration, api/store/redis/orchestration.py), each a JSON array:
#   ['retry', delay_ms]  the task waits for its next attempt: slot and key freed, due in delay_ms
#   ['requeue']          a due retry joins the back of the queue
#   ['dead'] | ['undead']  listed as a dead letter / taken off the list
#   ['pipeline_end']     a pipeline task ended
#   ['notify', parent]   a node task ended or waits for a retry: its pipeline has news
#   ['child', id, step, json, deltas, event, key, limit]  a new queued node task of this pipeline
# flags: 'S' set the stop flag, 'Q' leave the queue, 'C' claim (owner := owner, lease renewed)
# -> {new rev, event id} | 0 (rev moved: reload and retry) | -1 (guard refused)
COMMIT = _PROLOGUE + """
local id = ARGV[1]
local tkey = P .. 'task:' .. id
local rkey = P .. 'run:' .. id
local rev = redis.call('HGET', tkey, 'rev')
if rev ~= ARGV[2] then return 0 end
local guard, value = ARGV[8], ARGV[9]
if guard ~= '' then
  local run = redis.call('HMGET', rkey, 'token', 'owner')
  if guard == 'owner' and run[2] ~= value then return -1 end
  if guard == 'token' and (run[1] ~= value or (run[2] and run[2] ~= '')) then return -1 end
  if guard == 'unclaimed' and (not run[1] or (run[2] and run[2] ~= '')) then return -1 end
  if guard == 'expired' then
    local score = redis.call('ZSCORE', P .. 'running', id)
    if not score or tonumber(score) > now_ms or (run[2] or '') ~= value then return -1 end
  end
  if guard == 'due' then
    local due = redis.call('ZSCORE', P .. 'due', id)
    if not due or tonumber(due) > now_ms then return -1 end
    redis.call('ZREM', P .. 'due', id)
  end
end
local seq, record = feed(ARGV[16], ARGV[4])
redis.call('HSET', tkey, 'json', record, 'rev', ARGV[3])
local old, new = ARGV[5], ARGV[6]
if old ~= new then
  redis.call('ZREM', P .. 'status:' .. old, id)
  redis.call('ZADD', P .. 'status:' .. new, 0, id)
end
local flags = ARGV[10]
if string.find(flags, 'Q', 1, true) then redis.call('LREM', P .. 'queue', 0, id) end
if string.find(flags, 'S', 1, true) then redis.call('SET', P .. 'stop:' .. id, ARGV[15]) end
if string.find(flags, 'C', 1, true) then
  redis.call('HSET', rkey, 'owner', ARGV[11])
  redis.call('ZADD', P .. 'running', now_ms + tonumber(ARGV[12]), id)
end
if new == 'completed' or new == 'failed' or new == 'stopped' then
  redis.call('ZADD', P .. 'expires', ARGV[13], id)
  redis.call('ZREM', P .. 'running', id)
  redis.call('DEL', rkey, P .. 'stop:' .. id)
  redis.call('LREM', P .. 'queue', 0, id)
  redis.call('ZREM', P .. 'due', id)
  release_key(id)
  redis.call('HDEL', P .. 'taskkey', id)
  redis.call('HDEL', P .. 'tasklimit', id)
end
if ARGV[17] and ARGV[17] ~= '' then
  for _, op in ipairs(cjson.decode(ARGV[17])) do
    local kind = op[1]
    if kind == 'retry' then
      redis.call('ZREM', P .. 'running', id)
      redis.call('DEL', rkey, P .. 'stop:' .. id)
      release_key(id)
      redis.call('ZADD', P .. 'due', now_ms + tonumber(op[2]), id)
    elseif kind == 'requeue' then
      enqueue(id)
    elseif kind == 'dead' then
      redis.call('ZADD', P .. 'dead', now_ms, id)
    elseif kind == 'undead' then
      redis.call('ZREM', P .. 'dead', id)
    elseif kind == 'pipeline_end' then
      redis.call('SREM', P .. 'pipelines', id)
    elseif kind == 'notify' then
      redis.call('RPUSH', P .. 'pipeline_news', op[2])
      redis.call('LTRIM', P .. 'pipeline_news', -10000, -1)
    elseif kind == 'child' then
      local child = op[2]
      local cseq, crecord = feed(op[6], op[4])
      redis.call('HSET', P .. 'task:' .. child, 'json', crecord, 'rev', 1)
      redis.call('ZADD', P .. 'status:queued', 0, child)
      redis.call('ZADD', P .. 'all', 0, child)
      redis.call('ZADD', P .. 'step:' .. op[3], 0, child)
      if op[7] ~= '' then
        redis.call('HSET', P .. 'taskkey', child, op[7])
        redis.call('HSET', P .. 'tasklimit', child, op[8])
      end
      enqueue(child)
      add_counts(op[5])
      changed(child, 1)
    end
  end
end
add_counts(ARGV[14])
changed(id, ARGV[3])
return {tonumber(ARGV[3]), seq}
"""

# A slot under the global cap for the oldest queued task whose concurrency key is below its
# limit (the slot and the key unit are taken together). Tasks waiting for a busy key keep their
# place; the ones behind them may start. ARGV: default_cap, dispatch_ms -> {id, token} | false
RESERVE = _PROLOGUE + """
local cap = tonumber(redis.call('GET', P .. 'cap') or ARGV[1])
if redis.call('ZCARD', P .. 'running') >= cap then return false end
local queue = P .. 'queue'
local start, chosen, stale = 0, nil, {}
while not chosen do
  local page = redis.call('LRANGE', queue, start, start + 99)
  for _, id in ipairs(page) do
    if not redis.call('ZSCORE', P .. 'status:queued', id) then
      stale[#stale + 1] = id
    elseif key_free(key_of(id), id) then
      chosen = id
      break
    end
  end
  if #page < 100 then break end
  start = start + 100
end
for _, id in ipairs(stale) do redis.call('LREM', queue, 0, id) end
if not chosen then return false end
redis.call('LREM', queue, 1, chosen)
hold_key(chosen)
local token = redis.call('INCR', P .. 'fence')
redis.call('DEL', P .. 'run:' .. chosen)
redis.call('HSET', P .. 'run:' .. chosen, 'token', token)
redis.call('ZADD', P .. 'running', now_ms + tonumber(ARGV[2]), chosen)
return {chosen, tostring(token)}
"""

# A dispatched task nobody claimed in time gets a new token (the old message becomes a no-op).
# ARGV: id, dispatch_ms -> token | false
REDISPATCH = _PROLOGUE + """
local rkey = P .. 'run:' .. ARGV[1]
local run = redis.call('HMGET', rkey, 'token', 'owner')
local score = redis.call('ZSCORE', P .. 'running', ARGV[1])
if not run[1] or (run[2] and run[2] ~= '') or not score or tonumber(score) > now_ms then return false end
local token = redis.call('INCR', P .. 'fence')
redis.call('HSET', rkey, 'token', token)
redis.call('ZADD', P .. 'running', now_ms + tonumber(ARGV[2]), ARGV[1])
return tostring(token)
"""

# The owner's heartbeat for one task. ARGV: id, owner, lease_ms -> 'ok' | 'stop' | 'lost'
RENEW = _PROLOGUE + """
if redis.call('HGET', P .. 'run:' .. ARGV[1], 'owner') ~= ARGV[2] then return 'lost' end
redis.call('ZADD', P .. 'running', 'XX', now_ms + tonumber(ARGV[3]), ARGV[1])
if redis.call('EXISTS', P .. 'stop:' .. ARGV[1]) == 1 then return 'stop' end
return 'ok'
"""

# Named leases (cleanup). ARGV: name, owner, seconds -> 1 | 0
ACQUIRE_LEASE = _PROLOGUE + """
local key = P .. 'lease:' .. ARGV[1]
local held = redis.call('GET', key)
local now = now_ms / 1000
if held then
  local lease = cjson.decode(held)
  if lease['owner'] ~= ARGV[2] and lease['expires'] > now then return 0 end
end
redis.call('SET', key, cjson.encode({owner = ARGV[2], expires = now + tonumber(ARGV[3]), at = now}))
return 1
"""

RELEASE_LEASE = """
local key = '{etl}:lease:' .. ARGV[1]
local held = redis.call('GET', key)
if held and cjson.decode(held)['owner'] == ARGV[2] then redis.call('DEL', key) end
return 1
"""

# Record a cleanup run while the lease holds. ARGV: lease, owner, then key/value pairs -> 1 | 0
RECORD_WITH_LEASE = _PROLOGUE + """
local held = redis.call('GET', P .. 'lease:' .. ARGV[1])
if not held then return 0 end
local lease = cjson.decode(held)
if lease['owner'] ~= ARGV[2] or lease['expires'] <= now_ms / 1000 then return 0 end
for i = 3, #ARGV, 2 do redis.call('SET', P .. ARGV[i], ARGV[i + 1]) end
return 1
"""

# A worker heartbeat stamped with Redis time. ARGV: worker id, json (without "at") -> time (s)
HEARTBEAT = _PROLOGUE + """
local now = now_ms / 1000
redis.call('HSET', P .. 'workers', ARGV[1], string.sub(ARGV[2], 1, -2) .. ',"at":' .. string.format('%.3f', now) .. '}')
return tostring(now)
"""

# Log lines of a running task, kept up to a bound, then one truncation note: one round trip per
# shipment. ARGV: id, max_lines, lines... -> lines held
APPEND_LOG = """
local key = '{etl}:log:' .. ARGV[1]
local max = tonumber(ARGV[2])
local held = redis.call('LLEN', key)
if held >= max then return held end
local last = #ARGV
local truncated = last - 2 > max - held
if truncated then last = 2 + max - held - 1 end
for i = 3, last do redis.call('RPUSH', key, ARGV[i]) end
if truncated then redis.call('RPUSH', key, '... log truncated at ' .. max .. ' lines') end
return redis.call('LLEN', key)
"""
