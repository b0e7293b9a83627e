-- Values (SPEC §4): every kind of copyable value survives a trip through an
-- isolate exactly; what cannot be copied is refused with the path inside the
-- value, before anything is queued.
local ic = require("isolate_cluster")

local describe, it, before_each, after_each, assert = describe, it, before_each, after_each, assert
local _ENV = _G

-- An isolate that answers every request with the value it received.
local function echo_entry(ctx)
  ctx:on_message(function(v) return v end)
end

local function is_neg_zero(x)
  return x == 0 and 1 / x == -math.huge
end

describe("values", function()
  local c, echo

  before_each(function()
    c = ic.single_node({ workers = 2 })
    echo = c:spawn_isolate(echo_entry, nil, { path = "/echo" })
  end)

  after_each(function()
    assert.is_true(c:shutdown())
  end)

  local function trip(v)
    return echo:request(v, 30)
  end

  -- Scalars and short strings take a shorter way through send and take than
  -- other values: both ways must give exactly what the encoder and decoder
  -- give, at every width boundary.
  describe("plain sends of scalars and short strings", function()
    local function bounce(v)
      local back = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m, sender) sender:send(m) end)
      end)
      assert.is_true(back:send(v))
      local got = c:receive(30)
      back:kill()
      return got
    end

    it("keep value and number subtype at every encoding width", function()
      local values = { 0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296,
        math.maxinteger, -1, -32, -33, -128, -129, -32768, -32769, math.mininteger,
        0.0, -0.0, 1.0, 0.5, -2.5, math.huge, -math.huge, 2^53, 1e308 }
      for _, v in ipairs(values) do
        local got = bounce(v)
        assert.equal(math.type(v), math.type(got), tostring(v))
        assert.equal(v, got)
        if v == 0 and math.type(v) == "float" then assert.equal(1 / v, 1 / got) end
      end
      local nan = bounce(0 / 0)
      assert.is_true(nan ~= nan)
    end)

    it("arrive with their own sender, whether it changes or repeats", function()
      local collector = c:spawn_isolate(function(ctx)
        local seen = {}
        ctx:on_message(function(m, sender)
          if m == "report" then return seen end
          seen[#seen + 1] = { m, sender }
        end)
      end)
      -- Short-lived senders, one after another (each gone before the next
      -- starts), then one sending twice after another one.
      local expected = {}
      for i = 1, 20 do
        local s = c:spawn_isolate(function(ctx)
          ctx:on_message(function(m) ctx:property("to"):send(m) end)
        end, { to = collector })
        assert.is_true(s:request(i, 30) == nil)
        expected[#expected + 1] = { i, s }
        if i % 3 ~= 0 then s:kill() end
      end
      local seen = collector:request("report", 30)
      assert.equal(#expected, #seen)
      for k, e in ipairs(expected) do
        assert.equal(e[1], seen[k][1])
        assert.is_true(e[2] == seen[k][2], "message " .. k .. " came with another sender")
      end
    end)

    it("keep booleans and strings up to and past 31 bytes, UTF-8 or not", function()
      assert.is_true(bounce(true))
      assert.is_false(bounce(false))
      for _, s in ipairs({ "", "x", ("a"):rep(31), ("b"):rep(32), "caf\u{e9}", "\xff\xfe",
        ("\0"):rep(31), ("z"):rep(300) }) do
        assert.equal(s, bounce(s))
      end
    end)
  end)

  describe("round trips", function()
    it("nil and booleans", function()
      assert.is_nil(trip(nil))
      assert.is_true(trip(true))
      assert.is_false(trip(false))
    end)

    it("integers, all 64 bits, staying integers", function()
      for _, v in ipairs({ 0, 1, -1, 127, 128, 255, 256, -32, -33, -128, -129, 65535, 65536,
        2147483647, -2147483648, 4294967295, 4294967296, math.maxinteger, math.mininteger }) do
        local r = trip(v)
        assert.equal(v, r)
        assert.equal("integer", math.type(r))
      end
    end)

    it("floats, bit-exact, staying floats", function()
      for _, v in ipairs({ 0.5, -1.25, 1.0, 2.0 ^ 60, 1e308, 5e-324, math.pi, -math.huge, math.huge }) do
        local r = trip(v)
        assert.equal(v, r)
        assert.equal("float", math.type(r))
      end
      assert.is_true(is_neg_zero(trip(-0.0)))
      local nan = trip(0 / 0)
      assert.is_true(nan ~= nan)
      assert.equal(string.pack("<d", 0.1), string.pack("<d", trip(0.1)))
    end)

    it("strings, binary-safe, including a 1 MiB string of every byte value", function()
      assert.equal("", trip(""))
      assert.equal("h\195\169llo", trip("h\195\169llo"))
      assert.equal("a\0b\255", trip("a\0b\255"))
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local mib = string.rep(table.concat(bytes), 4096)
      assert.equal(1024 * 1024, #mib)
      assert.is_true(mib == trip(mib))
    end)

    it("nested tables, holes, mixed keys", function()
      local v = { 1, "two", { 3, { 4 } }, x = { y = { z = true } }, [10] = "ten", [1.5] = "f",
        [true] = "t", [-1] = "neg" }
      assert.same(v, trip(v))
      assert.same({ 1, nil, 3 }, trip({ 1, nil, 3 }))
      assert.same({}, trip({}))
    end)

    it("a 100,000-entry table", function()
      local t = {}
      for i = 1, 100000 do t[i] = i * 2 end
      local r = trip(t)
      assert.equal(100000, #r)
      assert.equal(200000, r[100000])
      local h = {}
      for i = 1, 100000 do h["k" .. i] = i end
      local rh = trip(h)
      assert.equal(100000, rh.k100000)
    end)

    it("keeps shared sub-tables shared", function()
      local shared = { n = 1 }
      local r = trip({ a = shared, b = shared, list = { shared } })
      assert.is_true(rawequal(r.a, r.b))
      assert.is_true(rawequal(r.a, r.list[1]))
    end)

    it("keeps cycles", function()
      local t = { name = "t" }
      t.self = t
      t.child = { parent = t }
      local r = trip(t)
      assert.is_true(rawequal(r, r.self))
      assert.is_true(rawequal(r, r.child.parent))
      assert.equal("t", r.self.child.parent.name)
    end)

    -- The root is remembered without the table of seen values until a
    -- second table or function comes: every order of root, nested and
    -- repeated values must still come back with its identities.
    it("keeps identities through the root, whichever comes first", function()
      local t = {}
      t[1] = t -- the root is the first nested value
      t[2] = { t, t }
      local r = trip(t)
      assert.is_true(rawequal(r, r[1]))
      assert.is_true(rawequal(r, r[2][1]) and rawequal(r, r[2][2]))
      local inner = {}
      local u = { inner, inner, { inner }, u }
      u[4] = u
      local ru = trip(u)
      assert.is_true(rawequal(ru[1], ru[2]) and rawequal(ru[1], ru[3][1]))
      assert.is_true(rawequal(ru, ru[4]))
      assert.is_false(rawequal(ru, ru[1]))
      local flat = trip({ 7, "x" })
      assert.same({ 7, "x" }, flat)
      local function f() return f end
      local rf = trip(f)
      assert.is_true(rawequal(rf, rf()))
      local g
      local holder = { fn = function() return g end }
      g = holder
      local rg = trip(holder)
      assert.is_true(rawequal(rg, rg.fn()))
    end)

    -- A small table of scalars is encoded by a shorter way than tables in
    -- general: its bytes must be those the general way writes, which a
    -- table nested one level down always takes.
    it("small tables of scalars encode to the bytes of the general encoder", function()
      local function general(t) return ic.encode({ t }):sub(2) end
      local hashed = {}
      hashed[2] = "b"
      hashed[1] = "a"
      local shapes = {
        { 1 }, { 7, "x" }, { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
        { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
        { 1, nil, 3 }, { 1, 2, x = 3 }, { [1] = 1, [3] = 3 }, { [0] = 0, 1 }, hashed,
        { 0.5, -0.0, 1 / 0, math.maxinteger, math.mininteger, -1, 255, 65536, 2 ^ 53 },
        { true, false, "" }, { ("a"):rep(31), ("b"):rep(32) }, { "\xff" }, { "caf\u{e9}" },
        { {} }, { function() end }, { [1.5] = 1 }, _G, setmetatable({ 1, 2 }, { __index = function() return 0 end }),
      }
      for i, t in ipairs(shapes) do
        assert.equal(general(t), ic.encode(t), "shape " .. i)
      end
      for i = 1, 3 do -- and they come back as they went
        assert.same(shapes[i], trip(shapes[i]))
      end
      assert.same({ 7, "x" }, ic.decode(ic.encode({ 7, "x" })))
    end)

    -- Likewise, a message that is a small array of scalars is decoded by a
    -- shorter way: it must give what the general decoder gives for the same
    -- array one level down, and leave malformed bytes to it.
    it("small arrays of scalars decode as the general decoder decodes them", function()
      local function general(b)
        return ic.decode(string.char(0x91) .. b)[1]
      end
      local good = {
        "\x91\x05", "\x92\x07\xa1x", "\x93\xff\xe0\x7f", "\x92\xcc\xff\xcd\xff\xff",
        "\x91\xce\xff\xff\xff\xff", "\x92\xcb\x3f\xe0\x00\x00\x00\x00\x00\x00\xc3",
        "\x92\xc2\xa0", "\x91\xbf" .. ("z"):rep(31), "\x92\xc0\x01", "\x91\x91\x01",
        "\x9f" .. ("\x01"):rep(15), "\x91\xd0\x80", "\x91\xcf\x00\x00\x00\x00\x00\x00\x00\x01",
      }
      for i, b in ipairs(good) do
        assert.same(general(b), ic.decode(b), "message " .. i)
        assert.equal(math.type(general(b)[1]), math.type(ic.decode(b)[1]), "message " .. i)
      end
      local bad = { "\x92\x01", "\x91\xa3ab", "\x91\xcd\x01", "\x91\x01\x02", "\x91\xcb\x00" }
      for i, b in ipairs(bad) do
        assert.is_false(pcall(ic.decode, b), "bad message " .. i)
      end
    end)

    it("does not copy metatables", function()
      local r = trip(setmetatable({ 1 }, { __index = function() return "meta" end }))
      assert.is_nil(getmetatable(r))
      assert.is_nil(r.missing)
    end)

    it("refs stay refs", function()
      local r = trip({ who = echo, main = c.main })
      assert.equal(echo, r.who)
      assert.equal(c.main, r.main)
      assert.equal("/echo", r.who.path)
    end)

    it("a function with upvalues runs in the receiver", function()
      local base, insert, fmt = 40, table.insert, string.format
      local function f(x)
        local t = {}
        insert(t, x)
        return fmt("%d", base + t[1])
      end
      local runner = c:spawn_isolate(function(ctx)
        ctx:on_message(function(fn) return fn(2) end)
      end)
      assert.equal("42", runner:request(f))
    end)

    it("a copied function uses the receiver's globals", function()
      local g = c:spawn_isolate(function(ctx)
        WHERE = "receiver" -- a global of the receiving isolate
        ctx:on_message(function(fn) return fn() end)
      end)
      WHERE = "sender"
      assert.equal("receiver", g:request(function() return WHERE end))
      WHERE = nil
    end)

    it("functions that share tables keep them shared", function()
      local state = { n = 0 }
      local function inc() state.n = state.n + 1 return state.n end
      local function get() return state.n end
      local runner = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) m.inc(); m.inc(); return m.get() end)
      end)
      assert.equal(2, runner:request({ inc = inc, get = get }))
      assert.equal(0, state.n) -- the sender's copy is untouched
    end)

    it("standard library functions as values", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) return m.floor(2.5) + #m.rep("a", 3) end)
      end)
      assert.equal(5, r:request({ floor = math.floor, rep = string.rep }))
    end)

    it("every standard library's functions reach an isolate that has not opened that library yet", function()
      -- isolates open package (require), table, io, os, math, utf8 and
      -- debug on first use; a function from each still resolves by name
      local fns = { require, table.insert, io.write, os.time, math.floor, utf8.char, debug.traceback,
        print, string.rep, coroutine.create }
      for i, f in ipairs(fns) do
        local fresh = c:spawn_isolate(function(ctx)
          ctx:on_message(function(m) return m end)
        end)
        assert.equal(f, fresh:request(f, 30), "function " .. i)
      end
      -- and as an upvalue of an entry function (local require = require)
      local req = require
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function() return req == require and type(req) end)
      end)
      assert.equal("function", r:request("which", 30))
      -- a name the receiver has replaced resolves to its own function
      -- (isolates wrap coroutine.wrap, resume and yield)
      local user = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) return m.wrap(function() return 7 end)() + select(2, m.resume(coroutine.create(function() return 1 end))) end)
      end)
      assert.equal(8, user:request({ wrap = coroutine.wrap, resume = coroutine.resume }, 30))
    end)
  end)

  describe("refusals", function()
    it("names the path of a userdata", function()
      local ok, err = pcall(echo.send, echo, { conn = io.stdout })
      assert.is_false(ok)
      assert.matches("cannot copy a userdata at msg.conn", err, 1, true)
    end)

    it("names the path of a coroutine inside an array", function()
      local ok, err = pcall(echo.send, echo, { 1, 2, { co = coroutine.create(print) } })
      assert.is_false(ok)
      assert.matches("cannot copy a thread at msg[3].co", err, 1, true)
    end)

    it("refuses C functions that are not from the standard library", function()
      local lpeg_like = require("isolate_cluster.core").new -- a C function of this module
      local ok, err = pcall(echo.send, echo, { f = lpeg_like })
      assert.is_false(ok)
      assert.matches("msg.f", err, 1, true)
    end)

    it("names upvalues", function()
      local conn = io.stderr
      local ok, err = pcall(echo.send, echo, function() return conn end)
      assert.is_false(ok)
      assert.matches("conn", err, 1, true)
    end)

    it("refuses properties and entries at spawn, registering nothing", function()
      local ok, err = pcall(c.spawn_isolate, c, echo_entry, { file = io.stdout }, { path = "/p" })
      assert.is_false(ok)
      assert.matches("properties.file", err, 1, true)
      assert.is_nil(c:lookup_isolate("/p"))
    end)

    it("raises a clear error for 100,000 levels of nesting, and the sender goes on", function()
      local deep = {}
      local t = deep
      for _ = 1, 100000 do
        t[1] = {}
        t = t[1]
      end
      local ok, err = pcall(echo.send, echo, deep)
      assert.is_false(ok)
      assert.matches("nested deeper than", err, 1, true)
      assert.equal("still fine", trip("still fine"))
    end)

    it("queues nothing when a value is refused", function()
      local counter = c:spawn_isolate(function(ctx)
        local n = 0
        ctx:on_message(function(m) if m == "count" then return n end n = n + 1 end)
      end)
      for _ = 1, 10 do pcall(counter.send, counter, { bad = io.stdout }) end
      assert.equal(0, counter:request("count"))
    end)
  end)

  describe("one message to many", function()
    it("send_all delivers one encoding to every ref and reports refusals", function()
      local refs = {}
      for i = 1, 5 do
        refs[i] = c:spawn_isolate(function(ctx)
          ctx:on_message(function(m, sender) sender:send(m.x + ctx:property("k")) end)
        end, { k = i })
      end
      assert.is_true(refs[3]:kill())
      local sent, failures
      for _ = 1, 200 do -- until the kill has landed
        if not refs[3]:send("probe") then break end
        c:receive(0.01)
      end
      sent, failures = c:send_all(refs, { x = 100 })
      assert.equal(4, sent)
      assert.same({ [3] = "isolate down" }, failures)
      local got = {}
      for _ = 1, 4 do got[#got + 1] = c:receive(10) end
      table.sort(got)
      assert.same({ 101, 102, 104, 105 }, got)
    end)
  end)
end)

