-- Messaging: send results, senders, refs inside messages, ordering (10,000
-- messages), delivery of messages sent before the entry returns, every kind of
-- copyable value, errors for uncopyable ones, mailbox capacity, sends to a
-- stopped isolate, and a handler failure that stays local.
--
-- Entry functions are COPIED into the new isolate: they never capture the
-- cluster, busted's assert, or the wait helpers. They report to cluster.main
-- (passed as the "main" property) or answer requests.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, before_each, after_each, assert = describe, it, before_each, after_each, assert
-- Busted gives spec files their own _ENV; entries defined below must see the
-- real globals.
local _ENV = _G

local function echo_entry(ctx)
  ctx:on_message(function(m) return m end)
end

-- Counts messages 1..N from any sender, checks they come in order, and
-- reports { count =, in_order =, first_bad = } to main when it has N
-- (property "n") or when it gets the string "report".
local function order_checker(ctx)
  local main, n = ctx:property("main"), ctx:property("n")
  local count, in_order, first_bad = 0, true, nil
  ctx:on_message(function(m)
    if m == "report" then
      main:send({ count = count, in_order = in_order, first_bad = first_bad })
      return
    end
    count = count + 1
    if m ~= count and in_order then
      in_order, first_bad = false, { expected = count, got = m }
    end
    if count == n then
      main:send({ count = count, in_order = in_order, first_bad = first_bad })
    end
  end)
end

