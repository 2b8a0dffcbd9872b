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

-- user -> the JSON `info` the backend gave it (the latest any node wrote), while present.
local function presence_info(channel)
  return '{' .. channel .. '}:presence-info'
end

local function announce(events, user, what, ts, channel)
  if events ~= '' then
    local event = cjson.encode({ user = user, event = what, ts = ts })
    local info = what == 'joined' and redis.call('HGET', presence_info(channel), user)
    if info then
      -- The node's JSON as it is (cjson would rewrite its numbers).
      event = string.sub(event, 1, -2) .. ',"info":' .. info .. '}'
    end
    redis.call('PUBLISH', events, event)
  end
end

-- Webhooks (webhooks.url): a room's webhook members in `{channel}:webhook-members` (user -> 0
-- while in, or the end of its leave delay while leaving), the departures waiting in a sorted
-- set scored by that end (members: the JSON [room, user]), and every event XADDed to a stream
-- in the same call that decides it. `wh` is nil without webhooks, else
-- { stream, leaves, delay (ms), room, keep (ms the members hash outlives a change) }.
local function wh_members(channel)
  return '{' .. channel .. '}:webhook-members'
end

local function wh_record(stream, what, room, user, ts)
  if user then
    redis.call('XADD', stream, '*', 'type', what, 'room', room, 'user', user, 'ts', ts)
  else
    redis.call('XADD', stream, '*', 'type', what, 'room', room, 'ts', ts)
  end
end

local function wh_leave(stream, room, members, user, now)
  redis.call('HDEL', members, user)
  wh_record(stream, 'member_left', room, user, now)
  if redis.call('HLEN', members) == 0 then
    wh_record(stream, 'room_vacated', room, nil, now)
  end
end

local function wh_appear(wh, channel, user, now)
  if not wh then
    return
  end
  local members = wh_members(channel)
  local state = redis.call('HGET', members, user)
  if state then
    if state ~= '0' then
      -- A rejoin within the leave delay: nothing happened.
      redis.call('HSET', members, user, '0')
      redis.call('ZREM', wh.leaves, cjson.encode({ wh.room, user }))
    end
    return
  end
  if redis.call('HLEN', members) == 0 then
    wh_record(wh.stream, 'room_occupied', wh.room, nil, now)
  end
  redis.call('HSET', members, user, '0')
  redis.call('PEXPIRE', members, wh.keep)
  wh_record(wh.stream, 'member_joined', wh.room, user, now)
end

local function wh_vanish(wh, channel, user, now)
  if not wh then
    return
  end
  local members = wh_members(channel)
  if redis.call('HGET', members, user) ~= '0' then
    -- Not a member (it came before webhooks were on) or already leaving.
    return
  end
  if wh.delay <= 0 then
    wh_leave(wh.stream, wh.room, members, user, now)
  else
    redis.call('HSET', members, user, now + wh.delay)
    redis.call('PEXPIRE', members, wh.keep, 'GT')
    redis.call('ZADD', wh.leaves, now + wh.delay, cjson.encode({ wh.room, user }))
  end
end

-- The webhook settings of a call from its arguments at `at`: STREAM LEAVES DELAY_MS ROOM
-- (STREAM empty: no webhooks).
local function wh_args(args, at, expire_ms)
  if not args[at] or args[at] == '' then
    return nil
  end
  local delay = tonumber(args[at + 2]) or 0
  return { stream = args[at], leaves = args[at + 1], delay = delay, room = args[at + 3],
           keep = (expire_ms or 0) + delay + 60000 }
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
    redis.call('HDEL', presence_info(channel), user)
    after = 0
  elseif before <= 0 then
    redis.call('ZADD', presence_users(channel), 0, user)
  end
  return before, after
end

