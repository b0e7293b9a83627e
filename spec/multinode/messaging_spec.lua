-- SPEC §5: "Everything in §2–§4 works across nodes with the same calls: refs
-- (also inside messages and properties), send, request (replies, remote
-- errors, timeouts), property"; "Order: messages from one sender to one
-- receiver arrive in send order, across nodes too"; "Limits: messages larger
-- than the server's max_payload still arrive (chunked) or are refused with a
-- clear error". Also §3.8 (failing fast) does not apply to a slow receiver: a
-- request to a live but slow remote handler times out.
--
-- This process is node "spec"; node "b" is spec/support/nodes/echo.lua.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

describe("across nodes", function()
  local srv, c, echo, counter

  setup(function() srv = H.start_server() end)
  teardown(function() MN.cleanup() end)
  -- The server lives for the whole file; nodes for one test.
  after_each(function() MN.cleanup({ srv }) end)

  -- This node and node b; sets c, echo, counter; returns b's process.
  local function two_nodes()
    local b
    c, b = MN.pair(srv, "msg")
    echo = c:lookup_isolate("/echo", 15)
    counter = c:lookup_isolate("/counter", 15)
    assert.is_not_nil(echo, "/echo of node b not found")
    assert.is_not_nil(counter, "/counter of node b not found")
    return b
  end

  describe("send", function()
    it("delivers 10,000 messages to a remote isolate exactly once, in order", function()
      two_nodes()
      local n = 10000
      for i = 1, n do
        local ok, why = counter:send({ stream = "s1", seq = i }, 10)
        assert(ok, ("send %d refused: %s"):format(i, tostring(why)))
      end
      assert.same(MN.in_order(n), MN.stream_stats(counter, "s1", n, 60))
    end)

    it("delivers 10,000 messages from a remote isolate to this node's main state in order", function()
      two_nodes()
      local n = 10000
      local accepted = echo:request({ op = "blast", to = c.main, n = n, stream = "back" }, 120)
      assert.equal(n, accepted)
      local msgs = W.collect(c, n, 60)
      assert.equal(n, #msgs)
      for i = 1, n do
        if msgs[i].seq ~= i then
          error(("message %d has seq %s"):format(i, tostring(msgs[i].seq)))
        end
      end
      assert.same({}, W.drain(c, 0.5)) -- and nothing twice
    end)

    it("keeps each sender's order when two isolates of one node send to one remote isolate", function()
      two_nodes()
      local n = 3000
      local sender = function(context)
        local p = context:properties()
        context:on_message(function()
          for i = 1, p.n do p.target:send({ stream = p.stream, seq = i }, 10) end
          p.main:send({ sent = p.stream })
        end)
      end
      local a = c:spawn_isolate(sender, { target = counter, n = n, stream = "two-a", main = c.main })
      local b = c:spawn_isolate(sender, { target = counter, n = n, stream = "two-b", main = c.main })
      assert.is_true((a:send("go")))
      assert.is_true((b:send("go")))
      local inbox = MN.inbox(c)
      for _ = 1, 2 do
        assert.is_not_nil(inbox:wait(function(m) return type(m) == "table" and m.sent end, 60))
      end
      assert.same(MN.in_order(n), MN.stream_stats(counter, "two-a", n, 60))
      assert.same(MN.in_order(n), MN.stream_stats(counter, "two-b", n, 60))
    end)

    it("carries every copyable plain value intact", function()
      two_nodes()
      local v = {
        int = math.maxinteger, neg = math.mininteger, f = 0.1, inf = math.huge, negz = -0.0,
        s = "bin\0ary\255", t = true, list = { 1, 2, { 3, { 4 } } }, map = { a = { b = { c = "d" } } },
      }
      local back = echo:request({ op = "echo", v = v }, 10)
      assert.same(v, back)
      assert.equal("integer", math.type(back.int))
      assert.equal(-math.huge, 1 / back.negz)
    end)

    it("keeps shared sub-tables and cycles", function()
      two_nodes()
      local shared = { x = 1 }
      local v = { a = shared, b = shared }
      v.self = v
      local back = echo:request({ op = "echo", v = v }, 10)
      assert.equal(back.a, back.b)
      assert.equal(back, back.self)
    end)
  end)

  describe("request", function()
    it("gets the remote handler's reply", function()
      two_nodes()
      assert.equal("hello", echo:request("hello", 10))
      assert.same({ 1, 2, 3 }, echo:request({ op = "echo", v = { 1, 2, 3 } }, 10))
    end)

    it("raises the remote handler's error at the requester", function()
      two_nodes()
      local err = W.error_of(echo.request, echo, { op = "fail", why = "on purpose" }, 10)
      assert.matches("echo failed: on purpose", err)
      -- and the remote isolate still serves
      assert.equal("still here", echo:request("still here", 10))
    end)

    it("times out when the remote handler does not answer in time", function()
      two_nodes()
      local t0 = W.now()
      local err = W.error_of(echo.request, echo, { op = "sleep", s = 5 }, 0.5)
      assert.matches("timeout", err)
      assert.is_true(W.now() - t0 < 4.5, "the timeout was not honoured")
      assert.equal("after", echo:request("after", 10))
    end)

    it("from a remote isolate to a local one, both ways", function()
      two_nodes()
      local here = c:spawn_isolate(function(context)
        context:on_message(function(m) return { here = m } end)
      end, nil, { path = "/here" })
      assert.same({ here = "x" }, echo:request({ op = "call", ref = here, msg = "x" }, 10))
    end)

    it("inside an isolate suspends only that isolate", function()
      two_nodes()
      local asker = c:spawn_isolate(function(context)
        local target = context:property("target")
        context:on_message(function(m)
          if m == "go" then return target:request({ op = "sleep", s = 0.5 }, 10) end
          return "quick"
        end)
      end, { target = echo })
      local other = c:spawn_isolate(function(context)
        context:on_message(function() return "free" end)
      end)
      assert.equal("slept", asker:request("go", 10))
      assert.equal("free", other:request("x", 10))
    end)
  end)

  describe("refs", function()
    it("a remote ref has the remote node's name, its path and properties", function()
      two_nodes()
      assert.equal("b", echo.node)
      assert.equal("/echo", echo.path)
      assert.equal("echo", echo:property("kind"))
      assert.equal("b", echo:property("node"))
      assert.same({ 1, 2, 3 }, echo:property("list"))
      assert.same({ a = { b = "c" } }, echo:property("nested"))
      assert.is_nil(echo:property("missing"))
      local all = echo:properties()
      assert.equal("echo", all.kind)
      assert.same({ 1, 2, 3 }, all.list)
    end)

    it("a remote ref's properties are read without asking its node (they work while it is hung)", function()
      local b = two_nodes()
      -- SIGSTOP: node b answers nothing now; it is declared down only
      -- seconds later, and the properties are needed at once
      assert.is_true(b:signal("STOP"))
      assert.equal("echo", echo:property("kind"))
      assert.same({ 1, 2, 3 }, echo:properties().list)
      b:signal("CONT")
    end)

    it("a ref's properties are copies: changing one does not change the next", function()
      two_nodes()
      local list = echo:property("list")
      list[1] = 99
      assert.same({ 1, 2, 3 }, echo:property("list"))
    end)

    it("a ref sent across comes back equal, and names the same isolate", function()
      two_nodes()
      local who = echo:request({ op = "whoami" }, 10)
      assert.equal(echo, who.ref)
      assert.equal(tostring(echo), tostring(who.ref))
      assert.equal("b", who.node)
      -- the sender the remote handler saw is this node's main state
      assert.equal(c.main, who.sender)
      assert.equal("spec", who.sender.node)
    end)

    it("a ref inside a message is used by the remote isolate to reply", function()
      two_nodes()
      local got = c:spawn_isolate(function(context)
        local main = context:property("main")
        context:on_message(function(m, sender) main:send({ forwarded = m, sender = sender }) end)
      end, { main = c.main }, { path = "/got" })
      assert.is_true(echo:request({ op = "reply_to", ref = got, v = 42 }, 10))
      local msg = W.receive(c, 10)
      assert.is_not_nil(msg, "the reply sent to the ref never came")
      assert.equal("via ref", msg.forwarded.reply)
      assert.equal(42, msg.forwarded.v)
      assert.equal(echo, msg.forwarded.from)
      assert.equal(echo, msg.sender)
    end)

    it("a local ref given as a property of a remote spawn reaches home", function()
      two_nodes()
      local w = c:spawn_isolate("support.nodes.remote_worker", { home = c.main }, { node = "b" })
      local info = w:request("info", 10)
      assert.equal("b", info.node)
      assert.equal(c.main, info.props.home)
    end)
  end)

  describe("messages around a small max_payload", function()
    it("either arrive whole or are refused with a clear error: never accepted and lost", function()
      local limit = 16384
      local small = H.start_server({ max_payload = limit })
      local c2, b2 = MN.pair(small, "limit")
      local counter2 = c2:lookup_isolate("/counter", 15)
      local echo2 = c2:lookup_isolate("/echo", 15)
      local accepted, refused = 0, 0
      for i, size in ipairs({ limit - 512, limit - 128, limit - 48, limit - 16, limit, limit + 16, 4 * limit }) do
        local pad = string.rep("p", size)
        local ok, why = counter2:send({ stream = "edge", seq = accepted + 1, pad = pad })
        if ok then
          accepted = accepted + 1
        else
          refused = refused + 1
          assert.matches("payload", tostring(why):lower(), ("size %d"):format(size))
        end
        -- a request (and its reply, as large) either comes back whole or fails saying why
        local rok, res = pcall(echo2.request, echo2, { op = "echo", v = pad }, 20)
        if rok then
          assert.is_true(res == pad, ("size %d came back changed"):format(size))
        else
          assert.is_nil(tostring(res):match("timeout"), ("size %d: %s"):format(size, tostring(res)))
        end
        assert.equal(i, echo2:request({ op = "echo", v = i }, 10)) -- and the link still works
      end
      -- over max_payload they go in chunks (spec/multinode/chunking_spec.lua): none is refused
      assert.is_true(accepted == 7 and refused == 0, ("accepted %d, refused %d"):format(accepted, refused))
      assert.same(MN.in_order(accepted), MN.stream_stats(counter2, "edge", accepted))
      assert.is_true(b2:alive())
    end)
  end)

  describe("large messages", function()
    it("a message over the server's max_payload arrives whole (chunked)", function()
      two_nodes()
      local big = string.rep("0123456789abcdef", 2 * 65536) -- 2 MiB, over the 1 MiB default
      local res = echo:request({ op = "echo", v = big }, 30)
      assert.equal(#big, #res)
      assert.is_true(res == big)
      assert.is_true((counter:send({ stream = "big", seq = 1, pad = big })))
      assert.same(MN.in_order(1), MN.stream_stats(counter, "big", 1), "an accepted large message never arrived")
    end)
  end)
end)
