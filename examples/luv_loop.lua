-- A cluster inside a libuv loop (luv, Debian lua-luv): the loop polls
-- cluster:fd() and takes what came with cluster:receive(0), never blocking
-- in the cluster; a uv timer runs alongside.
--
--   lua5.4 examples/luv_loop.lua
local uv = require("luv")
local ic = require("isolate_cluster")

local cluster = ic.single_node({ workers = 2 })

-- Sends the program n numbers, one every few milliseconds.
local ticker = cluster:spawn_isolate(function(context)
  context:on_message(function(n, sender)
    for i = 1, n do
      context:sleep(0.005)
      sender:send(i)
    end
  end)
end)

local want, got, sum, ticks = 20, 0, 0, 0
local poll = uv.new_poll(cluster:fd())
local timer = uv.new_timer()
local guard = uv.new_timer()

local function finish()
  poll:stop()
  timer:stop()
  guard:stop()
end

poll:start("r", function(err)
  assert(not err, err)
  -- Everything there is now: a receive that finds nothing re-arms the fd.
  while true do
    local msg = cluster:receive(0)
    if msg == nil then break end
    got, sum = got + 1, sum + msg
  end
  if got == want then finish() end
end)
timer:start(1, 1, function() ticks = ticks + 1 end)
guard:start(30000, 0, function()
  io.stderr:write("no answer in 30 s\n")
  finish()
end)

ticker:send(want)
uv.run()
print(("%d messages, sum %d, the timer ran %s"):format(got, sum, ticks > 0 and "too" or "not"))
assert(got == want and sum == want * (want + 1) / 2)
assert(cluster:shutdown(5))
print("ok")
