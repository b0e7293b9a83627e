-- SPEC §5 "Limits: messages larger than the server's max_payload still
-- arrive (chunked) ..., never silently dropped", with real nats-servers
-- (the default max_payload of 1 MiB, and a small one), and chunks from a
-- node that lies (spec/support/fake_node.py): refused within bounds, never
-- delivered broken, and the node goes on.
--
-- This process is node "spec"; node "b" is spec/support/nodes/echo.lua.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

describe("messages over max_payload", function()
  after_each(function() MN.cleanup() end)

  it("a 5 MiB message arrives whole, in order with the small ones around it, both ways", function()
    local srv = H.start_server() -- max_payload: 1 MiB
    local c = MN.pair(srv, "chunk")
    local echo = assert(c:lookup_isolate("/echo", 15))
    local counter = assert(c:lookup_isolate("/counter", 15))
    local big = string.rep("0123456789abcdef", 5 * 65536) -- 5 MiB
    -- there and back: the request and its reply are both chunked
    local back = echo:request({ op = "echo", v = big }, 60)
    assert.equal(#big, #back)
    assert.is_true(back == big)
    -- a stream mixing small and 5 MiB messages: exactly once, in order
    local n = 0
    for i = 1, 9 do
      n = n + 1
      local msg = { stream = "mix", seq = n }
      if i % 3 == 0 then msg.pad = big end
      assert.is_true((counter:send(msg, 30)))
    end
    assert.same(MN.in_order(n), MN.stream_stats(counter, "mix", n, 60))
    assert.equal(7, echo:request({ op = "echo", v = 7 }, 10)) -- and the link still works
  end)

  it("under a small max_payload, many chunks per message, every message exactly once and in order", function()
    local srv = H.start_server({ max_payload = 4096 })
    local c = MN.pair(srv, "chunks")
    local echo = assert(c:lookup_isolate("/echo", 15))
    local counter = assert(c:lookup_isolate("/counter", 15))
    local n = 0
    for i = 1, 120 do
      n = n + 1
      local size = ({ 10, 4000, 4100, 20000, 100000 })[i % 5 + 1]
      assert.is_true((counter:send({ stream = "s", seq = n, pad = string.rep("x", size) }, 30)))
    end
    assert.same(MN.in_order(n), MN.stream_stats(counter, "s", n, 60))
    local v = string.rep("y", 150000)
    assert.is_true(echo:request({ op = "echo", v = v }, 30) == v)
  end)

  it("refuses what is over the chunking bound (32 MiB) with a clear error, and nothing else breaks", function()
    local srv = H.start_server()
    local c = MN.pair(srv, "huge")
    local echo = assert(c:lookup_isolate("/echo", 15))
    local ok, why = echo:send(string.rep("z", (32 << 20) + 1))
    assert.is_false(ok)
    assert.matches("max_payload", why)
    assert.equal("still", echo:request("still", 10))
  end)

  it("refuses a spawn on another node whose properties are over max_payload, with a clear error", function()
    local srv = H.start_server({ max_payload = 4096 })
    local c = MN.pair(srv, "bigspawn")
    local err = W.error_of(c.spawn_isolate, c, "support.nodes.remote_worker", { pad = string.rep("p", 10000) },
      { node = "b" })
    assert.matches("max_payload", err)
    -- a small one still goes
    local ref = c:spawn_isolate("support.nodes.remote_worker", { answer = 1 }, { node = "b" })
    assert.equal("b", ref.node)
    assert.equal("b", ref:request("info", 10).node)
  end)

  it("says so in the log when an isolate's properties are too large to announce to the other nodes", function()
    local srv = H.start_server({ max_payload = 4096 })
    local c = MN.pair(srv, "bigprops", nil, nil,
      { logger = function(text, main) main:send({ log = text }) end })
    local ref = c:spawn_isolate(function(context) context:on_message(function() return "here" end) end,
      { pad = string.rep("p", 10000) }, { path = "/bigprops" })
    local msg = W.receive_match(c, function(m)
      return type(m) == "table" and type(m.log) == "string" and m.log:find("too large to announce", 1, true)
    end)
    assert.truthy(msg, "no log line for the properties that could not be announced")
    assert.truthy(msg.log:find(tostring(ref.id), 1, true), msg.log)
    assert.equal("here", ref:request("x", 10)) -- it runs here all the same
  end)

  it("chunks from a node that lies are refused, within bounds, and the good messages around them arrive", function()
    local srv = H.start_server()
    local name = H.unique_name("liar")
    local c = MN.node(srv, name, "spec")
    local sink = c:spawn_isolate(function(context)
      local got = {}
      context:on_message(function(msg)
        if msg == "list" then return got end
        got[#got + 1] = type(msg) == "string" and msg:match("^(%a+):") or ("?" .. type(msg))
      end)
    end, nil, { path = "/sink" })
    local before = c:stats().dead_letters
    local fake = H.spawn({ H.PYTHON, H.SUPPORT_DIR .. "/fake_node.py", srv.url, name, "liar", "spec", "chunks" },
      {}, H.tmpdir() .. "/fake.txt", "fake_node", { "LD_PRELOAD" })
    H.wait_output(fake, "^done$", 60)
    -- good, good (which cut off a liar), good; nothing of the broken ones
    W.wait_until(function() return #sink:request("list", 10) >= 3 end, 20)
    assert.same({ "before", "middle", "after" }, sink:request("list", 10))
    -- the broken request was answered with an error at once
    H.wait_output(fake, "^reply_error 77 chunked message refused$", 20)
    -- five broken plain messages, each counted once
    assert.equal(before + 5, c:stats().dead_letters)
  end)
end)