describe("messaging", function()
  local c
  before_each(function() c = ic.single_node({ workers = 2 }) end)
  after_each(function()
    assert.is_true(c:shutdown())
    c = nil
  end)

  describe("send", function()
    it("returns true for a live isolate", function()
      local r = c:spawn_isolate(echo_entry)
      assert.is_true(r:send("hello"))
      assert.is_true(r:send({ a = 1 }))
      assert.is_true(r:send(nil) or false) -- nil is a value too
    end)

    it("a message from the main state arrives with sender == cluster.main", function()
      local r = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:on_message(function(m, sender)
          sender:send({ echo = m, sender = sender, is_main = sender == main })
        end)
      end, { main = c.main })
      assert.is_true(r:send("ping"))
      local msg, sender = W.receive(c)
      assert.is_table(msg)
      assert.equal("ping", msg.echo)
      assert.is_true(msg.is_main)
      assert.equal(c.main, msg.sender)
      assert.equal(r, sender)
    end)

    it("a message from an isolate arrives with that isolate's ref as sender", function()
      local target = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:on_message(function(m, sender) main:send({ m = m, from = sender }) end)
      end, { main = c.main })
      local source = c:spawn_isolate(function(ctx)
        ctx:property("target"):send("from source")
      end, { target = target })
      local msg = W.receive(c)
      assert.equal("from source", msg.m)
      assert.equal(source, msg.from)
    end)

    it("refs travel inside messages, nested too, and stay usable", function()
      local b = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:on_message(function(m, sender) main:send({ at_b = m, from = sender }) end)
      end, { main = c.main }, { path = "/b" })
      local a = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          -- send through a ref that came inside the message
          m.deep.list[2]:send("via a")
          m.deep.list[2]:send({ back = m.deep.list })
        end)
      end, nil, { path = "/a" })
      assert.is_true(a:send({ deep = { list = { "x", b, c.main } } }))
      local first, from1 = W.receive(c)
      assert.equal(b, from1)
      assert.equal("via a", first.at_b)
      assert.equal(a, first.from)
      local second = W.receive(c)
      assert.equal(a, second.from)
      assert.equal("x", second.at_b.back[1])
      assert.equal(b, second.at_b.back[2])
      assert.equal(c.main, second.at_b.back[3])
      assert.equal("/b", second.at_b.back[2].path)
    end)
  end)

  describe("ordering", function()
    it("10,000 messages from one isolate to another arrive in order", function()
      local checker = c:spawn_isolate(order_checker, { main = c.main, n = 10000 })
      c:spawn_isolate(function(ctx)
        local to = ctx:property("to")
        for i = 1, 10000 do
          local ok, why = to:send(i)
          if not ok then error("send " .. i .. " refused: " .. tostring(why)) end
        end
      end, { to = checker })
      local report = W.receive(c, 20)
      assert.is_table(report, "no report from the checker")
      assert.same({ count = 10000, in_order = true }, report)
    end)

    it("10,000 messages from the main state arrive in order", function()
      local checker = c:spawn_isolate(order_checker, { main = c.main, n = 10000 })
      for i = 1, 10000 do assert.is_true(checker:send(i)) end
      local report = W.receive(c, 20)
      assert.is_table(report, "no report from the checker")
      assert.same({ count = 10000, in_order = true }, report)
    end)

    it("order holds when each handler runs long enough to be preempted", function()
      -- each handler burns ~5 ms of CPU, more than a time slice (default 2 ms)
      local checker = c:spawn_isolate(function(ctx)
        local main, n = ctx:property("main"), ctx:property("n")
        local count, in_order = 0, true
        ctx:on_message(function(m)
          local x = 0
          for i = 1, 500000 do x = x + i end
          count = count + 1
          if m ~= count then in_order = false end
          if count == n then main:send({ count = count, in_order = in_order }) end
        end)
      end, { main = c.main, n = 100 })
      for i = 1, 100 do assert.is_true(checker:send(i)) end
      assert.same({ count = 100, in_order = true }, W.receive(c, 30))
    end)

    it("messages sent before the entry function returns are all delivered (entry busy computing)", function()
      local r = c:spawn_isolate(function(ctx)
        local x = 0
        for i = 1, 2000000 do x = x + i % 7 end -- some work first (several time slices)
        ctx:property("main"):send({ work = x > 0 })
        return (ctx:property("body"))(ctx)
      end, { main = c.main, n = 1000, body = order_checker })
      for i = 1, 1000 do assert.is_true(r:send(i)) end
      local work = W.receive(c, 20)
      assert.same({ work = true }, work)
      local report = W.receive(c, 20)
      assert.same({ count = 1000, in_order = true }, report)
    end)

    it("messages sent before the entry function returns are all delivered (entry waiting)", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:sleep(0.3) -- the entry waits; messages queue meanwhile
        return (ctx:property("body"))(ctx)
      end, { main = c.main, n = 1000, body = order_checker })
      for i = 1, 1000 do assert.is_true(r:send(i)) end
      local report = W.receive(c, 20)
      assert.same({ count = 1000, in_order = true }, report)
    end)

    it("a queued run of messages keeps its order when a handler in the middle waits, and a request after it is answered", function()
      local r = c:spawn_isolate(function(ctx)
        -- The entry computes (no wait, so nothing is taken meanwhile): the
        -- messages and the request queue in the mailbox, and are then
        -- handled as one run.
        local t0 = os.clock()
        while os.clock() - t0 < 0.2 do end
        local log = {}
        ctx:on_message(function(m)
          if m == "log" then return log end
          log[#log + 1] = m
          if m % 25 == 0 then
            ctx:sleep(0.001)
            log[#log + 1] = "woke " .. m
          end
        end)
      end)
      for i = 1, 100 do assert.is_true(r:send(i)) end
      local log = r:request("log", 30)
      local want = {}
      for i = 1, 100 do
        want[#want + 1] = i
        if i % 25 == 0 then want[#want + 1] = "woke " .. i end
      end
      assert.same(want, log)
    end)
  end)

  describe("a queued run of messages", function()
    it("goes on past a request whose handler raises, and counts every message taken", function()
      local r = c:spawn_isolate(function(ctx)
        -- computes first, so that what is sent queues and is handled as one run
        local t0 = os.clock()
        while os.clock() - t0 < 0.2 do end
        local log = {}
        ctx:on_message(function(m)
          if m == "log" then return log end
          if m == "boom" then error("boom", 0) end
          log[#log + 1] = m
          return m
        end)
      end, nil, { path = "/run/raising" })
      for i = 1, 50 do assert.is_true(r:send(i)) end
      local ok, err = pcall(r.request, r, "boom", 30)
      for i = 51, 100 do assert.is_true(r:send(i)) end
      assert.is_false(ok)
      assert.matches("boom", tostring(err))
      local log = r:request("log", 30)
      local want = {}
      for i = 1, 100 do want[i] = i end
      assert.same(want, log)
      local row
      for _, x in ipairs(c:stats().rows) do
        if x.path == "/run/raising" then row = x end
      end
      assert.equal(102, row.messages_in)
    end)

    it("ends at a handler that raises: the isolate goes down, the rest are dead letters", function()
      local r = c:spawn_isolate(function(ctx)
        local t0 = os.clock()
        while os.clock() - t0 < 0.2 do end
        local seen = 0
        ctx:on_message(function(m)
          seen = seen + 1
          if m == 10 then error("at ten", 0) end
          if seen > 10 then ctx:property("main"):send("went on") end
        end)
      end, { main = c.main })
      local dead0 = c:stats().dead_letters
      for i = 1, 30 do assert.is_true(r:send(i)) end
      assert.is_truthy(W.wait_until(function() return c:stats().dead_letters - dead0 == 20 end, 20))
      assert.is_nil(c:receive(0))
    end)
  end)

  describe("values", function()
    it("keeps nil holes, booleans, all integers, floats, -0.0, inf, NaN, binary strings", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          -- what the isolate sees, checked inside it
          local seen = {
            hole = m.holes[2] == nil and m.holes[1] == 1 and m.holes[3] == 3,
            min = m.min == math.mininteger and math.type(m.min) == "integer",
            max = m.max == math.maxinteger and math.type(m.max) == "integer",
            one_float = math.type(m.one) == "float" and m.one == 1.0,
            one_int = math.type(m.one_int) == "integer",
            negzero = m.negzero == 0 and 1 / m.negzero == -math.huge,
            inf = m.inf == math.huge and m.ninf == -math.huge,
            nan = m.nan ~= m.nan,
            bin = m.bin == "\0\1\2\255\254" .. string.rep("x", 300) .. "\0",
            bools = m.t == true and m.f == false,
            small = m.small == 0.1,
          }
          return { seen = seen, echo = m }
        end)
      end)
      local msg = {
        holes = { 1, nil, 3 },
        min = math.mininteger, max = math.maxinteger,
        one = 1.0, one_int = 1,
        negzero = -0.0, inf = math.huge, ninf = -math.huge, nan = 0 / 0,
        bin = "\0\1\2\255\254" .. string.rep("x", 300) .. "\0",
        t = true, f = false, small = 0.1,
        neg = -123456789012, big_float = 2 ^ 53 + 0.0, tiny = 5e-324,
      }
      local got = r:request(msg, W.TIMEOUT)
      for k, ok in pairs(got.seen) do assert.is_true(ok, "inside the isolate: " .. k) end
      local e = got.echo -- and back again
      assert.equal(1, e.holes[1])
      assert.is_nil(e.holes[2])
      assert.equal(3, e.holes[3])
      assert.equal(math.mininteger, e.min)
      assert.equal("integer", math.type(e.min))
      assert.equal(math.maxinteger, e.max)
      assert.equal("float", math.type(e.one))
      assert.equal("integer", math.type(e.one_int))
      assert.equal(-math.huge, 1 / e.negzero)
      assert.equal(math.huge, e.inf)
      assert.equal(-math.huge, e.ninf)
      assert.is_true(e.nan ~= e.nan)
      assert.equal(msg.bin, e.bin)
      assert.is_true(e.t)
      assert.is_false(e.f)
      assert.equal(0.1, e.small)
      assert.equal(-123456789012, e.neg)
      assert.equal(2 ^ 53, e.big_float)
      assert.equal("float", math.type(e.big_float))
      assert.equal(5e-324, e.tiny)
    end)

    it("sends plain scalars as whole messages", function()
      local r = c:spawn_isolate(echo_entry)
      for _, v in ipairs({ 0, -1, 1.5, "", "text", true, false, math.maxinteger }) do
        local got = r:request(v, W.TIMEOUT)
        assert.equal(v, got)
        assert.equal(math.type(v), math.type(got))
      end
      assert.is_nil(r:request(nil, W.TIMEOUT))
    end)

    it("keeps nested tables, shared subtables and cycles", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          return {
            shared = m.a == m.b and m.a ~= nil,
            cycle = m.cyc.self == m.cyc and m.cyc.inner.up == m.cyc,
            deep = m.deep[1][1][1][1][1],
            echo = m,
          }
        end)
      end)
      local sub = { x = 1 }
      local cyc = { inner = {} }
      cyc.self = cyc
      cyc.inner.up = cyc
      local got = r:request({ a = sub, b = sub, cyc = cyc, deep = { { { { { "bottom" } } } } },
        mixed = { 1, 2, k = "v", [10] = 10, [1.5] = "float key", [true] = "bool key" } }, W.TIMEOUT)
      assert.is_true(got.shared)
      assert.is_true(got.cycle)
      assert.equal("bottom", got.deep)
      local e = got.echo
      assert.equal(e.a, e.b)
      assert.same({ x = 1 }, e.a)
      assert.equal(e.cyc, e.cyc.self)
      assert.equal(e.cyc, e.cyc.inner.up)
      assert.same({ 1, 2, k = "v", [10] = 10, [1.5] = "float key", [true] = "bool key" }, e.mixed)
    end)

    it("copies a function with its upvalues, incl. a standard library function", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          if type(m) == "function" then return m end
          return { m.fn(5), m.fmt("%d-%s", 7, "x"), m.counter(), m.counter() }
        end)
      end)
      local k, tbl = 10, { add = 100 }
      local fmt = string.format
      local function fn(x) return fmt("%d", x + k + tbl.add) end
      local n = 0
      local function counter() n = n + 1; return n end
      local got = r:request({ fn = fn, fmt = fmt, counter = counter }, W.TIMEOUT)
      assert.same({ "115", "7-x", 1, 2 }, got)
      assert.equal(0, n) -- the isolate had its own copy of n
      -- a function comes back too
      local back = r:request(function(x) return x * k end, W.TIMEOUT)
      assert.equal(50, back(5))
    end)

    it("does not copy metatables", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) return { mt = getmetatable(m) == nil, v = m.v } end)
      end)
      local got = r:request(setmetatable({ v = 1 }, { __index = { w = 2 } }), W.TIMEOUT)
      assert.same({ mt = true, v = 1 }, got)
    end)
  end)

  describe("uncopyable values", function()
    it("raise at send with the path of the value: a userdata at msg.conn", function()
      local r = c:spawn_isolate(echo_entry)
      local ok, err = pcall(r.send, r, { conn = io.stdout })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("cannot copy a userdata at msg.conn", 1, true), err)
    end)

    it("raise at send with the path of the value: a coroutine at msg[3].co", function()
      local r = c:spawn_isolate(echo_entry)
      local ok, err = pcall(r.send, r, { 1, 2, { co = coroutine.create(function() end) } })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("msg[3].co", 1, true), err)
      assert.truthy(tostring(err):find("thread", 1, true) or tostring(err):find("coroutine", 1, true), err)
    end)

    it("raise for a non-standard C function, at request and in an upvalue", function()
      local r = c:spawn_isolate(echo_entry)
      local cfn = require("isolate_cluster.core").new -- a C function of no standard library
      local ok, err = pcall(r.send, r, { f = cfn })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("msg.f", 1, true), err)
      ok, err = pcall(r.request, r, { cfn }, W.TIMEOUT)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("C function", 1, true), err)
      local stdout = io.stdout
      ok, err = pcall(r.send, r, { fn = function() return stdout end })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("userdata", 1, true), err)
      assert.truthy(tostring(err):find("msg.fn", 1, true), err)
    end)

    it("a refused value sends nothing, and the isolate goes on", function()
      local checker = c:spawn_isolate(order_checker, { main = c.main, n = 2 })
      assert.is_true(checker:send(1))
      assert.has_error(function() checker:send({ conn = io.stdout }) end)
      assert.has_error(function() checker:send(io.stdout) end)
      assert.is_true(checker:send(2))
      assert.same({ count = 2, in_order = true }, W.receive(c))
    end)
  end)

  describe("mailbox and down isolates", function()
    it("a full mailbox refuses with false, \"mailbox full\"", function()
      -- The entry waits: while it sleeps, messages queue in the mailbox.
      local r = c:spawn_isolate(function(ctx)
        ctx:sleep(1.5)
        return (ctx:property("body"))(ctx)
      end, { main = c.main, body = order_checker }, { mailbox = 10 })
      local accepted, refused = 0, {}
      for i = 1, 15 do
        local ok, why = r:send(accepted + 1)
        if ok then accepted = accepted + 1 else refused[#refused + 1] = why end
      end
      assert.equal(10, accepted)
      assert.equal(5, #refused)
      for _, why in ipairs(refused) do assert.equal("mailbox full", why) end
      -- the 10 accepted ones are delivered, in order, once the entry is done
      assert.is_true(r:send("report") == false) -- still full
      local report = W.wait_until(function()
        if r:send("report") then return W.receive(c) end
      end, 10)
      assert.same({ count = 10, in_order = true }, report)
    end)

    it("send to a stopped isolate returns false, \"isolate down\"", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) if m == "stop" then ctx:stop() end return m end)
      end)
      assert.equal("stop", r:request("stop", W.TIMEOUT))
      local why = W.wait_until(function()
        local ok, reason = r:send("anyone?")
        return not ok and reason
      end)
      assert.equal("isolate down", why)
      local ok, reason = r:send("still?")
      assert.is_false(ok)
      assert.equal("isolate down", reason)
    end)

    it("a handler that raises takes only its own isolate down", function()
      local watcher = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:on_isolate_down(function(ref, reason) main:send({ down = ref, reason = reason }) end)
        ctx:on_message(function() return "ready" end)
      end, { main = c.main })
      assert.equal("ready", watcher:request("?", W.TIMEOUT))
      local bystander = c:spawn_isolate(echo_entry)
      local bad = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          if m == "boom" then error("handler failed on purpose") end
          return m
        end)
      end)
      assert.equal("fine", bad:request("fine", W.TIMEOUT))
      assert.is_true(bad:send("boom"))
      local ev = W.receive_match(c, function(m) return type(m) == "table" and m.down == bad end)
      assert.truthy(ev, "no down event for the failed isolate")
      assert.matches("^error: ", ev.reason)
      assert.truthy(ev.reason:find("handler failed on purpose", 1, true), ev.reason)
      local ok, why = bad:send("again")
      assert.is_false(ok)
      assert.equal("isolate down", why)
      assert.equal("unaffected", bystander:request("unaffected", W.TIMEOUT))
      assert.equal("ready", watcher:request("?", W.TIMEOUT))
    end)
  end)
end)
