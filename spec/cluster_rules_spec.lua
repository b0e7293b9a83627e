-- Rules of the cluster that adversarial use found broken: paths that a
-- "/dir/" spawn must never take from a user, event subscriptions that must
-- not lose each other's events, shutdown and run that keep their own
-- deadlines, memory errors that must not leak what C holds, values that are
-- refused (NUL in paths, NaN and negative times), unknown options, and a
-- logger that raises.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster, error_of, echo_entry = W.with_cluster, W.error_of, W.echo_entry

local function assert_error_contains(text, fn, ...)
  local err = error_of(fn, ...)
  assert(err:find(text, 1, true), ("expected an error containing %q, got %q"):format(text, err))
  return err
end

-- Sends "ready" to main_ref once up, stops when told "stop".
local function stoppable(ctx)
  local main = ctx:property("main")
  ctx:on_message(function(m)
    if m == "stop" then ctx:stop() end
    return m
  end)
  if main then main:send("ready") end
end

local function wait_down(c, path)
  return W.wait_until(function() return c:lookup_isolate(path) == nil end)
end

describe("paths", function()
  it('a "/dir/" spawn never takes a path a user holds by name', function()
    with_cluster({ workers = 2 }, function(c)
      local named = c:spawn_isolate(stoppable, nil, { path = "/w/1" })
      local auto = c:spawn_isolate(stoppable, nil, { path = "/w/" })
      assert.equal("/w/1", named.path)
      assert.not_equal("/w/1", auto.path)
      assert.equal(named, c:lookup_isolate("/w/1"))
      assert.equal(auto, c:lookup_isolate(auto.path))
      assert.equal(2, #c:lookup_isolates("/w/"))
      named:request("stop", W.TIMEOUT)
      auto:request("stop", W.TIMEOUT)
      assert.truthy(wait_down(c, "/w/1"))
      assert.truthy(wait_down(c, auto.path))
      -- free again, and the new one is found
      local again = c:spawn_isolate(stoppable, nil, { path = "/w/1" })
      assert.equal(again, c:lookup_isolate("/w/1"))
      again:request("stop", W.TIMEOUT)
    end)
  end)

  it("stays right through spawn/exit churn of named and numbered paths at one prefix", function()
    with_cluster({ workers = 2 }, function(c)
      for round = 1, 300 do
        local n = c:spawn_isolate(stoppable, nil, { path = "/churn/" .. round })
        local a = c:spawn_isolate(stoppable, nil, { path = "/churn/" })
        local b = c:spawn_isolate(stoppable, nil, { path = "/churn/" })
        assert.is_true(n.path ~= a.path and n.path ~= b.path and a.path ~= b.path)
        assert.equal(n, c:lookup_isolate(n.path))
        assert.equal(a, c:lookup_isolate(a.path))
        for _, r in ipairs({ n, a, b }) do r:request("stop", W.TIMEOUT) end
        for _, r in ipairs({ n, a, b }) do
          local p = r.path
          assert(wait_down(c, p), "path " .. p .. " still taken after its isolate stopped")
        end
      end
      -- every name is free and reusable afterwards
      for round = 1, 300, 37 do
        local r = c:spawn_isolate(stoppable, nil, { path = "/churn/" .. round })
        assert.equal(r, c:lookup_isolate("/churn/" .. round))
      end
      assert.equal(9, #c:lookup_isolates("/churn/"))
    end)
  end)
end)

describe("isolate up/down subscriptions", function()
  it("on_isolate_up{existing = true} after on_isolate_down loses no down event", function()
    -- A long time slice: the entry's busy wait is not preempted, so the down
    -- event is still unread when on_isolate_up subscribes.
    with_cluster({ workers = 2, time_slice = 30 }, function(c)
      local victim = c:spawn_isolate(stoppable, nil, { path = "/victim" })
      assert.equal("up?", victim:request("up?", W.TIMEOUT))
      local other = c:spawn_isolate(stoppable, nil, { path = "/other" })
      assert.equal("up?", other:request("up?", W.TIMEOUT))
      c:spawn_isolate(function(ctx)
        local main, v = ctx:property("main"), ctx:property("victim")
        ctx:on_isolate_down(function(ref, reason) main:send({ "down", ref.path or tostring(ref), reason }) end)
        v:send("stop")
        local t0 = ctx:now()
        while ctx:lookup_isolate("/victim") and ctx:now() - t0 < 20 do end
        local ups = {}
        ctx:on_isolate_up(function(ref) ups[#ups + 1] = ref.path; main:send({ "up", ref.path }) end,
          { existing = true })
      end, { main = c.main, victim = victim })
      local seen, victim_down = {}, nil
      W.receive_match(c, function(m)
        seen[#seen + 1] = m[1] .. " " .. tostring(m[2])
        if m[1] == "down" and m[2] == "/victim" then victim_down = m end
        return victim_down and m[1] == "up" or (victim_down and #seen >= 2)
      end)
      assert(victim_down, "the down event of /victim was lost; got: " .. table.concat(seen, ", "))
      assert.equal("normal", victim_down[3])
      other:request("stop", W.TIMEOUT)
      W.receive_match(c, function(m)
        seen[#seen + 1] = m[1] .. " " .. tostring(m[2])
        return m[1] == "down" and m[2] == "/other"
      end)
      local ups = 0
      for _, s in ipairs(seen) do if s == "up /other" then ups = ups + 1 end end
      assert.equal(1, ups, "/other must be replayed exactly once; got: " .. table.concat(seen, ", "))
      assert.equal("down /other", seen[#seen])
    end)
  end)
end)