describe("ic.encode / ic.decode", function()
  it("are the wire format of messages", function()
    local v = { 1, "two", { x = 3.5 }, [true] = false }
    assert.same(v, ic.decode(ic.encode(v)))
  end)

  it("refuse malformed input with a clear error and never crash", function()
    local samples = { "", "\xc1", "\x92\x01", "\xdb\xff\xff\xff\xff", "\x81\xc0\x01", ic.encode({ 1, 2, 3 }) .. "x" }
    for _, s in ipairs(samples) do
      local ok, err = pcall(ic.decode, s)
      assert.is_false(ok)
      assert.matches("malformed message", err, 1, true)
    end
    -- every prefix of a valid encoding, and random bytes
    local good = ic.encode({ a = { 1, 2.5, "x" }, b = true, c = string.rep("z", 100) })
    for i = 0, #good - 1 do
      assert.is_false((pcall(ic.decode, good:sub(1, i))))
    end
    local rnd = 12345
    for _ = 1, 2000 do
      local bytes = {}
      for k = 1, 1 + rnd % 40 do
        rnd = (rnd * 1103515245 + 12345) % 2147483648
        bytes[k] = string.char(rnd % 256)
      end
      pcall(ic.decode, table.concat(bytes)) -- must not crash
    end
  end)

  describe("large maps, message after message", function()
    -- A map in the given key order (keys as MessagePack str, or bin when
    -- given as { bin = "..." }), each key's value its position.
    local function map_bytes(keys)
      local out = { "\xde", string.pack(">I2", #keys) }
      for i, k in ipairs(keys) do
        local bytes, bin = k, false
        if type(k) == "table" then bytes, bin = k.bin, true end
        if type(bytes) == "number" then
          out[#out + 1] = string.pack(">B i8", 0xd3, bytes)
        elseif bin then
          out[#out + 1] = string.pack(">B s1", 0xc4, bytes)
        elseif #bytes < 32 then
          out[#out + 1] = string.char(0xa0 + #bytes) .. bytes
        else
          out[#out + 1] = string.pack(">B s1", 0xd9, bytes)
        end
        out[#out + 1] = string.pack(">B I2", 0xcd, i)
      end
      return table.concat(out)
    end

    local function check(keys)
      local t = ic.decode(map_bytes(keys))
      local n = 0
      for _ in pairs(t) do n = n + 1 end
      assert.equal(#keys, n)
      for i, k in ipairs(keys) do
        if type(k) == "table" then k = k.bin end
        assert.equal(i, t[k], "key " .. i)
      end
    end

    local function keys_of(n, f)
      local keys = {}
      for i = 1, n do keys[i] = f(i) end
      return keys
    end

    it("decode each key exactly when keys repeat, change, or change length at a position", function()
      local base = keys_of(200, function(i) return "k" .. i end)
      check(base)
      check(base)
      -- same lengths, other bytes; then every other key replaced
      check(keys_of(200, function(i) return "j" .. i end))
      check(keys_of(200, function(i) return i % 2 == 0 and "k" .. i or "x" .. i end))
      -- a key that extends, or is cut from, the one remembered at its position
      check(keys_of(200, function(i) return "k" .. i .. "\0" end))
      check(keys_of(200, function(i) return ("k" .. i):sub(1, -2) .. "#" .. i end))
      check(base)
    end)

    it("mix keys the cache keeps with others: numbers, binary, long and empty strings", function()
      local long = string.rep("L", 41)
      local keys = keys_of(300, function(i)
        local m = i % 5
        if m == 0 then return i * 1000 end
        if m == 1 then return { bin = "\xff\xfe" .. i } end
        if m == 2 then return long .. i end
        return "s" .. i
      end)
      keys[7] = ""
      check(keys)
      check(keys)
      -- the same positions now hold short strings, and back again
      check(keys_of(300, function(i) return "s" .. i end))
      check(keys)
    end)

    it("decode maps larger than the cache, nested large maps and small maps", function()
      local big = {}
      for i = 1, 20000 do big["key" .. i] = i end
      local r = ic.decode(ic.encode(big))
      assert.same(big, r)
      assert.same(big, ic.decode(ic.encode(big)))
      local a, b = {}, {}
      for i = 1, 100 do a["a" .. i] = i; b["b" .. i] = -i end
      local nested = { a = a, b = b, list = { a, b } }
      for _ = 1, 3 do
        local got = ic.decode(ic.encode(nested))
        assert.same(nested, got)
        assert.equal(got.a, got.list[1])
      end
      for _, n in ipairs({ 63, 64, 65 }) do
        check(keys_of(n, function(i) return "n" .. i end))
        check(keys_of(n, function(i) return "m" .. i end))
      end
    end)

    it("survive a full collection between messages", function()
      local keys = keys_of(500, function(i) return "gc" .. i end)
      check(keys)
      collectgarbage()
      collectgarbage()
      check(keys)
    end)

    it("decode exactly in an isolate, message after message, with or without a memory limit", function()
      local c = ic.single_node({ workers = 2 })
      -- under a memory limit the isolate keeps no key cache (docs/design.md)
      for _, opts in ipairs({ {}, { memory_limit = 64 * 1024 * 1024 } }) do
        local echo = c:spawn_isolate(function(ctx)
          ctx:on_message(function(v)
            if v == "cache?" then return debug.getregistry()["isolate_cluster.codec.keys"] ~= nil end
            return v
          end)
        end, nil, opts)
        for round = 1, 3 do
          local t = {}
          for i = 1, 1000 do t[(round == 2 and "r" or "k") .. i] = i + round end
          assert.same(t, echo:request(t, 30))
        end
        assert.equal(opts.memory_limit == nil, echo:request("cache?", 30))
      end
      assert.is_true(c:shutdown())
    end)

    it("refuse a truncated or lying large map without a crash", function()
      local good = map_bytes(keys_of(100, function(i) return "t" .. i end))
      for _, cut in ipairs({ 3, 4, 10, #good // 2, #good - 1 }) do
        local ok, err = pcall(ic.decode, good:sub(1, cut))
        assert.is_false(ok)
        assert.matches("malformed message", err, 1, true)
      end
      -- claims 65535 entries, holds one
      local ok, err = pcall(ic.decode, "\xde\xff\xff\xa1k\x01")
      assert.is_false(ok)
      assert.matches("truncated", err, 1, true)
      check(keys_of(100, function(i) return "t" .. i end))
    end)
  end)

  it("accepts functions only when asked", function()
    local bytes = ic.encode(function() return 7 end)
    assert.is_false((pcall(ic.decode, bytes)))
    assert.equal(7, ic.decode(bytes, { functions = true })())
  end)
end)
