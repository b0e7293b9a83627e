-- SPEC §5 "No silent loss" and failure detection under a flood: while one
-- node sends as fast as the link takes (the window full again and again),
-- with round trips in between, neither node takes the other for silent,
-- and every message arrives once, in order. (The wrap-around of a peer's
-- silence that once gave a false node down in such floods, rarely, is
-- checked exactly in spec/c/test_net.c, test_inbound.)
local MN = require("support.multinode")
local H = MN.H

local describe, it, assert, after_each, pending = describe, it, assert, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

describe("a flood between two nodes", function()
  after_each(function() MN.cleanup() end)

  it("takes no live node for a silent one, and loses nothing", function()
    local srv = H.start_server()
    local c = MN.pair(srv, "flood")
    local ev = MN.watch(c)
    local counter = assert(c:lookup_isolate("/counter", 15))
    local echo = assert(c:lookup_isolate("/echo", 15))
    local n = 0
    for _ = 1, 4 do
      for _ = 1, 50000 do
        n = n + 1
        assert.is_true((counter:send({ stream = "f", seq = n }, 30)))
      end
      -- and round trips in between, as the link is full
      for i = 1, 200 do assert.equal(i, echo:request({ op = "echo", v = i }, 10)) end
    end
    assert.same(MN.in_order(n), MN.stream_stats(counter, "f", n, 120))
    assert.is_nil(ev:wait(MN.node_down("b"), 0.5), "node b was taken for down")
    assert.same({ "b", "spec" }, c:nodes())
  end)
end)
