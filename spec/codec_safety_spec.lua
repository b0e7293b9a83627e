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

describe("a __gc finalizer that sends while a message is being encoded", function()
  -- The receiver counts what it gets; a malformed message would take it
  -- down (its handler never sees one), and the report request would fail.
  local function sink_entry(ctx)
    local n, gc, bad = 0, 0, 0
    ctx:on_message(function(m)
      if m == "gc" then
        gc = gc + 1
      elseif m == "report" then
        return { n = n, gc = gc, bad = bad }
      elseif type(m) == "table" and m.seq and #m.items == 3 and m.items[3][1] == m.seq * 3 then
        n = n + 1
      else
        bad = bad + 1
      end
    end)
  end

  -- Leaves a random number of objects whose finalizer sends to sink: with
  -- the collector run hard, finalizers then run at every kind of point,
  -- also inside the encode of the next message (a fixed pattern would let
  -- the collector fall into step with the loop and miss it).
  local function garbage_maker()
    return function(sink)
      local mt = { __gc = function() sink:send("gc") end }
      for _ = 1, math.random(0, 6) do setmetatable({}, mt) end
    end
  end

  local function message(seq)
    local items = {}
    for i = 1, 3 do items[i] = { seq * i } end
    return { seq = seq, items = items }
  end

  local function wait_report(sink, n)
    return W.wait_until(function()
      local rep = sink:request("report", 30)
      return rep.n + rep.bad >= n and rep
    end, 60)
  end

  local BIG = { mailbox = 10000000 }

  it("never corrupts a message an isolate is sending", function()
    W.with_cluster({ workers = 2 }, function(c)
      local sink = c:spawn_isolate(sink_entry, nil, BIG)
      local make, msg = garbage_maker(), message
      local sender = c:spawn_isolate(function(ctx)
        local target = ctx:property("sink")
        ctx:on_message(function(rounds)
          collectgarbage("incremental", 0, 1000, 0) -- a step at every allocation
          for seq = 1, rounds do
            make(target)
            if not target:send(msg(seq)) then error("send refused") end
          end
          collectgarbage("collect")
          return true
        end)
      end, { sink = sink })
      local n = 20000
      assert.is_true(sender:request(n, 60))
      local r = wait_report(sink, n)
      assert.truthy(r, "the sink stays up and gets every message")
      assert.same({ n = n, bad = 0 }, { n = r.n, bad = r.bad })
      assert.is_true(r.gc > 0)
    end)
  end)

  it("never corrupts a message the main state is sending, nor ic.encode", function()
    W.with_cluster({ workers = 2 }, function(c)
      local sink = c:spawn_isolate(sink_entry, nil, BIG)
      local make, n = garbage_maker(), 5000
      local pause, stepmul = collectgarbage("setpause", 0), collectgarbage("setstepmul", 1000)
      local ok, err = pcall(function()
        for seq = 1, n do
          make(sink)
          assert(sink:send(message(seq)))
          make(sink)
          local again = ic.decode(ic.encode(message(seq)))
          assert(again.items[3][1] == seq * 3, "ic.encode")
        end
      end)
      collectgarbage("setpause", pause)
      collectgarbage("setstepmul", stepmul)
      assert(ok, err)
      local r = wait_report(sink, n)
      assert.truthy(r)
      assert.same({ n = n, bad = 0 }, { n = r.n, bad = r.bad })
    end)
  end)

  it("never corrupts the entry or the properties of a spawn", function()
    W.with_cluster({ workers = 2 }, function(c)
      local sink = c:spawn_isolate(sink_entry, nil, BIG)
      local make = garbage_maker()
      local spawner = c:spawn_isolate(function(ctx)
        local target = ctx:property("sink")
        ctx:on_message(function(n, main)
          collectgarbage("incremental", 0, 1000, 0)
          for i = 1, n do
            make(target)
            local k = i * 3
            ctx:spawn_isolate(function(child)
              local p = child:properties()
              main:send(p.i == i and #p.list == 3 and p.list[3][1] == i * 3 and k == i * 3 and "ok" or "bad")
            end, { i = i, list = { { i }, { i * 2 }, { i * 3 } } })
          end
          return true
        end)
      end, { sink = sink })
      local n = 1000
      assert.is_true(spawner:request(n, 60))
      local msgs = W.collect(c, n, 60)
      local counts = {}
      for _, m in ipairs(msgs) do counts[m] = (counts[m] or 0) + 1 end
      assert.same({ ok = n }, counts)
    end)
  end)
end)

describe("standard functions are copyable from anywhere", function()
  it("coroutine functions from inside an isolate: as messages, upvalues, entries and properties", function()
    W.with_cluster({ workers = 2 }, function(c)
      local r = c:spawn_isolate(function(ctx)
        local wrap = coroutine.wrap
        ctx:on_message(function(what, main)
          if what == "values" then
            main:send({ coroutine.wrap, coroutine.yield, coroutine.resume, coroutine.create, wrap })
          elseif what == "upvalue" then
            local y = coroutine.yield
            main:send(function() return y end)
          elseif what == "spawn" then
            -- the entry captures the isolate's coroutine.wrap; the
            -- properties hold yield and resume
            ctx:spawn_isolate(function(child)
              local f = wrap(function(a) local b = coroutine.yield(a + 1) return b * 2 end)
              local p = child:properties()
              local co = coroutine.create(function() return p.yield == coroutine.yield end)
              main:send({ f(1), f(5), select(2, p.resume(co)) })
            end, { yield = coroutine.yield, resume = coroutine.resume })
          end
        end)
      end)
      assert.is_true(r:send("values"))
      local got = W.receive(c)
      assert.equal("table", type(got))
      assert.equal(coroutine.wrap, got[1])
      assert.equal(coroutine.yield, got[2])
      assert.equal(coroutine.resume, got[3])
      assert.equal(coroutine.create, got[4])
      assert.equal(coroutine.wrap, got[5])
      assert.is_true(r:send("upvalue"))
      local f = W.receive(c)
      assert.equal("function", type(f))
      assert.equal(coroutine.yield, f())
      assert.is_true(r:send("spawn"))
      assert.same({ 2, 10, true }, W.receive(c))
    end)
  end)

  it("after an earlier copy, also functions of a library opened since by require", function()
    W.with_cluster({ workers = 2 }, function(c)
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(_, main)
          main:send(print) -- builds the state's names of standard functions
          local insert = require("table").insert
          local floor = require("math").floor
          local ok, why = pcall(main.send, main, { insert, floor, require("utf8").char })
          main:send(ok and "sent" or tostring(why))
        end)
      end)
      assert.is_true(r:send("go"))
      assert.equal(print, W.receive(c))
      local fns = W.receive(c)
      assert.same({ table.insert, math.floor, utf8.char }, fns)
      assert.equal("sent", W.receive(c))
    end)
  end)

  it("a user's own C function is still refused, and a user's replacement is copied as a Lua function", function()
    W.with_cluster({ workers = 2 }, function(c)
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(_, main)
          local mine = function() return "mine" end
          string.mine = mine
          local ok1, e1 = pcall(main.send, main, string.mine)
          local ok2, e2 = pcall(main.send, main, ctx.isolate_ref.send) -- a C function of the runtime
          main:send({ ok1, ok2, tostring(e2):match("cannot copy a C function") ~= nil })
        end)
      end)
      assert.is_true(r:send("go"))
      local f = W.receive(c)
      assert.equal("mine", f())
      assert.same({ true, false, true }, W.receive(c))
    end)
  end)
end)

describe("option strings made by metamethods", function()
  it("opts.path from an __index stays valid while the spawn encodes (and collects)", function()
    W.with_cluster({ workers = 2 }, function(c)
      local spawner = c:spawn_isolate(function(ctx)
        ctx:on_message(function(n)
          collectgarbage("incremental", 0, 1000, 0)
          local paths = {}
          for i = 1, n do
            local opts = setmetatable({}, { __index = function(_, k)
              if k == "path" then return "/made/by/index/" .. string.rep("p", i % 40) .. i end
            end })
            local props = {}
            for j = 1, 20 do props[j] = { j } end
            for _ = 1, math.random(0, 5) do local _ = { {}, {} } end
            local ref = ctx:spawn_isolate(function() end, props, opts)
            paths[#paths + 1] = ref.path == "/made/by/index/" .. string.rep("p", i % 40) .. i
          end
          for i = 1, n do if not paths[i] then return i end end
          return true
        end)
      end)
      assert.is_true(spawner:request(300, 60))
    end)
  end)
end)
