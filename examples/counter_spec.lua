-- How to test your own isolate with busted: start a cluster per test, spawn
-- the isolate, talk to it with ref:request (which blocks the test until the
-- reply comes, or raises on a timeout or on the isolate's error), and shut
-- the cluster down afterwards.
--
--   busted --lpath="examples/?.lua" examples/counter_spec.lua
--
-- (with LUA_PATH/LUA_CPATH set for isolate_cluster as in the README).
local ic = require("isolate_cluster")

describe("the counter isolate", function()
  local cluster, counter

  before_each(function()
    cluster = ic.single_node({ workers = 2 })
    counter = cluster:spawn_isolate("counter", { start = 10 }, { path = "/counter" })
  end)

  after_each(function()
    -- true: every isolate stopped in time.
    assert.is_true(cluster:shutdown())
  end)

  it("starts from its start property", function()
    assert.equal(10, counter:request({ op = "get" }))
  end)

  it("adds", function()
    assert.equal(11, counter:request({ op = "add" }))
    assert.equal(16, counter:request({ op = "add", n = 5 }))
  end)

  it("keeps the order of messages from one sender", function()
    for _ = 1, 100 do counter:send({ op = "add" }) end
    assert.equal(110, counter:request({ op = "get" }))
  end)

  it("answers a request that waits inside the isolate", function()
    assert.equal(13, counter:request({ op = "add_later", n = 3, delay = 0.05 }))
  end)

  it("raises the isolate's error at the requester, and keeps running", function()
    assert.has_error(function() counter:request({ op = "nope" }) end, "unknown op nope")
    assert.equal(10, counter:request({ op = "get" }))
  end)

  it("times out when no answer comes in time", function()
    local ok, err = pcall(counter.request, counter, { op = "add_later", delay = 2 }, 0.1)
    assert.is_false(ok)
    assert.matches("timeout", err)
  end)

  it("is found by its path", function()
    assert.equal(counter, cluster:lookup_isolate("/counter"))
  end)
end)
