-- Libraries on first use. Every isolate opens `string` on first use,
-- whichever way it is first reached, as it does `coroutine` (with the
-- isolate's own resume, wrap and yield) and the rest; a lean isolate
-- (opts.lean = true) opens no library at start: its base library is opened
-- by the first read of a global that _G does not hold or the first write of
-- one. Each behaves as if it had been open from the start.
local ic = require("isolate_cluster")
local wait = require("support.wait")

local describe, it, before_each, after_each, assert, ipairs = describe, it, before_each, after_each, assert, ipairs
local _ENV = _G

describe("lean isolates", function()
  local c
  before_each(function() c = ic.single_node({ workers = 2 }) end)
  after_each(function() assert.is_true(c:shutdown()) end)

  -- Each probe runs first thing in a fresh lean isolate and reports whether
  -- `string` was open before it, and what it gave.
  local function probe(fn, opts)
    local r = c:spawn_isolate(function(ctx)
      local f = ctx:property("fn")
      ctx:on_message(function()
        local before = rawget(_G, "string") ~= nil
        local ok, v = pcall(f)
        return { before = before, ok = ok, value = v, after = rawget(_G, "string") ~= nil }
      end)
    end, { fn = fn }, opts or { lean = true })
    return r:request("go", 30)
  end

  for _, opts in ipairs({ { lean = true }, {} }) do
    local kind = opts.lean and " (lean)" or ""
    it("open string on the first read of the global" .. kind, function()
      local got = probe(function() return string.upper("abc") end, opts)
      assert.same({ before = false, ok = true, value = "ABC", after = true }, got)
    end)

    it("open string on the first string method call" .. kind, function()
      local got = probe(function() return ("ab"):rep(3) .. ("%d"):format(7) end, opts)
      assert.same({ before = false, ok = true, value = "ababab7", after = true }, got)
    end)

    it("open string through require, the same table as the global" .. kind, function()
      local got = probe(function() return require("string") == string and #("xyz") end, opts)
      assert.same({ before = false, ok = true, value = 3, after = true }, got)
    end)

    it("open string on the first arithmetic on a string, with its coercions" .. kind, function()
      -- Each operator first thing in an isolate of its own (each has its
      -- own stand-in metamethod until string opens).
      local ops = {
        { function() return "7" + 1 end, 8 }, { function() return "7" - "2" end, 5 },
        { function() return 2 * "7" end, 14 }, { function() return "7" % "2" end, 1 },
        { function() return "2" ^ 2 end, 4.0 }, { function() return "7" / "2" end, 3.5 },
        { function() return "7" // "2" end, 3 }, { function() local a = "7" return -a end, -7 },
        { function() return "0x10" + 0 end, 16 },
      }
      for i, op in ipairs(ops) do
        local got = probe(op[1], opts)
        assert.same({ before = false, ok = true, value = op[2], after = true }, got, "operator " .. i)
        assert.equal(math.type(op[2]), math.type(got.value), "operator " .. i)
      end
      -- the library's own error, at the caller's line, as when it was open
      local open = probe(function() return ("x"):rep(1) + 1 end, opts)
      local first = probe(function() return "x" + 1 end, opts)
      local other = probe(function() return 1 + setmetatable({}, { __add = function(a) return a end }) end, opts)
      assert.is_false(first.ok)
      assert.is_false(open.ok)
      assert.matches("lean_spec.lua:%d+: attempt to add a 'string' with a 'number'$", first.value)
      assert.equal(first.value:gsub(":%d+:", ""), open.value:gsub(":%d+:", ""))
      assert.same({ before = false, ok = true, value = 1, after = false }, other)
      local mt = probe(function() return "3" + setmetatable({}, { __add = function(a) return a .. "!" end }) end, opts)
      assert.same({ before = false, ok = true, value = "3!", after = true }, mt)
    end)

    it("see the string library as if open from the start, whatever is done to it first" .. kind, function()
      local checks = {
        { function() return getmetatable("").__index == string end, true },
        { function() getmetatable("").__index.trim = function(s) return s .. "." end; return ("x"):trim() end, "x." },
        { function()
            getmetatable("").__call = function(s) return s .. "!" end
            local _ = ("a"):upper()
            return ("a")()
          end, "a!" },
        { function() string = { mine = true }; local _ = ("a"):upper(); return string.mine end, true },
        { function() package.loaded.string = {}; return ("x"):upper() end, "X" },
        { function() local t = setmetatable({}, getmetatable("")); return t.upper == string.upper end, true },
        { function() local n = 0; for _ in pairs(string) do n = n + 1 end; return n end, 17 },
        -- (package.loaded names it once it is open, as every library opened on first use)
        { function() return require("string") == string and package.loaded.string == string end, true },
      }
      for i, check in ipairs(checks) do
        local got = probe(check[1], opts)
        assert.same({ ok = true, value = check[2] }, { ok = got.ok, value = got.value }, "check " .. i)
      end
    end)

    it("keep a base function set to nil first thing, and a string method replaced" .. kind, function()
      local r = c:spawn_isolate(function(ctx)
        print = nil -- the first write of a global: it stays nil when the base library opens
        ctx:on_message(function()
          string.upper = function() return "mine" end
          return { print == nil, type(pairs), ("x"):upper(), string.upper("y") }
        end)
      end, nil, opts)
      assert.same({ true, "function", "mine", "mine" }, r:request("go", 30))
    end)
  end

  it("open the base library on the first read of a global it does not hold", function()
    local r = c:spawn_isolate(function(ctx)
      ctx:on_message(function(m)
        if m == "idle" then return true end
        local seen = {}
        for k in pairs(_G) do seen[k] = true end
        return { _VERSION, require("_G") == _G, seen.print and seen.pairs and seen.tostring and seen._G,
          select("#", 1, 2), tostring(nil), ("x"):rep(2) }
      end)
    end, nil, { lean = true })
    -- Its Lua heap (stats' memory, as of the end of its last turn) grows by
    -- the base library once a handler reads a global.
    local function heap()
      for _, row in ipairs(c:stats({ refs = true }).rows) do
        if row.ref == r and row.memory > 0 then return row.memory end
      end
    end
    assert.is_true(r:request("idle", 30))
    local before = wait.wait_until(heap, 10)
    assert.same({ _VERSION, true, true, 2, "nil", "xx" }, r:request("use", 30))
    local grown = wait.wait_until(function() return heap() - before > 1000 end, 10)
    assert.is_true(grown, ("%d bytes more"):format(heap() - before))
  end)

  it("keep the globals they set before the base library opened", function()
    local r = c:spawn_isolate(function(ctx)
      tostring = function() return "mine" end -- luaopen_base would replace it
      x = 5
      ctx:on_message(function()
        return { tostring(1), x, type(print), rawget(_G, "tostring") ~= rawget(_G, "print") }
      end)
    end, nil, { lean = true })
    assert.same({ "mine", 5, "function", true }, r:request("go", 30))
  end)

  it("boot from a module name (require opens the base library, then package)", function()
    local r = c:spawn_isolate("support.echo_isolate", { prefix = "lean: " }, { lean = true })
    assert.equal("lean: 7", r:request(7, 30))
  end)

  it("copy base functions to and from them before the base library opened", function()
    local r = c:spawn_isolate(function(ctx)
      ctx:on_message(function(m) return m end)
    end, nil, { lean = true })
    assert.equal(print, r:request(print, 30))
    local r2 = c:spawn_isolate(function(ctx)
      local keep = { pairs, ("").rep }
      ctx:on_message(function() return keep end)
    end, nil, { lean = true })
    assert.same({ pairs, string.rep }, r2:request("go", 30))
  end)

  it("have the other libraries on first use as every isolate", function()
    local got = probe(function() return math.max(1, 5) + #table.concat({ "a", "b" }) end)
    assert.is_true(got.ok)
    assert.equal(7, got.value)
  end)

  it("are not what an isolate without the option is: it has its base library from the start", function()
    -- Lua heap bytes (stats' memory, as of the end of the last turn) of an
    -- idle isolate whose handler reads no global.
    local function idle_heap(opts)
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function() return true end)
      end, nil, opts)
      assert.is_true(r:request("go", 30))
      return wait.wait_until(function()
        for _, row in ipairs(c:stats({ refs = true }).rows) do
          if row.ref == r and row.memory > 0 then return row.memory end
        end
      end, 10)
    end
    local lean = idle_heap({ lean = true })
    assert.is_true(idle_heap({}) - lean > 1000)
    assert.is_true(idle_heap({ lean = false }) - lean > 1000)
  end)

  for _, opts in ipairs({ { lean = true }, {} }) do
    it("open coroutine on first use, with the isolate's own resume, wrap and yield"
      .. (opts.lean and " (lean)" or ""), function()
      local got = probe(function()
        local before = rawget(_G, "coroutine") == nil
        local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
        local co = coroutine.create(function(a) local b = coroutine.yield(a + 1) return b * 2 end)
        local _, y = coroutine.resume(co, 1)
        local _, r = coroutine.resume(co, 5)
        return { before = before, gen = gen() + gen() + gen(), y = y, r = r,
          same = require("coroutine") == coroutine and rawget(_G, "coroutine") == coroutine,
          dead = select(2, coroutine.resume(co)) }
      end, opts)
      assert.is_true(got.ok, tostring(got.value))
      assert.same({ before = true, gen = 6, y = 2, r = 10, same = true, dead = "cannot resume dead coroutine" },
        got.value)
    end)
  end

  it("require a library not opened yet, before and after package itself opens", function()
    for _, opts in ipairs({ { lean = true }, {} }) do
      local got = probe(function()
        local before = rawget(_G, "package") == nil and rawget(_G, "utf8") == nil
        local u = require("utf8")
        local m = require("math")
        return { before = before, utf8 = u == utf8 and u.char(72) == "H", math = m == math and m.max(1, 2) == 2,
          loaded = package.loaded.table == nil and require("table") == table }
      end, opts)
      assert.is_true(got.ok, tostring(got.value))
      assert.same({ before = true, utf8 = true, math = true, loaded = true }, got.value)
    end
  end)

  it("refuse a handler's own coroutine.yield, and a resume of a non-coroutine", function()
    local got = probe(function()
      local ok1, e1 = pcall(coroutine.yield, 1)
      local ok2, e2 = pcall(coroutine.resume, 42)
      return { ok1, e1, ok2, e2 }
    end)
    assert.is_true(got.ok)
    assert.is_false(got.value[1])
    assert.matches("coroutine.yield cannot suspend a handler", got.value[2], 1, true)
    assert.is_false(got.value[3])
    assert.matches("coroutine expected", got.value[4], 1, true)
  end)

  it("copy standard string functions once string is open", function()
    local r = c:spawn_isolate(function(ctx)
      ctx:on_message(function() return string.rep end)
    end, nil, { lean = true })
    local rep = r:request("go", 30)
    assert.equal(string.rep, rep)
  end)

  it("can be spawned from an isolate, and the option is still checked by name", function()
    local r = c:spawn_isolate(function(ctx)
      ctx:on_message(function()
        local child = ctx:spawn_isolate(function(cctx)
          cctx:on_message(function() return rawget(_G, "string") == nil end)
        end, nil, { lean = true })
        return child:request("go", 30)
      end)
    end)
    assert.is_true(r:request("go", 30))
    local ok, err = pcall(c.spawn_isolate, c, function() end, nil, { lean = true, leaner = true })
    assert.is_false(ok)
    assert.matches('unknown option "leaner"', err, 1, true)
    ok, err = pcall(c.spawn_isolate, c, function() end, nil, { lean = 1 })
    assert.is_false(ok)
    assert.matches("opts.lean must be a boolean, got number", err, 1, true)
  end)
end)
