-- SPEC §5: "paths unique cluster-wide, lookup_isolate(s) (also waiting)";
-- SPEC §3.5: a path in use is the caller's fault (`path "/a" is already in use`).
-- A path held by a node that leaves is free again.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

local function serve_node(context)
  local node = context:property("node")
  context:on_message(function() return node end)
end

describe("cluster-wide paths", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  it("a path claimed on one node cannot be claimed again on another", function()
    local name = H.unique_name("paths")
    local c = MN.node(srv, name, "spec")
    c:spawn_isolate(serve_node, { node = "spec" }, { path = "/a" })
    local b = MN.start(srv, name, "b", { path = "/a" }, "claim")
    assert.matches('claim failed: .*path "/a" is already in use', b:output())
    assert.equal("spec", c:lookup_isolate("/a"):request("who", 10))
  end)

  it("a path claimed on another node cannot be claimed here", function()
    local c, b = MN.pair(srv, "paths", { path = "/a" }, "claim")
    assert.matches("claimed /a", b:output())
    assert.is_not_nil(c:lookup_isolate("/a", 15))
    local err = W.error_of(c.spawn_isolate, c, serve_node, { node = "spec" }, { path = "/a" })
    assert.matches('path "/a" is already in use', err)
  end)

  it("two nodes claiming the same path at the same time: exactly one wins", function()
    local name = H.unique_name("paths")
    local c = MN.node(srv, name, "spec")
    -- Both start at once; neither waits for the other.
    local procs = {}
    for _, n in ipairs({ "b", "d" }) do
      procs[n] = H.start_node({ script = "claim", args = MN.args(srv, name, n, { path = "/race" }) })
    end
    local claimed = 0
    for n, p in pairs(procs) do
      H.wait_output(p, "^ready " .. n .. "$")
      if p:output():find("claimed /race", 1, true) then claimed = claimed + 1 end
    end
    assert.equal(1, claimed, procs.b:output() .. "\n----\n" .. procs.d:output())
    local winner = c:lookup_isolate("/race", 15)
    assert.is_not_nil(winner)
    assert.equal(winner.node, winner:request("who", 10))
  end)

  it("a path unique segment appended to a \"/dir/\" path is unique across nodes", function()
    local c, b = MN.pair(srv, "paths", { n = "5" }, "workers")
    local here = {}
    for i = 1, 5 do here[#here + 1] = c:spawn_isolate(serve_node, { node = "spec" }, { path = "/w/" }).path end
    local seen = {}
    for p in b:output():gmatch("worker (%S+)") do seen[p] = "b" end
    for _, p in ipairs(here) do
      assert.is_nil(seen[p], "path " .. p .. " given on both nodes")
      seen[p] = "spec"
    end
    local all = W.wait_until(function()
      local l = c:lookup_isolates("/w/")
      if #l >= 10 then return l end
    end, 15, 0.05)
    assert.is_not_nil(all, "lookup_isolates did not list the 10 workers")
    assert.equal(10, #all)
  end)

  it("lookup_isolate finds an isolate of another node", function()
    local c = MN.pair(srv, "paths")
    local echo = c:lookup_isolate("/echo", 15)
    assert.is_not_nil(echo)
    assert.equal("b", echo.node)
    assert.equal("/echo", echo.path)
    assert.is_nil(c:lookup_isolate("/no/such/path"))
  end)

  it("a waiting lookup_isolate returns as soon as another node spawns the path", function()
    local name = H.unique_name("paths")
    local c = MN.node(srv, name, "spec")
    -- The looker waits inside an isolate of this node, then reports.
    c:spawn_isolate(function(context)
      local main = context:property("main")
      local ref = context:lookup_isolate("/late", 30)
      main:send({ found = ref ~= nil, node = ref and ref.node })
    end, { main = c.main })
    MN.start(srv, name, "b", { path = "/late" }, "claim")
    local msg = W.receive(c, 30)
    assert.is_not_nil(msg)
    assert.is_true(msg.found)
    assert.equal("b", msg.node)
  end)

  it("a waiting lookup_isolate in the main state also finds a remote path", function()
    local name = H.unique_name("paths")
    local c = MN.node(srv, name, "spec")
    H.start_node({ script = "claim", args = MN.args(srv, name, "b", { path = "/later" }) })
    local ref = c:lookup_isolate("/later", 30)
    assert.is_not_nil(ref)
    assert.equal("b", ref.node)
  end)

  it("a waiting lookup_isolate gives nil when the path never comes, by its deadline", function()
    local c = MN.pair(srv, "paths")
    local t0 = W.now()
    assert.is_nil(c:lookup_isolate("/never", 1))
    assert.is_true(W.now() - t0 < 10)
  end)

  it("lookup_isolates(prefix) lists the matching isolates of every node", function()
    local name = H.unique_name("paths")
    local c = MN.node(srv, name, "spec")
    c:spawn_isolate(serve_node, { node = "spec" }, { path = "/w/local" })
    c:spawn_isolate(serve_node, { node = "spec" }, { path = "/other" })
    MN.start(srv, name, "b", { n = "3" }, "workers")
    local list = W.wait_until(function()
      local l = c:lookup_isolates("/w/")
      if #l >= 4 then return l end
    end, 15, 0.05)
    assert.is_not_nil(list, "lookup_isolates did not list 4 isolates")
    assert.equal(4, #list)
    local nodes = { spec = 0, b = 0 }
    for _, ref in ipairs(list) do
      assert.equal("/w/", ref.path:sub(1, 3))
      nodes[ref.node] = nodes[ref.node] + 1
    end
    assert.same({ spec = 1, b = 3 }, nodes)
    -- the remote ones answer
    for _, ref in ipairs(list) do
      if ref.node == "b" then assert.equal("b", ref:request("who", 10).node) end
    end
  end)

  it("the paths of a node that leaves are free again, and gone from lookups", function()
    local c, b = MN.pair(srv, "paths", { path = "/a" }, "claim")
    assert.is_not_nil(c:lookup_isolate("/a", 15))
    MN.stop_node(c, b, "b")
    assert.truthy(W.wait_until(function() return c:lookup_isolate("/a") == nil end, 15, 0.05),
      "/a still found after its node left")
    local ref = c:spawn_isolate(serve_node, { node = "spec" }, { path = "/a" })
    assert.equal("spec", ref:request("x", 10))
  end)
end)
