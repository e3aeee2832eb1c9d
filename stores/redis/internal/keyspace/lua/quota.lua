local mode = ARGV[1]
local nk = #KEYS
-- The state read, by hash and field: numbers, checked before anything is
-- written, so that a value that is not a number fails the call whole.
local state = {}
local function check(key, f, raw)
  if not raw then return false end
  local v = tonumber(raw)
  if not v or v ~= math.floor(v) then
    error({err = 'NOTNUMBER ' .. key .. ' field ' .. f .. ' holds ' .. string.sub(raw, 1, 40) .. ', not a whole number'})
  end
  return v
end
-- load reads a key's used and granted fields in hash k at once, if they
-- are not read yet.
local function load(k, id)
  local key = KEYS[k]
  local s = state[key]
  if not s then
    s = {}
    state[key] = s
  end
  local u, g = 'u:' .. id, 'g:' .. id
  if s[u] == nil or s[g] == nil then
    local v = redis.call('HMGET', key, u, g)
    if s[u] == nil then s[u] = check(key, u, v[1]) end
    if s[g] == nil then s[g] = check(key, g, v[2]) end
  end
end
local function get(k, f) return state[KEYS[k]][f] end
local changed = {}
local function set(k, f, v)
  state[KEYS[k]][f] = v
  changed[#changed + 1] = {KEYS[k], f}
end
local function flush()
  for _, c in ipairs(changed) do
    local v = state[c[1]][c[2]]
    if v ~= nil then
      redis.call('HSET', c[1], c[2], string.format('%d', v))
      state[c[1]][c[2]] = nil -- written once
    end
  end
end
local function expire(from)
  for k = 1, nk do
    local at = ARGV[from + k - 1]
    if at ~= '0' then redis.call('PEXPIREAT', KEYS[k], at) end
  end
end

if mode == 'take' then
  -- ARGV: 'take', one expiry per key (unix ms, '0': none), then per take:
  -- key index, id, allowance, want, owed. Reply: got, left per take.
  local from = 2 + nk
  for i = from, #ARGV, 5 do load(tonumber(ARGV[i]), ARGV[i + 1]) end
  local out = {}
  for i = from, #ARGV, 5 do
    local k, id = tonumber(ARGV[i]), ARGV[i + 1]
    local allowance, want, owed = tonumber(ARGV[i + 2]), math.max(tonumber(ARGV[i + 3]), 0), tonumber(ARGV[i + 4])
    local used = (get(k, 'u:' .. id) or 0) + owed
    local left = math.max(allowance + (get(k, 'g:' .. id) or 0) - used, 0)
    local got = math.min(want, left)
    set(k, 'u:' .. id, used + got)
    out[#out + 1] = got
    out[#out + 1] = left - got
  end
  flush()
  expire(2)
  return out
elseif mode == 'give' then
  -- ARGV: 'give', then per give: key index, id, n. A key with no state in
  -- the period is left alone (nothing is made that would not expire).
  for i = 2, #ARGV, 3 do load(tonumber(ARGV[i]), ARGV[i + 1]) end
  local n = 0
  for i = 2, #ARGV, 3 do
    local k, f = tonumber(ARGV[i]), 'u:' .. ARGV[i + 1]
    local used = get(k, f)
    if used then
      set(k, f, math.max(used - tonumber(ARGV[i + 2]), 0))
      n = n + 1
    end
  end
  flush()
  return n
elseif mode == 'grant' then
  -- ARGV: 'grant', the expiry, id, n, the most that may be granted.
  -- Reply: used, granted.
  local id = ARGV[3]
  load(1, id)
  local used = get(1, 'u:' .. id) or 0
  local g = math.max((get(1, 'g:' .. id) or 0) + tonumber(ARGV[4]), 0)
  if g > tonumber(ARGV[5]) then
    return redis.error_reply('TOOMUCH the units granted would be ' .. string.format('%d', g) .. ', more than ' .. ARGV[5])
  end
  set(1, 'g:' .. id, g)
  flush()
  expire(2)
  return {used, g}
end
return redis.error_reply('ERR quota.lua: unknown mode ' .. tostring(mode))
