-- One atomic step of the weighted sliding-log limiter (see ratelimit/embedded.py for the
-- same algorithm in Python; the two must decide identically).
--
-- The log is a sorted set: one member per admitted cost, scored by admission time (ms),
-- named by the running totals after it ("%015d:%015d" of requests, tokens). Costs inside a
-- window are the current totals minus the totals of the last entry that left it, so an
-- admission costs O(log n) whatever the window holds.
--
-- KEYS: 1 log (zset), 2 state (string), 3 refunds (zset: "seq:requests:tokens", or "seq:tokens"
--       as older versions wrote them, scored by the admission time the refund belongs to);
--       with a fair-share ask (ARGV's seventh element) also 4 tags (hash: the virtual clock
--       "~v", the last admission's time "~t", each tenant's finish tag) and 5 waits (hash:
--       instance -> "ask_at lapse_at class tenant class tenant ..."). See
--       ratelimit/fair_share.py.
--       The state is one string of integers: requests and tokens ever admitted (n, c),
--       the totals of the last trimmed entry (bn, bc), the last time seen (t), the day
--       (its start) with its request and token counts (day, dr, dt), the refunded tokens
--       still in the window (rf, always the sum of the refunds set), the refund sequence
--       (rs), the time of the newest log entry (w) and the refunded requests still in the
--       window (rq).
-- ARGV: 1 one JSON array, decoded in C by cjson (a Python client spends more on encoding
--       separate arguments, and Lua on parsing them, than on anything else):
--       [op (acquire | peek | charge | refund), now_ms ("-" = Redis TIME), requests,
--        tokens, admitted_at_ms (refund), [trim_max, day bounds (previous start, start,
--        end, next end), daily request limit, daily token limit, window count, then per
--        window: length_ms, request limit, token limit], optionally a fair-share ask
--        (acquire; refund: give the tenant's share back) [tenant, class, share (0: classes
--        only, no tags), instance, the tenant's best class still waiting besides this ask
--        (-1: none), [class, tenant, ...] of the instance's other waiting tenants, slack_ms,
--        retry_ms, hold_ms, 1 if it also yields to those (0: its pool keeps its own order)]]
-- Returns: {allowed, wait_ms, now_ms, then per limit: used, wait_ms, reset_ms}
-- in the order (window requests, window tokens)..., day requests, day tokens; with an acquire's ask,
-- then yielded (1: it fits the limits but a waiting tenant goes first), the tenant's finish
-- tag, the virtual clock, and the finish tag of each other waiting tenant the ask names.

-- Bounds that keep every running total inside the members' 15 digits (and a double's exact
-- integers): the same values as ratelimit/limits.py (LIVE_CAP, REBASE_AT, DAY_CAP).
local LIVE_CAP = 100000000000000
local REBASE_AT = 400000000000000
local DAY_CAP = 1000000000000000

local log, state, refunds = KEYS[1], KEYS[2], KEYS[3]
local argv = cjson.decode(ARGV[1])
local op = argv[1]
local req, tok, admitted_at = argv[3], argv[4], argv[5]
local spec = argv[6]
local trim_max = spec[1]

local now
if argv[2] == '-' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = argv[2]
end

