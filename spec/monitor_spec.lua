-- context:monitor(ref, fn): one isolate's down, with its reason, for the
-- isolate that asked; "noproc" (later, as an event) for one already down.
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster, error_of = W.with_cluster, W.error_of

-- Stops with the reason it is sent ("normal", or an error when told "crash").
local function target_entry(ctx)
  ctx:on_message(function(m)
    if m == "crash" then error("target crashed") end
    if m == "spin" then while true do end end
    if type(m) == "table" and m.stop then ctx:stop(m.stop) end
    return "ok"
  end)
end

-- A watcher that monitors what it is asked to, and reports each firing to
-- main as { tag, path, reason, after } (after: the monitor call had returned).
local function watcher_entry(ctx)
  local main = ctx:property("main")
  local mons, returned = {}, {}
  ctx:on_message(function(m)
    if m.watch then
      local tag = m.tag
      mons[tag] = ctx:monitor(m.watch, function(ref, reason)
        main:send({ tag, ref.path or tostring(ref), reason, returned[tag] == true })
      end)
      returned[tag] = true
      return true
    elseif m.cancel then
      mons[m.cancel]:cancel()
      return true
    end
  end)
end

local function spawn_watcher(c)
  local w = c:spawn_isolate(watcher_entry, { main = c.main })
  return w
end

