-- supervisor.spawn given a spec that cannot work as written: children in a
-- list with holes (the ones after a hole were silently never started), two
-- children at one path (the supervisor went down starting the second), and
-- something other than a cluster or a context to spawn from.
local supervisor = require("isolate_cluster.supervisor")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster, error_containing = W.with_cluster, W.error_containing

local function child(ctx) ctx:on_message(function() return "here" end) end

describe("a supervisor spec", function()
  it("refuses a children list with holes instead of starting only part of it", function()
    with_cluster({ workers = 1 }, function(c)
      error_containing("supervisor spec: children must be a list", supervisor.spawn, c,
        { children = { [2] = { path = "/hole", entry = child } } })
      error_containing("supervisor spec: children must be a list", supervisor.spawn, c,
        { children = { { path = "/h1", entry = child }, nil, { path = "/h3", entry = child } } })
      error_containing("supervisor spec: children must be a list", supervisor.spawn, c,
        { children = { { path = "/h1", entry = child }, extra = { path = "/hx", entry = child } } })
    end)
  end)

  it("refuses two children at one path, naming both", function()
    with_cluster({ workers = 1 }, function(c)
      error_containing('supervisor spec: children[2].path "/dup" is also children[1]\'s', supervisor.spawn, c,
        { children = { { path = "/dup", entry = child }, { path = "/dup", entry = child } } })
    end)
  end)

  it("says what it needs when given no cluster or context", function()
    error_containing("supervisor.spawn: the first argument must be a cluster or an isolate's context, got nil",
      supervisor.spawn, nil, { children = {} })
    error_containing("supervisor.spawn: the first argument must be a cluster or an isolate's context, got number",
      supervisor.spawn, 5, { children = {} })
  end)
end)
