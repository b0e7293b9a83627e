-- ref:send(msg, wait_s) (SPEC §2): waiting for room in a full mailbox,
-- suspending only the calling isolate or blocking the main state, and never
-- past the deadline, the receiver going down or the cluster shutting down.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G

-- A receiver with a mailbox of `cap` messages that stops reading when it
-- gets "hold": it then waits for a reply from the gate isolate, and its
-- mailbox fills. The gate sends "held" to o.notify (a ref) once the
-- receiver waits, and answers when it gets "open" (or, with o.open_after,
-- on its own after that many seconds). The receiver reports every other
-- message it handles to o.report (a ref).
local function held_receiver(c, cap, o)
  o = o or {}
  local gate = c:spawn_isolate(function(ctx)
    local waiting
    local open_after_s, notify = ctx:property("open_after"), ctx:property("notify")
    ctx:on_message(function(m)
      if m == "wait" then
        waiting = ctx:reply_later()
        if notify then notify:send("held") end
        if open_after_s then ctx:after(open_after_s, function() waiting("go") end) end
      elseif m == "open" and waiting then
        waiting("go")
      end
    end)
  end, { open_after = o.open_after, notify = o.notify })
  local receiver = c:spawn_isolate(function(ctx)
    local g, to = ctx:property("gate"), ctx:property("report")
    ctx:on_message(function(m)
      if m == "hold" then
        g:request("wait", 60)
      elseif to then
        to:send({ got = m })
      end
    end)
  end, { gate = gate, report = o.report }, { mailbox = cap })
  return receiver, gate
end

-- Fills r's mailbox (made with notify = the main state): "hold", then, once
-- the receiver is held, messages until one is refused. Returns how many
-- were accepted after "hold".
local function fill(c, r)
  assert.is_true(r:send("hold"))
  assert.equal("held", W.receive(c, 30))
  local n = 0
  while r:send(n + 1) do n = n + 1 end
  return n
end

