-- The embedding pieces seen from Lua: cluster:fd() for event loops.
local ic = require("isolate_cluster")
local wait = require("support.wait")

describe("cluster:fd()", function()
  it("is one integer fd per cluster, refused once the cluster is closed", function()
    local c = ic.single_node({ workers = 1 })
    local fd = c:fd()
    assert.is_true(math.type(fd) == "integer" and fd >= 0)
    assert.are.equal(fd, c:fd())
    c:close()
    assert.has_error(function() c:fd() end, "the cluster is closed")
  end)

  local ok_luv, uv = pcall(require, "luv")
  local it_luv = ok_luv and it or pending
  it_luv("becomes readable when a message comes, and quiet once receive(0) found nothing", function()
    local c = ic.single_node({ workers = 1 })
    local fd = c:fd()
    local function readable()
      local seen = false
      local p = uv.new_poll(fd)
      local t = uv.new_timer()
      p:start("r", function() seen = true p:stop() t:stop() end)
      t:start(50, 0, function() p:stop() end)
      uv.run()
      p:close() t:close() uv.run("nowait")
      return seen
    end
    assert.is_nil(c:receive(0))
    assert.is_false(readable())
    local echo = c:spawn_isolate(function(context)
      context:on_message(function(m, sender) sender:send(m) end)
    end)
    echo:send("hi")
    assert.is_true(wait.wait_until(readable, 10))
    assert.are.equal("hi", c:receive(0))
    assert.is_nil(c:receive(0))
    assert.is_false(readable())
    c:shutdown(5)
  end)
end)

