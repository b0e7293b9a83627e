-- Multi-node clusters over NATS (SPEC §5): the busted process is one node
-- (ic.node), spec/support/nodes/peer_basic.lua another, both on a real
-- nats-server started on a free loopback port.
local H = require("support.nats")
local W = require("support.wait")
local ic = require("isolate_cluster")

local describe, it, assert, setup, teardown, before_each, after_each = describe, it, assert, setup, teardown,
  before_each, after_each
local _ENV = _G

-- See .ci/run: libnats is not instrumented for ThreadSanitizer.
if (os.getenv("IC_SANITIZE") or ""):match("thread") and not os.getenv("IC_TSAN_NATS") then
  describe("multi-node clusters", function()
    pending("skipped under TSan (libnats is not instrumented); IC_TSAN_NATS=1 runs them")
  end)
  return
end

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
    assert.has_error(function() ic.node({ nats = srv.url, cluster = "x", name = "a", pth = 1 }) end,
      'unknown option "pth"')
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
  local srv, name, c, b
  setup(function()
    srv = H.start_server()
    name = H.unique_name("m")
    c = join(srv, name, "a")
    b = H.start_node({ script = "peer_basic", args = { nats = srv.url, cluster = name, name = "b" } })
    H.wait_output(b, "^ready b$")
  end)
  teardown(function()
    if c then c:shutdown(5) end
    H.cleanup()
  end)

  it("looks up a remote isolate by path, requests it, and it knows the sender's node", function()
    local echo = c:lookup_isolate("/svc/echo", 10)
    assert.is_truthy(echo)
    assert.equal("b", echo.node)
    assert.same({ echo = "hi", node = "b", from = "a" }, echo:request("hi", 10))
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
    local r = c:receive(30)
    assert.is_table(r)
    assert.is_false(r.ok)
    assert.matches("isolate down: node down", r.err)
    assert.is_true(r.waited < 30)
    assert.is_truthy(W.wait_until(function() return #c:nodes() == 1 end, 10))
    assert.is_false((echo:send("after")))
  end)
end)
