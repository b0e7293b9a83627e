-- Single-node cluster: creation, spawn, refs, properties, paths, lookup,
-- module entries, failures that stay local, isolate-up events, many isolates,
-- and a script that ends without shutdown.
--
-- Entry functions are COPIED into the new isolate (bytecode + upvalues by
-- value): they never capture the cluster, busted's assert, or the wait helpers.
-- Isolates report back by sending to cluster.main (passed as a property) or by
-- answering requests.
local ic = require("isolate_cluster")
local W = require("support.wait")

-- An entry function written the way a busted spec naturally writes one: in
-- busted's own file environment (see the test at the end of this file).
local function entry_in_busted_env(ctx)
  ctx:on_message(function(m) return type(m) .. ":" .. tostring(math.type(1)) end)
end

local describe, it, before_each, after_each, assert = describe, it, before_each, after_each, assert
-- Busted runs a spec file with its own _ENV table (not _G); the rest of this
-- file uses the real globals.
local _ENV = _G
local with_cluster, error_of, echo_entry = W.with_cluster, W.error_of, W.echo_entry

local assert_error_contains = W.error_containing

local function set_of(list, key)
  local s = {}
  for _, v in ipairs(list) do s[key(v)] = true end
  return s
end

describe("single-node cluster", function()
  describe("creation", function()
    it("single_node() without options gives a working cluster", function()
      with_cluster(nil, function(c)
        local r = c:spawn_isolate(echo_entry)
        assert.equal("hello", r:request("hello", W.TIMEOUT))
      end)
    end)

    it("single_node{workers = 1} runs several isolates on one worker", function()
      with_cluster({ workers = 1 }, function(c)
        local a = c:spawn_isolate(echo_entry)
        local b = c:spawn_isolate(echo_entry)
        assert.equal("a", a:request("a", W.TIMEOUT))
        assert.equal("b", b:request("b", W.TIMEOUT))
      end)
    end)

    it("single_node{workers = 3} gives a working cluster", function()
      with_cluster({ workers = 3 }, function(c)
        assert.equal(3, c:spawn_isolate(echo_entry):request(3, W.TIMEOUT))
      end)
    end)

    it("rejects options that are not a table, and workers < 1", function()
      assert.has_error(function() ic.single_node("four") end)
      assert.has_error(function() ic.single_node({ workers = 0 }) end)
    end)

    it("supports `local c <close> = ic.single_node()`: the block end shuts it down", function()
      local outer, ref
      do
        local c <close> = ic.single_node({ workers = 1 })
        outer = c
        ref = c:spawn_isolate(echo_entry)
        assert.equal(1, ref:request(1, W.TIMEOUT))
      end
      assert.matches("closed", tostring(outer))
      assert.has_error(function() outer:spawn_isolate(echo_entry) end)
      local ok, why = ref:send("after close")
      assert.is_false(ok)
      assert.equal("isolate down", why)
    end)
  end)

  describe("spawn, refs and properties", function()
    local c
    before_each(function() c = ic.single_node({ workers = 2 }) end)
    after_each(function()
      assert.is_true(c:shutdown())
      c = nil
    end)

    it("spawn returns a ref at once, usable before the entry function has run", function()
      local t0 = W.now()
      local r = c:spawn_isolate(function(ctx)
        ctx:sleep(1) -- a slow start: the ref must not wait for it
        ctx:on_message(function(m) return "late " .. m end)
      end, nil, { path = "/slow" })
      local spawn_time = W.now() - t0
      if W.precise_clock then assert.is_true(spawn_time < 0.9, "spawn took " .. spawn_time .. " s") end
      assert.equal("/slow", r.path)
      assert.is_true(r:send("queued"))
      assert.equal("late hi", r:request("hi", W.TIMEOUT))
    end)

    it("ref.path is the path given, and nil for an isolate spawned without one", function()
      local named = c:spawn_isolate(echo_entry, nil, { path = "/named" })
      local anon = c:spawn_isolate(echo_entry)
      assert.equal("/named", named.path)
      assert.is_nil(anon.path)
    end)

    it("ref methods called on something else raise a clear error, in the main state and in isolates", function()
      local r = c:spawn_isolate(echo_entry)
      for _, bad in ipairs({ {}, 1, "x", io.stdout }) do
        local ok, err = pcall(r.send, bad, 1)
        assert.is_false(ok)
        assert.matches("isolate_ref expected", err, 1, true)
      end
      local probe = c:spawn_isolate(function(ctx)
        ctx:on_message(function(target)
          local ok, err = pcall(target.send, io.stdout, 1)
          return not ok and err or "no error"
        end)
      end)
      assert.matches("isolate_ref expected", probe:request(r, 10), 1, true)
    end)

    it("the refs a state just sent to or heard from are known as refs, and nothing else passes for one", function()
      local r = c:spawn_isolate(echo_entry)
      assert.is_true(r:send(1))
      assert.is_true(r:send(2)) -- r is now the ref of the send before
      for _, bad in ipairs({ {}, 1, "x", io.stdout, r.send }) do
        local ok, err = pcall(r.send, bad, 1)
        assert.is_false(ok)
        assert.matches("isolate_ref expected", err, 1, true)
      end
      assert.is_true(r:send(3))
      local probe = c:spawn_isolate(function(ctx)
        ctx:on_message(function(target, sender)
          local sent = target:send("x") and target:send("y") -- target: the ref of the send before
          local bad = {}
          for _, v in ipairs({ io.stdout, {}, ctx }) do
            local ok1 = pcall(target.send, v, 1)
            local ok2 = pcall(sender.send, v, 1) -- sender: the ref of the last message's sender
            bad[#bad + 1] = (ok1 or ok2) and "accepted" or "refused"
          end
          return { sent = sent, bad = table.concat(bad, ","), back = sender:send("back") }
        end)
      end)
      local got = probe:request(r, 10)
      assert.same({ sent = true, bad = "refused,refused,refused", back = true }, got)
      assert.equal("back", W.receive_match(c, function(m) return m == "back" end, 10))
    end)

    it("tostring(ref) mentions the path, and node and id as unsigned numbers", function()
      local r = c:spawn_isolate(echo_entry, nil, { path = "/printable" })
      assert.matches("^isolate_ref%(/printable, %d+:%d+%)$", tostring(r))
      assert.matches("^isolate_ref%(%d+:%d+%)$", tostring(c:spawn_isolate(echo_entry)))
      assert.matches("^isolate_ref%(main, %d+:%d+%)$", tostring(c.main))
      -- the node part is a u32: spawn clusters until one has the high bit set
      local seen_high = false
      for _ = 1, 64 do
        local k = ic.single_node({ workers = 1 })
        local node = tonumber(tostring(k.main):match("(%d+):%d+%)$"))
        assert.is_true(node >= 0 and node <= 0xffffffff)
        seen_high = seen_high or node >= 0x80000000
        k:shutdown()
        if seen_high then break end
      end
      assert.is_true(seen_high)
    end)

    it("ref:property and ref:properties return copies", function()
      local props = { name = "p", n = 42, nested = { list = { 1, 2, 3 } } }
      local r = c:spawn_isolate(echo_entry, props)
      assert.equal("p", r:property("name"))
      assert.equal(42, r:property("n"))
      assert.is_nil(r:property("missing"))
      assert.same(props, r:properties())

      local copy = r:properties()
      copy.name = "changed"
      copy.nested.list[1] = 100
      local nested = r:property("nested")
      nested.list[2] = 200
      assert.equal("p", r:property("name"))
      assert.same({ 1, 2, 3 }, r:property("nested").list)
      assert.are_not.equal(r:property("nested"), r:property("nested")) -- a fresh copy each time
    end)

    it("properties are copied at spawn: changing the caller's table later changes nothing", function()
      local props = { v = 1, t = { 1 } }
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function() return ctx:properties() end)
      end, props)
      props.v = 2
      props.t[1] = 2
      props.extra = true
      assert.same({ v = 1, t = { 1 } }, r:properties())
      assert.same({ v = 1, t = { 1 } }, r:request("props", W.TIMEOUT))
    end)

    it("an isolate spawned without properties has none", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function() return { p = ctx:property("x"), all = ctx:properties() } end)
      end)
      assert.is_nil(r:property("x"))
      assert.same({}, r:properties())
      assert.same({ all = {} }, r:request("?", W.TIMEOUT))
    end)

    it("context:property / context:properties read the isolate's properties, as copies", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function()
          local all = ctx:properties()
          all.k = "mutated"
          all.t.x = "mutated"
          local t = ctx:property("t")
          t.x = "mutated too"
          return { k = ctx:property("k"), t = ctx:property("t"), all = ctx:properties(), missing = ctx:property("nope") }
        end)
      end, { k = "v", t = { x = 1 } })
      local got = r:request("read", W.TIMEOUT)
      assert.same({ k = "v", t = { x = 1 }, all = { k = "v", t = { x = 1 } } }, got)
      -- and the view from outside is unchanged too
      assert.same({ k = "v", t = { x = 1 } }, r:properties())
    end)

    it("properties may hold refs, which stay usable refs", function()
      local echo = c:spawn_isolate(echo_entry, nil, { path = "/echo" })
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) return ctx:property("peer"):request(m) end)
      end, { peer = echo, main = c.main })
      assert.equal(echo, r:property("peer"))
      assert.equal(c.main, r:property("main"))
      assert.equal("through the peer", r:request("through the peer", W.TIMEOUT))
    end)

    it("context.isolate_ref equals the ref spawn returned", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function() return { me = ctx.isolate_ref, path = ctx.isolate_ref.path } end)
      end, nil, { path = "/me" })
      local got = r:request("who", W.TIMEOUT)
      assert.equal(r, got.me)
      assert.equal("/me", got.path)
    end)
  end)

  describe("paths and lookup", function()
    local c
    before_each(function() c = ic.single_node({ workers = 2 }) end)
    after_each(function()
      assert.is_true(c:shutdown())
      c = nil
    end)

    it('a "/name" path used twice raises `path "/a" is already in use`', function()
      local a = c:spawn_isolate(echo_entry, nil, { path = "/a" })
      local err = assert_error_contains('path "/a" is already in use', function()
        c:spawn_isolate(echo_entry, nil, { path = "/a" })
      end)
      -- the message is exactly that, possibly after the caller's "file:line: "
      assert.matches('^[^"]*path "/a" is already in use$', err)
      -- the first one is untouched
      assert.equal(a, c:lookup_isolate("/a"))
      assert.equal("still here", a:request("still here", W.TIMEOUT))
    end)

    it("a path is free again once its isolate has stopped", function()
      local a = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) if m == "stop" then ctx:stop() end return m end)
      end, nil, { path = "/reused" })
      assert.equal("stop", a:request("stop", W.TIMEOUT))
      local b = W.wait_until(function()
        local ok, r = pcall(c.spawn_isolate, c, echo_entry, nil, { path = "/reused" })
        return ok and r
      end)
      assert.truthy(b, "the path never became free")
      assert.are_not.equal(a, b)
      assert.equal("second", b:request("second", W.TIMEOUT))
    end)

    it('"/dir/" paths get distinct unique segments after the prefix', function()
      local refs, seen = {}, {}
      for i = 1, 5 do refs[i] = c:spawn_isolate(echo_entry, nil, { path = "/workers/" }) end
      for _, r in ipairs(refs) do
        local p = r.path
        assert.is_string(p)
        local seg = p:match("^/workers/(.+)$")
        assert.truthy(seg, "path " .. p .. " does not extend /workers/")
        assert.is_nil(seg:find("/", 1, true), "segment must be a single segment: " .. p)
        assert.is_nil(seen[p], "duplicate path " .. p)
        seen[p] = true
        assert.equal(r, c:lookup_isolate(p))
      end
    end)

    it("an invalid path raises at spawn", function()
      for _, bad in ipairs({ "a", "", "/", "//a", "/a//b", "/a\nb", "relative/" }) do
        local err = error_of(c.spawn_isolate, c, echo_entry, nil, { path = bad })
        assert.truthy(err:find("path", 1, true), ("error for %q: %s"):format(bad, err))
      end
      assert.has_error(function() c:spawn_isolate(echo_entry, nil, { path = 123 }) end)
      -- nothing was registered by the failed spawns
      assert.same({}, c:lookup_isolates("/"))
    end)

    it("lookup_isolate returns a ref equal to the spawn ref, or nil for an unknown path", function()
      local r = c:spawn_isolate(echo_entry, nil, { path = "/known" })
      local found = c:lookup_isolate("/known")
      assert.equal(r, found)
      assert.equal("/known", found.path)
      assert.equal("via lookup", found:request("via lookup", W.TIMEOUT))
      assert.is_nil(c:lookup_isolate("/unknown"))
      assert.is_nil(c:lookup_isolate("/kno")) -- no prefix matching
    end)

    it('lookup_isolates("/workers/") returns exactly the refs under that prefix', function()
      local workers = {}
      for i = 1, 4 do workers[i] = c:spawn_isolate(echo_entry, { i = i }, { path = "/workers/" }) end
      c:spawn_isolate(echo_entry, nil, { path = "/workersX" })
      c:spawn_isolate(echo_entry, nil, { path = "/other/1" })
      c:spawn_isolate(echo_entry)
      local got = c:lookup_isolates("/workers/")
      assert.equal(4, #got)
      local want = set_of(workers, tostring)
      assert.same(want, set_of(got, tostring))
      for _, r in ipairs(got) do
        assert.truthy(r.path:find("^/workers/"))
      end
      assert.same({}, c:lookup_isolates("/nothing/"))
    end)

    it("refs are equal across two lookups and across a message round trip", function()
      local r = c:spawn_isolate(echo_entry, nil, { path = "/eq" })
      local other = c:spawn_isolate(echo_entry, nil, { path = "/other" })
      assert.is_true(c:lookup_isolate("/eq") == c:lookup_isolate("/eq"))
      local back = other:request({ ref = r }, W.TIMEOUT)
      assert.is_true(back.ref == r)
      assert.equal("/eq", back.ref.path)
      assert.is_false(r == other)
      assert.is_false(r == c.main)
      -- the round-tripped ref still works
      assert.equal("ok", back.ref:request("ok", W.TIMEOUT))
    end)

    it("lookup and spawn after shutdown raise", function()
      assert.is_true(c:shutdown())
      assert_error_contains("spawn_isolate after shutdown", function() c:spawn_isolate(echo_entry) end)
      assert.has_error(function() c:lookup_isolate("/x") end)
      assert.has_error(function() c:lookup_isolates("/") end)
    end)
  end)

  describe("entries", function()
    local c
    before_each(function() c = ic.single_node({ workers = 2 }) end)
    after_each(function()
      assert.is_true(c:shutdown())
      c = nil
    end)

    it("a module name entry is required in the new isolate", function()
      local r = c:spawn_isolate("support.echo_isolate", { prefix = ">> " }, { path = "/by-name" })
      assert.equal(">> hi", r:request("hi", W.TIMEOUT))
      local plain = c:spawn_isolate("support.echo_isolate")
      assert.equal("echo: 7", plain:request(7, W.TIMEOUT))
    end)

    it("isolates get the spawner's package.path and cpath, and every standard library, when first used", function()
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(what)
          if what == "paths" then return { package.path, package.cpath } end
          -- each library answers on first use, in any order
          return table.concat({ type(require), string.format("%d", math.floor(2.5)), utf8.char(65),
            type(os.time()), type(io.write), type(debug.traceback), type(coroutine.wrap) }, " ")
        end)
        -- a grandchild inherits them too
        ctx:spawn_isolate(function(gctx)
          gctx:on_message(function() return { package.path, package.cpath } end)
        end, nil, { path = "/grandchild" })
      end)
      assert.same({ package.path, package.cpath }, r:request("paths", W.TIMEOUT))
      assert.equal("function 2 A number function function function", r:request("libs", W.TIMEOUT))
      local g = c:lookup_isolate("/grandchild", W.TIMEOUT)
      assert.same({ package.path, package.cpath }, g:request("paths", W.TIMEOUT))
    end)

    it("uncopyable properties or entry upvalues raise at spawn, naming the path, and register nothing", function()
      local err = error_of(c.spawn_isolate, c, echo_entry, { conn = io.stdout }, { path = "/p" })
      assert.truthy(err:find("cannot copy a userdata at properties.conn", 1, true), err)
      local out = io.stdout
      err = error_of(c.spawn_isolate, c, function() return out end, nil, { path = "/p" })
      assert.truthy(err:find("cannot copy a userdata", 1, true), err)
      assert.truthy(err:find("out", 1, true), err) -- names the upvalue
      assert.is_nil(c:lookup_isolate("/p"))
      assert.same({}, c:lookup_isolates("/"))
      -- the path is still free
      assert.equal("/p", c:spawn_isolate(echo_entry, nil, { path = "/p" }).path)
    end)

    it("an entry that is neither a function nor a module name raises at spawn", function()
      assert.has_error(function() c:spawn_isolate(42) end)
      assert.has_error(function() c:spawn_isolate({}) end)
      assert.has_error(function() c:spawn_isolate(function() end, "not a table") end)
    end)

    it("a module name that cannot be loaded takes only that isolate down", function()
      local good = c:spawn_isolate(echo_entry)
      local bad = c:spawn_isolate("support.no_such_module_here")
      local why = W.wait_until(function()
        local ok, reason = bad:send("x")
        return not ok and reason
      end)
      assert.equal("isolate down", why)
      assert.equal("alive", good:request("alive", W.TIMEOUT))
    end)

    it("an entry that raises does not take anything else down", function()
      local watcher = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:on_isolate_down(function(ref, reason) main:send({ down = ref, reason = reason }) end)
        ctx:on_message(function() return "ready" end)
      end, { main = c.main })
      assert.equal("ready", watcher:request("ready?", W.TIMEOUT))
      local other = c:spawn_isolate(echo_entry)
      local bad = c:spawn_isolate(function() error("entry failed on purpose") end, nil, { path = "/bad" })
      local msg = W.receive_match(c, function(m) return type(m) == "table" and m.down == bad end)
      assert.truthy(msg, "no down event for the failed isolate")
      assert.matches("^error: ", msg.reason)
      assert.truthy(msg.reason:find("entry failed on purpose", 1, true))
      local ok, why = bad:send("x")
      assert.is_false(ok)
      assert.equal("isolate down", why)
      assert.equal("still answering", other:request("still answering", W.TIMEOUT))
      assert.equal("ready", watcher:request("again", W.TIMEOUT))
    end)

    it("context:spawn_isolate spawns from inside an isolate", function()
      local parent = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          return ctx:spawn_isolate(function(cctx)
            cctx:on_message(function(q) return cctx:property("tag") .. ":" .. q end)
          end, { tag = m }, { path = "/child" })
        end)
      end)
      local child = parent:request("kid", W.TIMEOUT)
      assert.equal("/child", child.path)
      assert.equal(child, c:lookup_isolate("/child"))
      assert.equal("kid:hello", child:request("hello", W.TIMEOUT))
      assert.equal("kid", child:property("tag"))
      -- the path rule holds inside an isolate too
      local err = error_of(parent.request, parent, "again", W.TIMEOUT)
      assert.truthy(err:find('path "/child" is already in use', 1, true), err)
    end)
  end)

  describe("on_isolate_up", function()
    local c
    before_each(function() c = ic.single_node({ workers = 2 }) end)
    after_each(function()
      assert.is_true(c:shutdown())
      c = nil
    end)

    local function watcher(ctx)
      local main, name = ctx:property("main"), ctx:property("name")
      ctx:on_isolate_up(function(ref)
        main:send({ watcher = name, up = ref.path })
      end, { existing = ctx:property("existing") })
      ctx:on_message(function() return "up" end)
    end

    it("an isolate hears of isolates spawned after it, never of itself; {existing = true} adds those already up",
      function()
        local before = c:spawn_isolate(echo_entry, nil, { path = "/before" })
        assert.equal("x", before:request("x", W.TIMEOUT)) -- /before is up
        local w = c:spawn_isolate(watcher, { main = c.main, name = "w", existing = false }, { path = "/w" })
        local we = c:spawn_isolate(watcher, { main = c.main, name = "we", existing = true }, { path = "/we" })
        assert.equal("up", w:request("?", W.TIMEOUT))
        assert.equal("up", we:request("?", W.TIMEOUT))
        c:spawn_isolate(echo_entry, nil, { path = "/after" })

        local want = {
          w = { ["/we"] = 1, ["/after"] = 1 },
          we = { ["/before"] = 1, ["/w"] = 1, ["/after"] = 1 },
        }
        local got = { w = {}, we = {} }
        local msgs = W.collect(c, 5)
        -- anything beyond the expected five would be a duplicate or a wrong event
        for _, m in ipairs(W.drain(c, 0.3)) do msgs[#msgs + 1] = m end
        for _, m in ipairs(msgs) do
          local t = got[m.watcher]
          t[m.up] = (t[m.up] or 0) + 1
        end
        assert.same(want, got)
      end)

    it("port of the Dart README: senders registered on_isolate_up each message the receiver spawned after them",
      function()
        local function sender(ctx)
          local id = ctx:property("id")
          ctx:on_isolate_up(function(ref)
            if ref:property("type") == "receiver" then
              ref:send("message from sender " .. id)
            end
          end)
        end
        local function receiver(ctx)
          local main = ctx:property("main")
          ctx:on_message(function(msg) main:send("received message: " .. msg) end)
        end
        c:spawn_isolate(sender, { id = 1 })
        c:spawn_isolate(sender, { id = 2 })
        local receiver_ref = c:spawn_isolate(receiver, { type = "receiver", main = c.main })
        assert.is_true(receiver_ref:send("message from main isolate"))

        local msgs = W.collect(c, 3)
        for _, m in ipairs(W.drain(c, 0.2)) do msgs[#msgs + 1] = m end
        table.sort(msgs)
        assert.same({
          "received message: message from main isolate",
          "received message: message from sender 1",
          "received message: message from sender 2",
        }, msgs)
      end)
  end)

  describe("scale", function()
    it("200 isolates spawned all answer a request", function()
      with_cluster(nil, function(c)
        local refs = {}
        for i = 1, 200 do
          refs[i] = c:spawn_isolate(function(ctx)
            local n = ctx:property("i")
            ctx:on_message(function(m) return n * 1000 + m end)
          end, { i = i }, { path = "/many/" })
        end
        for i = 1, 200 do
          assert.equal(i * 1000 + 7, refs[i]:request(7, W.TIMEOUT))
        end
        assert.equal(200, #c:lookup_isolates("/many/"))
      end)
    end)
  end)

  describe("a script that ends without shutdown", function()
    it("exits 0 and delivers the messages already sent", function()
      local out, status = W.run_lua([[
        local ic = require("isolate_cluster")
        local cluster = ic.single_node({ workers = 2 })
        local r = cluster:spawn_isolate(function(ctx)
          ctx:sleep(0.2) -- messages arrive while the entry still runs
          ctx:on_message(function(m) io.write("got ", m, "\n") io.flush() end)
        end)
        for i = 1, 5 do assert(r:send(i)) end
        print("script end")
      ]])
      assert.equal(0, status, out)
      local got = {}
      for n in out:gmatch("got (%d+)") do got[#got + 1] = tonumber(n) end
      assert.same({ 1, 2, 3, 4, 5 }, got)
      assert.truthy(out:find("script end", 1, true))
    end)

    it("the Dart README example, as a script, prints all three messages and exits 0", function()
      local out, status = W.run_lua([[
        local ic = require("isolate_cluster")
        local function receiver(context)
          context:on_message(function(msg) print("received message: " .. msg) end)
        end
        local function sender(context)
          context:on_isolate_up(function(ref)
            if ref:property("type") == "receiver" then
              ref:send("message from sender " .. context:property("id"))
            end
          end)
        end
        local cluster = ic.single_node()
        cluster:spawn_isolate(sender, { id = 1 })
        cluster:spawn_isolate(sender, { id = 2 })
        local receiver_ref = cluster:spawn_isolate(receiver, { type = "receiver" })
        receiver_ref:send("message from main isolate")
      ]])
      assert.equal(0, status, out)
      assert.truthy(out:find("received message: message from main isolate", 1, true), out)
      assert.truthy(out:find("received message: message from sender 1", 1, true), out)
      assert.truthy(out:find("received message: message from sender 2", 1, true), out)
    end)
  end)

  describe("entry functions written in busted's environment", function()
    -- SPEC §2: an entry's `_ENV` is the new isolate's globals, whatever table
    -- it held in the creator. Busted (and any sandbox or module with an _ENV
    -- of its own) runs spec files with such an _ENV; a regression here makes
    -- `type`, `math`... nil in the isolate.
    it("an entry whose _ENV is not _G still sees the isolate's globals", function()
      with_cluster({ workers = 1 }, function(c)
        local r = c:spawn_isolate(entry_in_busted_env)
        local ok, got = pcall(r.request, r, "x", W.TIMEOUT)
        assert.is_true(ok, tostring(got))
        assert.equal("string:integer", got)
      end)
    end)
  end)
end)
