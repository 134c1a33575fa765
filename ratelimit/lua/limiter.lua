-- One atomic step of the weighted sliding-log limiter (see ratelimit/embedded.py for the
-- same algorithm in Python; the two must decide identically).
--
-- The log is a sorted set: one member per admitted cost, scored by admission time (ms),
-- named by the running totals after it ("%015d:%015d" of requests, tokens). Costs inside a
-- window are the current totals minus the totals of the last entry that left it, so an
-- admission costs O(log n) whatever the window holds.
--
-- KEYS: 1 log (zset), 2 state (string), 3 refunds (zset: "seq:tokens" scored by the
--       admission time the refund belongs to).
--       The state is one string of integers: requests and tokens ever admitted (n, c),
--       the totals of the last trimmed entry (bn, bc), the last time seen (t), the day
--       (its start) with its request and token counts (day, dr, dt), the refunded tokens
--       still in the window (rf, always the sum of the refunds set), the refund sequence
--       (rs) and the time of the newest log entry (w).
-- ARGV: 1 one JSON array, decoded in C by cjson (a Python client spends more on encoding
--       separate arguments, and Lua on parsing them, than on anything else):
--       [op (acquire | peek | charge | refund), now_ms ("-" = Redis TIME), requests,
--        tokens, admitted_at_ms (refund), [trim_max, day bounds (previous start, start,
--        end, next end), daily request limit, daily token limit, window count, then per
--        window: length_ms, request limit, token limit]]
-- Returns: {allowed, wait_ms, now_ms, then per limit: used, wait_ms, reset_ms}
-- in the order (window requests, window tokens)..., day requests, day tokens.

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
-- The refunds set is empty unless the stored rf says otherwise: then skip its upkeep.
local had_refunds = rf > 0
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
if rf > 0 then
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', refunds, '-inf', refund_cutoff)) do
    rf = rf - tonumber(string.match(member, ':(%d+)$'))
  end
end
local changed = false
if op == 'refund' and tok > 0 then
  if admitted_at > refund_cutoff then
    rs = rs + 1
    had_refunds = true
    redis.call('ZADD', refunds, admitted_at, rs .. ':' .. tok)
    rf = rf + tok
  end
  if admitted_at >= day_start then dt = math.max(0, dt - tok) end
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
  -- Refunds only ever apply to the longest window (the only one that limits tokens).
  if len == longest then used_t = math.max(0, used_t - rf) end
  local reset = 0
  if newest_t ~= nil and newest_t > cutoff then reset = newest_t + len - now end

  local wait_r, wait_t = 0, 0
  if check and req_limit > 0 and used_r + req > req_limit then
    local j = first_reaching(expired, total - 1, 1, n + req - req_limit)
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

local allowed = 0
local write = false
if op == 'acquire' and wait == 0 then allowed = 1; write = true end
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

if changed then
  redis.call('SET', state, string.format('%d %d %d %d %d %d %d %d %d %d %d',
    n, c, bn, bc, now, day_start, dr, dt, rf, rs, last_write or 0), 'PX', ttl)
  redis.call('PEXPIRE', log, ttl)
  if had_refunds then
    redis.call('ZREMRANGEBYSCORE', refunds, '-inf', refund_cutoff)
    redis.call('PEXPIRE', refunds, ttl)
  end
end

local result = {allowed, wait, now}
for _, v in ipairs(out) do result[#result + 1] = v end
return result
