-- Hostile and unusual arguments to the contract calls of SPEC §2 and §3.5/§3.9:
-- wrong types, nil versus false, strings where numbers belong, integers past
-- what a C int holds, odd paths, calls on a closed cluster, requests nobody
-- can answer. Each case states what a caller gets: a working result, or an
-- error raised at once that names the problem.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster, echo_entry, error_containing = W.with_cluster, W.echo_entry, W.error_containing

-- An isolate that runs Lua source sent to it (as a request) with `ctx` in
-- scope and answers { ok, results... } with every result tostring'd: the
-- way to try isolate-side calls from the main state.
local function probe_entry(ctx)
  ctx:on_message(function(code)
    local env = setmetatable({ ctx = ctx }, { __index = _G })
    local r = table.pack(pcall(load(code, "=probe", "t", env)))
    for i = 2, r.n do r[i] = tostring(r[i]) end
    return r
  end)
end

local function in_isolate(c, code)
  local p = c:spawn_isolate(probe_entry)
  return p:request(code, W.TIMEOUT)
end

describe("hostile arguments", function()
  describe("spawn_isolate options", function()
    it("refuses a mailbox or memory_limit given as a string, naming the option", function()
      with_cluster({ workers = 1 }, function(c)
        error_containing("opts.mailbox", c.spawn_isolate, c, echo_entry, nil, { mailbox = "10" })
        error_containing("opts.memory_limit", c.spawn_isolate, c, echo_entry, nil, { memory_limit = "1000000" })
        error_containing("opts.mailbox", c.spawn_isolate, c, echo_entry, nil, { mailbox = 1.5 })
        error_containing("opts.mailbox", c.spawn_isolate, c, echo_entry, nil, { mailbox = 0 / 0 })
        error_containing("opts.mailbox", c.spawn_isolate, c, echo_entry, nil, { mailbox = math.huge })
        error_containing("opts.memory_limit", c.spawn_isolate, c, echo_entry, nil, { memory_limit = 0 / 0 })
        -- an integral float is an integer
        assert.equal(7, c:spawn_isolate(echo_entry, nil, { mailbox = 10.0 }):request(7, W.TIMEOUT))
      end)
    end)

    it("takes nil and false alike for dedicated and detached, and refuses other types", function()
      with_cluster({ workers = 1 }, function(c)
        for _, v in ipairs({ false, true }) do
          local r = c:spawn_isolate(echo_entry, nil, { dedicated = v, detached = v })
          assert.equal(v, r:request(v, W.TIMEOUT))
        end
        error_containing("opts.dedicated must be a boolean, got string", c.spawn_isolate, c, echo_entry, nil,
          { dedicated = "yes" })
        error_containing("opts.detached must be a boolean, got number", c.spawn_isolate, c, echo_entry, nil,
          { detached = 1 })
      end)
    end)

    it("memory_limit = 0 means no limit", function()
      with_cluster({ workers = 1 }, function(c)
        local r = c:spawn_isolate(echo_entry, nil, { memory_limit = 0 })
        assert.equal(4096, #r:request(("x"):rep(4096), W.TIMEOUT))
      end)
    end)

    it("names spawn_isolate in the errors it raises inside an isolate, as in the main state", function()
      with_cluster({ workers = 1 }, function(c)
        for _, code in ipairs({
          "return ctx:spawn_isolate(42)",
          "return ctx:spawn_isolate(function() end, 'props')",
          "return ctx:spawn_isolate(function() end, nil, 'opts')",
        }) do
          local r = in_isolate(c, code)
          assert.is_false(r[1])
          assert.truthy(r[2]:find("spawn_isolate", 1, true), r[2])
        end
        error_containing("spawn_isolate", c.spawn_isolate, c, 42)
        error_containing("spawn_isolate", c.spawn_isolate, c, echo_entry, "props")
        error_containing("spawn_isolate", c.spawn_isolate, c, echo_entry, nil, "opts")
      end)
    end)
  end)

  describe("single_node options", function()
    it("refuses workers and mailbox given as strings", function()
      error_containing("opts.workers", ic.single_node, { workers = "2" })
      error_containing("opts.mailbox", ic.single_node, { mailbox = "2" })
    end)

    it("refuses a worker count past what it can hold instead of truncating it", function()
      -- 2^32 + 1 would become 1 worker if cut to a C int
      error_containing("opts.workers", ic.single_node, { workers = 4294967297 })
      error_containing("opts.workers", ic.single_node, { workers = math.maxinteger })
      error_containing("opts.workers must be an integer from 1 to 1024, got 1025", ic.single_node, { workers = 1025 })
    end)

    it("tostring(cluster) writes its node as tostring(ref) does: unsigned", function()
      with_cluster({ workers = 1 }, function(c)
        local node = tostring(c.main):match(", (%d+):%d+%)$")
        assert.truthy(node)
        assert.truthy(tostring(c):find("node " .. node, 1, true), tostring(c))
      end)
    end)
  end)

  describe("on_isolate_up", function()
    it("takes existing = true, false or nil, and refuses other types", function()
      with_cluster({ workers = 1 }, function(c)
        for _, v in ipairs({ "true", "false", "nil" }) do
          local r = in_isolate(c, "ctx:on_isolate_up(function() end, { existing = " .. v .. " }) return true")
          assert.is_true(r[1])
        end
        local r = in_isolate(c, "return ctx:on_isolate_up(function() end, { existing = 'yes' })")
        assert.is_false(r[1])
        assert.truthy(r[2]:find("opts.existing must be a boolean, got string", 1, true), r[2])
      end)
    end)
  end)

  describe("paths", function()
    it("refuses empty segments and a missing leading slash, quoting the path", function()
      with_cluster({ workers = 1 }, function(c)
        for _, p in ipairs({ "", "/", "//", "/a//b", "a", "/a//", "//a" }) do
          error_containing(("invalid path %q"):format(p), c.spawn_isolate, c, echo_entry, nil, { path = p })
        end
        error_containing("control characters", c.spawn_isolate, c, echo_entry, nil, { path = "/a\tb" })
        error_containing("opts.path must be a string", c.spawn_isolate, c, echo_entry, nil, { path = 12 })
        error_containing("opts.path must be a string", c.spawn_isolate, c, echo_entry, nil, { path = false })
      end)
    end)

    it("takes unicode and very long paths, and finds them again", function()
      with_cluster({ workers = 1 }, function(c)
        for _, p in ipairs({ "/héllo/wörld", "/" .. ("x"):rep(10000), "/a b/c d" }) do
          local r = c:spawn_isolate(echo_entry, nil, { path = p })
          assert.equal(p, r.path)
          assert.equal(r, c:lookup_isolate(p))
          assert.equal(1, #c:lookup_isolates(p))
        end
      end)
    end)

    it("lookup of a path nobody can hold is nil, and lookup_isolates(\"\") lists everyone", function()
      with_cluster({ workers = 1 }, function(c)
        local a = c:spawn_isolate(echo_entry, nil, { path = "/a" })
        assert.is_nil(c:lookup_isolate("/"))
        assert.is_nil(c:lookup_isolate(""))
        assert.is_nil(c:lookup_isolate("/a/"))
        assert.same({ a }, c:lookup_isolates(""))
        assert.same({ a }, c:lookup_isolates("/"))
        error_containing("a path must be a string, got nil", c.lookup_isolate, c, nil)
        error_containing("a path must be a string, got number", c.lookup_isolates, c, 5)
      end)
    end)
  end)

  describe("a closed cluster", function()
    it("behaves as a shut-down one: shutdown and run return true, receive nil, spawn and lookup raise",
      function()
        local c = ic.single_node({ workers = 1 })
        c:spawn_isolate(echo_entry)
        c:close()
        c:close() -- again: nothing
        assert.is_true(c:shutdown())
        assert.is_true(c:shutdown(0))
        assert.is_true(c:run())
        assert.is_true(c:run(0.1))
        assert.is_nil(c:receive())
        assert.is_nil(c:receive(0))
        error_containing("spawn_isolate after shutdown", c.spawn_isolate, c, echo_entry)
        error_containing("lookup_isolate after shutdown", c.lookup_isolate, c, "/a")
        error_containing("lookup_isolates after shutdown", c.lookup_isolates, c, "/")
        -- arguments are still checked
        error_containing("timeout must be a number", c.shutdown, c, -1)
        error_containing("timeout must be a number", c.receive, c, "x")
        assert.equal("isolate_cluster(closed)", tostring(c))
      end)
  end)

  describe("requests nobody can answer", function()
    it("a request to cluster.main from the main state raises at once, not at its timeout", function()
      with_cluster({ workers = 1 }, function(c)
        local t0 = W.now()
        error_containing("cannot request itself", c.main.request, c.main, "x", 30)
        assert.is_true(W.now() - t0 < 20)
      end)
    end)

    it("a request of an isolate to its own ref raises at once, not at its timeout", function()
      with_cluster({ workers = 1 }, function(c)
        local r = in_isolate(c, "return ctx.isolate_ref:request('x', 30)")
        assert.is_false(r[1])
        assert.truthy(r[2]:find("cannot request itself", 1, true), r[2])
      end)
    end)
  end)
end)

describe("timer and monitor handles", function()
  it(":cancel called with '.' or on something else says so, and cancelling twice does nothing", function()
    with_cluster({ workers = 1 }, function(c)
      local r = in_isolate(c, [[
        local tm = ctx:after(10, print)
        local mon = ctx:monitor(ctx.isolate_ref, print)
        local a, ea = pcall(tm.cancel)
        local b, eb = pcall(tm.cancel, {})
        local m, em = pcall(mon.cancel, 5)
        tm:cancel(); tm:cancel(); mon:cancel(); mon:cancel()
        return a, ea, b, eb, m, em
      ]])
      assert.is_true(r[1])
      assert.same({ "false", "false", "false" }, { r[2], r[4], r[6] })
      assert.truthy(r[3]:find("timer:cancel must be called with ':'", 1, true), r[3])
      assert.truthy(r[5]:find("timer:cancel must be called with ':'", 1, true), r[5])
      assert.truthy(r[7]:find("monitor:cancel must be called with ':'", 1, true), r[7])
    end)
  end)
end)

describe("the context's own methods", function()
  it("called with '.' or given a wrong handler say so at the caller's line", function()
    with_cluster({ workers = 1 }, function(c)
      local p = c:spawn_isolate(function(ctx)
        ctx:on_message(function()
          -- (each call from a Lua line of its own, not a tail call, so the
          -- error has the position of that line)
          local function try(f) return select(2, pcall(f)) end
          local r = {
            try(function() local _ = ctx.on_message(1) end), try(function() local _ = ctx.property("k") end),
            try(function() local _ = ctx.properties() end), try(function() local _ = ctx:on_message(42) end),
            try(function() local _ = ctx.sleep(0) end), try(function() local _ = ctx:on_message({}) end),
          }
          r.prop, r.props = ctx:property("k"), ctx:properties().k
          r.missing = ctx.no_such_method == nil
          r.same = ctx.on_message == ctx.on_message and type(ctx.after) == "function"
          return r
        end)
      end, { k = "v" })
      local r = p:request("go", W.TIMEOUT)
      assert.matches("^%S+:%d+: context:on_message must be called with ':'$", r[1])
      assert.matches("^%S+:%d+: context:property must be called with ':'$", r[2])
      assert.matches("^%S+:%d+: context:properties must be called with ':'$", r[3])
      assert.matches("^%S+:%d+: on_message expects a function or nil, got number$", r[4])
      assert.matches("context:sleep must be called with ':'", r[5], 1, true)
      assert.matches("on_message expects a function or nil, got table", r[6], 1, true)
      assert.equal("v", r.prop)
      assert.equal("v", r.props)
      assert.is_true(r.missing)
      assert.is_true(r.same)
    end)
  end)
end)

describe("waiting lookups of paths no isolate can hold", function()
  it("return nil at once, in the main state and in isolates", function()
    with_cluster({ workers = 1 }, function(c)
      for _, p in ipairs({ "/", "/w/", "", "a", "//" }) do
        local t0 = W.now()
        local ref, extra = c:lookup_isolate(p, 30)
        assert.is_nil(ref)
        assert.is_nil(extra)
        assert.is_true(W.now() - t0 < 20, p)
      end
      local t0 = W.now()
      local r = in_isolate(c, "return ctx:lookup_isolate('/w/', 30), ctx:lookup_isolate('/', 30)")
      assert.same({ true, "nil", "nil", n = 3 }, r)
      assert.is_true(W.now() - t0 < 20)
      -- a name that can be held is still waited for
      local got = in_isolate(c, "return ctx:lookup_isolate('/later', 0.05)")
      assert.same({ true, "nil", n = 2 }, got)
    end)
  end)
end)

describe("refs of another cluster", function()
  it("are refs that answer \"isolate down\" inside an isolate of another cluster; in the main state they work until their cluster is closed",
    function()
      with_cluster({ workers = 1 }, function(a)
        local b = ic.single_node({ workers = 1 })
        local rb = b:spawn_isolate(echo_entry, { tag = "b" }, { path = "/b" })
        local fwd = a:spawn_isolate(function(ctx)
          ctx:on_message(function(m)
            local ok, why = m.target:send("x")
            local rok, rerr = pcall(m.target.request, m.target, "y", 5)
            return { type(m.target), ok, why, rok, tostring(rerr):match("isolate down") }
          end)
        end)
        assert.same({ "userdata", false, "isolate down", false, "isolate down" },
          fwd:request({ target = rb }, W.TIMEOUT))
        assert.equal("direct", rb:request("direct", W.TIMEOUT))
        assert.equal("b", rb:property("tag"))
        b:close()
        b = nil
        collectgarbage()
        collectgarbage()
        local ok, why = rb:send(1)
        assert.is_false(ok)
        assert.equal("isolate down", why)
        error_containing("isolate down", rb.request, rb, 1, 1)
        assert.same({ false, "isolate down" }, { rb:kill() })
        assert.equal("/b", rb.path)
        assert.truthy(tostring(rb):find("/b", 1, true))
        assert.is_false(rb == fwd)
      end)
    end)
end)
