-- ic.set_logger called again on a running cluster: a logger function
-- replaces the one before it (which gets every line logged before the
-- switch and then ends, thread and all), and nil or false retires it too.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster = W.with_cluster

-- The number of threads of this process (Linux), or nil.
local function threads()
  local s = W.read_file("/proc/self/status")
  return tonumber(s:match("Threads:%s*(%d+)"))
end

local function crash(tag)
  return function() error(tag) end
end

describe("ic.set_logger on a running cluster", function()
  it("replaces a logger function by another one, as often as it is called", function()
    with_cluster({ workers = 2, logger = function(text, main) main:send({ 0, text }) end }, function(c)
      for i = 1, 5 do
        ic.set_logger(c, function(text, main) main:send({ i, text }) end)
      end
      c:spawn_isolate(crash("after five replacements"))
      local m = W.receive_match(c, function(msg)
        return type(msg) == "table" and tostring(msg[2]):find("after five replacements", 1, true)
      end)
      assert.is_table(m)
      assert.equal(5, m[1])
    end)
  end)

  it("lets the logger it replaces take every line logged before, then end it", function()
    local before = threads()
    if not before then return end -- no /proc
    with_cluster({ workers = 1 }, function(c)
      ic.set_logger(c, function(text, main) main:send({ "first", text }) end)
      c:spawn_isolate(crash("line for the first logger"))
      local m = W.receive_match(c, function(msg) return type(msg) == "table" end)
      assert.same("first", m and m[1])
      local with_one = threads()
      for i = 1, 20 do
        ic.set_logger(c, function(text, main) main:send({ i, text }) end)
      end
      -- every logger but the last has ended: no thread left behind per call
      assert.truthy(W.wait_until(function() return threads() <= with_one end),
        "threads: " .. tostring(threads()) .. ", with one logger: " .. tostring(with_one))
      ic.set_logger(c, false)
      assert.truthy(W.wait_until(function() return threads() < with_one end),
        "the last logger function's isolate still runs after set_logger(c, false)")
    end)
  end)
end)