local m = {}
local packed = redis.call('GET', state)
if packed then for v in string.gmatch(packed, '%S+') do m[#m + 1] = v end end
local n, c = tonumber(m[1]) or 0, tonumber(m[2]) or 0
local bn, bc = tonumber(m[3]) or 0, tonumber(m[4]) or 0
local last_t = tonumber(m[5]) or 0
local day, dr, dt = tonumber(m[6]) or -1, tonumber(m[7]) or 0, tonumber(m[8]) or 0
local rf, rs = tonumber(m[9]) or 0, tonumber(m[10]) or 0
local rq = tonumber(m[12]) or 0
-- The refunds set is empty unless the stored rf or rq says otherwise: then skip its upkeep.
local had_refunds = rf > 0 or rq > 0
-- The newest entry's time, for reset_ms without a lookup (0: not known, look it up).
local last_write = tonumber(m[11])
if last_write == 0 then last_write = nil end
-- The clock never runs backwards for a key, even if Redis fails over to a slower host.
if now < last_t then now = last_t end

local b0, b1, b2, b3 = spec[2], spec[3], spec[4], spec[5]
local day_start, day_end
if now < b1 then day_start, day_end = b0, b1
elseif now < b2 then day_start, day_end = b1, b2
else day_start, day_end = b2, b3 end
if day ~= day_start then dr, dt = 0, 0 end
local day_req_limit, day_tok_limit = spec[6], spec[7]

local function parse(member)
  return tonumber(string.sub(member, 1, 15)), tonumber(string.sub(member, 17, 31))
end

-- First live rank whose running total (field 1 requests, 2 tokens) reaches target.
local function first_reaching(lo, hi, field, target)
  local found = nil
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    local rn, rc = parse(redis.call('ZRANGE', log, mid, mid)[1])
    local v = rn
    if field == 2 then v = rc end
    if v >= target then found = mid; hi = mid - 1 else lo = mid + 1 end
  end
  return found
end

local function score_at(rank)
  return tonumber(redis.call('ZRANGE', log, rank, rank, 'WITHSCORES')[2])
end

local total = redis.call('ZCARD', log)
local newest_t = nil
if total > 0 then newest_t = last_write or score_at(total - 1) end

local windows = spec[8]
local longest, longest_expired, longest_en, longest_ec = 0, 0, 0, 0
for i = 0, windows - 1 do
  local len = spec[9 + i * 3]
  if len > longest then longest = len end
end

-- Refunds leave the window together with the admissions they belong to.
local refund_cutoff = now - longest
if had_refunds then
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', refunds, '-inf', refund_cutoff)) do
    local gone_r, gone_t = string.match(member, '^%d+:(%d+):(%d+)$')
    if gone_r == nil then gone_r, gone_t = 0, string.match(member, ':(%d+)$') end
    rq = rq - tonumber(gone_r)
    rf = rf - tonumber(gone_t)
  end
end
local changed = false
if op == 'refund' and (tok > 0 or req > 0) then
  if admitted_at > refund_cutoff then
    rs = rs + 1
    had_refunds = true
    redis.call('ZADD', refunds, admitted_at, rs .. ':' .. req .. ':' .. tok)
    rf = rf + tok
    rq = rq + req
  end
  if admitted_at >= day_start then
    dt = math.max(0, dt - tok)
    dr = math.max(0, dr - req)
  end
  changed = true
end

local out = {}
local wait = 0
local check = (op == 'acquire' or op == 'peek')

local function push(used, w, reset)
  out[#out + 1] = used
  out[#out + 1] = w
  out[#out + 1] = reset
  if w > wait then wait = w end
end

for i = 0, windows - 1 do
  local len = spec[9 + i * 3]
  local req_limit, tok_limit = spec[10 + i * 3], spec[11 + i * 3]
  local cutoff = now - len
  local expired = redis.call('ZCOUNT', log, '-inf', cutoff)
  local en, ec = bn, bc
  if expired > 0 then en, ec = parse(redis.call('ZRANGE', log, expired - 1, expired - 1)[1]) end
  if len == longest then longest_expired, longest_en, longest_ec = expired, en, ec end
  local used_r, used_t = n - en, c - ec
  -- Refunds only ever apply to the longest window (the only one that limits tokens; a shorter
  -- one still counts a returned request until it leaves: stricter, never over).
  if len == longest then
    used_t = math.max(0, used_t - rf)
    used_r = math.max(0, used_r - rq)
  end
  local reset = 0
  if newest_t ~= nil and newest_t > cutoff then reset = newest_t + len - now end

  local wait_r, wait_t = 0, 0
  if check and req_limit > 0 and used_r + req > req_limit then
    local target = n + req - req_limit
    if len == longest then target = target - rq end
    local j = first_reaching(expired, total - 1, 1, target)
    if j == nil then wait_r = len else wait_r = score_at(j) + len - now end
  end
  if check and tok_limit > 0 and used_t + tok > tok_limit then
    local target = c + tok - tok_limit
    if len == longest then target = target - rf end
    local j = first_reaching(expired, total - 1, 2, target)
    if j == nil then wait_t = len else wait_t = score_at(j) + len - now end
  end
  push(used_r, wait_r, reset)
  push(used_t, wait_t, reset)
end

local day_reset = day_end - now
local wait_dr, wait_dt = 0, 0
if check and day_req_limit > 0 and dr + req > day_req_limit then wait_dr = day_reset end
if check and day_tok_limit > 0 and dt + tok > day_tok_limit then wait_dt = day_reset end
push(dr, wait_dr, day_reset)
push(dt, wait_dt, day_reset)

-- A request admitted with an ask and then not served (put back in its queue): its tenant's
-- finish tag comes down by its share again, unless a new busy period has begun since.
if op == 'refund' and argv[7] ~= nil and argv[7][3] > 0 then
  local back = argv[7]
  local seen = redis.call('HMGET', KEYS[4], '~t', back[1])
  if seen[2] and now - (tonumber(seen[1]) or 0) <= longest then
    redis.call('HSET', KEYS[4], back[1], string.format('%d', math.max(0, tonumber(seen[2]) - back[3])))
  end
end

-- Fair shares (see ratelimit/fair_share.py): an ask that fits the limits yields while a waiting
-- tenant is ahead of it (another instance's: wait until it asks; its own instance's: wait 0).
local fair = argv[7]
if op ~= 'acquire' then fair = nil end
local yielded, f_clock, f_finish, f_start, f_fresh = 0, 0, 0, 0, false
local f_mine, f_tag = false, {}
if fair ~= nil then
  local me, my_class, tagged, others = fair[1], fair[2], fair[3] > 0, fair[6]
  -- Other instances' live entries: {at, {class, tenant, ...}}; lapsed ones go.
  local entries = {}
  local registered = redis.call('HGETALL', KEYS[5])
  for i = 1, #registered, 2 do
    local at, lapse, list = string.match(registered[i + 1], '^(%d+) (%d+)(.*)$')
    -- An entry not in this form (another version's) counts as lapsed.
    if lapse == nil or tonumber(lapse) <= now then
      redis.call('HDEL', KEYS[5], registered[i])
    elseif registered[i] == fair[4] then
      f_mine = true
    elseif wait == 0 then
      local pairs_ = {}
      for c, t in string.gmatch(list, ' (%d+) (%S+)') do
        pairs_[#pairs_ + 1] = tonumber(c)
        pairs_[#pairs_ + 1] = t
      end
      entries[#entries + 1] = {tonumber(at), pairs_}
    end
  end
  if tagged then
    -- One read of every tag compared: the clock, the asker's, its instance's other tenants'
    -- (returned, to refresh that instance's order) and same-class tenants waiting elsewhere.
    local fields, seen = {'~v', '~t', me}, {[me] = true}
    for i = 2, #others, 2 do
      if not seen[others[i]] then seen[others[i]] = true; fields[#fields + 1] = others[i] end
    end
    for _, e in ipairs(entries) do
      local l = e[2]
      for i = 1, #l, 2 do
        if l[i] == my_class and not seen[l[i + 1]] then
          seen[l[i + 1]] = true
          fields[#fields + 1] = l[i + 1]
        end
      end
    end
    local got = redis.call('HMGET', KEYS[4], unpack(fields))
    -- Nothing admitted for a whole window: a new busy period, every tenant level again.
    f_fresh = now - (tonumber(got[2]) or 0) > longest
    if not f_fresh then
      f_clock = tonumber(got[1]) or 0
      for i = 3, #fields do f_tag[fields[i]] = tonumber(got[i]) or 0 end
    end
    f_finish = f_tag[me] or 0
    f_start = math.max(f_clock, f_finish)
  end
  local function ahead(c, t)
    if c ~= my_class then return c < my_class end
    return tagged and t ~= me and math.max(f_clock, f_tag[t] or 0) < f_start
  end
  if wait == 0 then
    local soonest = nil
    for _, e in ipairs(entries) do
      local l = e[2]
      for i = 1, #l, 2 do
        if ahead(l[i], l[i + 1]) then
          local w = math.max(e[1] - now, 0) + fair[8]
          if soonest == nil or w < soonest then soonest = w end
          break
        end
      end
    end
    if soonest ~= nil then
      yielded = 1
      wait = math.min(soonest, fair[9])
    elseif fair[10] == 1 then
      for i = 1, #others, 2 do
        if ahead(others[i], others[i + 1]) then yielded = 1; break end
      end
    end
  end
end

local allowed = 0
local write = false
if op == 'acquire' and wait == 0 and yielded == 0 then allowed = 1; write = true end
if op == 'charge' then allowed = 1; write = true end
-- A peek answers "would this cost be admitted now?" without consuming it.
if op == 'peek' and wait == 0 then allowed = 1 end

local ttl = math.max(longest, day_end - now) + 60000

-- A window never holds more than LIVE_CAP (above any real limit): what an upstream reports
-- beyond it is not counted, so no total can outgrow the members' width.
if write then
  if c - longest_ec + tok > LIVE_CAP then tok = math.max(0, LIVE_CAP - (c - longest_ec)) end
  if n - longest_en + req > LIVE_CAP then req = math.max(0, LIVE_CAP - (n - longest_en)) end
end

if write and (req > 0 or tok > 0) then
  changed = true
  if n + req > REBASE_AT or c + tok > REBASE_AT then
    -- Renumber from zero: drop every expired entry, then subtract the totals it leaves behind
    -- from each live one. Rare (once per REBASE_AT - LIVE_CAP tokens), so its O(window) is
    -- amortized away.
    if longest_expired > 0 then
      bn, bc = longest_en, longest_ec
      redis.call('ZREMRANGEBYRANK', log, 0, longest_expired - 1)
      longest_expired = 0
    end
    local live = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
    redis.call('DEL', log)
    for i = 1, #live, 2 do
      local rn, rc = parse(live[i])
      redis.call('ZADD', log, live[i + 1], string.format('%015d:%015d', rn - bn, rc - bc))
    end
    n, c, bn, bc = n - bn, c - bc, 0, 0
  end
  n, c = n + req, c + tok
  dr, dt = math.min(DAY_CAP, dr + req), math.min(DAY_CAP, dt + tok)
  redis.call('ZADD', log, now, string.format('%015d:%015d', n, c))
  last_write = now
  -- Trim a bounded number of expired entries, remembering the totals of the last one.
  local trim = math.min(longest_expired, trim_max)
  if trim > 0 then
    if trim == longest_expired then bn, bc = longest_en, longest_ec
    else bn, bc = parse(redis.call('ZRANGE', log, trim - 1, trim - 1)[1]) end
    redis.call('ZREMRANGEBYRANK', log, 0, trim - 1)
  end
  -- The caller sees the state after its own admission.
  for i = 0, windows - 1 do
    out[i * 6 + 1] = out[i * 6 + 1] + req
    out[i * 6 + 4] = out[i * 6 + 4] + tok
    local len = spec[9 + i * 3]
    out[i * 6 + 3] = len
    out[i * 6 + 6] = len
  end
  out[windows * 6 + 1] = dr
  out[windows * 6 + 4] = dt
end

if fair ~= nil then
  local me, rest, slack, hold = fair[1], fair[5], fair[7], fair[9]
  if allowed == 1 and fair[3] > 0 then
    if f_fresh then redis.call('DEL', KEYS[4]) end
    if f_start > f_clock then f_clock = f_start end
    f_finish = f_start + fair[3]
    redis.call('HSET', KEYS[4], '~v', string.format('%d', f_clock), '~t', string.format('%d', now),
      me, string.format('%d', f_finish))
    redis.call('PEXPIRE', KEYS[4], longest + 60000)
  end
  -- The instance's entry: its other tenants, and its own tenant at its best class still waiting.
  local own = rest
  if allowed == 0 and (rest < 0 or fair[2] < rest) then own = fair[2] end
  local others = fair[6]
  if #others > 0 or own >= 0 then  -- mostly not: then no string is built, nothing is written
    local at = now
    if allowed == 0 then at = now + math.min(wait, hold) end
    local parts = {string.format('%d %d', at, at + slack)}
    for i = 1, #others, 2 do parts[#parts + 1] = string.format('%d %s', others[i], others[i + 1]) end
    if own >= 0 then parts[#parts + 1] = string.format('%d %s', own, me) end
    redis.call('HSET', KEYS[5], fair[4], table.concat(parts, ' '))
    redis.call('PEXPIRE', KEYS[5], hold + slack + 60000)
  elseif f_mine then  -- nothing waits there any more
    redis.call('HDEL', KEYS[5], fair[4])
  end
end

if changed then
  redis.call('SET', state, string.format('%d %d %d %d %d %d %d %d %d %d %d %d',
    n, c, bn, bc, now, day_start, dr, dt, rf, rs, last_write or 0, rq), 'PX', ttl)
  redis.call('PEXPIRE', log, ttl)
  if had_refunds then
    redis.call('ZREMRANGEBYSCORE', refunds, '-inf', refund_cutoff)
    redis.call('PEXPIRE', refunds, ttl)
  end
end

local result = {allowed, wait, now}
for _, v in ipairs(out) do result[#result + 1] = v end
if fair ~= nil then
  result[#result + 1] = yielded
  result[#result + 1] = f_finish
  result[#result + 1] = f_clock
  local others = fair[6]
  for i = 2, #others, 2 do result[#result + 1] = f_tag[others[i]] or 0 end
end
return result
