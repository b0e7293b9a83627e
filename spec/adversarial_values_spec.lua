-- SPEC §4 with unusual values, and the §2 events and reasons with unusual
-- arguments: what arrives is what was sent, bit for bit and shape for
-- shape; what cannot be copied is refused naming where it sits; stop
-- reasons and down reasons read as documented.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster, echo_entry, error_containing = W.with_cluster, W.echo_entry, W.error_containing

local function bits(x) return string.pack("<d", x) end

local function nest(n)
  local t = {}
  local cur = t
  for _ = 2, n do
    cur[1] = {}
    cur = cur[1]
  end
  return t
end

describe("values at the edges", function()
  it("keep NaN payloads and the sign of NaN, bit for bit", function()
    with_cluster({ workers = 1 }, function(c)
      local r = c:spawn_isolate(echo_entry)
      for _, raw in ipairs({ 0xfff8000000000001, 0x7ff0000000000001, 0x7ff8000000000000, 0x8000000000000000 }) do
        local x = string.unpack("<d", string.pack("<I8", raw))
        assert.equal(bits(x), bits(r:request(x, W.TIMEOUT)))
      end
    end)
  end)

  it("keep integer keys at the ends of the range, 0 and negatives, and sparse arrays", function()
    with_cluster({ workers = 1 }, function(c)
      local r = c:spawn_isolate(echo_entry)
      local b = r:request({ [0] = 1, [-1] = 2, [math.mininteger] = 3, [math.maxinteger] = 4, [1] = 5, [1000000] = 6 },
        W.TIMEOUT)
      assert.same({ 1, 2, 3, 4, 5, 6 }, { b[0], b[-1], b[math.mininteger], b[math.maxinteger], b[1], b[1000000] })
      local p = r:request(table.pack(1, nil, 3), W.TIMEOUT)
      assert.same({ 3, 1, nil, 3 }, { p.n, p[1], p[2], p[3] })
      local k = r:request({ ["a\0b"] = 1, [""] = 2, [1.5] = 3, [true] = 4, [false] = 5 }, W.TIMEOUT)
      assert.same({ 1, 2, 3, 4, 5 }, { k["a\0b"], k[""], k[1.5], k[true], k[false] })
    end)
  end)

  it("a table as a key stays the same table as the value it is also used as", function()
    with_cluster({ workers = 1 }, function(c)
      local r = c:spawn_isolate(echo_entry)
      local key = { name = "k" }
      local b = r:request({ [key] = key, list = { key } }, W.TIMEOUT)
      local k, v
      for kk, vv in pairs(b) do if type(kk) == "table" then k, v = kk, vv end end
      assert.is_true(rawequal(k, v))
      assert.is_true(rawequal(k, b.list[1]))
      assert.equal("k", k.name)
    end)
  end)

  it("ignore __pairs, __index and __len of the value sent: the raw contents are copied", function()
    with_cluster({ workers = 1 }, function(c)
      local r = c:spawn_isolate(echo_entry)
      local t = setmetatable({ 1, 2, x = 3 }, {
        __pairs = function() error("__pairs ran") end,
        __index = function() error("__index ran") end,
        __len = function() error("__len ran") end,
      })
      local b = r:request(t, W.TIMEOUT)
      assert.is_nil(getmetatable(b))
      assert.same({ 1, 2, x = 3 }, b)
    end)
  end)

  it("a message 200 tables deep arrives; 201 deep is refused at send, naming the limit", function()
    with_cluster({ workers = 1 }, function(c)
      local r = c:spawn_isolate(echo_entry)
      assert.equal("table", type(r:request(nest(200), W.TIMEOUT)))
      error_containing("nested deeper than 200 levels", r.send, r, nest(201))
      assert.is_true(r:send("still fine"))
    end)
  end)

  it("functions: varargs, recursion, stripped bytecode, and globals of the receiver", function()
    with_cluster({ workers = 1 }, function(c)
      local r = c:spawn_isolate(echo_entry)
      assert.equal(3, r:request(function(...) return select("#", ...) end, W.TIMEOUT)(1, nil, nil))
      local function fact(n) return n <= 1 and 1 or n * fact(n - 1) end
      assert.equal(3628800, r:request(fact, W.TIMEOUT)(10))
      local stripped = load(string.dump(function(a) return a + 1 end, true))
      assert.equal(2, r:request(stripped, W.TIMEOUT)(1))
    end)
  end)

  it("properties with cycles, refs, functions and 100,000 entries, read from both sides", function()
    with_cluster({ workers = 1 }, function(c)
      local other = c:spawn_isolate(echo_entry)
      local p = { ref = other, double = function(x) return x * 2 end, big = {} }
      p.self = p
      for i = 1, 100000 do p.big[i] = i end
      local s = c:spawn_isolate(function(ctx)
        ctx:on_message(function()
          local q = ctx:properties()
          return { q.self == q, q.ref == ctx:property("ref"), q.double(21), #q.big, q.ref:request("via", 5) }
        end)
      end, p)
      assert.same({ true, true, 42, 100000, "via" }, s:request(1, W.TIMEOUT))
      local q = s:properties()
      assert.is_true(rawequal(q, q.self))
      assert.equal(other, q.ref)
      assert.equal(10, s:property("double")(5))
      assert.is_nil(s:property("missing"))
      assert.is_nil(s:property(0 / 0))
    end)
  end)

  it("uncopyable values name their path in properties and entry upvalues too", function()
    with_cluster({ workers = 1 }, function(c)
      error_containing("cannot copy a userdata at properties.conn", c.spawn_isolate, c, echo_entry,
        { conn = io.stdout })
      local conn = io.stdout
      error_containing("cannot copy a userdata at entry<upvalue conn>", c.spawn_isolate, c,
        function() return conn end)
      error_containing("cannot copy a thread at properties.list[2]", c.spawn_isolate, c, echo_entry,
        { list = { 1, coroutine.create(print) } })
      assert.same({}, c:lookup_isolates("/"))
    end)
  end)

  it("ic.decode takes bytes only: a number is not read as its digits", function()
    error_containing("string expected, got number", ic.decode, 5)
    error_containing("string expected, got nil", ic.decode, nil)
    assert.equal(53, ic.decode("5")) -- the byte 0x35 is the fixint 53
  end)
end)

describe("reasons", function()
  -- A watcher that reports every down event (path, reason) to the main state.
  local function watch(c)
    local w = c:spawn_isolate(function(ctx)
      local main
      ctx:on_message(function(_, from)
        main = from
        return true
      end)
      ctx:on_isolate_down(function(ref, reason) main:send({ ref.path, reason }) end)
    end)
    assert.is_true(w:request("hello", W.TIMEOUT))
  end

  local function reason_of(c, path)
    local m = W.receive_match(c, function(m) return type(m) == "table" and m[1] == path end)
    return m and m[2]
  end

  it("context:stop(reason): nil and false are \"normal\", others are tostring'd verbatim", function()
    with_cluster({ workers = 1, logger = false }, function(c)
      watch(c)
      local cases = {
        { "/nil", "ctx:stop(nil)", "normal" },
        { "/false", "ctx:stop(false)", "normal" },
        { "/num", "ctx:stop(42)", "42" },
        { "/killed", "ctx:stop('killed')", "killed" },
        { "/twice", "ctx:stop('first'); ctx:stop('second')", "first" },
        { "/then_error", "ctx:stop('first'); error('after')", "first" },
        { "/in_coroutine", "coroutine.wrap(function() ctx:stop('co') end)()", "co" },
      }
      for _, case in ipairs(cases) do
        c:spawn_isolate(function(ctx)
          ctx:on_message(function() end)
          load(ctx:property("code"), "=stop", "t", setmetatable({ ctx = ctx }, { __index = _G }))()
        end, { code = case[2] }, { path = case[1] })
        assert.equal(case[3], reason_of(c, case[1]), case[1])
      end
    end)
  end)

  it("errors with non-string values and raising __tostring still give \"error: ...\"", function()
    with_cluster({ workers = 1, logger = false }, function(c)
      watch(c)
      c:spawn_isolate(function() error(nil) end, nil, { path = "/e_nil" })
      c:spawn_isolate(function() error({ code = 1 }) end, nil, { path = "/e_table" })
      c:spawn_isolate(function() error(setmetatable({}, { __tostring = function() error("boom") end })) end, nil,
        { path = "/e_tostring" })
      c:spawn_isolate("no.such.module.anywhere", nil, { path = "/e_module" })
      c:spawn_isolate("string", nil, { path = "/e_not_entry" })
      for _, p in ipairs({ "/e_nil", "/e_table", "/e_tostring", "/e_module", "/e_not_entry" }) do
        local reason = reason_of(c, p)
        assert.truthy(reason and reason:find("^error: "), p .. ": " .. tostring(reason))
      end
    end)
  end)

  it("a bad module name says which module and why", function()
    with_cluster({ workers = 1, logger = false }, function(c)
      watch(c)
      c:spawn_isolate("no.such.module.anywhere", nil, { path = "/m1" })
      assert.truthy(reason_of(c, "/m1"):find("module 'no.such.module.anywhere' not found", 1, true))
      c:spawn_isolate("string", nil, { path = "/m2" })
      assert.truthy(reason_of(c, "/m2"):find("module 'string' must return the entry function (it returned a table)",
        1, true))
    end)
  end)
end)

describe("on_shutdown handlers", function()
  it("get an error from a wait instead of being ended in the middle of it, and finish", function()
    local c = ic.single_node({ workers = 1, logger = false })
    local main = c.main
    c:spawn_isolate(function(ctx)
      ctx:on_message(function() end)
      ctx:on_shutdown(function()
        local report = {}
        for _, name in ipairs({ "sleep", "receive", "request" }) do
          local ok, err = pcall(function()
            if name == "sleep" then ctx:sleep(0.01)
            elseif name == "receive" then ctx:receive(0.01)
            else ctx:property("main"):request("x", 1) end
          end)
          report[name] = ok and "returned" or tostring(err)
        end
        ctx:property("main"):send(report)
      end)
      ctx:property("main"):send("up")
    end, { main = main })
    assert.equal("up", c:receive(W.TIMEOUT))
    assert.is_true(c:shutdown(W.TIMEOUT))
    local report = c:receive(0)
    assert.equal("table", type(report))
    for _, name in ipairs({ "sleep", "receive", "request" }) do
      assert.truthy(report[name]:find("cannot wait in an on_shutdown handler", 1, true), name .. ": " .. report[name])
    end
    c:close()
  end)
end)

describe("a request that cannot wait", function()
  it("sends nothing: inside a coroutine of the isolate's own it raises before the message leaves", function()
    with_cluster({ workers = 1 }, function(c)
      local main = c.main
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function()
          local ok, err = pcall(coroutine.wrap(function() return ctx:property("main"):request("leaked", 1) end))
          return { ok, tostring(err) }
        end)
      end, { main = main })
      local res = r:request("go", W.TIMEOUT)
      assert.is_false(res[1])
      assert.truthy(res[2]:find("not inside a coroutine of its own", 1, true), res[2])
      assert.same({}, W.drain(c, 0.2))
    end)
  end)
