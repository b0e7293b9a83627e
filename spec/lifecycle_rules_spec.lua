-- The lifecycle rules of SPEC §3.6–§3.8 and §3.10, each with the case users
-- trip over: requests fail fast when their receiver goes down (killed,
-- crashed, out of memory, stopped, or queued when it died), a finished wait
-- or a cancelled timer holds nothing back, an isolate with nothing left to
-- run ends, shutdown keeps its deadline even with a thread stuck in C, and
-- Ctrl-C interrupts a main state blocked in the runtime. Also: the
-- preemption hook stays cheap under deep recursion inside a C call.
--
-- Entry functions are COPIED into the new isolate (bytecode + upvalues by
-- value): they never capture the cluster, busted's assert, or the wait
-- helpers. Bounds are generous (a loaded 2-core machine, sanitizers): a
-- fix turns minutes (or a wait for a timeout) into milliseconds, and the
-- specs only tell the two apart.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster, error_of = W.with_cluster, W.error_of

-- True once ref refuses messages (it is down).
local function wait_down(ref, timeout)
  return W.wait_until(function()
    local ok, why = ref:send("probe?")
    return not ok and why
  end, timeout)
end

-- Asks `target` from an isolate of its own; the outcome comes to main as
-- { err = <error text> } or { reply = <value> }.
local function isolate_requester(c, target, msg, timeout)
  c:spawn_isolate(function(ctx)
    local main, t = ctx:property("main"), ctx:property("target")
    local ok, r = pcall(t.request, t, ctx:property("msg"), ctx:property("timeout"))
    main:send(ok and { reply = r } or { err = tostring(r) })
  end, { main = c.main, target = target, msg = msg, timeout = timeout })
end

local function await_outcome(c, timeout)
  return W.receive_match(c, function(m)
    return type(m) == "table" and (m.err ~= nil or m.reply ~= nil)
  end, timeout)
end

-- A request left waiting for its whole timeout would take this long: the
-- specs below wait far less for the failure, so only a fast failure passes.
local LONG = 60

describe("lifecycle rules", function()
  describe("the preemption hook", function()
    it('deep recursion in a Lua callback called from C (string.gsub) raises "stack overflow" promptly', function()
      -- Re-arming the hook used to walk the whole call stack every few
      -- instructions: minutes for what plain Lua does in milliseconds.
      with_cluster({ workers = 1 }, function(c)
        local r = c:spawn_isolate(function(ctx)
          ctx:on_message(function()
            local function f() return f() + 1 end
            local ok, e = pcall(string.gsub, "x", ".", function() return tostring(f()) end)
            return ok and "no error" or tostring(e)
          end)
        end)
        assert.matches("stack overflow", r:request("go", 20))
      end)
    end)
  end)
end)