describe("ref:send(msg, wait_s)", function()
  describe("in the main state", function()
    it("waits for room and succeeds when the receiver drains", function()
      W.with_cluster({ workers = 2 }, function(c)
        local r = held_receiver(c, 4, { open_after = 0.2, report = c.main, notify = c.main })
        local n = fill(c, r)
        assert.same({ false, "mailbox full" }, { r:send("refused") })
        assert.same({ false, "mailbox full" }, { r:send("refused", 0) }) -- 0: no wait
        assert.same({ true }, { r:send("late", 30) })
        local msgs = W.collect(c, n + 1, 10)
        assert.equal(n + 1, #msgs)
        assert.same({ got = "late" }, msgs[n + 1]) -- in send order, after the others
      end)
    end)

    it("gives up with mailbox full after wait_s", function()
      W.with_cluster({ workers = 2 }, function(c)
        local r, gate = held_receiver(c, 2, { notify = c.main })
        fill(c, r)
        assert.same({ false, "mailbox full" }, { r:send("x", 0.05) })
        gate:send("open")
      end)
    end)

    it("stops waiting when the receiver goes down", function()
      W.with_cluster({ workers = 2 }, function(c)
        local r = held_receiver(c, 2, { notify = c.main })
        fill(c, r)
        local killer = c:spawn_isolate(function(ctx)
          ctx:after(0.1, function() ctx:property("victim"):kill() end)
        end, { victim = r })
        assert.truthy(killer)
        assert.same({ false, "isolate down" }, { r:send("x", 60) })
      end)
    end)

    it("stops waiting when the cluster shuts down", function()
      local c = ic.single_node({ workers = 2 })
      local r = held_receiver(c, 2, { notify = c.main })
      fill(c, r)
      c:spawn_isolate(function(ctx)
        ctx:after(0.1, function() ctx:shutdown_cluster(5) end)
      end)
      local ok, why = r:send("x", 60)
      assert.is_false(ok)
      assert.truthy(why == "shutdown" or why == "isolate down", why)
      assert.is_true(c:shutdown())
    end)

    it("does not wait for room in its own mailbox", function()
      W.with_cluster({ workers = 1, mailbox = 2 }, function(c)
        assert.is_true(c.main:send(1))
        assert.is_true(c.main:send(2))
        assert.same({ false, "mailbox full" }, { c.main:send(3, 60) })
        assert.equal(1, W.receive(c))
        assert.same({ true }, { c.main:send(3, 60) })
      end)
    end)

    it("refuses a bad wait_s with a clear error", function()
      W.with_cluster({ workers = 1 }, function(c)
        local r = c:spawn_isolate(W.echo_entry)
        assert.matches("send: wait_s must be a number of seconds >= 0, got %-1", W.error_of(function() r:send(1, -1) end))
        assert.matches("send: wait_s must be a number of seconds >= 0, got NaN", W.error_of(function() r:send(1, 0 / 0) end))
        assert.matches("send: wait_s must be a number of seconds >= 0, got string", W.error_of(function() r:send(1, "1") end))
        assert.matches("wait_s must be a number", W.error_of(function() r:send(1, {}) end))
        -- with room, any valid wait_s sends at once
        assert.same({ true }, { r:send(1, 0) })
        assert.same({ true }, { r:send(1, math.huge) })
        assert.same({ true }, { r:send(1, nil) })
      end)
    end)
  end)

  describe("inside an isolate", function()
    -- The producer fills the receiver's mailbox, then sends once more with
    -- wait_s and reports what that send returned.
    local function producer_entry(ctx)
      ctx:on_message(function(job, main)
        local r = job.target
        r:send("hold")
        if ctx:receive(30) ~= "held" then error("not held") end
        local n = 0
        while r:send(n + 1) do n = n + 1 end
        local first = { r:send("refused") }
        if job.tell then main:send("waiting") end
        local ok, why = r:send("late", job.wait)
        main:send({ n = n, first = first, ok = ok, why = why })
      end)
    end

    it("suspends only the sender (one worker) and succeeds when the receiver drains", function()
      W.with_cluster({ workers = 1 }, function(c)
        local p = c:spawn_isolate(producer_entry)
        local r = held_receiver(c, 4, { open_after = 0.2, report = c.main, notify = p })
        assert.is_true(p:send({ target = r, wait = 30 }))
        -- the receiver's reports and the producer's result, in any order
        local result, got = nil, {}
        assert.truthy(W.wait_until(function()
          local m = c:receive(1)
          if m and m.got ~= nil then got[#got + 1] = m.got elseif m then result = m end
          return result and #got == result.n + 1
        end, 30))
        assert.same({ false, "mailbox full" }, result.first)
        assert.is_true(result.ok)
        assert.equal("late", got[#got])
      end)
    end)

    it("gives up with mailbox full after wait_s", function()
      W.with_cluster({ workers = 2 }, function(c)
        local p = c:spawn_isolate(producer_entry)
        local r, gate = held_receiver(c, 3, { notify = p })
        assert.is_true(p:send({ target = r, wait = 0.05 }))
        local m = W.receive(c, 30)
        assert.same({ false, "mailbox full" }, { m.ok, m.why })
        gate:send("open")
      end)
    end)

    it("stops waiting when the receiver goes down", function()
      W.with_cluster({ workers = 2 }, function(c)
        local p = c:spawn_isolate(producer_entry)
        local r = held_receiver(c, 3, { notify = p })
        assert.is_true(p:send({ target = r, wait = 60, tell = true }))
        assert.equal("waiting", W.receive(c, 30))
        assert.is_true(r:kill())
        local m = W.receive(c, 30)
        assert.same({ false, "isolate down" }, { m.ok, m.why })
      end)
    end)

    it("does not wait for room in its own mailbox", function()
      W.with_cluster({ workers = 1 }, function(c)
        local p = c:spawn_isolate(function(ctx)
          ctx:on_message(function(m, main)
            if m ~= "go" then return end
            local me, n = ctx.isolate_ref, 0
            while me:send("x") do n = n + 1 end
            main:send({ n = n, r = { me:send("x", 60) } })
          end)
        end, nil, { mailbox = 3 })
        assert.is_true(p:send("go"))
        local m = W.receive(c, 30)
        assert.same({ false, "mailbox full" }, m.r)
      end)
    end)

    it("does not hold up shutdown", function()
      local c = ic.single_node({ workers = 2 })
      local p = c:spawn_isolate(function(ctx)
        ctx:on_message(function(target, main)
          target:send("hold")
          if ctx:receive(30) ~= "held" then error("not held") end
          while target:send("fill") do end
          main:send("waiting")
          target:send("late", 60)
        end)
      end)
      local r = held_receiver(c, 3, { notify = p })
      assert.is_true(p:send(r))
      assert.equal("waiting", W.receive(c, 30))
      assert.is_true(c:shutdown(10))
    end)

    it("refuses a bad wait_s with a clear error", function()
      W.with_cluster({ workers = 1 }, function(c)
        local p = c:spawn_isolate(function(ctx)
          ctx:on_message(function(bad)
            local ok, err = pcall(function() ctx.isolate_ref:send(1, bad) end)
            return ok and "accepted" or tostring(err)
          end)
        end)
        assert.matches("send: wait_s must be a number of seconds >= 0, got %-0.5", p:request(-0.5))
        assert.matches("send: wait_s must be a number of seconds >= 0, got NaN", p:request(0 / 0))
        assert.matches("send: wait_s must be a number of seconds >= 0, got boolean", p:request(true))
      end)
    end)
  end)
end)