end)

describe("standard functions reached through io's file handles", function()
  it("copy as the receiver's own (io.stdout.write, f:lines, __tostring), both ways", function()
    with_cluster({ workers = 1 }, function(c)
      local r = c:spawn_isolate(echo_entry)
      local mt = getmetatable(io.stdout)
      local f = r:request({ io.stdout.write, io.stdout.lines, io.stdout.close, mt.__tostring }, W.TIMEOUT)
      assert.same({ true, true, true, true },
        { f[1] == io.stdout.write, f[2] == io.stdout.lines, f[3] == io.stdout.close, f[4] == mt.__tostring })
      -- an isolate that has not opened io yet gets them, and sends its own back
      local s = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) return { m == io.stderr.seek, io.stderr.flush } end)
      end)
      local back = s:request(io.stdout.seek, W.TIMEOUT)
      assert.is_true(back[1])
      assert.equal(io.stdout.flush, back[2])
    end)
  end)

  it("an unknown method name is a malformed message", function()
    for _, name in ipairs({ "FILE*.nope", "FILE*.", "FILE*.__index", "FILE*.__name" }) do
      local bytes = string.char(0xc7, #name, 4) .. name -- ext 8: CFUNC with the name
      error_containing("unknown function", ic.decode, bytes, { functions = true })
    end
  end)
end)