-- Drop every node but `except` whose time is up.
local function reap(channel, except, events, now, wh)
  local set = presence_set(channel)
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', set, '-inf', '(' .. now)) do
    if n ~= except then
      local h = presence_hash(channel, n)
      local entries = redis.call('HGETALL', h)
      for i = 1, #entries, 2 do
        local before, after = adjust(channel, entries[i], -(tonumber(entries[i + 1]) or 0))
        if before > 0 and after == 0 then
          announce(events, entries[i], 'left', now, channel)
          wh_vanish(wh, channel, entries[i], now)
        end
      end
      redis.call('DEL', h)
      redis.call('ZREM', set, n)
    end
  end
end

local function keep(channel, expire_ms, wh)
  for _, k in ipairs({ presence_set(channel), presence_conns(channel), presence_users(channel),
                       presence_info(channel) }) do
    if redis.call('EXISTS', k) == 1 then
      redis.call('PEXPIRE', k, expire_ms)
    end
  end
  if wh and redis.call('EXISTS', wh_members(channel)) == 1 then
    redis.call('PEXPIRE', wh_members(channel), wh.keep)
  end
end

-- FCALL roomcast_presence 1 CHANNEL NODE LIVE_MS EXPIRE_MS EVENTS_CHANNEL FULL
--   WH_STREAM WH_LEAVES WH_DELAY_MS ROOM INFO_N [USER INFO]{INFO_N} [USER CONNS]...
-- Sets the INFO (JSON) of INFO_N users, then NODE's users of the room (CONNS 0: gone; FULL 1:
-- these are all of them), keeps NODE
-- live for LIVE_MS, publishes joined/left on EVENTS_CHANNEL (none when empty) for users that
-- appear or vanish across every node, and records the webhook events of ROOM in WH_STREAM
-- (none when empty). Returns 1 when NODE's earlier state was lost.
local function presence(keys, args)
  local channel = keys[1]
  local node, live_ms, expire_ms = args[1], tonumber(args[2]), tonumber(args[3])
  local events, full = args[4], args[5] == '1'
  local set, own = presence_set(channel), presence_hash(channel, node)
  local now = now_ms()
  local wh = wh_args(args, 6, expire_ms)
  reap(channel, node, events, now, wh)

  local lost = (not full) and redis.call('EXISTS', own) == 0
  local info_n = tonumber(args[10]) or 0
  for i = 11, 10 + 2 * info_n, 2 do
    redis.call('HSET', presence_info(channel), args[i], args[i + 1])
  end
  local changes, given = {}, {}
  for i = 11 + 2 * info_n, #args, 2 do
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
      announce(events, u, 'joined', now, channel)
      wh_appear(wh, channel, u, now)
    elseif before > 0 and after <= 0 then
      announce(events, u, 'left', now, channel)
      wh_vanish(wh, channel, u, now)
    end
  end

  if redis.call('EXISTS', own) == 1 then
    redis.call('ZADD', set, now + live_ms, node)
    redis.call('PEXPIRE', own, expire_ms)
  else
    redis.call('ZREM', set, node)
  end
  keep(channel, expire_ms, wh)
  if lost then
    return 1
  end
  return 0
end

-- FCALL roomcast_presence_read 1 CHANNEL EVENTS_CHANNEL MAX [WH_STREAM WH_LEAVES WH_DELAY_MS
-- ROOM]: {COUNT, {USER, CONNS, INFO ('' for none), ...}} for the first MAX users in name order,
-- after dropping the nodes whose time is up.
local function presence_read(keys, args)
  local channel = keys[1]
  reap(channel, nil, args[1] or '', now_ms(), wh_args(args, 3, 0))
  local max = tonumber(args[2]) or 1000
  local count = redis.call('ZCARD', presence_users(channel))
  local out = {}
  if max > 0 and count > 0 then
    local users = redis.call('ZRANGE', presence_users(channel), 0, max - 1)
    for _, u in ipairs(users) do
      table.insert(out, u)
      table.insert(out, tonumber(redis.call('HGET', presence_conns(channel), u)) or 0)
      table.insert(out, redis.call('HGET', presence_info(channel), u) or '')
    end
  end
  return { count, out }
end

-- Webhook delivery. The stream is read through the consumer group GROUP (created at first use,
-- from the start of the stream); an entry stays pending for its consumer until acknowledged
-- (and then deleted) or parked (moved to PARKED, with its id, error and attempts).

local function ensure_group(stream, group)
  local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  if not ok and not string.find(tostring(err and err.err or err), 'BUSYGROUP', 1, true) then
    error(err)
  end
end

-- FCALL roomcast_webhook_due 2 LEAVES STREAM PREFIX MAX: record member_left (and room_vacated)
-- for at most MAX departures whose delay is over. Returns how many.
local function webhook_due(keys, args)
  local leaves, stream = keys[1], keys[2]
  local prefix, max = args[1], tonumber(args[2]) or 100
  local now = now_ms()
  local due = redis.call('ZRANGEBYSCORE', leaves, '-inf', now, 'LIMIT', 0, max)
  local done = 0
  for _, m in ipairs(due) do
    redis.call('ZREM', leaves, m)
    local ok, pair = pcall(cjson.decode, m)
    if ok and type(pair) == 'table' and pair[1] and pair[2] then
      local members = wh_members(prefix .. 'room:' .. pair[1])
      local state = redis.call('HGET', members, pair[2])
      if state and state ~= '0' then
        wh_leave(stream, pair[1], members, pair[2], now)
        done = done + 1
      end
    end
  end
  return done
