-- The codec inside the runtime, under hostile conditions: refs of nodes a
-- state has never met, finalizers that send while another message is being
-- encoded, standard functions copied from anywhere, option strings made by
-- metamethods (SPEC §2, §4).
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G

-- A ref ext (type 1): u32 node, u64 id.
local function wire_ref(node, id)
  return "\xc7\x0c\x01" .. string.pack(">I4>I8", node, id)
end

describe("refs of a node the state has not met", function()
  it("decode to refs and leave the rest of the value and the stack intact", function()
    local bytes = "\x82\xa1x" .. wire_ref(12345, 7) .. "\xa1y\x05"
    for i = 1, 200 do
      local v = ic.decode(bytes)
      assert.equal("table", type(v), "decode " .. i)
      assert.equal(5, v.y)
      assert.equal("userdata", type(v.x))
      assert.equal(7, v.x.id)
      -- a ref of an unknown node refuses messages
      assert.same({ false, "isolate down" }, { v.x:send("hi") })
    end
    -- many different unknown nodes in one value, and a known one between them
    local parts, n = {}, 50
    for i = 1, n do parts[#parts + 1] = wire_ref(1000 + i, i) end
    local list = ic.decode(string.char(0xdc) .. string.pack(">I2", n) .. table.concat(parts))
    assert.equal(n, #list)
    for i = 1, n do assert.equal(i, list[i].id) end
    -- the same ref twice is one userdata (the cache), unknown node or not
    local pair = ic.decode("\x92" .. wire_ref(777, 3) .. wire_ref(777, 3))
    assert.equal(pair[1], pair[2])
    assert.is_true(rawequal(pair[1], pair[2]))
  end)

  it("cross into an isolate of another cluster as refs inside the message", function()
    W.with_cluster({ workers = 2 }, function(a)
      W.with_cluster({ workers = 2 }, function(b)
        local ra = a:spawn_isolate(function(ctx) ctx:on_message(function() end) end)
        local rb = b:spawn_isolate(function(ctx)
          ctx:on_message(function(m, sender)
            sender:send({ kind = type(m), to = type(m) == "table" and type(m.to), n = type(m) == "table" and m.n,
              ok = type(m) == "table" and select(2, m.to:send("x")) })
          end)
        end)
        for i = 1, 20 do
          assert.is_true(rb:send({ to = ra, n = i }))
          local got = W.receive(b)
          assert.same({ kind = "table", to = "userdata", n = i, ok = "isolate down" }, got)
        end
      end)
    end)
  end)
end)
