-- SPEC §3 lifecycle rules on children, across nodes: an isolate spawned on
-- another node by context:spawn_isolate(..., {node = ...}) is its
-- creator's child as a local one is: shut down with its creator (reason
-- "shutdown"), also when the creator's node goes down or leaves, and
-- counted among the creator's live children (a creator with nothing else
-- to run stays while it is up). Also ref:kill() of another node's isolate:
-- killed there, through the link.
--
-- This process is node "spec"; node "b" is spec/support/nodes/echo.lua or
-- spec/support/nodes/parent.lua.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, after_each, pending = describe, it, assert, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

-- A creator on this node: on { op = "spawn", node =, path = [, detached =] }
-- spawns support.nodes.remote_worker there as its child and returns its
-- ref; "stop" stops it (its children go with it).
local function creator_entry(context)
  context:on_message(function(msg)
    if msg == "stop" then return context:stop("normal") end
    return context:spawn_isolate("support.nodes.remote_worker", { by = "creator" },
      { node = msg.node, path = msg.path, detached = msg.detached })
  end)
end

local function down_of(ev, path, timeout)
  return ev:wait(MN.isolate_down(path), timeout or 15)
end

describe("children on other nodes", function()
  after_each(function() MN.cleanup() end)

  it("go down with their creator (reason shutdown); a detached one stays", function()
    local srv = H.start_server()
    local c = MN.pair(srv, "kids")
    local ev = MN.watch(c)
    local creator = c:spawn_isolate(creator_entry)
    local kid = creator:request({ node = "b", path = "/kid" }, 10)
    local free = creator:request({ node = "b", path = "/free", detached = true }, 10)
    assert.equal("b", kid.node)
    assert.same({ node = "b", path = "/kid", props = { by = "creator" } }, kid:request("info", 10))
    assert.equal("b", free:request("info", 10).node)
    creator:send("stop")
    local down = assert(down_of(ev, "/kid"), "the child on b did not go down with its creator")
    assert.equal("shutdown", down.reason)
    assert.equal(kid, down.ref)
    -- the detached one is not a child: it stays
    assert.equal("b", free:request("info", 10).node)
    assert.is_false((kid:send("late")))
  end)

  it("keep their creator up while they are up, as local children do", function()
    local srv = H.start_server()
    local c = MN.pair(srv, "keep")
    local ev = MN.watch(c)
    -- a launcher: spawns a child on b and returns; nothing else to run
    c:spawn_isolate(function(context)
      context:spawn_isolate("support.nodes.remote_worker", nil, { node = "b", path = "/worker" })
    end, nil, { path = "/launcher" })
    local worker = assert(MN.lookup_until(c, "/worker", nil, 15))
    assert.equal("b", worker:request("info", 10).node)
    -- still up: its child is
    assert.is_not_nil(c:lookup_isolate("/launcher"))
    worker:send({ op = "stop" })
    assert.equal("normal", assert(down_of(ev, "/worker")).reason)
    -- and then it ends by itself
    assert.equal("normal", assert(down_of(ev, "/launcher"), "the launcher did not end after its child").reason)
  end)

  it("go down when their creator's node goes down (killed) or leaves", function()
    local srv = H.start_server()
    local name = H.unique_name("orphan")
    local c = MN.node(srv, name, "spec")
    local ev = MN.watch(c)
    for round, how in ipairs({ "KILL", "leave" }) do
      local b = MN.start(srv, name, "b" .. round, nil, "parent")
      local parent = assert(MN.lookup_until(c, "/parent", function(r) return r.node == "b" .. round end, 15))
      local path = "/orphan" .. round
      local kid = parent:request({ op = "spawn", node = "spec", path = path }, 10)
      assert.equal("spec", kid.node)
      local here = assert(c:lookup_isolate(path))
      assert.same({ node = "spec", path = path, props = { by = "parent" } }, here:request("info", 10))
      if how == "KILL" then
        b:signal("KILL")
      else
        assert.equal("bye", c:lookup_isolate("/ctl/b" .. round):request("shutdown", 10))
      end
      assert(ev:wait(MN.node_down("b" .. round), 15), "node b" .. round .. " not seen down")
      local down = assert(down_of(ev, path), "the child here did not go down with its creator's node")
      assert.equal("shutdown", down.reason)
      assert.is_nil(c:lookup_isolate(path))
    end
  end)

  it("ref:kill() of another node's isolate kills it there", function()
    local srv = H.start_server()
    local c = MN.pair(srv, "kill")
    local ev = MN.watch(c)
    local echo = assert(c:lookup_isolate("/echo", 15))
    assert.same({ true }, { echo:kill() })
    local down = assert(down_of(ev, "/echo"), "the remote isolate was not killed")
    assert.equal("killed", down.reason)
    assert.same({ false, "isolate down" }, { echo:kill() })
    assert.same({ false, "isolate down" }, { echo:send("x") })
    -- the node is fine: its other isolates answer
    assert.equal("pong", c:lookup_isolate("/ctl/b"):request("ping", 10))
    -- and another one of its isolates can be killed the same way
    local counter = assert(c:lookup_isolate("/counter", 15))
    assert.is_true(counter:kill())
    assert.equal("killed", assert(down_of(ev, "/counter")).reason)
  end)
end)
