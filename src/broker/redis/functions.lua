#!lua name=roomcast

local function keys_of(channel)
  return '{' .. channel .. '}:meta', '{' .. channel .. '}:log'
end


local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- What publishes a room's messages: PUBLISH_COMMAND when given (nodes always give it), else
-- SPUBLISH on a Redis Cluster, where rooms are shard channels, and PUBLISH elsewhere.
local function message_publish(given)
  if given == 'PUBLISH' or given == 'SPUBLISH' then
    return given
  end
  if string.find(redis.call('INFO', 'cluster'), 'cluster_enabled:1', 1, true) then
    return 'SPUBLISH'
  end
  return 'PUBLISH'
end

-- FCALL roomcast_publish 1 CHANNEL PAYLOAD [SIZE TTL_S [EPOCH [TRUSTED [PUBLISH_COMMAND]]]]
local function publish(keys, args)
  local channel = keys[1]
  local payload = args[1] or ''
  local meta, log = keys_of(channel)
  local size = tonumber(args[2]) or tonumber(redis.call('HGET', meta, 'size')) or 100
  local ttl = tonumber(args[3]) or tonumber(redis.call('HGET', meta, 'ttl')) or 3600
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = args[4]
    if not epoch or epoch == '' then
      epoch = string.format('h%08x', now_ms() % 4294967296)
    end
    redis.call('HSET', meta, 'epoch', epoch)
  end
  local offset = redis.call('HINCRBY', meta, 'top', 1)
  redis.call('HSET', meta, 'size', size, 'ttl', ttl)
  local head = '{"id":"' .. epoch .. '-' .. offset .. '",'
  local body
  if args[5] == '1' then
    -- A node's envelope: a JSON object with data and ts, and no id.
    body = head .. string.sub(payload, 2)
  else
    head = head .. '"ts":' .. now_ms() .. ','
    local ok, decoded = pcall(cjson.decode, payload)
    if ok and type(decoded) == 'table' and decoded['data'] ~= nil
        and string.match(payload, '^%s*{') then
      local start = string.find(payload, '{', 1, true)
      body = head .. '"from":"server",' .. string.sub(payload, start + 1)
      if decoded['ts'] ~= nil or decoded['id'] ~= nil or decoded['from'] ~= nil then
        -- Keep the service's own fields out: ours are set above.
        body = head .. '"from":"server","data":' .. cjson.encode(decoded['data']) .. '}'
      end
    elseif ok then
      body = head .. '"from":"server","data":' .. payload .. '}'
    else
      body = head .. '"from":"server","data":' .. cjson.encode(payload) .. '}'
    end
  end
  redis.call('RPUSH', log, body)
  redis.call('LTRIM', log, -size, -1)
  redis.call('EXPIRE', log, ttl)
  redis.call('EXPIRE', meta, ttl)
  redis.call(message_publish(args[6]), channel, body)
  return epoch .. '-' .. offset
end

local function history(keys, args)
  local meta, log = keys_of(keys[1])
  local m = redis.call('HMGET', meta, 'epoch', 'top')
  return { m[1] or '', m[2] or '0', redis.call('LRANGE', log, 0, -1) }
end

-- Presence (presence.rooms): per room, a hash per node (user -> its connections there), a
-- sorted set of the nodes scored by when each stops counting, and the sum over nodes: a hash
-- user -> connections and a sorted set of the users (all scores 0: name order), so that a
-- read costs O(log N + M) for M listed users whatever the room's size N. A user appears or
-- vanishes when its sum leaves or reaches 0. Every call first drops the nodes whose time is up,
-- announcing their users that vanish, so a killed node's users leave with the next call of
-- any other node in the room.

local function presence_set(channel)
  return '{' .. channel .. '}:presence'
end

local function presence_hash(channel, node)
  return '{' .. channel .. '}:presence:' .. node
end

local function presence_conns(channel)
  return '{' .. channel .. '}:presence-conns'
end

local function presence_users(channel)
  return '{' .. channel .. '}:presence-users'
end

local function announce(events, user, what, ts)
  if events ~= '' then
    redis.call('PUBLISH', events, cjson.encode({ user = user, event = what, ts = ts }))
  end
end

