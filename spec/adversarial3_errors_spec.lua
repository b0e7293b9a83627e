-- Error values whose __tostring raises or returns no string. The runtime
-- writes every error as text for its traceback; when that failed, the error
-- raised at a requester was the __tostring failure ("'__tostring' must
-- return a string", "ts boom") instead of the handler's own error value,
-- which is a copyable table. Now the text falls back to naming the value's
-- type, and the requester gets the table.
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster = W.with_cluster

local function thrower(ctx)
  ctx:on_message(function(m)
    local mt = {}
    if m == "self" then mt.__tostring = function(t) return t end end
    if m == "raises" then mt.__tostring = function() error("ts boom") end end
    error(setmetatable({ code = 7 }, mt))
  end)
end

-- Spawns an isolate that sends the main state { path =, reason = } for
-- every isolate that goes down, and returns once it listens (its entry has
-- run when it answers a request).
local function watch_downs(c)
  local watcher = c:spawn_isolate(function(ctx)
    local main = ctx:property("main")
    ctx:on_isolate_down(function(ref, reason) main:send({ path = ref.path, reason = reason }) end)
    ctx:on_message(function() return "listening" end)
  end, { main = c.main })
  assert.equal("listening", watcher:request("ready?", W.TIMEOUT))
end

describe("a request handler's error with a bad __tostring", function()
  for _, case in ipairs({ "self", "raises" }) do
    it("reaches the requester as the error value it raised (__tostring " .. case .. ")", function()
      with_cluster({ workers = 1, logger = false }, function(c)
        local t = c:spawn_isolate(thrower)
        local ok, err = pcall(t.request, t, case, W.TIMEOUT)
        assert.is_false(ok)
        assert.is_table(err, tostring(err))
        assert.equal(7, err.code)
        -- and the isolate keeps running, as after any request error
        ok, err = pcall(t.request, t, case, W.TIMEOUT)
        assert.is_table(err)
      end)
    end)
  end

  it("in a plain message takes the isolate down with an \"error: \" reason naming the value's type", function()
    with_cluster({ workers = 1, logger = false }, function(c)
      watch_downs(c)
      local t = c:spawn_isolate(thrower, nil, { path = "/thrower" })
      t:send("self")
      local m = W.receive_match(c, function(msg) return type(msg) == "table" and msg.path == "/thrower" end)
      assert.is_table(m)
      assert.truthy(m.reason:find("^error: %(error object is a table value"), m.reason)
    end)
  end)
end)

describe("a down reason with a NUL byte", function()
  it("is kept whole, the NUL written \\0, rather than cut at it", function()
    with_cluster({ workers = 1, logger = false }, function(c)
      watch_downs(c)
      c:spawn_isolate(function(ctx)
        ctx:on_message(function() end)
        ctx:stop("before\0after")
      end, nil, { path = "/stopped" })
      c:spawn_isolate(function() error("raised\0after", 0) end, nil, { path = "/raised" })
      local reasons = {}
      W.receive_match(c, function(m)
        if type(m) == "table" and m.path then reasons[m.path] = m.reason end
        return reasons["/stopped"] and reasons["/raised"]
      end)
      assert.equal("before\\0after", reasons["/stopped"])
      assert.truthy(tostring(reasons["/raised"]):find("^error: raised\\0after"), tostring(reasons["/raised"]))
    end)
  end)
end)
