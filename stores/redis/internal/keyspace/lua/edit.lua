local v = redis.call('GET', KEYS[1])
if not v then
  if ARGV[2] ~= '1' then return redis.error_reply('NOKEYSET no key set at this prefix') end
  v = '0'
elseif ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('NORECORDS the key set has a version but no records')
end
if ARGV[1] ~= '*' and v ~= ARGV[1] then return {0, tonumber(v)} end
local na = tonumber(ARGV[5])
local w0 = 6 + na
for i = w0, #ARGV, 3 do
  local want = ARGV[i+1]
  if want == '-' then
    if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then return {2, tonumber(v)} end
  elseif want ~= '' then
    if redis.call('HGET', KEYS[2], ARGV[i]) ~= string.sub(want, 2) then return {3, tonumber(v)} end
  end
end
if na > 0 then
  local max = 1000000
  local m = redis.call('GET', KEYS[5])
  if m then
    local n = tonumber(m)
    if n and n >= 1 then max = math.floor(n) end
  end
  for i = 6, w0 - 1 do
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', max, '*', 'e', ARGV[i])
  end
end
local was = {}
for i = w0, #ARGV, 3 do
  local h = ''
  local prev = redis.call('HGET', KEYS[2], ARGV[i])
  if prev then
    h = '?'
    local ok, d = pcall(cjson.decode, prev)
    if ok and type(d) == 'table' and type(d.key_hash) == 'string' then h = string.lower(d.key_hash) end
  end
  was[#was + 1] = h
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+2])
end
local nv = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'v', nv, 'ids', ARGV[4], 'was', cjson.encode(was))
return {1, nv}
