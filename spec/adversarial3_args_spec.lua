-- Arguments that used to pass a check they should not have, or fail it with
-- a message that did not say which call or what it got: module names with
-- NUL bytes or none at all, a path of the wrong type, NaN in integer
-- options, control characters in a refused path, and the module's own
-- set-up calls (single_node, set_logger).
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster, error_containing, error_of = W.with_cluster, W.error_containing, W.error_of

-- An isolate that runs the Lua source it is sent (a request) with `ctx`
-- in scope, and answers the error it raised (or "no error").
local function probe_entry(ctx)
  ctx:on_message(function(code)
    local env = setmetatable({ ctx = ctx }, { __index = _G })
    local ok, err = pcall(load(code, "=probe", "t", env))
    return ok and "no error" or tostring(err)
  end)
end

describe("spawn_isolate with a module name", function()
  it("refuses a NUL byte in it rather than requiring the part before it", function()
    with_cluster({ workers = 1, logger = false }, function(c)
      local err = error_containing('spawn_isolate: invalid module name "a\\0b"', c.spawn_isolate, c, "a\0b")
      assert.truthy(err:find("NUL", 1, true))
      local p = c:spawn_isolate(probe_entry)
      assert.truthy(p:request('return ctx:spawn_isolate("a\\0b")', W.TIMEOUT)
        :find('spawn_isolate: invalid module name "a\\0b"', 1, true))
    end)
  end)

  it("refuses an empty one at once", function()
    with_cluster({ workers = 1, logger = false }, function(c)
      error_containing("spawn_isolate: the module name is empty", c.spawn_isolate, c, "")
      local p = c:spawn_isolate(probe_entry)
      assert.truthy(p:request('return ctx:spawn_isolate("")', W.TIMEOUT)
        :find("spawn_isolate: the module name is empty", 1, true))
    end)
  end)
end)

describe("spawn_isolate options", function()
  it("a path that is not a string names the call and the type it got", function()
    with_cluster({ workers = 1 }, function(c)
      local f = function() end
      error_containing("spawn_isolate: opts.path must be a string, got number", c.spawn_isolate, c, f, nil,
        { path = 1 })
      error_containing("spawn_isolate: opts.path must be a string, got boolean", c.spawn_isolate, c, f, nil,
        { path = true })
    end)
  end)

  it("NaN in an integer option is written NaN, as in times", function()
    with_cluster({ workers = 1 }, function(c)
      local f = function() end
      error_containing("spawn_isolate: opts.mailbox must be an integer >= 1, got NaN", c.spawn_isolate, c, f,
        nil, { mailbox = 0 / 0 })
      error_containing("spawn_isolate: opts.memory_limit must be an integer >= 0, got NaN", c.spawn_isolate, c,
        f, nil, { memory_limit = -(0 / 0) })
    end)
    error_containing("single_node: opts.workers must be an integer from 1 to 1024, got NaN", ic.single_node,
      { workers = 0 / 0 })
  end)

  it("a refused path shows its control characters escaped, not raw", function()
    with_cluster({ workers = 1 }, function(c)
      local f = function() end
      local err = error_of(c.spawn_isolate, c, f, nil, { path = "/a\tb" })
      assert.truthy(err:find('invalid path "/a\\tb"', 1, true), err)
      err = error_of(c.spawn_isolate, c, f, nil, { path = "/a\127" })
      assert.truthy(err:find('invalid path "/a\\127"', 1, true), err)
      assert.falsy(err:find("[%c]"), err)
    end)
  end)
end)

describe("the module's set-up calls", function()
  it("name themselves and the type they got when given a wrong one", function()
    error_containing("single_node: opts must be a table, got string", ic.single_node, "x")
    error_containing("single_node: opts.logger must be a function, false or nil, got number", ic.single_node,
      { logger = 5 })
    with_cluster({ workers = 1 }, function(c)
      error_containing("set_logger: the logger must be a function, false or nil, got string", ic.set_logger, c,
        "stderr")
      error_containing("set_logger: bad argument #1 (a cluster expected, got nil)", ic.set_logger, nil,
        function() end)
    end)
  end)
end)

describe("flags in the module's other options tables", function()
  it("are booleans: a string there raises instead of counting as true", function()
    local bytes = ic.encode(function() return 1 end)
    error_containing("decode: opts.functions must be a boolean, got string", ic.decode, bytes,
      { functions = "false" })
    assert.is_function(ic.decode(bytes, { functions = true }))
    with_cluster({ workers = 1 }, function(c)
      error_containing("stats: opts.rows must be a boolean, got string", c.stats, c, { rows = "no" })
      error_containing("stats: opts.refs must be a boolean, got number", c.stats, c, { refs = 0 })
      assert.is_nil(c:stats({ rows = false }).rows)
      assert.is_table(c:stats({ rows = true, refs = false }).rows)
    end)
  end)
end)