end

local function entry_fields(fields)
  local out = {}
  for i = 1, #fields, 2 do
    out[fields[i]] = fields[i + 1]
  end
  return out
end

-- FCALL roomcast_webhook_take 1 STREAM GROUP CONSUMER MAX MIN_IDLE_MS: at most MAX entries
-- {ID, {FIELD, VALUE, ...}} for CONSUMER, first those pending for MIN_IDLE_MS or more with any
-- consumer (taken over), then new ones.
local function webhook_take(keys, args)
  local stream, group, consumer = keys[1], args[1], args[2]
  local max, idle = tonumber(args[3]) or 100, tonumber(args[4]) or 60000
  ensure_group(stream, group)
  local out = {}
  local claimed = redis.call('XAUTOCLAIM', stream, group, consumer, idle, '0-0', 'COUNT', max)
  for _, e in ipairs(claimed[2]) do
    if type(e) == 'table' and e[2] then
      table.insert(out, e)
    end
  end
  if #out < max then
    local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - #out,
      'STREAMS', stream, '>')
    if read and read[1] then
      for _, e in ipairs(read[1][2]) do
        table.insert(out, e)
      end
    end
  end
  return out
end

-- FCALL roomcast_webhook_ack 1 STREAM GROUP [ID]...: delivered; acknowledged and deleted.
local function webhook_ack(keys, args)
  local stream, group = keys[1], args[1]
  local n = 0
  for i = 2, #args do
    n = n + redis.call('XACK', stream, group, args[i])
    redis.call('XDEL', stream, args[i])
  end
  return n
end

-- FCALL roomcast_webhook_park 2 STREAM PARKED GROUP ERROR ATTEMPTS [ID]...: move the entries
-- to PARKED with their event id (a replayed entry keeps the id it had), the error and the
-- attempts.
local function webhook_park(keys, args)
  local stream, parked = keys[1], keys[2]
  local group, err, attempts = args[1], args[2], args[3]
  local now = now_ms()
  local n = 0
  for i = 4, #args do
    local found = redis.call('XRANGE', stream, args[i], args[i])
    if found[1] then
      local f = entry_fields(found[1][2])
      local fields = { 'id', f['id'] or args[i], 'type', f['type'] or '', 'room', f['room'] or '',
                       'ts', f['ts'] or '0', 'error', err, 'attempts', attempts, 'parked_at', now }
      if f['user'] then
        table.insert(fields, 'user')
        table.insert(fields, f['user'])
      end
      redis.call('XADD', parked, '*', unpack(fields))
      n = n + 1
    end
    redis.call('XACK', stream, group, args[i])
    redis.call('XDEL', stream, args[i])
  end
  return n
end

-- FCALL roomcast_webhook_replay 2 PARKED STREAM MAX [ID]...: queue the parked events with
-- these event ids (all of the oldest MAX when none is given) again, keeping their ids.
local function webhook_replay(keys, args)
  local parked, stream = keys[1], keys[2]
  local max = tonumber(args[1]) or 1000
  local wanted = {}
  local any = false
  for i = 2, #args do
    wanted[args[i]] = true
    any = true
  end
  local n = 0
  local cursor = '-'
  while true do
    local batch = redis.call('XRANGE', parked, cursor, '+', 'COUNT', 1000)
    if #batch == 0 then
      break
    end
    for _, e in ipairs(batch) do
      local f = entry_fields(e[2])
      if (any and wanted[f['id']]) or ((not any) and n < max) then
        local fields = { 'id', f['id'], 'type', f['type'], 'room', f['room'], 'ts', f['ts'] }
        if f['user'] then
          table.insert(fields, 'user')
          table.insert(fields, f['user'])
        end
        redis.call('XADD', stream, '*', unpack(fields))
        redis.call('XDEL', parked, e[1])
        n = n + 1
      end
    end
    if (not any) and n >= max then
      break
    end
    cursor = '(' .. batch[#batch][1]
  end
  return n
end

redis.register_function('roomcast_publish', publish)
redis.register_function('roomcast_presence', presence)
redis.register_function('roomcast_presence_read', presence_read)
redis.register_function{function_name = 'roomcast_history', callback = history, flags = { 'no-writes' }}
redis.register_function('roomcast_webhook_due', webhook_due)
redis.register_function('roomcast_webhook_take', webhook_take)
redis.register_function('roomcast_webhook_ack', webhook_ack)
redis.register_function('roomcast_webhook_park', webhook_park)
redis.register_function('roomcast_webhook_replay', webhook_replay)
