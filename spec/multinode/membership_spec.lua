-- SPEC §5: cluster.node, cluster:nodes() ("sorted list of the names of live
-- nodes, this one included"), ref.node, on_node_up / on_node_down with reason
-- "left" on a clean shutdown; "name: node name, unique among the cluster's
-- live nodes"; "cluster name: nodes of other clusters never see these";
-- "isolate up/down events" of remote isolates reach local listeners (§2's
-- on_isolate_up / on_isolate_down / monitor semantics).
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

local function nodes_become(c, want, timeout)
  return W.wait_until(function()
    local l = c:nodes()
    if table.concat(l, ",") == table.concat(want, ",") then return l end
  end, timeout or 15, 0.05)
end

describe("membership", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  it("cluster.node is this node's name and nodes() starts with it alone", function()
    local c = MN.node(srv, H.unique_name("mem"), "spec")
    assert.equal("spec", c.node)
    assert.same({ "spec" }, c:nodes())
    assert.equal("spec", c.main.node)
    local ref = c:spawn_isolate(function(context) context:on_message(function() end) end)
    assert.equal("spec", ref.node)
  end)

  it("nodes() lists every live node, sorted, this one included", function()
    local name = H.unique_name("mem")
    local c = MN.node(srv, name, "m-spec")
    -- paths are unique cluster-wide: each echo node its own
    MN.start(srv, name, "z-last", { echo_path = "/echo/z", counter_path = "/counter/z" })
    MN.start(srv, name, "a-first", { echo_path = "/echo/a", counter_path = "/counter/a" })
    assert.is_not_nil(nodes_become(c, { "a-first", "m-spec", "z-last" }), table.concat(c:nodes(), ","))
  end)

  it("on_node_up reports a node that joins; on_node_down reports it with reason \"left\" when it shuts down", function()
    local c, ev, b = MN.watched_pair(srv, "mem")
    assert.is_not_nil(nodes_become(c, { "b", "spec" }))
    assert.equal(0, MN.stop_node(c, b, "b"))
    local down = ev:wait(MN.node_down("b"), 15)
    assert.is_not_nil(down, "no node_down for b; got:\n" .. ev:dump())
    assert.equal("left", down.reason)
    assert.is_not_nil(nodes_become(c, { "spec" }))
  end)

  it("a node program sees this node come and go too", function()
    local name = H.unique_name("mem")
    local w = MN.start(srv, name, "w", nil, "watcher")
    local c = MN.node(srv, name, "spec")
    H.wait_output(w, "^node_up spec$")
    MN.shutdown(c)
    H.wait_output(w, "^node_down spec left$")
  end)

  it("a second node with the name of a live node cannot join", function()
    local c, _, name = MN.pair(srv, "mem")
    assert.is_not_nil(nodes_become(c, { "b", "spec" }))
    local dup = H.start_node({ script = "echo", args = MN.args(srv, name, "b") })
    local line = H.wait_output(dup, "^node error: ", 30)
    assert.matches('"?b"?', line)
    assert.equal(3, dup:wait(15))
    -- the first b is unaffected
    assert.equal("x", c:lookup_isolate("/echo"):request("x", 10))
  end)

  it("nodes of another cluster on the same server are never seen", function()
    local name, other = H.unique_name("mem"), H.unique_name("other")
    local c = MN.node(srv, name, "spec")
    local ev = MN.watch(c)
    MN.start(srv, other, "b") -- same server, other cluster, its own /echo
    MN.start(srv, name, "d")
    assert.is_not_nil(ev:wait(MN.node_up("d"), 15))
    assert.same({ "d", "spec" }, c:nodes())
    local echo = c:lookup_isolate("/echo", 15)
    assert.equal("d", echo.node)
    assert.is_nil(ev:wait(MN.node_up("b"), 1))
  end)
end)

describe("ic.node", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  local ic = require("isolate_cluster")

  it("raises for a missing nats, cluster or name, naming it", function()
    local name = H.unique_name("opts")
    assert.matches("nats", W.error_of(ic.node, { cluster = name, name = "a" }))
    assert.matches("cluster", W.error_of(ic.node, { nats = srv.url, name = "a" }))
    assert.matches("name", W.error_of(ic.node, { nats = srv.url, cluster = name }))
  end)

  it("raises for an unknown option, naming it", function()
    assert.matches('unknown option "pth"',
      W.error_of(ic.node, { nats = srv.url, cluster = H.unique_name("opts"), name = "a", pth = "/x" }))
  end)

  it("fails within a bounded time when no server listens", function()
    local dead = H.start_server()
    local url = dead.url
    dead:stop()
    local t0 = W.now()
    local ok, c, err = pcall(MN.node, url, H.unique_name("opts"), "a")
    assert.is_false(ok and c ~= nil)
    assert.is_true(W.now() - t0 < 30, "took too long")
    assert.is_string(ok and err or c)
  end)

  it("fails within a bounded time against a server that accepts TCP but never speaks NATS", function()
    -- cnats 3.4.1 can spin in its handshake against such a server (nats.c
    -- #706): the node's connect timeout must still end the attempt. Tried in
    -- a node program, so that a hang cannot hang this process.
    local hole = H.start_peer({ "nats://127.0.0.1:0", "blackhole" })
    local _, port = H.wait_output(hole, "^listening (%d+)$")
    local node = H.start_node({ script = "echo",
      args = MN.args("nats://127.0.0.1:" .. port, H.unique_name("opts"), "a") })
    H.wait_output(node, "^node error: ", 30)
    assert.equal(3, node:wait(15))
  end)
end)

describe("isolate events across nodes", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  it("on_isolate_up reports the isolates of a node that joins, with their node", function()
    local name = H.unique_name("ev")
    local c = MN.node(srv, name, "spec")
    local ev = MN.watch(c)
    MN.start(srv, name, "b")
    local up = ev:wait(MN.isolate_up("/echo"), 15)
    assert.is_not_nil(up, "no isolate_up for /echo; got:\n" .. ev:dump())
    assert.equal("b", up.node)
    assert.equal("b", up.ref.node)
    assert.equal("/echo", up.ref.path)
    assert.equal("echo", up.ref:property("kind"))
  end)

  it("on_isolate_up with existing = true replays the remote isolates already up", function()
    local c = MN.pair(srv, "ev")
    assert.is_not_nil(c:lookup_isolate("/echo", 15))
    c:spawn_isolate(function(context)
      local main = context:property("main")
      context:on_isolate_up(function(ref)
        if ref.path == "/echo" then main:send({ replayed = ref.node }) end
      end, { existing = true })
    end, { main = c.main })
    local msg = MN.inbox(c):wait(function(m) return type(m) == "table" and m.replayed end, 15)
    assert.is_not_nil(msg)
    assert.equal("b", msg.replayed)
  end)

  it("an isolate spawned later on a remote node is reported up, and down with its reason", function()
    local c = MN.pair(srv, "ev")
    local ev = MN.watch(c)
    local w = c:spawn_isolate("support.nodes.remote_worker", nil, { node = "b", path = "/ev/w" })
    assert.is_not_nil(ev:wait(MN.isolate_up("/ev/w"), 15), ev:dump())
    assert.is_true((w:send({ op = "crash" })))
    local down = ev:wait(MN.isolate_down("/ev/w"), 15)
    assert.is_not_nil(down, ev:dump())
    assert.matches("^error: .*crash on purpose", down.reason)
    assert.equal(w, down.ref)
  end)

  it("a normal stop of a remote isolate is reported down with reason \"normal\"", function()
    local c = MN.pair(srv, "ev")
    local ev = MN.watch(c)
    local w = c:spawn_isolate("support.nodes.remote_worker", nil, { node = "b", path = "/ev/n" })
    assert.is_not_nil(ev:wait(MN.isolate_up("/ev/n"), 15))
    w:send({ op = "stop" })
    local down = ev:wait(MN.isolate_down("/ev/n"), 15)
    assert.is_not_nil(down)
    assert.equal("normal", down.reason)
    -- a send to it is refused once it is known down
    assert.truthy(W.wait_until(function() return not w:send("late") end, 10, 0.05))
  end)

  it("a remote isolate that crashes is reported down with its error", function()
    local c = MN.pair(srv, "ev")
    local echo = c:lookup_isolate("/echo", 15)
    local ev = MN.watch(c)
    assert.is_true((echo:send({ op = "crash" })))
    local down = ev:wait(MN.isolate_down("/echo"), 15)
    assert.is_not_nil(down, ev:dump())
    assert.matches("^error: .*crash on purpose", down.reason)
    assert.equal(echo, down.ref)
    assert.equal("b", down.node)
  end)

  -- context:monitor (SPEC §2) is not in every build's runtime yet
  local function runtime_has_monitor()
    local file = package.searchpath("isolate_cluster.runtime_extras", package.path)
    local f = file and io.open(file)
    local src = f and f:read("a") or ""
    if f then f:close() end
    return src:find("function methods:monitor", 1, true) ~= nil
  end
  local it_monitor = runtime_has_monitor() and it or function(title) pending(title .. " (no context:monitor in this runtime)") end

  it_monitor("monitor of a remote ref fires once with the down reason; at once with \"noproc\" when already down", function()
    local name = H.unique_name("ev")
    local c = MN.node(srv, name, "spec")
    MN.start(srv, name, "b")
    local echo = c:lookup_isolate("/echo", 15)
    assert.is_not_nil(echo)
    MN.monitor_twice(c, echo)
    echo:send({ op = "crash" })
    local first, second = MN.monitor_notices(MN.inbox(c))
    assert.is_not_nil(first)
    assert.matches("^error: .*crash on purpose", first.reason)
    assert.is_true(first.same)
    assert.is_not_nil(second)
    assert.equal("noproc", second.reason)
  end)

  it("a node program sees this node's isolates come up and go down", function()
    local name = H.unique_name("ev")
    local w = MN.start(srv, name, "w", nil, "watcher")
    local c = MN.node(srv, name, "spec")
    local ref = c:spawn_isolate(function(context)
      context:on_message(function(m) if m == "stop" then context:stop() end end)
    end, nil, { path = "/from/spec" })
    H.wait_output(w, "^isolate_up /from/spec spec$")
    ref:send("stop")
    H.wait_output(w, "^isolate_down /from/spec spec normal$")
  end)
end)
