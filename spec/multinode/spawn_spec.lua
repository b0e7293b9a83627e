-- SPEC §5: cluster:spawn_isolate("module", props, { node = "node-b", path =
-- "/w/" }) "spawns on another node by module name (that node's package.path
-- finds it); a Lua function entry is refused for another node unless
-- allow_code"; supervision across nodes (a supervisor restarting a remote
-- child, lua/isolate_cluster/supervisor.lua).
local MN = require("support.multinode")
local H, W = MN.H, MN.W
local supervisor = require("isolate_cluster.supervisor")

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

describe("spawning on another node", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  local function two_nodes()
    local c, _, name = MN.pair(srv, "spawn")
    assert.is_not_nil(c:lookup_isolate("/ctl/b", 15))
    return c, name
  end

  it("by module name: the isolate runs there with its properties", function()
    local c = two_nodes()
    local ref = c:spawn_isolate("support.nodes.remote_worker", { answer = 42, list = { "x" } }, { node = "b" })
    assert.equal("b", ref.node)
    local info = ref:request("info", 10)
    assert.equal("b", info.node)
    assert.same({ answer = 42, list = { "x" } }, info.props)
    assert.equal(42, ref:property("answer"))
  end)

  it("at a \"/dir/\" path: a unique segment is appended there", function()
    local c = two_nodes()
    local r1 = c:spawn_isolate("support.nodes.remote_worker", nil, { node = "b", path = "/rw/" })
    local r2 = c:spawn_isolate("support.nodes.remote_worker", nil, { node = "b", path = "/rw/" })
    assert.matches("^/rw/.", r1.path)
    assert.are_not.equal(r1.path, r2.path)
    assert.equal(r1.path, r1:request("info", 10).path)
    assert.equal(r1, c:lookup_isolate(r1.path, 10))
  end)

  it("at a full path that is in use: raises with the path", function()
    local c = two_nodes()
    local err = W.error_of(c.spawn_isolate, c, "support.nodes.remote_worker", nil, { node = "b", path = "/echo" })
    assert.matches('path "/echo" is already in use', err)
  end)

  it("messages sent before the remote isolate is up are not lost", function()
    local c = two_nodes()
    local ref = c:spawn_isolate("support.nodes.remote_worker", nil, { node = "b" })
    -- sent at once, before anything says it is up
    for i = 1, 100 do assert.is_true((ref:send({ seq = i }))) end
    -- the request comes after them from the same sender, so it sees them all
    assert.same({ count = 100, in_order = true }, ref:request("count", 10))
  end)

  it("from an isolate's context too", function()
    local c = two_nodes()
    local spawner = c:spawn_isolate(function(context)
      context:on_message(function()
        local r = context:spawn_isolate("support.nodes.remote_worker", { by = "ctx" }, { node = "b" })
        return r:request("info", 10)
      end)
    end)
    local info = spawner:request("go", 15)
    assert.equal("b", info.node)
    assert.equal("ctx", info.props.by)
  end)

  it("a Lua function entry is refused for another node without allow_code", function()
    local c = two_nodes()
    local err = W.error_of(c.spawn_isolate, c, function(context) context:on_message(function() return 1 end) end,
      nil, { node = "b" })
    assert.matches("allow_code", err)
  end)

  it("on a node that is not in the cluster: raises, naming the node", function()
    local c = two_nodes()
    local err = W.error_of(c.spawn_isolate, c, "support.nodes.remote_worker", nil, { node = "nope" })
    assert.matches("nope", err)
  end)

  it("a module the remote node cannot find: the isolate goes down with an error, nothing else is hurt", function()
    local c = two_nodes()
    local ev = MN.watch(c)
    local ok, ref = pcall(c.spawn_isolate, c, "no.such.module.anywhere", nil, { node = "b", path = "/missing" })
    if ok then
      local down = ev:wait(MN.isolate_down("/missing"), 15)
      assert.is_not_nil(down, ev:dump())
      assert.matches("^error: .*no%.such%.module%.anywhere", down.reason)
      assert.is_false((ref:send("x")))
    else
      assert.matches("no%.such%.module%.anywhere", tostring(ref))
    end
    assert.equal("still", c:lookup_isolate("/echo", 10):request("still", 10))
  end)
end)

describe("supervision across nodes", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  it("a supervisor restarts a child that runs on another node when it crashes", function()
    local c = MN.pair(srv, "sup")
    assert.is_not_nil(c:lookup_isolate("/ctl/b", 15))
    local sup = supervisor.spawn(c, {
      intensity = 5, period = 10,
      children = {
        { path = "/sup/child", entry = "support.nodes.remote_worker", properties = { gen = "any" },
          restart = "permanent", opts = { node = "b" } },
      },
    }, { path = "/sup" })
    local first = c:lookup_isolate("/sup/child", 15)
    assert.is_not_nil(first)
    assert.equal("b", first.node)
    assert.equal("b", first:request("info", 10).node)
    first:send({ op = "crash" })
    local second = MN.lookup_until(c, "/sup/child", function(r) return r ~= first end, 20)
    assert.is_not_nil(second, "the child was not restarted")
    assert.equal("b", second.node)
    assert.equal("b", second:request("info", 10).node)
    local children = sup:request("children", 10)
    assert.equal(1, #children)
    assert.equal(second, children[1].ref)
  end)

  it("a local supervisor sees its remote child go down with \"node down\" when that node is killed", function()
    local c, b = MN.pair(srv, "sup")
    assert.is_not_nil(c:lookup_isolate("/ctl/b", 15))
    local ev = MN.watch(c)
    supervisor.spawn(c, {
      intensity = 1, period = 60,
      children = {
        { path = "/sup/t", entry = "support.nodes.remote_worker", restart = "transient", opts = { node = "b" } },
      },
    }, { path = "/sup" })
    assert.is_not_nil(c:lookup_isolate("/sup/t", 15))
    b:kill()
    local down = ev:wait(MN.isolate_down("/sup/t"), 30)
    assert.is_not_nil(down, ev:dump())
    assert.equal("node down", down.reason)
    -- transient: "node down" is neither an error nor "killed", so it is not
    -- restarted (and could not be: its node is gone); the supervisor lives.
    assert.is_not_nil(c:lookup_isolate("/sup"))
  end)
end)
