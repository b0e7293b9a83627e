-- Interop: plain values are standard MessagePack. Bytes written by an
-- independent implementation (Debian's python3-msgpack, driven by
-- spec/support/msgpack_peer.py) decode to the expected Lua values, and what
-- this project encodes is read back by it.
local ic = require("isolate_cluster")

local describe, it, assert, setup = describe, it, assert, setup
local _ENV = _G

-- The peer runs without the sanitizer runtime the sanitized test builds
-- preload (its own leaks are not ours to report).
local PEER = "env -u LD_PRELOAD /usr/bin/python3 spec/support/msgpack_peer.py"

local function run_peer(mode, input)
  local tmp_in, tmp_out = os.tmpname(), os.tmpname()
  if input then
    local f = assert(io.open(tmp_in, "wb"))
    f:write(input)
    f:close()
  end
  local cmd = PEER .. " " .. mode .. (input and (" < " .. tmp_in) or "") .. " > " .. tmp_out .. " 2>&1"
  local ok = os.execute(cmd)
  local f = assert(io.open(tmp_out, "rb"))
  local out = f:read("a")
  f:close()
  os.remove(tmp_in)
  os.remove(tmp_out)
  return ok, out
end

describe("MessagePack interop with python3-msgpack", function()
  setup(function()
    local ok, out = run_peer("decode", "\xc0")
    assert(ok and out == "null\n",
      "this spec needs Debian's python3 with python3-msgpack (apt-get install python3-msgpack): " .. out)
  end)

  it("decodes what the other implementation encodes", function()
    local ok, bytes = run_peer("encode")
    assert.is_true(ok, bytes)
    local v = ic.decode(bytes)
    assert.is_nil(v["nil"])
    assert.is_true(v["true"])
    assert.is_false(v["false"])
    for k, want in pairs({ zero = 0, one = 1, minus_one = -1, uint8 = 255, int8 = -128, uint16 = 65535,
      int16 = -32768, uint32 = 4294967295, int32 = -2147483648, int64_min = math.mininteger,
      int64_max = math.maxinteger }) do
      assert.equal(want, v[k], k)
      assert.equal("integer", math.type(v[k]), k)
    end
    assert.equal(2.0 ^ 64, v.uint64_max)
    assert.equal(1.5, v.float)
    assert.equal("float", math.type(v.float_one))
    assert.equal(1.0, v.float_one)
    assert.equal(-math.huge, 1 / v.neg_zero)
    assert.equal(math.huge, v.inf)
    assert.equal(-math.huge, v.neg_inf)
    assert.is_true(v.nan ~= v.nan)
    assert.equal("h\195\169llo \226\156\147", v.str)
    assert.equal("", v.empty_str)
    assert.equal(string.rep("x", 300), v.long_str)
    assert.equal("\0\1\255", v.bin)
    assert.equal("", v.empty_bin)
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    assert.equal(string.rep(table.concat(all), 2), v.long_bin)
    assert.same({ 1, "two", { 3, { 4 } } }, v.array)
    assert.same({ 1, nil, 3 }, v.with_nil)
    assert.same({ a = 1, b = { c = { true } } }, v.map)
    assert.same({ [1] = "a", [2] = "b", [10] = "c" }, v.int_keys)
    assert.same({}, v.empty_array)
    assert.same({}, v.empty_map)
  end)

  it("hands those values to an isolate like any message", function()
    local _, bytes = run_peer("encode")
    local c = ic.single_node({ workers = 1 })
    local r = c:spawn_isolate(function(ctx)
      ctx:on_message(function(m) return { m.int64_min, m.str, #m.long_bin, m.map.b.c[1] } end)
    end)
    assert.same({ math.mininteger, "h\195\169llo \226\156\147", 512, true }, r:request(ic.decode(bytes)))
    assert.is_true(c:shutdown())
  end)

  it("encodes plain values the other implementation reads", function()
    local cases = {
      { nil, "null" },
      { true, "true" },
      { 0, "0" },
      { -1, "-1" },
      { math.maxinteger, "9223372036854775807" },
      { math.mininteger, "-9223372036854775808" },
      { 1.0, "1.0" },
      { -0.0, "-0.0" },
      { 1.5e300, "1.5e+300" },
      { math.huge, "inf" },
      { "h\195\169llo", '"h\\u00e9llo"' },
      { "\0\255", 'bin("00ff")' },
      { { 1, 2, { 3 } }, "[1, 2, [3]]" },
      { { a = 1, b = { true, false } }, '{"a": 1, "b": [true, false]}' },
      { { [1] = "x", [3] = "y" }, '{1: "x", 3: "y"}' },
      { {}, "{}" },
    }
    for i, case in ipairs(cases) do
      local ok, out = run_peer("decode", ic.encode(case[1]))
      assert.is_true(ok, out)
      assert.equal(case[2] .. "\n", out, "case " .. i)
    end
  end)
end)
