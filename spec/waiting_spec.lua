-- Waiting: request (main and isolates, replies, errors, timeouts, deferred
-- replies), receive (context and cluster, with and without timeout, requests
-- to the main state), sleep, timers, waiting lookups, run, many waiting
-- isolates on one worker, and two isolates that request each other.
--
-- Timing assertions are loose bounds only (the suite runs on a loaded 2-core
-- machine): "came after >= 0.15 s" for a 0.2 s wait, "< 3 s" for "at once".
-- Entry functions are COPIED into the new isolate: they never capture the
-- cluster, busted's assert, or the wait helpers.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, before_each, after_each, assert = describe, it, before_each, after_each, assert
-- Busted gives spec files their own _ENV; entries defined below must see the
-- real globals.
local _ENV = _G
local with_cluster, echo_entry = W.with_cluster, W.echo_entry

-- Answers "never" requests with nothing at all (a deferred reply that is
-- dropped), anything else at once.
local function silent_entry(ctx)
  ctx:on_message(function(m)
    if m == "never" then
      ctx:reply_later() -- and never call it
      return
    end
    return m
  end)
end

local function contains(s, part)
  return type(s) == "string" and s:find(part, 1, true) ~= nil
end

describe("waiting", function()
  local c
  before_each(function() c = ic.single_node({ workers = 2 }) end)
  after_each(function()
    assert.is_true(c:shutdown())
    c = nil
  end)

  describe("ref:request from the main state", function()
    it("returns the handler's reply, tables too", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          if m == "table" then return { list = { 1, 2, 3 }, nested = { ok = true }, ref = ctx.isolate_ref } end
          return m * 2
        end)
      end)
      assert.equal(42, r:request(21, W.TIMEOUT))
      local t = r:request("table", W.TIMEOUT)
      assert.same({ 1, 2, 3 }, t.list)
      assert.is_true(t.nested.ok)
      assert.equal(r, t.ref)
    end)

    it("a handler returning nothing replies nil", function()
      local r = c:spawn_isolate(function(ctx) ctx:on_message(function() end) end)
      assert.is_nil(r:request("x", W.TIMEOUT))
    end)

    it("raises the handler's error at the requester", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          if m == "table" then error({ code = 42 }) end
          error("bad thing happened")
        end)
      end)
      local ok, err = pcall(r.request, r, "x", W.TIMEOUT)
      assert.is_false(ok)
      assert.truthy(contains(err, "bad thing happened"), tostring(err))
      -- the isolate is still there: an error answered to a request does not stop it
      ok, err = pcall(r.request, r, "table", W.TIMEOUT)
      assert.is_false(ok)
      assert.same({ code = 42 }, err)
    end)

    it("raises a timeout error when no reply comes in time", function()
      local r = c:spawn_isolate(silent_entry)
      local elapsed, ok, err = W.timed(r.request, r, "never", 0.2)
      assert.is_false(ok)
      assert.truthy(contains(err, "timeout"), tostring(err))
      if W.precise_clock then
        assert.is_true(elapsed >= 0.15, "timed out too early: " .. elapsed)
        assert.is_true(elapsed < 3, "timed out too late: " .. elapsed)
      end
      -- and the isolate still answers
      assert.equal("again", r:request("again", W.TIMEOUT))
    end)

    it("has a default timeout (5 s)", function()
      local r = c:spawn_isolate(silent_entry)
      local elapsed, ok, err = W.timed(r.request, r, "never")
      assert.is_false(ok)
      assert.truthy(contains(err, "timeout"), tostring(err))
      if W.precise_clock then
        assert.is_true(elapsed >= 4, "default timeout too short: " .. elapsed)
        assert.is_true(elapsed < 15, "default timeout too long: " .. elapsed)
      end
    end)

    it("rejects a timeout that is not positive", function()
      local r = c:spawn_isolate(echo_entry)
      assert.has_error(function() r:request("x", 0) end)
      assert.has_error(function() r:request("x", -1) end)
    end)

    it("fails at once for an isolate that is down", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) if m == "stop" then ctx:stop() end return m end)
      end)
      assert.equal("stop", r:request("stop", W.TIMEOUT))
      assert.truthy(W.wait_until(function() return not r:send("probe") end), "the isolate never went down")
      local elapsed, ok, err = W.timed(r.request, r, "x", 5)
      assert.is_false(ok)
      assert.truthy(contains(err, "isolate down"), tostring(err))
      if W.precise_clock then assert.is_true(elapsed < 1, "took " .. elapsed .. " s") end
    end)

    it("a request queued to an isolate that then goes down fails with 'isolate down'", function()
      -- the entry runs a while, then fails: the request waits in its
      -- mailbox and is answered as a dead letter
      local r = c:spawn_isolate(function()
        local t = os.clock()
        while os.clock() - t < 0.2 do end
        error("boom at boot")
      end)
      local ok, err = pcall(r.request, r, "x", W.TIMEOUT)
      assert.is_false(ok)
      assert.truthy(contains(err, "isolate down"), tostring(err))
    end)

    it("fails at once, not at its timeout, when the cluster shuts down meanwhile", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function()
          ctx:reply_later() -- never answered
          ctx:shutdown_cluster()
        end)
      end)
      local elapsed, ok, err = W.timed(r.request, r, "x", 10)
      assert.is_false(ok)
      assert.truthy(contains(err, "shut down") or contains(err, "isolate down"), tostring(err))
      if W.precise_clock then assert.is_true(elapsed < 8, "took " .. elapsed) end
    end)

    it("a late reply to a timed-out request is not taken for the next reply", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          local reply = ctx:reply_later()
          ctx:after(m.delay, function() reply(m.answer) end)
        end)
      end)
      local ok, err = pcall(r.request, r, { delay = 0.3, answer = "stale" }, 0.1)
      assert.is_false(ok)
      assert.truthy(contains(err, "timeout"), tostring(err))
      -- the stale reply arrives while this one waits
      assert.equal("fresh", r:request({ delay = 0.5, answer = "fresh" }, W.TIMEOUT))
    end)
  end)

  describe("ref:request inside isolates", function()
    it("a handler can request another isolate and use the reply", function()
      local b = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) return m * 10 end)
      end, nil, { path = "/b" })
      local a = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          local b_ref = ctx:lookup_isolate("/b")
          return b_ref:request(m) + 1
        end)
      end)
      assert.equal(71, a:request(7, W.TIMEOUT))
      assert.equal(b, c:lookup_isolate("/b"))
    end)

    it("reports errors, timeouts and down isolates to the requesting isolate", function()
      local silent = c:spawn_isolate(silent_entry)
      local failing = c:spawn_isolate(function(ctx)
        ctx:on_message(function() error("remote failure") end)
      end)
      local stopped = c:spawn_isolate(function(ctx)
        ctx:on_message(function() ctx:stop() end)
      end)
      assert.is_true(stopped:send("stop"))
      assert.truthy(W.wait_until(function() return not stopped:send("probe") end), "never went down")
      local a = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          local p = ctx:properties()
          local out = {}
          local ok, err = pcall(p.failing.request, p.failing, "x", 5)
          out.error = { ok, tostring(err) }
          ok, err = pcall(p.silent.request, p.silent, "never", 0.2)
          out.timeout = { ok, tostring(err) }
          ok, err = pcall(p.stopped.request, p.stopped, "x", 5)
          out.down = { ok, tostring(err) }
          return out
        end)
      end, { failing = failing, silent = silent, stopped = stopped })
      local out = a:request("go", 15)
      assert.is_false(out.error[1])
      assert.truthy(contains(out.error[2], "remote failure"), out.error[2])
      assert.is_false(out.timeout[1])
      assert.truthy(contains(out.timeout[2], "timeout"), out.timeout[2])
      assert.is_false(out.down[1])
      assert.truthy(contains(out.down[2], "isolate down"), out.down[2])
    end)

    it("context:reply_later answers a request later (here from a timer)", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          local reply = ctx:reply_later()
          ctx:after(0.05, function() reply("later: " .. m) end)
          return "ignored" -- the handler's own return value is not the reply
        end)
      end)
      assert.equal("later: q", r:request("q", W.TIMEOUT))
    end)

    it("a deferred reply can be used once; reply_later outside a request handler raises", function()
      local r = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:on_message(function(m)
          if m == "plain" then
            local ok, err = pcall(ctx.reply_later, ctx)
            main:send({ plain = { ok, tostring(err) } })
            return
          end
          local reply = ctx:reply_later()
          reply(1)
          local ok, err = pcall(reply, 2)
          main:send({ twice = { ok, tostring(err) } })
        end)
      end, { main = c.main })
      assert.equal(1, r:request("req", W.TIMEOUT))
      local m = W.receive(c)
      assert.is_false(m.twice[1])
      assert.truthy(contains(m.twice[2], "already"), m.twice[2])
      assert.is_true(r:send("plain"))
      m = W.receive(c)
      assert.is_false(m.plain[1])
    end)
  end)

  describe("receive", function()
    it("context:receive() without a timeout waits for the next message", function()
      local r = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        local m, sender = ctx:receive()
        main:send({ got = m, from_main = sender == main })
      end, { main = c.main })
      assert.is_true(r:send("hello"))
      assert.same({ got = "hello", from_main = true }, W.receive(c))
    end)

    it("context:receive(timeout) returns the message, or nil on timeout", function()
      local r = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        local m = ctx:receive(5)
        main:send({ first = m })
        local none = ctx:receive(0.2)
        main:send({ second_is_nil = none == nil })
      end, { main = c.main })
      local t0 = W.now()
      assert.is_true(r:send({ n = 1 }))
      assert.same({ first = { n = 1 } }, W.receive(c))
      assert.same({ second_is_nil = true }, W.receive(c))
      if W.precise_clock then assert.is_true(W.now() - t0 >= 0.15) end
    end)

    it("context:receive takes messages in order, and gives a reply function for a request", function()
      local r = c:spawn_isolate(function(ctx)
        local a = ctx:receive(5)
        local b = ctx:receive(5)
        local q, _, reply = ctx:receive(5)
        reply({ a, b, q })
      end)
      assert.is_true(r:send("one"))
      assert.is_true(r:send("two"))
      assert.same({ "one", "two", "three" }, r:request("three", W.TIMEOUT))
    end)

    it("cluster:receive(timeout) returns nil when nothing comes", function()
      local elapsed, ok, msg, sender = W.timed(c.receive, c, 0.2)
      assert.is_true(ok)
      assert.is_nil(msg)
      assert.is_nil(sender)
      if W.precise_clock then
        assert.is_true(elapsed >= 0.15, "returned too early: " .. elapsed)
        assert.is_true(elapsed < 3, "returned too late: " .. elapsed)
      end
    end)

    it("cluster:receive gives msg, sender and no reply function for a plain message", function()
      local r = c:spawn_isolate(function(ctx) ctx:property("main"):send("plain") end, { main = c.main })
      local msg, sender, reply = W.receive(c)
      assert.equal("plain", msg)
      assert.equal(r, sender)
      assert.is_nil(reply)
    end)

    it("cluster:receive gives msg, sender and a reply function for a request to cluster.main", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m, sender)
          -- inside an isolate the main state's ref is the sender of a main message
          local answer = sender:request({ question = m }, 5)
          sender:send({ answer = answer })
        end)
      end)
      assert.is_true(r:send("6*7?"))
      local msg, sender, reply = W.receive(c)
      assert.same({ question = "6*7?" }, msg)
      assert.equal(r, sender)
      assert.is_function(reply)
      reply(42)
      assert.same({ answer = 42 }, W.receive(c))
    end)

    it("cluster:receive() without a timeout returns nil when an isolate shuts the cluster down", function()
      -- in a child process, bounded by `timeout`, so that a hang fails the test
      -- instead of hanging the suite
      local out, status = W.run_lua([[
        local ic = require("isolate_cluster")
        local cluster = ic.single_node({ workers = 1 })
        cluster:spawn_isolate(function(ctx) ctx:after(0.1, function() ctx:shutdown_cluster() end) end)
        local msg, sender = cluster:receive()
        print("receive:", tostring(msg), tostring(sender))
        print("shutdown:", tostring(cluster:shutdown()))
      ]], 20)
      assert.equal(0, status, out)
      assert.truthy(contains(out, "receive:\tnil\tnil"), out)
      assert.truthy(contains(out, "shutdown:\ttrue"), out)
    end)

    it("cluster:receive() without a timeout returns a message sent later", function()
      c:spawn_isolate(function(ctx)
        ctx:sleep(0.1)
        ctx:property("main"):send("eventually")
      end, { main = c.main })
      assert.equal("eventually", c:receive())
    end)

    it("the reply function of a request to cluster.main answers only once", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m, sender) sender:send({ answer = sender:request("q", 5) }) end)
      end)
      assert.is_true(r:send("go"))
      local _, _, reply = W.receive(c)
      assert.is_function(reply)
      assert.is_true(reply(1))
      local ok, err = pcall(reply, 2)
      assert.is_false(ok)
      assert.truthy(contains(err, "already been answered"), tostring(err))
      assert.same({ answer = 1 }, W.receive(c))
    end)

    it("an isolate waiting in context:receive() forever does not hold up shutdown", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          if m == "wait" then ctx:receive() end
          return m
        end)
      end)
      assert.is_true(r:send("wait"))
      local entry_waiter = c:spawn_isolate(function(ctx) ctx:receive() end)
      assert.truthy(entry_waiter)
      local elapsed, ok, res = W.timed(c.shutdown, c, 5)
      assert.is_true(ok)
      assert.is_true(res)
      if W.precise_clock then assert.is_true(elapsed < 3, "shutdown took " .. elapsed) end
    end)
  end)

  describe("sleep and timers", function()
    it("context:sleep waits, then the isolate goes on", function()
      local t0 = W.now()
      c:spawn_isolate(function(ctx)
        ctx:sleep(0.2)
        ctx:property("main"):send("woke")
      end, { main = c.main })
      assert.equal("woke", W.receive(c))
      if W.precise_clock then assert.is_true(W.now() - t0 >= 0.15, "woke too early") end
    end)

    it("a sleeping isolate does not hold up others, even on one worker", function()
      with_cluster({ workers = 1 }, function(c1)
        local sleeper = c1:spawn_isolate(function(ctx)
          ctx:on_message(function() ctx:sleep(2) return "rested" end)
        end)
        local other = c1:spawn_isolate(echo_entry)
        assert.is_true(sleeper:send("sleep"))
        local elapsed, ok, got = W.timed(other.request, other, "quick", W.TIMEOUT)
        assert.is_true(ok, tostring(got))
        assert.equal("quick", got)
        if W.precise_clock then assert.is_true(elapsed < 1.5, "other waited " .. elapsed .. " s") end
      end)
    end)

    it("a busy isolate (an endless loop in a handler) does not hold up others, even on one worker", function()
      local c1 = ic.single_node({ workers = 1 })
      local spinner = c1:spawn_isolate(function(ctx)
        ctx:on_message(function(main)
          main:send("spinning")
          while true do end
        end)
      end)
      local other = c1:spawn_isolate(echo_entry)
      assert.is_true(spinner:send(c1.main))
      assert.equal("spinning", W.receive(c1)) -- it computes from now on
      for i = 1, 3 do
        assert.equal(i, other:request(i, W.TIMEOUT))
      end
      -- A graceful shutdown waits for the computing handler until its
      -- deadline, then interrupts it: not in time, but promptly.
      local elapsed, ok, down = W.timed(c1.shutdown, c1, 1)
      assert.is_true(ok, tostring(down))
      assert.is_false(down)
      if W.precise_clock then assert.is_true(elapsed < 4, "shutdown took " .. elapsed .. " s") end
    end)

    it("context:after fires once", function()
      c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:after(0.05, function() main:send("after") end)
      end, { main = c.main })
      assert.equal("after", W.receive(c))
      assert.same({}, W.drain(c, 0.3))
    end)

    it("a timer cancelled before it fires never fires", function()
      c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        local t = ctx:after(0.1, function() main:send("should not fire") end)
        t:cancel()
        ctx:after(0.2, function() main:send("control") end)
      end, { main = c.main })
      assert.equal("control", W.receive(c))
      assert.same({}, W.drain(c, 0.2))
    end)

    it("context:every fires repeatedly and :cancel() stops it", function()
      c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        local n = 0
        local timer
        timer = ctx:every(0.02, function(t)
          n = n + 1
          main:send({ tick = n, same_timer = t == timer })
          if n == 3 then timer:cancel() end
        end)
      end, { main = c.main })
      local ticks = W.collect(c, 3)
      assert.same({ { tick = 1, same_timer = true }, { tick = 2, same_timer = true }, { tick = 3, same_timer = true } },
        ticks)
      assert.same({}, W.drain(c, 0.3))
    end)

    it("rejects bad timer arguments", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function()
          local res = {}
          res.every0 = pcall(ctx.every, ctx, 0, function() end)
          res.after_str = pcall(ctx.after, ctx, "soon", function() end)
          res.after_nofn = pcall(ctx.after, ctx, 1, "nofn")
          res.sleep_str = pcall(ctx.sleep, ctx, "long")
          return res
        end)
      end)
      assert.same({ every0 = false, after_str = false, after_nofn = false, sleep_str = false },
        r:request("check", W.TIMEOUT))
    end)
  end)

  describe("lookup_isolate with a wait", function()
    it("from the main state, waits for a path spawned later", function()
      c:spawn_isolate(function(ctx)
        ctx:sleep(0.2)
        ctx:spawn_isolate(function(cctx) cctx:on_message(function() return "late one" end) end, nil, { path = "/late" })
      end)
      assert.is_nil(c:lookup_isolate("/late"))
      local elapsed, ok, ref = W.timed(c.lookup_isolate, c, "/late", W.TIMEOUT)
      assert.is_true(ok, tostring(ref))
      assert.is_not_nil(ref)
      assert.equal("/late", ref.path)
      assert.equal("late one", ref:request("?", W.TIMEOUT))
      if W.precise_clock then assert.is_true(elapsed < 4.5) end
    end)

    it("from the main state, returns nil (early) when the cluster shuts down during the wait", function()
      c:spawn_isolate(function(ctx) ctx:after(0.1, function() ctx:shutdown_cluster() end) end)
      local elapsed, ok, ref = W.timed(c.lookup_isolate, c, "/never", 20)
      assert.is_true(ok, tostring(ref))
      assert.is_nil(ref)
      if W.precise_clock then assert.is_true(elapsed < 10, "took " .. elapsed) end
    end)

    it("from the main state, returns nil after the wait when the path never comes", function()
      local elapsed, ok, ref = W.timed(c.lookup_isolate, c, "/never", 0.2)
      assert.is_true(ok)
      assert.is_nil(ref)
      if W.precise_clock then
        assert.is_true(elapsed >= 0.15, "returned too early: " .. elapsed)
        assert.is_true(elapsed < 3)
      end
    end)

    it("inside an isolate, waits for a path spawned later, or returns nil after the wait", function()
      c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        local r = ctx:lookup_isolate("/later", 5)
        main:send({ later = r ~= nil and r.path or "nil", answer = r and r:request("?") })
        local n = ctx:lookup_isolate("/never", 0.2)
        main:send({ never = n == nil })
      end, { main = c.main })
      -- spawn the path only once the isolate is (very likely) waiting; either way it must find it
      assert.is_nil(c:lookup_isolate("/not-there", 0.2))
      c:spawn_isolate(echo_entry, nil, { path = "/later" })
      assert.same({ later = "/later", answer = "?" }, W.receive(c))
      assert.same({ never = true }, W.receive(c))
    end)
  end)

  describe("cluster:run", function()
    it("returns false on timeout", function()
      local elapsed, ok, res = W.timed(c.run, c, 0.2)
      assert.is_true(ok)
      assert.is_false(res)
      if W.precise_clock then assert.is_true(elapsed >= 0.15 and elapsed < 3, "took " .. elapsed) end
      -- the cluster still runs
      assert.equal(1, c:spawn_isolate(echo_entry):request(1, W.TIMEOUT))
    end)

    it("without a timeout, returns true after an isolate calls context:shutdown_cluster()", function()
      local out, status = W.run_lua([[
        local ic = require("isolate_cluster")
        local cluster = ic.single_node({ workers = 1 })
        cluster:spawn_isolate(function(ctx) ctx:after(0.1, function() ctx:shutdown_cluster() end) end)
        print("run:", tostring(cluster:run()))
        print("shutdown:", tostring(cluster:shutdown()))
      ]], 20)
      assert.equal(0, status, out)
      assert.truthy(contains(out, "run:\ttrue"), out)
      assert.truthy(contains(out, "shutdown:\ttrue"), out)
    end)

    it("returns true after an isolate calls context:shutdown_cluster()", function()
      c:spawn_isolate(function(ctx)
        ctx:after(0.1, function() ctx:shutdown_cluster() end)
      end)
      local elapsed, ok, res = W.timed(c.run, c, 10)
      assert.is_true(ok, tostring(res))
      assert.is_true(res)
      if W.precise_clock then assert.is_true(elapsed < 8, "took " .. elapsed) end
      assert.has_error(function() c:spawn_isolate(echo_entry) end)
    end)
  end)

  describe("many timers", function()
    local function threads()
      local f = io.open("/proc/self/status")
      if not f then return nil end
      local n = tonumber(f:read("a"):match("Threads:%s+(%d+)"))
      f:close()
      return n
    end

    it("100,000 armed timers cost no thread each, and all fire", function()
      with_cluster({ workers = 2 }, function(c1)
        local before = threads()
        local r = c1:spawn_isolate(function(ctx)
          local main, fired, N = ctx:property("main"), 0, 100000
          ctx:on_message(function()
            for i = 1, N do
              -- spread over 0.3 .. 0.8 s
              ctx:after(0.3 + (i % 500) / 1000, function()
                fired = fired + 1
                if fired == N then main:send("all fired") end
              end)
            end
            return "armed"
          end)
        end, { main = c1.main })
        assert.equal("armed", r:request("arm", 60))
        local during = threads()
        if before and during then
          assert.equal(before, during, "threads before and with 100,000 timers armed")
        end
        assert.equal("all fired", W.receive(c1, 60))
      end)
    end)
  end)

  describe("many waiting isolates", function()
    it("with workers = 1, 200 isolates that each sleep 0.5 s all report well under 3 s", function()
      with_cluster({ workers = 1 }, function(c1)
        local t0 = W.now()
        for i = 1, 200 do
          c1:spawn_isolate(function(ctx)
            ctx:sleep(0.5)
            ctx:property("main"):send(ctx:property("i"))
          end, { i = i, main = c1.main })
        end
        local got = W.collect(c1, 200, 10)
        local elapsed = W.now() - t0
        assert.equal(200, #got)
        local seen = {}
        for _, i in ipairs(got) do seen[i] = true end
        for i = 1, 200 do assert.is_true(seen[i], "no report from " .. i) end
        -- the sleeps overlap: 200 x 0.5 s on one worker would take 100 s
        if W.precise_clock then assert.is_true(elapsed < 3, "took " .. elapsed .. " s") end
      end)
    end)
  end)

  describe("two isolates that request each other at the same time", function()
    -- Observed (and what the runtime's design implies): while a handler waits in
    -- request, the isolate runs no other handler (messages stay in its mailbox),
    -- so neither isolate can answer the other's request: a deadlock that the
    -- request timeout breaks. Both requests time out; neither isolate dies, and
    -- both answer again afterwards.
    -- Note: once a handler's request has timed out and the handler returns, the
    -- isolate answers the queued request of the other one at once; if the other
    -- started its request later, that late answer can still reach it in time.
    -- To observe the deadlock itself deterministically, each handler first
    -- sleeps a little (so both requests are in flight together, and each
    -- {peer} message is ahead of the other's request in the mailbox), and stays
    -- busy for a while after its timeout.
    it("both get a timeout error", function()
      local function peer(ctx)
        local main = ctx:property("main")
        ctx:on_message(function(m)
          if type(m) == "table" and m.peer then
            ctx:sleep(0.2)
            local ok, err = pcall(m.peer.request, m.peer, "hi", 0.5)
            main:send({ name = ctx:property("name"), ok = ok, err = tostring(err) })
            ctx:sleep(1)
            return
          end
          return ctx:property("name")
        end)
      end
      local a = c:spawn_isolate(peer, { name = "a", main = c.main })
      local b = c:spawn_isolate(peer, { name = "b", main = c.main })
      assert.is_true(a:send({ peer = b }))
      assert.is_true(b:send({ peer = a }))
      local reports = W.collect(c, 2, 10)
      assert.equal(2, #reports)
      table.sort(reports, function(x, y) return x.name < y.name end)
      for _, rep in ipairs(reports) do
        assert.is_false(rep.ok, rep.name .. " got a reply")
        assert.truthy(contains(rep.err, "timeout"), rep.err)
      end
      assert.equal("a", a:request("name?", W.TIMEOUT))
      assert.equal("b", b:request("name?", W.TIMEOUT))
    end)
  end)
end)