-- Add delta to user's connections over every node; returns them before and after.
local function adjust(channel, user, delta)
  if delta == 0 then
    return 0, 0
  end
  local after = redis.call('HINCRBY', presence_conns(channel), user, delta)
  local before = after - delta
  if after <= 0 then
    redis.call('HDEL', presence_conns(channel), user)
    redis.call('ZREM', presence_users(channel), user)
    after = 0
  elseif before <= 0 then
    redis.call('ZADD', presence_users(channel), 0, user)
  end
  return before, after
end

-- Drop every node but `except` whose time is up.
local function reap(channel, except, events, now)
  local set = presence_set(channel)
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', set, '-inf', '(' .. now)) do
    if n ~= except then
      local h = presence_hash(channel, n)
      local entries = redis.call('HGETALL', h)
      for i = 1, #entries, 2 do
        local before, after = adjust(channel, entries[i], -(tonumber(entries[i + 1]) or 0))
        if before > 0 and after == 0 then
          announce(events, entries[i], 'left', now)
        end
      end
      redis.call('DEL', h)
      redis.call('ZREM', set, n)
    end
  end
end

local function keep(channel, expire_ms)
  for _, k in ipairs({ presence_set(channel), presence_conns(channel), presence_users(channel) }) do
    if redis.call('EXISTS', k) == 1 then
      redis.call('PEXPIRE', k, expire_ms)
    end
  end
end

-- FCALL roomcast_presence 1 CHANNEL NODE LIVE_MS EXPIRE_MS EVENTS_CHANNEL FULL [USER CONNS]...
-- Sets NODE's users of the room (CONNS 0: gone; FULL 1: these are all of them), keeps NODE
-- live for LIVE_MS, publishes joined/left on EVENTS_CHANNEL (none when empty) for users that
-- appear or vanish across every node. Returns 1 when NODE's earlier state was lost.
local function presence(keys, args)
  local channel = keys[1]
  local node, live_ms, expire_ms = args[1], tonumber(args[2]), tonumber(args[3])
  local events, full = args[4], args[5] == '1'
  local set, own = presence_set(channel), presence_hash(channel, node)
  local now = now_ms()
  reap(channel, node, events, now)

  local lost = (not full) and redis.call('EXISTS', own) == 0
  local changes, given = {}, {}
  for i = 6, #args, 2 do
    table.insert(changes, { args[i], tonumber(args[i + 1]) or 0 })
    given[args[i]] = true
  end
  if full then
    local stale = {}
    for _, u in ipairs(redis.call('HKEYS', own)) do
      if not given[u] then
        table.insert(stale, u)
      end
    end
    table.sort(stale)
    for _, u in ipairs(stale) do
      table.insert(changes, { u, 0 })
    end
  end
  for _, c in ipairs(changes) do
    local u, conns = c[1], c[2]
    local had = tonumber(redis.call('HGET', own, u)) or 0
    if conns > 0 then
      redis.call('HSET', own, u, conns)
    elseif had > 0 then
      redis.call('HDEL', own, u)
    end
    local before, after = adjust(channel, u, conns - had)
    if before <= 0 and after > 0 then
      announce(events, u, 'joined', now)
    elseif before > 0 and after <= 0 then
      announce(events, u, 'left', now)
    end
  end

  if redis.call('EXISTS', own) == 1 then
    redis.call('ZADD', set, now + live_ms, node)
    redis.call('PEXPIRE', own, expire_ms)
  else
    redis.call('ZREM', set, node)
  end
  keep(channel, expire_ms)
  if lost then
    return 1
  end
  return 0
end

-- FCALL roomcast_presence_read 1 CHANNEL EVENTS_CHANNEL MAX: {COUNT, {USER, CONNS, ...}} for
-- the first MAX users in name order, after dropping the nodes whose time is up.
local function presence_read(keys, args)
  local channel = keys[1]
  reap(channel, nil, args[1] or '', now_ms())
  local max = tonumber(args[2]) or 1000
  local count = redis.call('ZCARD', presence_users(channel))
  local out = {}
  if max > 0 and count > 0 then
    local users = redis.call('ZRANGE', presence_users(channel), 0, max - 1)
    for _, u in ipairs(users) do
      table.insert(out, u)
      table.insert(out, tonumber(redis.call('HGET', presence_conns(channel), u)) or 0)
    end
  end
  return { count, out }
end

redis.register_function('roomcast_publish', publish)
redis.register_function('roomcast_presence', presence)
redis.register_function('roomcast_presence_read', presence_read)
redis.register_function{function_name = 'roomcast_history', callback = history, flags = { 'no-writes' }}
