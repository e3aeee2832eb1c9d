local n = 0
for i = 1, #ARGV, 3 do
  local rec = redis.call('HGET', KEYS[1], ARGV[i])
  if rec then
    local ok, d = pcall(cjson.decode, rec)
    if ok and type(d) == 'table' and type(d.key_hash) == 'string' and string.lower(d.key_hash) == ARGV[i+1] then
      local f = ARGV[i+1] .. ':' .. ARGV[i]
      local cur = tonumber(redis.call('HGET', KEYS[2], f) or '0') or 0
      if tonumber(ARGV[i+2]) > cur then
        redis.call('HSET', KEYS[2], f, ARGV[i+2])
        n = n + 1
      end
    end
  end
end
return n
