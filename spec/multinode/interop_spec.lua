-- SPEC §5 "Interop: any NATS client in any language can send a plain
-- MessagePack message to the isolate at path `/a/b` by publishing to subject
-- `ic.<cluster>.path.a.b`; if it gives a reply subject, the handler's first
-- return value comes back there as MessagePack (an error as a MessagePack map
-- `{error = "..."}`)."
--
-- The client is spec/support/nats_peer.py: the NATS protocol on a socket and
-- python3-msgpack, nothing of this library.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

describe("a NATS client that is not a node", function()
  local srv, name, c, counter
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  local function cluster_with_b()
    name = H.unique_name("interop")
    c = MN.node(srv, name, "spec")
    MN.start(srv, name, "b")
    counter = c:lookup_isolate("/counter", 15)
    assert.is_not_nil(counter)
    assert.is_not_nil(c:lookup_isolate("/echo", 15))
  end

  local function request(subject, json)
    local out, code = H.peer({ srv.url, "request", subject, json, "--timeout", "10" })
    assert.equal(0, code, out)
    return out:match("^reply ([^\n]*)")
  end

  it("sends plain MessagePack to an isolate by its path subject, in order", function()
    cluster_with_b()
    local out, code = H.peer({ srv.url, "pub", "ic." .. name .. ".path.counter", '{"stream":"py","seq":0}',
      "--count", "500", "--seq", "seq" })
    assert.equal(0, code, out)
    assert.same(MN.in_order(500), MN.stream_stats(counter, "py", 500))
  end)

  it("requests and gets the handler's first return value as MessagePack", function()
    cluster_with_b()
    assert.equal('"hello"', request("ic." .. name .. ".path.echo", '"hello"'))
    -- a Lua table cannot hold a nil value ({"b": null} arrives as {}), and
    -- a map's keys come back in the order the receiver's table lists them
    local reply = request("ic." .. name .. ".path.echo", '{"op":"echo","v":{"a":[1,2,{"b":null}],"n":-7,"f":1.5}}')
    for _, part in ipairs({ '"a": [1, 2, {}]', '"n": -7', '"f": 1.5' }) do
      assert.is_truthy(reply:find(part, 1, true), reply)
    end
  end)

  it("gets a handler's error as a map {error = \"...\"}", function()
    cluster_with_b()
    local reply = request("ic." .. name .. ".path.echo", '{"op":"fail","why":"from python"}')
    assert.matches('^{"error": ".*echo failed: from python', reply)
  end)

  it("gets an error that says why, not a timeout, when a reply is over the server's max_payload", function()
    local small = H.start_server({ max_payload = 4096 })
    local cname = H.unique_name("interopbig")
    local node = MN.node(small, cname, "spec")
    node:spawn_isolate(function(context)
      context:on_message(function(m) return m == "big" and string.rep("x", 10000) or m end)
    end, nil, { path = "/big" })
    assert.is_not_nil(node:lookup_isolate("/big"))
    local out, code = H.peer({ small.url, "request", "ic." .. cname .. ".path.big", '"big"', "--timeout", "10" })
    assert.equal(0, code, out)
    assert.matches('^reply {"error": "reply too large for the NATS server\'s max_payload"}', out)
    out, code = H.peer({ small.url, "request", "ic." .. cname .. ".path.big", '"small"', "--timeout", "10" })
    assert.equal(0, code, out)
    assert.matches('^reply "small"', out)
  end)

  it("reaches an isolate with a nested path /a/b on the node that holds it", function()
    cluster_with_b()
    c:spawn_isolate(function(context)
      context:on_message(function(m) return { got = m, at = context.isolate_ref.path } end)
    end, nil, { path = "/py/svc" })
    assert.is_not_nil(c:lookup_isolate("/py/svc"))
    local reply = request("ic." .. name .. ".path.py.svc", "5")
    assert.is_truthy(reply:find('"got": 5', 1, true), reply)
    assert.is_truthy(reply:find('"at": "/py/svc"', 1, true), reply)
  end)

  it("a plain message reaches the isolate's handler (and nothing needs a reply)", function()
    cluster_with_b()
    c:spawn_isolate(function(context)
      local main = context:property("main")
      context:on_message(function(m) main:send({ from_py = m }) end)
    end, { main = c.main }, { path = "/py/in" })
    assert.is_not_nil(c:lookup_isolate("/py/in"))
    local out, code = H.peer({ srv.url, "pub", "ic." .. name .. ".path.py.in", '{"x":[true,false,"s"]}' })
    assert.equal(0, code, out)
    local msg = MN.inbox(c):wait(function(m) return type(m) == "table" and m.from_py end, 15)
    assert.is_not_nil(msg)
    assert.same({ x = { true, false, "s" } }, msg.from_py)
  end)

  it("an unexpected but well-formed value on a path subject does not disturb the isolate", function()
    cluster_with_b()
    local out, code = H.peer({ srv.url, "pub", "ic." .. name .. ".path.counter", '"ok"' })
    assert.equal(0, code, out)
    -- raw garbage through the hostile mode is in hostile_spec; here one
    -- well-formed but unexpected value, and the isolate still answers
    assert.equal('"still"', request("ic." .. name .. ".path.echo", '"still"'))
  end)

  it("a request to a path nobody holds does not hang the client", function()
    cluster_with_b()
    local t0 = W.now()
    local out = H.peer({ srv.url, "request", "ic." .. name .. ".path.nobody.here", '"?"', "--timeout", "10" })
    assert.is_true(W.now() - t0 < 30)
    -- no responders, a timeout, or an error map: never a normal reply
    assert.is_nil(out:match('^reply "'), out)
  end)
end)
