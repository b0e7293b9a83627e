-- SPEC §5 Interop and Trust, against real nats-server processes: a NATS
-- client written without this library (spec/support/nats_peer.py: the
-- protocol on a socket, python3-msgpack) sends to and requests from an
-- isolate by its path subject; hostile bytes on the cluster's subjects;
-- authentication with users inside a named account (the safe configuration
-- for nats-server 2.9.10, see docs/multinode.md); code from other nodes.
local MN = require("support.multinode")
local H = MN.H
local ic = require("isolate_cluster")

local describe, it, assert, setup, teardown, after_each, pending = describe, it, assert, setup, teardown,
  after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

local function peer(...)
  local out, status = H.peer({ ... })
  return out, status
end

describe("a plain NATS client", function()
  local srv, name, c
  setup(function()
    srv = H.start_server()
    name = H.unique_name("i")
    c = ic.node({ nats = srv.url, cluster = name, name = "a", workers = 2 })
    c:spawn_isolate(function(context)
      local main = context:property("main")
      context:on_message(function(msg, sender)
        if type(msg) == "table" and msg.op == "add" then return msg.a + msg.b end
        if msg == "boom" then error("boom!") end
        main:send({ got = msg, sender_node = sender and sender.node or false })
      end)
    end, { main = c.main }, { path = "/calc/add" })
  end)
  teardown(function()
    if c then c:shutdown(5) end
    H.cleanup()
  end)

  it("requests an isolate by its path subject and gets the handler's return value", function()
    local out = peer(srv.url, "request", "ic." .. name .. ".path.calc.add", '{"op": "add", "a": 2, "b": 40}',
      "--timeout", "10")
    assert.matches("reply 42", out)
  end)

  it("gets a handler's error as a map {error = ...}", function()
    local out = peer(srv.url, "request", "ic." .. name .. ".path.calc.add", '"boom"', "--timeout", "10")
    assert.matches('reply {"error": "[^"]*boom!', out)
  end)

  it("sends a plain message to an isolate by its path subject", function()
    local out = peer(srv.url, "pub", "ic." .. name .. ".path.calc.add", '{"x": [1, 2, "three"]}')
    assert.matches("published 1", out)
    local m = c:receive(10)
    assert.same({ got = { x = { 1, 2, "three" } }, sender_node = false }, m)
  end)

  it("gets an error for a path no isolate holds", function()
    local out = peer(srv.url, "request", "ic." .. name .. ".path.no.body", '1', "--timeout", "10")
    assert.matches('reply {"error": "no isolate at path /no/body"}', out)
  end)
end)

describe("hostile bytes on the cluster's subjects", function()
  after_each(function() MN.cleanup() end)

  it("neither crash, stall nor corrupt the nodes", function()
    local srv = H.start_server()
    local c, b, echo, name = MN.basic_pair(srv, "h")
    assert.equal("b", echo:request("before", 10).node)
    -- live traffic to capture and mutate while the peer listens
    local hostile = H.start_peer({ srv.url, "hostile", name, "--count", "3000", "--seconds", "15", "--listen", "2",
      "--seed", "11" })
    local t0 = ic.now()
    while hostile:alive() and ic.now() - t0 < 40 do
      assert.equal("b", echo:request({ n = 1 }, 10).node)
      c:receive(0.01)
    end
    H.wait_output(hostile, "^hostile: published %d+")
    -- both nodes alive, membership intact, messages still in order
    assert.equal("b", echo:request("after", 10).node)
    assert.same({ "b", "spec" }, c:nodes())
    assert.is_true(b:alive())
  end)
end)

describe("authentication", function()
  after_each(function() MN.cleanup() end)

  it("lets in a node with its account's credentials and keeps out wrong or missing ones", function()
    local srv = H.start_server({ config = H.auth_config({ { user = "node", password = "s3cret" } }) })
    local name = H.unique_name("u")
    local c = MN.node(srv, name, "spec", { user = "node", password = "s3cret" })
    assert.equal("spec", c.node)
    local ok, err = pcall(ic.node, { nats = srv.url, cluster = name, name = "x", user = "node", password = "wrong",
      connect_timeout = 2 })
    assert.is_false(ok)
    assert.matches("cannot create the node: cannot connect to NATS: Authorization Violation", err)
    ok, err = pcall(ic.node, { nats = srv.url, cluster = name, name = "y", connect_timeout = 2 })
    assert.is_false(ok)
    assert.matches("cannot create the node: cannot connect to NATS: Authorization Violation", err)
    -- a node with the credentials joins and talks
    MN.start(srv, name, "b", { user = "node", password = "s3cret" }, "peer_basic")
    local echo = assert(c:lookup_isolate("/svc/echo", 10))
    assert.equal("b", echo:request("hi", 10).node)
  end)
end)

describe("code from other nodes", function()
  after_each(function() MN.cleanup() end)

  it("is refused without allow_code and a shared secret", function()
    local _, _, echo = MN.basic_pair(H.start_server(), "k")
    local ok, err = pcall(echo.request, echo, { f = function() return 1 end }, 10)
    assert.is_false(ok)
    assert.matches("malformed or untrusted message refused", tostring(err))
    assert.equal("b", echo:request("still fine", 10).node)
  end)

  it("is accepted between nodes with allow_code and the same secret", function()
    local c = MN.basic_pair(H.start_server(), "k", { secret = "shh", allow_code = "true" },
      { secret = "shh", allow_code = true })
    local w = c:spawn_isolate(function(context)
      context:on_message(function(f) return f(20) + 1 end)
    end, nil, { node = "b" })
    assert.equal(41, w:request(function(x) return x * 2 end, 10))
  end)

  it("a node without the secret cannot join the ones that have it", function()
    local srv = H.start_server()
    local name = H.unique_name("k")
    local c = MN.node(srv, name, "spec", { secret = "shh" })
    MN.start(srv, name, "b", nil, "peer_basic")
    assert.is_nil(c:lookup_isolate("/svc/echo", 2))
    assert.same({ "spec" }, c:nodes())
  end)
end)