describe("context:monitor", function()
  it("fn runs once, with the down reason, when that one isolate goes down", function()
    with_cluster({ workers = 2, logger = false }, function(c)
      local w = spawn_watcher(c)
      local t1 = c:spawn_isolate(target_entry, nil, { path = "/t1" })
      local t2 = c:spawn_isolate(target_entry, nil, { path = "/t2" })
      local t3 = c:spawn_isolate(target_entry, nil, { path = "/t3" })
      local t4 = c:spawn_isolate(target_entry, nil, { path = "/t4" })
      local bystander = c:spawn_isolate(target_entry, nil, { path = "/bystander" })
      for tag, t in pairs({ a = t1, b = t2, c = t3, d = t4 }) do
        assert.is_true(w:request({ watch = t, tag = tag }, W.TIMEOUT))
      end
      t1:send({ stop = "finished here" })
      t2:send("crash")
      t3:kill()
      t4:send({ stop = "normal" })
      local got = {}
      for _ = 1, 4 do
        local m = c:receive(W.TIMEOUT)
        assert(m, "a monitor did not fire")
        assert.is_nil(got[m[1]], "fired twice: " .. m[1])
        got[m[1]] = m
      end
      assert.same({ "a", "/t1", "finished here", true }, got.a)
      assert.matches("^error: .*target crashed", got.b[3])
      assert.equal("killed", got.c[3])
      assert.equal("normal", got.d[3])
      -- the bystander's end is not reported: nothing monitors it
      bystander:send({ stop = "normal" })
      assert.same({}, W.drain(c, 0.2))
    end)
  end)

  it('gives "noproc" for an isolate already down, after the monitor call has returned', function()
    with_cluster({ workers = 1 }, function(c)
      local w = spawn_watcher(c)
      local t = c:spawn_isolate(target_entry, nil, { path = "/gone" })
      t:send({ stop = "normal" })
      assert.truthy(W.wait_until(function() return c:lookup_isolate("/gone") == nil end))
      assert.is_true(w:request({ watch = t, tag = "late" }, W.TIMEOUT))
      local m = c:receive(W.TIMEOUT)
      -- (a ref decoded after its isolate is gone no longer knows its path)
      assert.same({ "late", "noproc", true }, { m[1], m[3], m[4] })
      assert.same({}, W.drain(c, 0.1))
    end)
  end)

  it("a cancelled monitor never fires; cancelling again, or after it fired, does nothing", function()
    with_cluster({ workers = 2 }, function(c)
      local w = spawn_watcher(c)
      local t = c:spawn_isolate(target_entry, nil, { path = "/t" })
      assert.is_true(w:request({ watch = t, tag = "kept" }, W.TIMEOUT))
      assert.is_true(w:request({ watch = t, tag = "dropped" }, W.TIMEOUT))
      assert.is_true(w:request({ cancel = "dropped" }, W.TIMEOUT))
      assert.is_true(w:request({ cancel = "dropped" }, W.TIMEOUT))
      t:send({ stop = "normal" })
      assert.same({ "kept", "/t", "normal", true }, c:receive(W.TIMEOUT))
      assert.is_true(w:request({ cancel = "kept" }, W.TIMEOUT)) -- after it fired
      assert.same({}, W.drain(c, 0.2))
    end)
  end)

  it("fires after a wait in progress has finished, as its own event turn", function()
    with_cluster({ workers = 2 }, function(c)
      local t = c:spawn_isolate(target_entry, nil, { path = "/t" })
      local w = c:spawn_isolate(function(ctx)
        local main, target = ctx:property("main"), ctx:property("target")
        local sleeping = false
        ctx:monitor(target, function(_, reason) main:send({ "fired", reason, sleeping }) end)
        ctx:on_message(function()
          sleeping = true
          target:send({ stop = "normal" })
          ctx:sleep(0.2)
          sleeping = false
          main:send("slept")
        end)
      end, { main = c.main, target = t })
      w:send("go")
      assert.equal("slept", c:receive(W.TIMEOUT))
      assert.same({ "fired", "normal", false }, c:receive(W.TIMEOUT))
    end)
  end)

  it("many watchers of one isolate, and watchers that end first, cost nothing more", function()
    with_cluster({ workers = 2 }, function(c)
      local t = c:spawn_isolate(target_entry, nil, { path = "/long" })
      -- 300 watchers that end before the target does
      for i = 1, 300 do
        c:spawn_isolate(function(ctx)
          ctx:monitor(ctx:property("target"), function() end)
          ctx:stop()
        end, { target = t })
      end
      -- 50 that stay and all hear of it
      for i = 1, 50 do
        c:spawn_isolate(function(ctx)
          local main, i = ctx:property("main"), ctx:property("i")
          ctx:monitor(ctx:property("target"), function(_, reason) main:send({ i, reason }) end)
          main:send("watching")
        end, { target = t, main = c.main, i = i })
      end
      local msgs = W.collect(c, 50)
      assert.equal(50, #msgs)
      t:send({ stop = "done" })
      local seen = {}
      for _, m in ipairs(W.collect(c, 50)) do
        assert.equal("done", m[2])
        seen[m[1]] = (seen[m[1]] or 0) + 1
      end
      for i = 1, 50 do assert.equal(1, seen[i], "watcher " .. i) end
    end)
  end)

  it("an armed monitor keeps its isolate from ending by itself, until it fires", function()
    with_cluster(nil, function(c)
      local target = c:spawn_isolate(target_entry, nil, { path = "/target" })
      assert.equal("ok", target:request("hi", W.TIMEOUT))
      -- Nothing but the monitor: without it the watcher would end at once.
      local watcher = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:monitor(ctx:property("target"), function(_, reason) main:send({ "fired", reason }) end)
        main:send("armed")
      end, { main = c.main, target = target })
      assert.equal("armed", W.receive(c))
      assert.is_true(target:send({ stop = "done" }))
      assert.same({ "fired", "done" }, W.receive(c))
      -- and with nothing left after that, it ends
      assert.truthy(W.wait_until(function() return not watcher:send("probe") end), "the watcher never ended")
    end)
  end)

  it("refuses what is not a ref or not a function", function()
    with_cluster({ workers = 1 }, function(c)
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function()
          local a = select(2, pcall(ctx.monitor, ctx, "not a ref", function() end))
          local b = select(2, pcall(ctx.monitor, ctx, ctx.isolate_ref, 42))
          return { tostring(a), tostring(b) }
        end)
      end)
      local errs = r:request("go", W.TIMEOUT)
      assert.matches("isolate_ref expected", errs[1])
      assert.matches("monitor expects a function", errs[2])
    end)
  end)
end)
