-- wrk script for bench/fleet.sh: a paced load that rotates over many keys.
--
-- wrk has no rate option. Each connection sends a request, waits for the
-- answer, then waits delay() milliseconds before the next one; so C
-- connections with a delay of D ms send a bit under C * 1000 / D
-- requests a second (the answer's latency adds to each cycle).
--
-- Every request carries "Authorization: Bearer <key>", the keys taken in
-- turn from a file of raw keys, one a line; each wrk thread starts at a
-- different place in the list.
--
-- Usage: wrk -t1 -c100 -d20s -s bench/fleet.lua URL -- RAW_KEYS_FILE DELAY_MS

local threads = 0

function setup(thread)
   thread:set("index", threads)
   threads = threads + 1
end

local requests = {}
local n, i = 0, 0
local pause = 0

function init(args)
   local file, delay_ms = args[1], tonumber(args[2])
   if file == nil or delay_ms == nil then
      error("usage: wrk ... -s fleet.lua URL -- RAW_KEYS_FILE DELAY_MS")
   end
   pause = delay_ms
   local f = assert(io.open(file, "r"))
   for line in f:lines() do
      if line ~= "" then
         n = n + 1
         -- Whole requests are made once, here, so that request() only
         -- picks one.
         requests[n] = wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. line })
      end
   end
   f:close()
   if n == 0 then
      error("no keys in " .. file)
   end
   -- index is set by setup() on the thread's own Lua state.
   i = ((tonumber(index) or 0) * 7919) % n
end

function delay()
   return pause
end

function request()
   i = i % n + 1
   return requests[i]
end
