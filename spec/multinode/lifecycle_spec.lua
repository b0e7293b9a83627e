-- The single-node lifecycle rules across nodes (SPEC §2, §3.7, §5):
-- context:monitor of another node's isolate fires with "node down" when its
-- node goes, and with "noproc" at once for a ref of a node that is gone; an
-- isolate whose only handlers are on_node_up / on_node_down has something
-- left and does not end by itself; ref:send(msg, wait_s) to another node's
-- isolate is accepted; a waiting lookup for a path another node takes later
-- ends when its up event comes; a request from another node fails at once
-- with "isolate down: <reason>" when its receiver goes down before replying.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending = describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

describe("lifecycle across nodes", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  -- This node ("spec") and node program "b" with its /echo; b's process too.
  local function with_echo_node()
    local name = H.unique_name("lc")
    local c = MN.node(srv, name, "spec")
    local b = MN.start(srv, name, "b")
    local echo = c:lookup_isolate("/echo", 15)
    assert.is_not_nil(echo)
    return c, echo, b
  end

  it("a monitor of another node's isolate fires with \"node down\" when that node stops, then \"noproc\"", function()
    local c, echo, b = with_echo_node()
    MN.monitor_twice(c, echo)
    b:kill()
    local first, second = MN.monitor_notices(MN.inbox(c), 20)
    assert.is_not_nil(first)
    assert.equal("node down", first.reason)
    assert.is_true(first.same)
    assert.is_not_nil(second)
    assert.equal("noproc", second.reason)
  end)

  it("an isolate with only on_node_up / on_node_down handlers stays up to hear of nodes", function()
    local name = H.unique_name("lc")
    local c = MN.node(srv, name, "spec")
    local inbox = MN.inbox(c)
    local listener = c:spawn_isolate(function(context)
      local main = context:property("main")
      context:on_node_up(function(node) main:send({ ev = "node_up", name = node }) end)
      context:on_node_down(function(node, reason) main:send({ ev = "node_down", name = node, reason = reason }) end)
      main:send("listening")
      -- the entry returns: the node handlers are what is left
    end, { main = c.main })
    assert.is_not_nil(inbox:wait(function(m) return m == "listening" end, 10))
    local b = MN.start(srv, name, "b")
    assert.is_not_nil(inbox:wait(function(m) return type(m) == "table" and m.ev == "node_up" and m.name == "b" end, 15))
    assert.equal(0, MN.stop_node(c, b, "b"))
    local down = inbox:wait(function(m) return type(m) == "table" and m.ev == "node_down" and m.name == "b" end, 15)
    assert.is_not_nil(down)
    assert.equal("left", down.reason)
    assert.is_true((listener:send("still there?")))
  end)

  it("ref:send(msg, wait_s) to another node's isolate is accepted and arrives", function()
    local c, echo = with_echo_node()
    local inbox = MN.inbox(c)
    assert.is_true((echo:send({ op = "reply_to", ref = c.main, v = "waited" }, 1)))
    assert.is_not_nil(inbox:wait(function(m) return type(m) == "table" and m.v == "waited" end, 15))
    assert.error_matches(function() echo:send(1, -1) end, "wait_s")
  end)

  it("a waiting lookup in the main state ends when another node takes the path", function()
    local name = H.unique_name("lc")
    local c = MN.node(srv, name, "spec")
    -- not waited for: the node program connects while the lookup waits, and
    -- its isolate's up event is what ends the wait
    H.start_node({ script = "echo", args = MN.args(srv, name, "b", { echo_path = "/late" }) })
    local ref = c:lookup_isolate("/late", 20)
    assert.is_not_nil(ref)
    assert.equal("b", ref.node)
  end)

  it("a request from another node fails at once with \"isolate down: killed\" when its receiver is killed", function()
    local c, echo = with_echo_node()
    local inbox = MN.inbox(c)
    -- holder takes the request and waits with it; echo (on b) asked it
    local holder = c:spawn_isolate(function(context)
      local main = context:property("main")
      context:on_message(function(m)
        if m == "hold" then
          main:send("taken")
          context:sleep(60)
          return "too late"
        end
      end)
    end, { main = c.main })
    c:spawn_isolate(function(context)
      local main, echo_ref, target = context:property("main"), context:property("echo"), context:property("target")
      local ok, err = pcall(echo_ref.request, echo_ref, { op = "call", ref = target, msg = "hold", timeout = 60 }, 90)
      main:send({ asked = true, ok = ok, err = tostring(err) })
    end, { main = c.main, echo = echo, target = holder })
    assert.is_not_nil(inbox:wait(function(m) return m == "taken" end, 20))
    assert.is_true((holder:kill()))
    local res = inbox:wait(function(m) return type(m) == "table" and m.asked end, 30)
    assert.is_not_nil(res)
    assert.is_false(res.ok)
    assert.matches("isolate down: killed", res.err, 1, true)
  end)

  it("node handlers removed with nil no longer keep an isolate up: it ends with \"normal\"", function()
    local name = H.unique_name("lc")
    local c = MN.node(srv, name, "spec")
    local ev = MN.watch(c)
    c:spawn_isolate(function(context)
      context:on_node_up(function() end)
      context:on_node_down(function() end)
      context:on_node_up(nil)
      context:on_node_down(nil)
    end, nil, { path = "/lc/unset" })
    local down = ev:wait(MN.isolate_down("/lc/unset"), 15)
    assert.is_not_nil(down, ev:dump())
    assert.equal("normal", down.reason)
  end)
end)
