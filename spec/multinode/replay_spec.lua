-- SPEC §5 "Trust" and "Failure detection", against a client that can
-- publish on the cluster's subjects but does not know the cluster secret:
-- it captures the real, authenticated frames of two nodes (their join,
-- heartbeats, hellos and welcomes, path claims and announcements, traffic,
-- one node's clean leave with its bye) and publishes them again, over and
-- over, once one node is killed (spec/support/nats_peer.py replay). The
-- killed node is still declared down within the failure-detection bound,
-- and the replays bring neither node back, to this node or to a node that
-- joins while they go on and never knew them; the paths they held stay
-- free (docs/multinode.md, "Replays").
--
-- The measured detection time is printed; only a generous bound (15 s, as
-- in failure_spec) is asserted, so that a loaded machine does not fail it.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

local BOUND = 15 -- seconds; the documented bound is about 3.1 s
-- Longer than the failure-detection bound: a replayed heartbeat that
-- counted would have shown a node up within it.
local WATCH = 4

describe("replayed frames of nodes, with the cluster secret", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  local function any_node_up(e) return type(e) == "table" and e.ev == "node_up" end

  local function same_nodes(want, cluster)
    local got = cluster:nodes()
    table.sort(got)
    assert.same(want, got)
  end

  it("keep no dead node alive, bring none back, and hold no path", function()
    local name = H.unique_name("replay")
    local secret = "replay-key"
    local c = MN.node(srv, name, "spec", { secret = secret })
    local ev = MN.watch(c)
    local dir = H.tmpdir()
    local go, stop = dir .. "/go", dir .. "/stop"
    local peer = H.start_peer({ srv.url, "replay", name, "--go", go, "--stop", stop, "--seconds", "60" })
    H.wait_output(peer, "^capturing$")

    -- What the peer captures: b and d joining (and claiming their paths),
    -- traffic, an isolate of d killed, d leaving with a bye.
    local b = MN.start(srv, name, "b", { secret = secret })
    local d = MN.start(srv, name, "d", { secret = secret, echo_path = "/d/echo", counter_path = "/d/counter" })
    assert.is_not_nil(ev:wait(MN.node_up("b"), 15), "b never came up")
    assert.is_not_nil(ev:wait(MN.node_up("d"), 15), "d never came up")
    local echo = c:lookup_isolate("/echo", 15)
    local counter = c:lookup_isolate("/counter", 15)
    local d_echo = c:lookup_isolate("/d/echo", 15)
    assert.is_not_nil(echo)
    assert.is_not_nil(counter)
    assert.is_not_nil(d_echo)
    for i = 1, 10 do assert.equal(i, echo:request({ op = "echo", v = i }, 10)) end
    for i = 1, 50 do counter:send({ stream = "s", seq = i }) end
    assert.same(MN.in_order(50), MN.stream_stats(counter, "s", 50))
    assert.equal("d", d_echo:request({ op = "echo", v = "d" }, 10))
    d_echo:kill()
    assert.is_not_nil(ev:wait(MN.isolate_down("/d/echo"), 15))
    assert.equal("bye", c:lookup_isolate("/ctl/d", 10):request("shutdown", 10))
    local left = ev:wait(MN.node_down("d"), 15)
    assert.is_not_nil(left, "d never left; got:\n" .. ev:dump())
    assert.equal("left", left.reason)
    assert.equal(0, d:wait(30))
    assert.equal("pong", c:lookup_isolate("/ctl/b", 10):request("ping", 10))

    -- b dies; everything captured is published again and again.
    local t0 = W.now()
    b:kill()
    assert(io.open(go, "w")):close()
    H.wait_output(peer, "^captured %d+$")
    local down = ev:wait(MN.node_down("b"), BOUND + 5)
    local dt = W.now() - t0
    assert.is_not_nil(down, "no node_down for b while its frames were replayed; got:\n" .. ev:dump())
    io.stderr:write(("\n[multinode] SIGKILL under replayed frames -> on_node_down: %.2f s\n"):format(dt))
    if W.precise_clock then assert.is_true(dt <= BOUND, ("took %.1f s"):format(dt)) end
    assert.are_not.equal("left", down.reason)

    -- A node that joins now never knew b or d: their replayed frames do not
    -- make it meet them.
    local e = MN.node(srv, name, "e", { secret = secret })
    local e_ev = MN.watch(e)
    assert.is_not_nil(ev:wait(MN.node_up("e"), 15), "e never came up here")

    -- The replays go on: neither b nor d is up again, here or at e.
    assert.is_nil(ev:wait(any_node_up, WATCH), "a node came up here during the replay:\n" .. ev:dump())
    local up_at_e = e_ev:wait(function(m) return any_node_up(m) and m.name ~= "spec" end, 1)
    assert.is_nil(up_at_e, "e met a node that is gone: " .. tostring(up_at_e and up_at_e.name))
    same_nodes({ "e", "spec" }, c)
    same_nodes({ "e", "spec" }, e)
    for _, path in ipairs({ "/echo", "/counter", "/ctl/b", "/d/echo", "/d/counter", "/ctl/d" }) do
      assert.is_nil(c:lookup_isolate(path), path .. " is still held here")
      assert.is_nil(e:lookup_isolate(path), path .. " is held at e")
    end
    -- b's paths are free: replayed claims and announcements hold none of them.
    local mine = c:spawn_isolate(function(context) context:on_message(function() return "mine" end) end, nil,
      { path = "/echo" })
    assert.equal("mine", mine:request("whose?", 10))
    local seen = e:lookup_isolate("/echo", 10)
    assert.is_not_nil(seen)
    assert.equal("spec", seen.node)
    assert.equal("mine", seen:request("whose?", 10))

    assert(io.open(stop, "w")):close()
    assert.equal(0, peer:wait(30), peer:output())
    local rounds = tonumber(peer:output():match("replayed (%d+) rounds"))
    assert.is_true(rounds ~= nil and rounds > 0, peer:output())
    io.stderr:write(("[multinode] %s, replayed %d rounds\n"):format(peer:output():match("captured %d+"), rounds))
  end)
end)