describe("waits where Lua cannot suspend", function()
  it("raise a clear error, and a request there sends nothing (finalizers, C callbacks)", function()
    with_cluster({ workers = 1 }, function(c)
      local main = c.main
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function()
          local main_ref = ctx:property("main")
          local from_gc
          setmetatable({}, { __gc = function() from_gc = select(2, pcall(main_ref.request, main_ref, "leaked", 1)) end })
          collectgarbage()
          collectgarbage()
          local _, in_sort = pcall(table.sort, { 3, 1, 2 }, function(a, b)
            ctx:sleep(0.01)
            return a < b
          end)
          local _, in_gsub = pcall(string.gsub, "ab", "%w", function() return ctx:receive(0.01) end)
          return { tostring(from_gc), tostring(in_sort), tostring(in_gsub) }
        end)
      end, { main = main })
      local res = r:request("go", W.TIMEOUT)
      for i = 1, 3 do
        assert.truthy(res[i]:find("cannot wait inside a finalizer (__gc) or a callback of a C function", 1, true), res[i])
      end
      assert.same({}, W.drain(c, 0.2))
      assert.equal("table", type(r:request("again", W.TIMEOUT))) -- still answering
    end)
  end)
end)

describe("a wait after context:stop", function()
  it("raises, so the handler runs to its end and its reply still goes out", function()
    with_cluster({ workers = 1 }, function(c)
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(_, from)
          ctx:stop("bye")
          local ok, err = pcall(ctx.sleep, ctx, 0.1)
          from:send({ ok, tostring(err) })
          return "replied"
        end)
      end)
      assert.equal("replied", r:request("go", W.TIMEOUT))
      local m = W.receive(c)
      assert.is_false(m[1])
      assert.truthy(m[2]:find("this isolate is stopping (context:stop was called)", 1, true), m[2])
      W.wait_until(function() return not r:send(1) end)
      assert.same({ false, "isolate down" }, { r:send(1) })
    end)
  end)
end)
