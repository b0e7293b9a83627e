-- SPEC §5 "Trust: bytes from the network are untrusted: the decoder's limits
-- hold" and SPEC §4 "no crash on any byte string": random and mutated bytes
-- published to the cluster's subjects (ic.<cluster>.>) by a client that is
-- not a node (spec/support/nats_peer.py hostile) never crash, stall or
-- corrupt a node. Afterwards both nodes still answer, a fresh stream still
-- arrives exactly once in order, and a function sent in real traffic was not
-- run again by a replay.
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

describe("hostile bytes on the cluster's subjects", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  -- Real traffic for the peer to learn and mutate: requests, a stream, and
  -- (with code allowed) one function call.
  -- Returns how many functions it had run.
  local function traffic(echo, counter, with_code)
    for i = 1, 20 do assert.equal(i, echo:request({ op = "echo", v = i }, 10)) end
    for i = 1, 200 do counter:send({ stream = "warm", seq = i }) end
    if with_code then
      assert.equal(7, echo:request({ op = "run", fn = function() return 7 end }, 10))
      return 1
    end
    return 0
  end

  local function run(seed, node_opts, b_args, with_code)
    local name = H.unique_name("hostile")
    local c = MN.node(srv, name, "spec", node_opts)
    local b = MN.start(srv, name, "b", b_args)
    local echo = c:lookup_isolate("/echo", 15)
    local counter = c:lookup_isolate("/counter", 15)
    assert.is_not_nil(echo)
    assert.is_not_nil(counter)
    local here = c:spawn_isolate(function(context) context:on_message(function(m) return m end) end, nil,
      { path = "/here" })

    local peer = H.start_peer({ srv.url, "hostile", name, "--count", "3000", "--seconds", "20",
      "--listen", "3", "--seed", tostring(seed) })
    -- while it listens: real traffic it can capture
    local functions_sent = 0
    H.poll(function()
      functions_sent = functions_sent + traffic(echo, counter, with_code)
      return peer:output():find("learned", 1, true)
    end, 20)
    local status = peer:wait(60)
    assert.equal(0, status, peer:output())
    io.stderr:write("\n[multinode] " .. (peer:output():match("hostile: published[^\n]*") or peer:output()) .. "\n")

    -- nothing crashed or stalled
    assert.is_true(b:alive(), "node b died:\n" .. b:output())
    assert.equal("alive", echo:request("alive", 10))
    assert.equal("here", here:request("here", 10))
    -- b and this node are still each other's peers. Without a secret a
    -- mutated heartbeat is a valid one from a node that does not exist (any
    -- client of the account may pose as a node, see docs/security.md): such
    -- a phantom may be listed until its heartbeats stop; with the secret,
    -- never.
    local live = {}
    for _, n in ipairs(c:nodes()) do live[n] = true end
    assert.is_true(live.b and live.spec, table.concat(c:nodes(), ","))
    if node_opts and node_opts.secret then assert.same({ "b", "spec" }, c:nodes()) end
    local ctl_here = c:lookup_isolate("/ctl/b", 10)
    assert.equal("pong", ctl_here:request("ping", 10))
    -- and the link is not corrupted: a fresh stream arrives whole
    for i = 1, 1000 do
      local ok, why = counter:send({ stream = "after", seq = i }, 10)
      assert(ok, ("send %d of the fresh stream refused: %s\nnode b:\n%s"):format(i, tostring(why), b:output()))
    end
    assert.same(MN.in_order(1000), MN.stream_stats(counter, "after", 1000))
    -- the other direction too
    assert.equal(500, echo:request({ op = "blast", to = c.main, n = 500, stream = "back" }, 60))
    local msgs = W.collect(c, 500, 30)
    assert.equal(500, #msgs)
    for i = 1, 500 do assert.equal(i, msgs[i].seq) end
    return echo, b, functions_sent
  end

  it("do not crash or stall the nodes (seed 1)", function()
    run(1)
  end)

  it("do not crash or stall the nodes (seed 2)", function()
    run(2)
  end)

  -- A plain client's reply subject is where the node publishes the answer,
  -- with the node's own NATS permissions. The peer above replays subjects it
  -- saw as reply subjects, its own path subjects among them: a reply subject
  -- inside the cluster's subjects would deliver the answer (or the error for
  -- a path nobody holds) to another isolate, as a message of nobody, or put
  -- it on the nodes' own subjects. Such a request is neither delivered nor
  -- answered.
  it("a request whose reply subject is one of the cluster's is neither delivered nor answered", function()
    local name = H.unique_name("reflect")
    local c = MN.node(srv, name, "spec")
    local paths = "ic." .. name .. ".path."
    local function forwarder(at, answer)
      c:spawn_isolate(function(context)
        local main, here, answers = context:property("main"), context:property("at"), context:property("answer")
        context:on_message(function(m)
          main:send({ at = here, got = m })
          if answers then return m end
        end)
      end, { main = c.main, at = at, answer = answer }, { path = at })
    end
    forwarder("/here", true)
    forwarder("/sink", false)
    local dead = c:stats({ rows = false }).dead_letters
    for _, to in ipairs({ "here", "nobody", "here" }) do
      local out, code = H.peer({ srv.url, "pub", paths .. to, '"reflected"', "--reply", paths .. "sink" })
      assert.equal(0, code, out)
    end
    local out, code = H.peer({ srv.url, "pub", paths .. "here", '"reflected"', "--reply", "ic." .. name .. ".hb" })
    assert.equal(0, code, out)
    -- Answered only once everything before it was handled (one subscription
    -- takes every path subject, in order; /here answers in mailbox order), so
    -- an answer published to /sink before it is there before "last".
    out = H.peer({ srv.url, "request", paths .. "here", '"sync"', "--timeout", "10" })
    assert.matches('reply "sync"', out)
    out, code = H.peer({ srv.url, "pub", paths .. "sink", '"last"' })
    assert.equal(0, code, out)
    local got, seen = {}, {}
    W.wait_until(function()
      local m = c:receive(0.1)
      if m then
        got[#got + 1] = m
        seen[m.at .. " " .. tostring(m.got)] = true
      end
      return seen["/here sync"] and seen["/sink last"]
    end, 15)
    table.sort(got, function(x, y) return x.at < y.at end)
    assert.same({ { at = "/here", got = "sync" }, { at = "/sink", got = "last" } }, got)
    -- the three requests to /here, refused, are dead letters
    assert.equal(dead + 3, c:stats({ rows = false }).dead_letters)
  end)

  it("with a secret and allow_code: nothing forged runs, and no replay runs a function twice", function()
    local echo, b, sent = run(3, { secret = "hostile-key", allow_code = true },
      { secret = "hostile-key", allow_code = "true" }, true)
    -- each function sent ran once; replayed or forged ones never ran
    assert.is_true(sent >= 1)
    assert.equal(sent, echo:request({ op = "ran" }, 10))
    assert.equal(sent, select(2, b:output():gsub("ran function", "")))
  end)
end)
