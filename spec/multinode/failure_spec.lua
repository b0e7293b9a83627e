-- SPEC §5 "Failure detection: a node that stops (even by SIGKILL, or a hung
-- process) is reported down to the others within a documented bound of a few
-- seconds, and each of its isolates goes down with reason `node down`. A node
-- that was declared down and comes back joins again as a new incarnation (its
-- old refs stay down)." and "if the receiver's node goes down first, ...
-- pending requests to it fail at once with `node down`" (also §3.8).
--
-- The measured detection times are printed; only a generous bound (15 s) is
-- asserted, so that a loaded machine does not fail the spec.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

local BOUND = 15 -- seconds; the documented bound is a few seconds

local function report(what, seconds)
  io.stderr:write(("\n[multinode] %s: %.2f s\n"):format(what, seconds))
end

describe("a node that dies", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  local function setup_two()
    local c, ev, b = MN.watched_pair(srv, "fail")
    local echo = c:lookup_isolate("/echo", 15)
    local counter = c:lookup_isolate("/counter", 15)
    assert.is_not_nil(echo)
    assert.is_not_nil(counter)
    return c, ev, b, echo, counter
  end

  it("by SIGKILL is reported down, and each of its isolates goes down with \"node down\", within the bound", function()
    local c, ev, b, echo, counter = setup_two()
    local t0 = W.now()
    b:kill()
    local down = ev:wait(MN.node_down("b"), BOUND + 5)
    local dt = W.now() - t0
    assert.is_not_nil(down, "no node_down for b; got:\n" .. ev:dump())
    report("SIGKILL -> on_node_down", dt)
    if W.precise_clock then assert.is_true(dt <= BOUND, ("took %.1f s"):format(dt)) end
    assert.is_string(down.reason)
    assert.are_not.equal("left", down.reason)
    for _, path in ipairs({ "/echo", "/counter", "/ctl/b" }) do
      local d = ev:wait(MN.isolate_down(path), 10)
      assert.is_not_nil(d, "no isolate down for " .. path .. "; got:\n" .. ev:dump())
      assert.equal("node down", d.reason)
      assert.equal("b", d.node)
    end
    -- afterwards: sends are refused, requests fail at once, lookups find nothing
    local ok, why = echo:send("late")
    assert.is_false(ok)
    assert.matches("down", why)
    assert.is_false((counter:send({ stream = "x", seq = 1 })))
    local t1 = W.now()
    local err = W.error_of(echo.request, echo, "late", 10)
    assert.matches("down", err)
    assert.is_true(W.now() - t1 < 5, "a request to a down node waited")
    assert.is_nil(c:lookup_isolate("/echo"))
    assert.same({ "spec" }, c:nodes())
  end)

  it("fails a pending request to it at once with \"node down\"", function()
    local c, ev, b, echo = setup_two()
    c:spawn_isolate(function(context)
      local main, target = context:property("main"), context:property("target")
      local t0 = context:now()
      main:send({ asking = true })
      local ok, err = pcall(target.request, target, { op = "sleep", s = 120 }, 120)
      main:send({ answered = true, ok = ok, err = tostring(err), after = context:now() - t0 })
    end, { main = c.main, target = echo })
    assert.is_not_nil(ev:wait(function(m) return type(m) == "table" and m.asking end, 10))
    -- the remote handler has the request and sleeps 120 s on it
    H.wait_output(b, "^sleeping 120$")
    local t0 = W.now()
    b:kill()
    local res = ev:wait(function(m) return type(m) == "table" and m.answered end, BOUND + 10)
    assert.is_not_nil(res, "the pending request did not fail")
    report("SIGKILL -> pending request failed", W.now() - t0)
    assert.is_false(res.ok)
    assert.matches("node down", res.err)
    assert.is_true(res.after < 60, "the request waited for its timeout")
  end)

  it("refuses sends to it once it is known down, also right after messages were accepted for it", function()
    local c, ev, b, _, counter = setup_two()
    for i = 1, 100 do assert.is_true((counter:send({ stream = "q", seq = i }))) end
    b:kill()
    assert.is_not_nil(ev:wait(MN.node_down("b"), BOUND + 5))
    assert.truthy(W.wait_until(function() return not counter:send({ stream = "q", seq = 101 }) end, 10, 0.05))
  end)

  it("when hung (SIGSTOP) is declared down; after SIGCONT it rejoins as a new incarnation", function()
    local c, ev, b, echo = setup_two()
    local t0 = W.now()
    assert.is_true(b:signal("STOP"))
    local down = ev:wait(MN.node_down("b"), BOUND + 5)
    assert.is_not_nil(down, "a hung node was never declared down; got:\n" .. ev:dump())
    report("SIGSTOP -> on_node_down", W.now() - t0)
    assert.are_not.equal("left", down.reason)
    local d = ev:wait(MN.isolate_down("/echo"), 10)
    assert.is_not_nil(d)
    assert.equal("node down", d.reason)
    assert.is_false((echo:send("while hung")))

    assert.is_true(b:signal("CONT"))
    local t1 = W.now()
    assert.is_not_nil(ev:wait(MN.node_up("b"), 30), "b did not rejoin; got:\n" .. ev:dump() .. "\nb:\n" .. b:output())
    report("SIGCONT -> on_node_up again", W.now() - t1)
    local again = MN.lookup_until(c, "/echo", function(r) return r ~= echo end, 30)
    assert.is_not_nil(again, "no new /echo after b rejoined")
    assert.are_not.equal(echo, again)
    assert.equal("b", again.node)
    assert.equal("back", again:request("back", 10))
    -- the old incarnation's refs stay down
    local ok, why = echo:send("old")
    assert.is_false(ok)
    assert.matches("down", why)
    assert.matches("down", W.error_of(echo.request, echo, "old", 5))
    assert.same({ "b", "spec" }, c:nodes())
  end)

  it("while hung does not make the others stall: this node keeps serving its own isolates", function()
    local c, ev, b = setup_two()
    local here = c:spawn_isolate(function(context) context:on_message(function(m) return m end) end)
    b:signal("STOP")
    for i = 1, 50 do assert.equal(i, here:request(i, 10)) end
    assert.is_not_nil(ev:wait(MN.node_down("b"), BOUND + 5))
    for i = 1, 50 do assert.equal(i, here:request(i, 10)) end
    b:signal("CONT")
  end)

  it("a node program sees another node program killed", function()
    local name = H.unique_name("fail")
    local c = MN.node(srv, name, "spec")
    local w = MN.start(srv, name, "w", nil, "watcher")
    local b = MN.start(srv, name, "b")
    H.wait_output(w, "^node_up b$")
    H.wait_output(w, "^isolate_up /echo b$")
    local t0 = W.now()
    b:kill()
    H.wait_output(w, "^node_down b ", BOUND + 5)
    report("SIGKILL -> node_down in another node program", W.now() - t0)
    H.wait_output(w, "^isolate_down /echo b node down$", 10)
    assert.is_not_nil(c) -- this node stays up throughout
  end)
end)
