-- SPEC §7: `isolate-cluster [--workers N] [--nats URL --cluster NAME --node
-- NAME] script.lua [args]` runs script.lua as the main state with `cluster`
-- ready, serves until shutdown, and shuts down gracefully on SIGINT/SIGTERM;
-- with --nats it is a node of a multi-node cluster (SPEC §5): the others see
-- it join, reach its isolates, and see it leave ("left") when it is stopped.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending = describe, it, assert, setup, teardown, after_each,
  pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

local HOST = W.host_binary()

local SCRIPT = [[
cluster:spawn_isolate(function(context)
  context:on_message(function(m) return { got = m, node = context.isolate_ref.node } end)
end, nil, { path = "/hosted" })
io.stdout:write("ready " .. cluster.node .. " " .. table.concat(arg, ",") .. "\n")
io.stdout:flush()
]]

describe("the isolate-cluster host as a node", function()
  local srv, script
  setup(function()
    assert(HOST, "isolate-cluster is not built (set IC_HOST_BIN or build into build/)")
    srv = H.start_server()
    script = H.tmpdir() .. "/hosted.lua"
    local f = assert(io.open(script, "w"))
    f:write(SCRIPT)
    f:close()
  end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  local function start_host(name, node)
    -- the cleanup after each test removes the temporary directories
    script = H.tmpdir() .. "/hosted.lua"
    local f = assert(io.open(script, "w"))
    f:write(SCRIPT)
    f:close()
    local out = H.tmpdir() .. "/host.txt"
    local p = H.spawn({ HOST, "--workers", "2", "--nats", srv.url, "--cluster", name, "--node", node,
      script, "x", "y" }, H.lua_env(), out, "isolate-cluster " .. node)
    H.check_output(p)
    H.wait_output(p, "^ready " .. node .. " x,y$", 30)
    return p
  end

  for _, sig in ipairs({ "TERM", "INT" }) do
    it("joins with --nats --cluster --node, serves its isolates, and leaves cleanly on SIG" .. sig, function()
      local name = H.unique_name("host")
      local c = MN.node(srv, name, "spec")
      local ev = MN.watch(c)
      local host = start_host(name, "h")
      assert.is_not_nil(ev:wait(MN.node_up("h"), 15), ev:dump())
      local hosted = c:lookup_isolate("/hosted", 15)
      assert.is_not_nil(hosted)
      assert.equal("h", hosted.node)
      assert.same({ got = "hi", node = "h" }, hosted:request("hi", 10))
      assert.is_true(host:signal(sig))
      local down = ev:wait(MN.node_down("h"), 15)
      assert.is_not_nil(down, ev:dump())
      assert.equal("left", down.reason)
      assert.equal(0, host:wait(15), host:output())
      assert.same({ "spec" }, c:nodes())
    end)
  end

  it("refuses --nats without --cluster and --node, saying what is missing", function()
    local out = H.tmpdir() .. "/host.txt"
    local p = H.spawn({ HOST, "--nats", srv.url, script }, H.lua_env(), out, "isolate-cluster")
    local status = p:wait(30)
    assert.is_not_nil(status, "the host did not exit")
    assert.are_not.equal(0, status)
    assert.matches("%-%-cluster", p:output())
  end)
end)