describe("cluster:stats() rows", function()
  it("has a row per isolate with its path, node, state, mailbox, messages, memory and run time", function()
    local c = ic.single_node({ workers = 2 })
    local echo = c:spawn_isolate(function(context)
      context:on_message(function(m) return m end)
    end, nil, { path = "/stats/echo" })
    local waiter = c:spawn_isolate(function(context)
      context:on_message(function() context:sleep(30) end)
    end, nil, { path = "/stats/waiter" })
    for i = 1, 10 do assert.are.equal(i, echo:request(i)) end
    waiter:send("sleep")
    local function row_of(stats, path)
      for _, r in ipairs(stats.rows) do
        if r.path == path then return r end
      end
    end
    -- an isolate's numbers are those of its last finished turn: the echo may
    -- still be in the turn that answered
    local s, e = wait.wait_until(function()
      local st = c:stats()
      local r = row_of(st, "/stats/echo")
      if r and r.memory > 0 and r.run_time > 0 then return st, r end
    end, 10)
    assert.is_truthy(e)
    assert.are.equal(2, s.isolates)
    assert.are.equal(2, #s.rows)
    assert.is_nil(e.ref)
    assert.are.equal(echo.id, e.id)
    local with_refs = c:stats({ refs = true })
    assert.are.equal(echo, row_of(with_refs, "/stats/echo").ref)
    assert.are.equal("lua", e.kind)
    assert.is_true(e.messages_in >= 10)
    assert.are.equal(0, e.messages_out) -- replies are not sends
    assert.is_true(e.memory > 0)
    assert.is_true(e.run_time > 0)
    assert.are.equal(math.type(e.node), "integer")
    assert.are.equal(0, e.mailbox)
    -- the waiter waits in its handler: later messages stay queued
    waiter:send("queued")
    local w = wait.wait_until(function()
      local r = row_of(c:stats(), "/stats/waiter")
      return r and r.state == "waiting" and r.mailbox == 1 and r
    end, 10)
    assert.is_truthy(w)
    -- in spawn order; without rows when asked
    assert.is_true(s.rows[1].id < s.rows[2].id)
    assert.is_nil(c:stats({ rows = false }).rows)
    assert.has_error(function() c:stats({ row = false }) end)
    c:shutdown(5)
  end)

  it("counts in run_time the turns only, not the time a worker waited for work", function()
    -- One worker: every turn runs on it, so the run times of all isolates
    -- add up to no more than the time that passed, and a worker that waits
    -- between two turns does not count the wait to the next one.
    local c = ic.single_node({ workers = 1 })
    local t0 = ic.now()
    local echo = c:spawn_isolate(function(context)
      context:on_message(function(m) return m end)
    end, nil, { path = "/stats/turns" })
    local pong = c:spawn_isolate(function(context)
      context:on_message(function(m, sender) sender:send(m) end)
    end)
    local ping = c:spawn_isolate(function(context)
      context:on_message(function(n, sender)
        local left, report = n, sender
        context:on_message(function()
          left = left - 1
          if left == 0 then report:send("done") else pong:send(0) end
        end)
        pong:send(0)
      end)
    end)
    ping:send(200)
    assert.are.equal("done", c:receive(wait.TIMEOUT))
    assert.are.equal(1, echo:request(1))
    local function run_time()
      for _, r in ipairs(c:stats().rows) do
        if r.path == "/stats/turns" then return r.run_time end
      end
    end
    local before = run_time()
    -- the worker has nothing to run for a while
    assert.is_nil(c:receive(0.3))
    local idle_end = ic.now()
    assert.are.equal(2, echo:request(2))
    local after = assert(wait.wait_until(function()
      local t = run_time()
      return t and t > before and t
    end, wait.TIMEOUT))
    assert.is_true(after - before < 0.3, "the wait was counted: " .. (after - before))
    local total = 0
    for _, r in ipairs(c:stats().rows) do total = total + r.run_time end
    assert.is_true(total <= ic.now() - t0, "more run time than time passed")
    assert.is_true(idle_end - t0 >= 0.3)
    c:shutdown(5)
  end)

  it("lists every isolate, also thousands of them", function()
    local c = ic.single_node({ workers = 2 })
    for _ = 1, 2000 do
      c:spawn_isolate(function(context) context:on_message(function() end) end)
    end
    assert.is_truthy(wait.wait_until(function() return #c:stats().rows == 2000 end, 30))
    c:shutdown(10)
  end)
end)

describe("isolate-cluster --stats", function()
  local host = os.getenv("IC_HOST_BIN") or "build/isolate-cluster"
  it("prints a table to stderr that changes while a workload runs", function()
    local stop = os.tmpname()
    os.remove(stop)
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
local stop = ...
local w = cluster:spawn_isolate(function(ctx) ctx:on_message(function(m) return m end) end, nil, { path = "/worker" })
local t0 = os.time()
while os.time() - t0 < 60 do
  for i = 1, 20 do w:request(i) end
  local s = io.open(stop)
  if s then s:close() break end
end
cluster:shutdown(5)
]])
    f:close()
    local p = assert(io.popen(("timeout 90 %s --stats 0.1 %s %s 2>&1 >/dev/null"):format(host, script, stop)))
    local seen, tables = {}, 0
    for line in p:lines() do
      if line:match("^isolate%-cluster stats at") then tables = tables + 1 end
      local n_in = line:match("^%s+%d+%s+/worker%s+lua%s+%a+%s+%d+%s+(%d+)")
      if n_in then
        seen[#seen + 1] = tonumber(n_in)
        if #seen >= 2 and seen[#seen] ~= seen[1] then
          local s = io.open(stop, "w")
          s:close()
        end
      end
    end
    local ok = p:close()
    os.remove(stop)
    os.remove(script)
    assert.is_true(ok)
    assert.is_true(tables >= 2)
    assert.is_true(#seen >= 2 and seen[#seen] > seen[1])
  end)

  it("stops printing before the cluster is closed, also when the host's own calls raise", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    -- the host's next call on the cluster (run) raises in the host itself
    f:write("getmetatable(cluster).__index = function() error('no methods left', 0) end\n")
    f:close()
    local p = assert(io.popen(("timeout 60 %s --stats 0.01 %s 2>&1"):format(host, script)))
    local out = p:read("a")
    local _, _, code = p:close()
    os.remove(script)
    assert.are.equal(1, code)
    assert.matches("no methods left", out)
  end)

  it("refuses a bad interval", function()
    local p = io.popen(("%s --stats 0 x.lua 2>&1"):format(host))
    local out = p:read("a")
    local _, _, code = p:close()
    assert.are.equal(2, code)
    assert.matches("%-%-stats needs seconds", out)
  end)
end)
