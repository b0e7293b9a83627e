-- Multi-node clusters over NATS (SPEC §5): the busted process is one node
-- (ic.node), spec/support/nodes/peer_basic.lua another, both on a real
-- nats-server started on a free loopback port.
local MN = require("support.multinode")
local H, W = MN.H, MN.W
local ic = require("isolate_cluster")

local describe, it, assert, setup, teardown, before_each, after_each, pending = describe, it, assert, setup,
  teardown, before_each, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

local function join(srv, cluster_name, name, extra)
  local opts = { nats = srv.url, cluster = cluster_name, name = name, workers = 2 }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return ic.node(opts)
end

describe("ic.node", function()
  local srv
  setup(function() srv = H.start_server() end)
  teardown(H.cleanup)

  it("raises on an unknown option, naming it", function()
    W.error_containing('node: unknown option "pth"',
      function() ic.node({ nats = srv.url, cluster = "x", name = "a", pth = 1 }) end)
    W.error_containing('node (opts.tls): unknown option "cafile"',
      function() ic.node({ nats = srv.url, cluster = "x", name = "a", tls = { cafile = "x" } }) end)
    W.error_containing('node: unknown option "pth"', function() ic.node({ cluster = "x", pth = 1 }) end)
  end)

  it("raises a clear error when no server answers, within its connect timeout", function()
    local ok, err = pcall(ic.node, { nats = "nats://127.0.0.1:1", cluster = "x", name = "a", connect_timeout = 1 })
    assert.is_false(ok)
    assert.matches("cannot create the node: cannot connect to NATS", err)
  end)

  it("refuses a cluster name that is not a subject token, and allow_code without a secret", function()
    assert.has_error(function() ic.node({ nats = srv.url, cluster = "a.b", name = "n" }) end)
    local ok, err = pcall(ic.node, { nats = srv.url, cluster = "x", name = "n", allow_code = true })
    assert.is_false(ok)
    assert.matches("allow_code needs opts.secret", err)
  end)

  it("takes a logger function on every node (the logger's path is each node's own)", function()
    local name = H.unique_name("l")
    local a <close> = join(srv, name, "a", { logger = function() end })
    local b <close> = join(srv, name, "b", { logger = function() end })
    assert.same({ "a", "b" }, a:nodes())
    assert.is_truthy(b:spawn_isolate(function() end, nil, { path = "/after/logger" }))
  end)

  it("names itself, lists the live nodes and sees another node come and leave", function()
    local name = H.unique_name("c")
    local c <close> = join(srv, name, "a")
    assert.equal("a", c.node)
    assert.same({ "a" }, c:nodes())
    assert.equal("a", c.main.node)
    local watcher = c:spawn_isolate(function(context)
      local main = context:property("main")
      context:on_node_up(function(n) main:send({ "up", n }) end)
      context:on_node_down(function(n, why) main:send({ "down", n, why }) end)
    end, { main = c.main })
    assert.is_truthy(watcher)
    local b = H.start_node({ script = "peer_basic", args = { nats = srv.url, cluster = name, name = "b" } })
    H.wait_output(b, "^ready b$")
    local ev = c:receive(10)
    assert.same({ "up", "b" }, ev)
    assert.is_truthy(W.wait_until(function() return #c:nodes() == 2 end, 10))
    assert.same({ "a", "b" }, c:nodes())
    local ctl = c:lookup_isolate("/ctl/b", 10)
    assert.is_truthy(ctl)
    assert.equal("b", ctl.node)
    assert.equal("/ctl/b", ctl.path)
    assert.equal("bye", ctl:request("shutdown", 10))
    ev = c:receive(10)
    assert.same({ "down", "b", "left" }, ev)
    assert.same({ "a" }, c:nodes())
    b:wait(10)
  end)
end)

describe("across two nodes", function()
  local c, b
  setup(function() c, b = MN.basic_pair(H.start_server(), "m") end)
  teardown(function() MN.cleanup() end)

  it("looks up a remote isolate by path, requests it, and it knows the sender's node", function()
    local echo = c:lookup_isolate("/svc/echo", 10)
    assert.is_truthy(echo)
    assert.equal("b", echo.node)
    assert.same({ echo = "hi", node = "b", from = "spec" }, echo:request("hi", 10))
  end)

  it("raises the remote handler's error at the requester", function()
    local echo = c:lookup_isolate("/svc/echo", 10)
    local ok, err = pcall(echo.request, echo, "fail", 10)
    assert.is_false(ok)
    assert.matches("echo failed", tostring(err))
  end)

  it("times out a request the remote isolate does not answer in time", function()
    local slow = c:lookup_isolate("/svc/slow", 10)
    local ok, err = pcall(slow.request, slow, "slow", 0.5)
    assert.is_false(ok)
    assert.matches("timeout", tostring(err))
  end)

  it("reads a remote isolate's properties without asking it", function()
    local p = c:lookup_isolate("/svc/props", 10)
    assert.equal("blue", p:property("color"))
    assert.same({ color = "blue", n = 42 }, p:properties())
    assert.matches("/svc/props", tostring(p))
  end)

  it("lists remote isolates by prefix and refuses a path taken on another node", function()
    assert.is_truthy(W.wait_until(function() return #c:lookup_isolates("/svc/") == 3 end, 10))
    local paths = {}
    for _, r in ipairs(c:lookup_isolates("/svc/")) do paths[#paths + 1] = r.path end
    table.sort(paths)
    assert.same({ "/svc/echo", "/svc/props", "/svc/slow" }, paths)
    assert.has_error(function() c:spawn_isolate(function() end, nil, { path = "/svc/echo" }) end,
      'path "/svc/echo" is already in use')
  end)

  it("delivers 10,000 messages from one sender in order, with a ref inside a message", function()
    local echo = c:lookup_isolate("/svc/echo", 10)
    local n = 10000
    -- the ref inside the message is the main state's own: the remote node replies to it
    assert.equal("collecting", echo:request({ collect = n, reply_to = c.main }, 10))
    for i = 1, n do
      local ok, why
      repeat
        ok, why = echo:send({ i = i })
        if not ok then assert.equal("node unreachable", why); c:receive(0.01) end
      until ok
    end
    local report, sender = c:receive(30)
    assert.same({ seen = n, in_order = true }, report)
    assert.equal("b", sender.node)
  end)

  it("spawns on another node by module name, with properties and a directory path", function()
    local w = c:spawn_isolate("support.spawned_worker", { k = 1 }, { node = "b", path = "/w/" })
    assert.equal("b", w.node)
    -- usable at once: the request queues behind the spawn on the same link
    assert.same({ node = "b", props = { k = 1 } }, w:request("who", 10))
    assert.is_truthy(W.wait_until(function() return w.path end, 10))
    assert.matches("^/w/", w.path)
    assert.equal(w, c:lookup_isolate(w.path))
    -- this node's name in opts.node spawns here
    local here = c:spawn_isolate("support.spawned_worker", nil, { node = "spec" })
    assert.equal("spec", here.node)
    assert.equal("spec", here:request("who", 10).node)
  end)

  it("refuses a function entry for another node without allow_code, and an unknown node", function()
    assert.has_error(function() c:spawn_isolate(function() end, nil, { node = "b" }) end)
    local ok, err = pcall(c.spawn_isolate, c, "support.spawned_worker", nil, { node = "nobody" })
    assert.is_false(ok)
    assert.matches('spawn_isolate on node "nobody" failed: no such node', err)
  end)

  it("reports a remote spawn that fails there as that isolate's down event", function()
    local watcher = c:spawn_isolate(function(context)
      local main = context:property("main")
      context:on_isolate_down(function(ref, why) main:send({ ref = ref, why = why }) end)
    end, { main = c.main })
    assert.is_truthy(watcher)
    local w = c:spawn_isolate("support.no_such_module", nil, { node = "b" })
    local ev = W.receive_match(c, function(m) return type(m) == "table" and m.ref == w end, 10)
    assert.is_table(ev)
    assert.matches("^error: .*no_such_module", ev.why)
    watcher:kill()
  end)

  it("a supervisor restarts its child on another node", function()
    local sup = require("isolate_cluster.supervisor")
    local s = sup.spawn(c, { intensity = 5, period = 10, children = {
      { entry = "support.spawned_worker", path = "/sup/w", opts = { node = "b" } } } })
    assert.is_truthy(s)
    local first = assert(c:lookup_isolate("/sup/w", 10))
    assert.equal("b", first.node)
    assert.equal("b", first:request("who", 10).node)
    assert.is_true(first:send("crash")) -- a plain message whose handler raises: the child goes down
    local second = W.wait_until(function()
      local r = c:lookup_isolate("/sup/w")
      return r and r ~= first and r
    end, 10)
    assert.is_truthy(second)
    assert.equal("b", second.node)
    assert.equal("b", second:request("who", 10).node)
    s:kill()
  end)

  it("fails a pending request at once when the remote node goes down", function()
    local echo = c:lookup_isolate("/svc/slow", 10)
    local requester = c:spawn_isolate(function(context)
      local main, target = context:property("main"), context:property("target")
      local t0 = context:now()
      local ok, err = pcall(target.request, target, "slow", 60)
      main:send({ ok = ok, err = tostring(err), waited = context:now() - t0 })
    end, { main = c.main, target = echo })
    assert.is_truthy(requester)
    -- the request is in flight on b when b is killed
    H.pause()
    b:kill()
    local r = W.receive_match(c, function(m) return type(m) == "table" and m.err ~= nil end, 30)
    assert.is_table(r)
    assert.is_false(r.ok)
    assert.matches("isolate down: node down", r.err)
    assert.is_true(r.waited < 30)
    assert.is_truthy(W.wait_until(function() return #c:nodes() == 1 end, 10))
    assert.is_false((echo:send("after")))
  end)
end)

describe("path claims", function()
  teardown(H.cleanup)

  it("three nodes claiming one path at once: exactly one wins, the others are refused", function()
    local srv = H.start_server()
    local name = H.unique_name("claim")
    local c <close> = join(srv, name, "a")
    local procs = {}
    for _, n in ipairs({ "b", "d", "e" }) do
      procs[n] = H.start_node({ script = "claim", args = { nats = srv.url, cluster = name, name = n, path = "/one" } })
    end
    local won, refused = 0, 0
    for n, p in pairs(procs) do
      H.wait_output(p, "^ready " .. n .. "$")
      if p:output():find("claimed /one", 1, true) then won = won + 1 end
      if p:output():find('claim failed: .*path "/one" is already in use') then refused = refused + 1 end
    end
    local outs = {}
    for n, p in pairs(procs) do outs[#outs + 1] = n .. ":\n" .. p:output() end
    assert.equal(1, won, table.concat(outs, "\n"))
    assert.equal(2, refused, table.concat(outs, "\n"))
    local owner = assert(c:lookup_isolate("/one", 10))
    assert.equal(owner.node, owner:request("who", 10))
    assert.has_error(function() c:spawn_isolate(function() end, nil, { path = "/one" }) end,
      'path "/one" is already in use')
  end)
end)
