local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {redis.call('GET', KEYS[1]) or '', id, tostring(redis.call('EXISTS', KEYS[3]))}
