-- SPEC §5 "No silent loss: while both nodes live, a message that `send`
-- accepted is delivered exactly once, also across a NATS server restart or a
-- fail-over to another server of a NATS cluster" and "Order ... across nodes
-- too". Also: nodes on different servers of a NATS cluster talk.
--
-- A sender isolate on this node streams { stream =, seq = 1..N } to /counter
-- on node b, and retries a seq that send refused (while the server is away
-- send may refuse with "node unreachable": refusing is allowed, losing is
-- not). The server goes away in the middle of the stream. Afterwards /counter
-- must have seen every seq exactly once and in order.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, after_each, teardown, pending = describe, it, assert, after_each, teardown, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

local N = 20000

-- Streams n messages to `target`, 50 at a time with a short sleep between
-- (so the stream lasts a few seconds), retrying refused sends for up to 60 s
-- each. Reports { progress = seq } at 2000 and { done = accepted, refused =,
-- why = } at the end to main.
local function sender_entry(context)
  local p = context:properties()
  local main, target, n, stream = p.main, p.target, p.n, p.stream
  context:on_message(function()
    local refused, why = 0, nil
    local seq = 1
    while seq <= n do
      local ok, reason = target:send({ stream = stream, seq = seq }, 1)
      if ok then
        if seq == 2000 then main:send({ progress = seq }) end
        if seq % 50 == 0 then context:sleep(0.01) end
        seq = seq + 1
      else
        refused, why = refused + 1, reason
        if refused > 6000 then break end -- about 60 s of refusals
        context:sleep(0.01)
      end
    end
    main:send({ done = seq - 1, refused = refused, why = why })
  end)
end

local function start_stream(c, counter, stream)
  local sender = c:spawn_isolate(sender_entry, { main = c.main, target = counter, n = N, stream = stream })
  assert.is_true((sender:send("go")))
  local inbox = MN.inbox(c)
  assert.is_not_nil(inbox:wait(function(m) return type(m) == "table" and m.progress end, 30),
    "the stream did not start")
  return inbox
end

local function finish_stream(inbox, counter, stream)
  local done = inbox:wait(function(m) return type(m) == "table" and m.done end, 120)
  assert.is_not_nil(done, "the sender did not finish")
  io.stderr:write(("\n[multinode] %s: %d accepted, %d refusals (%s)\n"):format(
    stream, done.done, done.refused, tostring(done.why)))
  assert.equal(N, done.done, "the sender gave up: " .. tostring(done.why))
  assert.same(MN.in_order(done.done), MN.stream_stats(counter, stream, done.done, 60))
end

describe("a NATS server restart in the middle of a stream", function()
  after_each(function() MN.cleanup() end)
  teardown(function() MN.cleanup() end)

  local function run(how)
    local srv = H.start_server()
    local c, b = MN.pair(srv, "restart")
    local counter = c:lookup_isolate("/counter", 15)
    assert.is_not_nil(counter)
    local inbox = start_stream(c, counter, how)
    if how == "kill" then srv:kill() else srv:stop() end
    srv:restart()
    finish_stream(inbox, counter, how)
    -- both nodes are still each other's peers, and requests work both ways
    assert.same({ "b", "spec" }, c:nodes())
    assert.equal("again", c:lookup_isolate("/echo", 15):request("again", 10))
    assert.is_true(b:alive())
  end

  it("(stopped by SIGTERM): every accepted message arrives exactly once, in order", function()
    run("term")
  end)

  it("(killed by SIGKILL): every accepted message arrives exactly once, in order", function()
    run("kill")
  end)

end)

describe("a NATS server outage", function()
  after_each(function() MN.cleanup() end)
  teardown(function() MN.cleanup() end)

  it("that is short does not declare the peers down: the same refs keep working", function()
    local srv = H.start_server()
    local c, ev = MN.watched_pair(srv, "restart")
    srv:restart()
    -- both reconnect; b stays the same incarnation: its refs keep working
    local echo = c:lookup_isolate("/echo", 15)
    assert.equal("same", MN.request_until(echo, "same"))
    assert.same({ "b", "spec" }, c:nodes())
    assert.is_nil(ev:wait(MN.node_down("b"), 0.5), "b was declared down over a short server restart")
  end)

  it("longer than the failure-detection bound declares nobody down", function()
    local srv = H.start_server()
    local c, ev = MN.watched_pair(srv, "outage")
    local echo = c:lookup_isolate("/echo", 15)
    srv:stop()
    -- Nobody hears anybody for longer than the bound (a few seconds): each
    -- node knows that its own connection is down, so it declares no one down.
    local during = W.drain(c, 6)
    for _, m in ipairs(during) do
      assert.is_false(type(m) == "table" and m.ev == "node_down",
        "declared down during the outage: " .. tostring(m.name))
    end
    srv:restart()
    assert.equal("back", MN.request_until(echo, "back"), "the old ref does not work after the outage")
    assert.is_nil(ev:wait(MN.node_down("b"), 2), "b was declared down after the outage")
    assert.same({ "b", "spec" }, c:nodes())
  end)
end)

describe("two NATS servers joined as a cluster", function()
  after_each(function() MN.cleanup() end)
  teardown(function() MN.cleanup() end)

  it("a node given a list whose first server is down connects to the next", function()
    local dead = H.start_server()
    local url = dead.url
    dead:stop()
    local srv = H.start_server()
    local name = H.unique_name("list")
    local c = MN.node({ url, srv.url }, name, "spec")
    MN.start({ url, srv.url }, name, "b")
    assert.equal("listed", c:lookup_isolate("/echo", 15):request("listed", 10))
  end)

  it("nodes connected to different servers see and message each other", function()
    local a, b_srv = H.start_cluster()
    local name = H.unique_name("route")
    local c = MN.node(a, name, "spec")
    MN.start(b_srv, name, "b")
    assert.is_true(a:connections() >= 1)
    assert.is_true(b_srv:connections() >= 1)
    local echo = c:lookup_isolate("/echo", 15)
    assert.is_not_nil(echo)
    assert.equal("across", echo:request("across", 10))
    local counter = c:lookup_isolate("/counter", 15)
    for i = 1, 1000 do assert.is_true((counter:send({ stream = "r", seq = i }, 10))) end
    assert.same(MN.in_order(1000), MN.stream_stats(counter, "r", 1000))
  end)

  it("when one server is killed the nodes fail over to the other, and nothing accepted is lost", function()
    local a, b_srv = H.start_cluster()
    local name = H.unique_name("failover")
    local both = { a.url, b_srv.url }
    local c = MN.node(both, name, "spec")
    local b = MN.start(both, name, "b")
    local counter = c:lookup_isolate("/counter", 15)
    assert.is_not_nil(counter)
    -- kill a server that has at least one of the nodes on it
    local victim, other = a, b_srv
    if a:connections() == 0 then victim, other = b_srv, a end
    assert.is_true(victim:connections() >= 1)
    local inbox = start_stream(c, counter, "failover")
    victim:kill()
    finish_stream(inbox, counter, "failover")
    assert.truthy(W.wait_until(function() return other:connections() >= 2 end, 15, 0.1),
      "both nodes are not on the surviving server")
    assert.equal("still", c:lookup_isolate("/echo", 15):request("still", 10))
    assert.is_true(b:alive())
  end)
end)
