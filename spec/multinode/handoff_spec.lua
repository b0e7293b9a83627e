-- SPEC §5 "exactly once, in order" across the two deliverers of a node's
-- data: the data subscription's callback posts what it can check in C
-- straight into the receiver's mailbox; a frame it cannot finish (a payload
-- nested deeper than its check goes, a full mailbox) goes, with everything
-- after it, to the net thread. A stream that keeps switching between the two
-- arrives exactly once and in order; with a receiver whose mailbox fills,
-- what does arrive is still in order and never twice, and each request
-- refused for a full mailbox fails at once with a clear error.
--
-- This process is node "spec"; node "b" is spec/support/nodes/echo.lua.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, after_each, pending = describe, it, assert, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

-- Deeper than the callback's check (src/net/wirecheck.h: 64), well within
-- the decoder's default depth (200): only the net thread delivers it.
local function deep(levels)
  local d = { "bottom" }
  for _ = 1, levels do d = { d } end
  return d
end

describe("the hand-over between the data callback and the net thread", function()
  after_each(function() MN.cleanup() end)

  it("a stream switching between them arrives exactly once, in order, with requests in between", function()
    local srv = H.start_server()
    local c = MN.pair(srv, "handoff")
    local counter = assert(c:lookup_isolate("/counter", 15))
    local echo = assert(c:lookup_isolate("/echo", 15))
    local d = deep(80)
    local n = 0
    for i = 1, 3000 do
      n = n + 1
      local msg = { stream = "h", seq = n }
      if i % 7 == 0 or (i > 1000 and i <= 1030) then msg.deep = d end
      assert.is_true((counter:send(msg, 30)))
      if i % 100 == 0 then assert.equal(i, echo:request({ op = "echo", v = i }, 10)) end
    end
    assert.same(MN.in_order(n), MN.stream_stats(counter, "h", n, 60))
  end)

  it("a receiver whose mailbox fills gets the rest in order and never twice; requests fail at once", function()
    local srv = H.start_server()
    local c = MN.pair(srv, "handfull", { counter_mailbox = "4" })
    local counter = assert(c:lookup_isolate("/counter", 15))
    local d = deep(80)
    local n, refused = 0, 0
    for i = 1, 4000 do
      n = n + 1
      local msg = { stream = "f", seq = n }
      if i % 5 == 0 then msg.deep = d end
      assert.is_true((counter:send(msg, 30)))
      if i % 200 == 0 then
        local ok, r = pcall(counter.request, counter, { op = "stats", stream = "f" }, 10)
        if ok then
          assert.equal(0, r.dups)
        else
          assert.matches("mailbox full", tostring(r))
          refused = refused + 1
        end
      end
    end
    -- Once a stats request is answered, every message before it on the link
    -- has been handled: the last one then finds room.
    local s = MN.request_until(counter, { op = "stats", stream = "f" }, 30)
    assert.is_table(s)
    n = n + 1
    assert.is_true((counter:send({ stream = "f", seq = n }, 30)))
    W.wait_until(function()
      local ok, r = pcall(counter.request, counter, { op = "stats", stream = "f" }, 5)
      if ok then s = r end
      return ok and r.last == n
    end, 30, 0.05)
    assert.equal(n, s.last)
    assert.equal(0, s.dups)
    assert.is_true(s.count <= n)
  end)
end)
