-- Lifecycle: how isolates go down and who hears of it (on_isolate_down with
-- every reason), what a down isolate leaves behind (refused sends, failed
-- requests, a free path, dead letters), the logger, on_shutdown and
-- shutdown_cluster, shutdown at scale, preemption of spinning code, OTP-style
-- supervision, and memory limits.
--
-- Entry functions are COPIED into the new isolate (bytecode + upvalues by
-- value): they never capture the cluster, busted's assert, or the wait
-- helpers. Isolates report back by sending to cluster.main (passed as the
-- `main` property) or by answering requests. Timing bounds are loose (the
-- suite runs on a loaded 2-core machine) and only asserted with a precise clock.
local ic = require("isolate_cluster")
local supervisor = require("isolate_cluster.supervisor")
local W = require("support.wait")

local describe, it, before_each, after_each, assert = describe, it, before_each, after_each, assert
-- Busted gives spec files their own _ENV; entries defined below must see the
-- real globals.
local _ENV = _G
local with_cluster, error_of, echo_entry = W.with_cluster, W.error_of, W.echo_entry

local function contains(s, part)
  return type(s) == "string" and s:find(part, 1, true) ~= nil
end

-- Answers requests; "stop" stops it normally, "crash" raises in the handler.
local function worker_entry(ctx)
  ctx:on_message(function(m)
    if m == "stop" then ctx:stop() return "stopping" end
    if m == "crash" then error("worker crashed on purpose") end
    return m
  end)
end

-- Forwards every down event to main as { down = ref, path =, reason = }.
local function watcher_entry(ctx)
  local main = ctx:property("main")
  ctx:on_isolate_down(function(ref, reason)
    main:send({ down = ref, path = ref.path, reason = reason })
  end)
  ctx:on_message(function() return "watching" end)
end

-- A watcher that is subscribed (it has answered a request) before it returns.
local function spawn_watcher(c)
  local w = c:spawn_isolate(watcher_entry, { main = c.main })
  assert.equal("watching", w:request("ready?", W.TIMEOUT))
  return w
end

-- The down event for ref, or nil (other messages to main are skipped).
local function await_down(c, ref, timeout)
  return W.receive_match(c, function(m)
    return type(m) == "table" and m.down ~= nil and m.down == ref
  end, timeout)
end

local function reason_of(c, ref, timeout)
  local ev = await_down(c, ref, timeout)
  assert.truthy(ev, "no down event for " .. tostring(ref))
  return ev.reason
end

-- True once ref refuses messages (it is down). Sends probes while alive.
local function wait_down(ref, timeout)
  return W.wait_until(function()
    local ok, why = ref:send("probe?")
    return not ok and why
  end, timeout)
end

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

describe("lifecycle", function()
  describe("on_isolate_down reasons", function()
    local c
    before_each(function() c = ic.single_node({ workers = 2 }) end)
    after_each(function()
      assert.is_true(c:shutdown())
      c = nil
    end)

    it('ctx:stop() gives "normal"', function()
      spawn_watcher(c)
      local r = c:spawn_isolate(worker_entry, nil, { path = "/normal" })
      assert.equal("stopping", r:request("stop", W.TIMEOUT))
      local ev = await_down(c, r)
      assert.truthy(ev, "no down event")
      assert.equal("normal", ev.reason)
      assert.equal("/normal", ev.path) -- a down ref still knows its path
    end)

    it("ctx:stop(reason) passes a custom reason through verbatim (tostring'd, no prefix)", function()
      spawn_watcher(c)
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) ctx:stop(m) end)
      end)
      assert.is_true(r:send("bye"))
      assert.equal("bye", reason_of(c, r))
      local r2 = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m) ctx:stop(m) end)
      end)
      assert.is_true(r2:send(42))
      assert.equal("42", reason_of(c, r2))
    end)

    it('children stop with "shutdown" when their parent stops; detached ones live on', function()
      spawn_watcher(c)
      local parent = c:spawn_isolate(function(ctx)
        local echo = ctx:property("echo")
        local child = ctx:spawn_isolate(function(cctx)
          -- a grandchild: linked to the child, so it goes down with it
          local grandchild = cctx:spawn_isolate(cctx:property("echo"), nil, { path = "/lc/grandchild" })
          cctx:on_message(function(m)
            if m == "kid" then return grandchild end
            return m
          end)
        end, { echo = echo }, { path = "/lc/child" })
        local detached = ctx:spawn_isolate(echo, nil, { path = "/lc/detached", detached = true })
        ctx:on_message(function(m)
          if m == "stop" then ctx:stop() end
          if m == "kids" then return { child = child, detached = detached } end
          return m
        end)
      end, { echo = echo_entry }, { path = "/lc/parent" })
      local kids = parent:request("kids", W.TIMEOUT)
      local child, detached = kids.child, kids.detached
      local grandchild = child:request("kid", W.TIMEOUT)
      assert.equal("/lc/grandchild", grandchild.path)
      assert.equal(child, c:lookup_isolate("/lc/child"))
      assert.equal(grandchild, c:lookup_isolate("/lc/grandchild"))
      assert.equal(detached, c:lookup_isolate("/lc/detached"))
      assert.equal("hi", detached:request("hi", W.TIMEOUT))

      assert.is_true(parent:send("stop"))
      local got = {}
      while not (got["/lc/parent"] and got["/lc/child"] and got["/lc/grandchild"]) do
        local ev = W.receive_match(c, function(m) return type(m) == "table" and m.down ~= nil end)
        assert.truthy(ev, "missing down events, got: " .. table.concat((function()
          local l = {}
          for k, v in pairs(got) do l[#l + 1] = k .. "=" .. v end
          return l
        end)(), ", "))
        got[ev.path] = ev.reason
      end
      assert.equal("normal", got["/lc/parent"])
      assert.equal("shutdown", got["/lc/child"])
      assert.equal("shutdown", got["/lc/grandchild"])
      assert.is_nil(got["/lc/detached"])
      assert.equal("isolate down", wait_down(child))
      -- the detached child still answers, and stays registered at its path
      assert.equal("still here", detached:request("still here", W.TIMEOUT))
      assert.equal(detached, c:lookup_isolate("/lc/detached"))
    end)

    it('children go down with "shutdown" when their parent fails or is killed, too', function()
      spawn_watcher(c)
      local function parent_entry(ctx)
        ctx:spawn_isolate(ctx:property("echo"), nil, { path = ctx.isolate_ref.path .. "-child" })
        ctx:on_message(function(m)
          if m == "crash" then error("parent failed") end
          return m
        end)
      end
      local crashing = c:spawn_isolate(parent_entry, { echo = echo_entry }, { path = "/crashing" })
      local killed = c:spawn_isolate(parent_entry, { echo = echo_entry }, { path = "/killed" })
      local child1 = c:lookup_isolate("/crashing-child", W.TIMEOUT)
      local child2 = c:lookup_isolate("/killed-child", W.TIMEOUT)
      assert.truthy(child1 and child2, "children never came up")
      assert.is_true(crashing:send("crash"))
      assert.is_true(killed:kill())
      local got = {}
      for _ = 1, 4 do
        local ev = W.receive_match(c, function(m) return type(m) == "table" and m.down ~= nil end)
        assert.truthy(ev, "missing down events")
        got[ev.path] = ev.reason
      end
      assert.matches("^error: ", got["/crashing"])
      assert.equal("killed", got["/killed"])
      assert.equal("shutdown", got["/crashing-child"])
      assert.equal("shutdown", got["/killed-child"])
    end)

    it('ref:kill() from the main state gives "killed", even for an isolate spinning in a handler', function()
      spawn_watcher(c)
      local idle = c:spawn_isolate(echo_entry)
      local spinning = c:spawn_isolate(function(ctx)
        ctx:on_message(function(main)
          main:send("spinning")
          while true do end
        end)
      end)
      assert.equal("x", idle:request("x", W.TIMEOUT))
      assert.is_true(spinning:send(c.main))
      assert.truthy(W.receive_match(c, function(m) return m == "spinning" end), "never started spinning")
      assert.is_true(idle:kill())
      assert.is_true(spinning:kill())
      -- the two down events may come in either order
      local reasons = {}
      for _ = 1, 2 do
        local ev = W.receive_match(c, function(m)
          return type(m) == "table" and (m.down == idle or m.down == spinning)
        end)
        assert.truthy(ev, "missing down events")
        reasons[ev.down == idle and "idle" or "spinning"] = ev.reason
      end
      assert.same({ idle = "killed", spinning = "killed" }, reasons)
      -- killing what is already down is refused, like a send
      local ok, why = idle:kill()
      assert.is_false(ok)
      assert.equal("isolate down", why)
    end)

    it('ref:kill() from inside an isolate gives "killed"', function()
      spawn_watcher(c)
      local target = c:spawn_isolate(echo_entry)
      local killer = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          local ok, why = m:kill()
          return { ok = ok, why = why }
        end)
      end)
      assert.same({ ok = true }, killer:request(target, W.TIMEOUT))
      assert.equal("killed", reason_of(c, target))
      assert.same({ ok = false, why = "isolate down" }, killer:request(target, W.TIMEOUT))
    end)

    it('a handler error gives "error: <message>\\n<traceback>" naming the failing function', function()
      spawn_watcher(c)
      local r = c:spawn_isolate(function(ctx)
        local function explode(what)
          error("it blew up: " .. what)
        end
        ctx:on_message(function(m) explode(m) end)
      end)
      assert.is_true(r:send("dynamite"))
      local reason = reason_of(c, r)
      assert.matches("^error: ", reason)
      assert.truthy(contains(reason, "it blew up: dynamite"), reason)
      assert.truthy(contains(reason, "stack traceback"), reason)
      assert.truthy(contains(reason, "explode"), reason)
      -- the message comes before the traceback
      assert.truthy(reason:find("it blew up", 1, true) < reason:find("stack traceback", 1, true), reason)
    end)

    it('an entry function that raises goes down with "error: ..."; others keep working', function()
      spawn_watcher(c)
      local other = c:spawn_isolate(echo_entry)
      local bad = c:spawn_isolate(function(ctx)
        local function boot_failure()
          error("entry failed on purpose")
        end
        ctx:on_message(function(m) return m end)
        boot_failure()
      end, nil, { path = "/bad-entry" })
      local reason = reason_of(c, bad)
      assert.matches("^error: ", reason)
      assert.truthy(contains(reason, "entry failed on purpose"), reason)
      assert.truthy(contains(reason, "boot_failure"), reason)
      assert.equal("isolate down", wait_down(bad))
      assert.is_nil(c:lookup_isolate("/bad-entry"))
      assert.equal("alive", other:request("alive", W.TIMEOUT))
    end)

    it("an error value that is not a string still gives an \"error: \" reason", function()
      spawn_watcher(c)
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function() error({ code = 7 }) end)
      end)
      assert.is_true(r:send("go"))
      assert.matches("^error: ", reason_of(c, r))
    end)
  end)

  describe("after an isolate is down", function()
    local c
    before_each(function() c = ic.single_node({ workers = 2 }) end)
    after_each(function()
      assert.is_true(c:shutdown())
      c = nil
    end)

    for _, way in ipairs({ "stop", "crash", "kill" }) do
      it(("(%s) send is refused, request fails at once, the path is free for a new isolate"):format(way),
        function()
          spawn_watcher(c)
          local path = "/down-" .. way
          local r = c:spawn_isolate(worker_entry, nil, { path = path })
          assert.equal("x", r:request("x", W.TIMEOUT))
          if way == "kill" then assert.is_true(r:kill()) else assert.is_true(r:send(way)) end
          assert.truthy(await_down(c, r), "no down event")
          -- once others have heard it went down, everything reflects it
          local ok, why = r:send("anyone?")
          assert.is_false(ok)
          assert.equal("isolate down", why)
          local elapsed, rok, rerr = W.timed(r.request, r, "x", 5)
          assert.is_false(rok)
          assert.truthy(contains(tostring(rerr), "isolate down"), tostring(rerr))
          if W.precise_clock then assert.is_true(elapsed < 1, "request took " .. elapsed .. " s") end
          assert.is_nil(c:lookup_isolate(path))
          assert.equal(0, #c:lookup_isolates(path))
          local again = c:spawn_isolate(echo_entry, nil, { path = path })
          assert.is_false(again == r)
          assert.equal("new", again:request("new", W.TIMEOUT))
          assert.equal(again, c:lookup_isolate(path))
          -- the old ref stays down: it does not start naming the new isolate
          ok, why = r:send("old ref")
          assert.is_false(ok)
          assert.equal("isolate down", why)
        end)
    end

    it("cluster:stats() has dead_letters, isolates and spawned", function()
      local s = c:stats()
      assert.equal("integer", math.type(s.dead_letters))
      assert.equal("integer", math.type(s.isolates))
      assert.equal("integer", math.type(s.spawned))
      local r1 = c:spawn_isolate(echo_entry)
      local r2 = c:spawn_isolate(echo_entry)
      assert.equal(1, r1:request(1, W.TIMEOUT))
      assert.equal(2, r2:request(2, W.TIMEOUT))
      local s2 = c:stats()
      assert.equal(s.spawned + 2, s2.spawned)
      assert.equal(s.isolates + 2, s2.isolates)
      assert.is_true(r1:kill())
      assert.truthy(W.wait_until(function() return c:stats().isolates == s.isolates + 1 end),
        "stats().isolates did not go down: " .. c:stats().isolates)
      assert.equal(s.spawned + 2, c:stats().spawned) -- spawned only grows
    end)

    it("messages still queued when an isolate stops are counted as dead letters", function()
      local before = c:stats().dead_letters
      -- The entry sleeps first, so all 101 messages are queued before the
      -- first handler runs; that handler stops the isolate.
      local r = c:spawn_isolate(function(ctx)
        ctx:sleep(0.3)
        local main = ctx:property("main")
        ctx:on_message(function(m)
          main:send({ handled = m })
          ctx:stop()
        end)
      end, { main = c.main })
      for i = 1, 101 do assert.is_true(r:send(i)) end
      local first = W.receive(c)
      assert.same({ handled = 1 }, first)
      assert.equal("isolate down", wait_down(r))
      local n = W.wait_until(function()
        local d = c:stats().dead_letters - before
        return d >= 100 and d
      end)
      assert.truthy(n, "dead_letters grew by only " .. (c:stats().dead_letters - before))
      -- no handler ran for any of them
      assert.same({}, W.drain(c, 0.2))
    end)

    it("messages queued for a killed isolate are dead letters too", function()
      local before = c:stats().dead_letters
      local r = c:spawn_isolate(function(ctx)
        ctx:sleep(30)
        ctx:on_message(function() end)
      end)
      for i = 1, 50 do assert.is_true(r:send(i)) end
      assert.is_true(r:kill())
      assert.equal("isolate down", wait_down(r))
      assert.truthy(W.wait_until(function() return c:stats().dead_letters - before >= 50 end),
        "dead_letters grew by only " .. (c:stats().dead_letters - before))
    end)
  end)

  describe("starting", function()
    -- Regression: a message sent the moment a new isolate's path became
    -- visible (before its first turn was queued) used to queue it a second
    -- time, so it ran twice or on two workers at once. Run in a child process
    -- so a crash cannot take the suite down.
    it("an isolate sent a message as soon as its path is visible is scheduled once (no double run, no crash)",
      function()
        local out, status = W.run_lua([[
          local ic = require("isolate_cluster")
          for round = 1, 2 do
            local c = ic.single_node({ workers = 2 })
            for i = 1, 30 do
              c:spawn_isolate(function(ctx)
                ctx:spawn_isolate(function(cc)
                  cc:on_message(function() error("crash on purpose") end)
                end, nil, { path = ctx:property("path") })
              end, { path = "/race" .. round .. "/" .. i })
              local r = c:lookup_isolate("/race" .. round .. "/" .. i, 5)
              assert(r, "no /race" .. round .. "/" .. i)
              r:send("crash")
            end
            assert(c:shutdown(), "shutdown not in time")
          end
          io.stdout:write("script done\n")
        ]], 60)
        local tail = out:sub(-1500)
        assert.equal(0, status, "the script exited with status " .. tostring(status) .. " (139: SIGSEGV); its output ends with:\n" .. tail)
        assert.truthy(contains(out, "script done"), tail)
        assert.is_false(contains(out, "isolate state unavailable"), tail)
        local seen, dups = {}, {}
        for line in out:gmatch("[^\n]+") do
          local who = line:match("^isolate_cluster: isolate (/race%d/%d+ %(id %d+%)) went down")
          if who then
            if seen[who] then dups[#dups + 1] = who end
            seen[who] = true
          end
        end
        assert.same({}, dups)
      end)
  end)

  describe("the logger", function()
    it("a logger function gets the error line of a failing isolate, with its traceback", function()
      with_cluster({ workers = 2, logger = function(text, main) main:send({ log = text }) end }, function(c)
        local r = c:spawn_isolate(function(ctx)
          local function explode() error("logged failure 1234") end
          ctx:on_message(function() explode() end)
        end, nil, { path = "/logged" })
        assert.is_true(r:send("go"))
        local msg = W.receive_match(c, function(m)
          return type(m) == "table" and contains(m.log, "logged failure 1234")
        end)
        assert.truthy(msg, "the logger never got the error line")
        assert.truthy(contains(msg.log, "/logged"), msg.log) -- names the isolate
        assert.truthy(contains(msg.log, "stack traceback"), msg.log)
        assert.truthy(contains(msg.log, "explode"), msg.log)
      end)
    end)

    it("the logger isolate is never announced to on_isolate_up observers", function()
      with_cluster({ workers = 2, logger = function(text, main) main:send({ log = text }) end }, function(c)
        local w = c:spawn_isolate(function(ctx)
          local main = ctx:property("main")
          ctx:on_isolate_up(function(ref) main:send({ up = ref.path or tostring(ref) }) end, { existing = true })
          ctx:on_message(function() return "ok" end)
        end, { main = c.main })
        assert.equal("ok", w:request("?", W.TIMEOUT))
        c:spawn_isolate(echo_entry, nil, { path = "/after-logger" })
        local ups = {}
        for _, m in ipairs(W.collect(c, 1)) do ups[#ups + 1] = m.up end
        for _, m in ipairs(W.drain(c, 0.3)) do ups[#ups + 1] = m.up end
        assert.same({ "/after-logger" }, ups)
      end)
    end)

    -- The child script: a failing isolate, a watcher that waits for it to go
    -- down, a clean shutdown. %s is the single_node options.
    local script = [[
      local ic = require("isolate_cluster")
      local c = ic.single_node(%s)
      local w = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:on_isolate_down(function(ref, reason) main:send("down") end)
        ctx:on_message(function() return "ok" end)
      end, { main = c.main })
      assert(w:request("ready?") == "ok")
      local r = c:spawn_isolate(function(ctx)
        local function explode() error("stderr-failure-6789") end
        ctx:on_message(function() explode() end)
      end)
      assert(r:send("go"))
      assert(c:receive(10) == "down", "no down event")
      assert(c:shutdown(), "shutdown not in time")
      io.stdout:write("script done\n")
    ]]

    it("by default, writes the failing isolate's error and traceback to stderr", function()
      local out, status = W.run_lua(script:format("{ workers = 2 }"))
      assert.equal(0, status, out)
      assert.truthy(contains(out, "script done"), out)
      assert.truthy(contains(out, "stderr-failure-6789"), out)
      assert.truthy(contains(out, "explode"), out)
    end)

    it("logger = false silences it", function()
      local out, status = W.run_lua(script:format("{ workers = 2, logger = false }"))
      assert.equal(0, status, out)
      assert.truthy(contains(out, "script done"), out)
      assert.is_false(contains(out, "stderr-failure-6789"), out)
    end)

    it("rejects a logger that is not a function, false or nil", function()
      local err = error_of(ic.single_node, { logger = "stderr" })
      assert.truthy(contains(err, "logger"), err)
    end)
  end)

  describe("shutdown", function()
    local function on_shutdown_writer(ctx)
      ctx:on_shutdown(function()
        local f = io.open(ctx:property("file"), "w")
        f:write("on_shutdown ran in ", ctx:property("name"))
        f:close()
      end)
      ctx:on_message(function(m)
        if m == "stop" then ctx:stop() end
        return m
      end)
    end

    it("cluster:shutdown() runs each isolate's on_shutdown handler before it stops", function()
      local files = {}
      for i = 1, 4 do files[i] = os.tmpname() end
      local c = ic.single_node({ workers = 2 })
      local refs = {}
      for i = 1, 3 do
        refs[i] = c:spawn_isolate(on_shutdown_writer, { file = files[i], name = "iso" .. i })
      end
      -- one that has stopped before the shutdown: its handler does not run
      local stopped = c:spawn_isolate(on_shutdown_writer, { file = files[4], name = "stopped" })
      for i = 1, 3 do assert.equal(i, refs[i]:request(i, W.TIMEOUT)) end
      assert.is_true(stopped:send("stop"))
      assert.equal("isolate down", wait_down(stopped))
      local elapsed, ok, down = W.timed(c.shutdown, c)
      assert.is_true(ok, tostring(down))
      assert.is_true(down)
      if W.precise_clock then assert.is_true(elapsed < 3, "shutdown took " .. elapsed) end
      for i = 1, 3 do
        assert.equal("on_shutdown ran in iso" .. i, read_file(files[i]))
      end
      assert.equal("", read_file(files[4]))
      for i = 1, 4 do os.remove(files[i]) end
      -- after shutdown, receive returns nil at once and shutdown stays true
      assert.is_nil(c:receive(5))
      assert.is_true(c:shutdown())
    end)

    it("an on_shutdown handler that computes past its time slice still finishes", function()
      local file = os.tmpname()
      local c = ic.single_node({ workers = 1, time_slice = 0.001 })
      local r = c:spawn_isolate(function(ctx)
        ctx:on_shutdown(function()
          local x = 0
          for i = 1, 3000000 do x = x + i % 3 end -- many time slices
          local f = io.open(ctx:property("file"), "w")
          f:write("done ", tostring(x > 0))
          f:close()
        end)
        ctx:on_message(function(m) return m end)
      end, { file = file })
      assert.equal(1, r:request(1, W.TIMEOUT))
      assert.is_true(c:shutdown(30))
      assert.equal("done true", read_file(file))
      os.remove(file)
    end)

    it("an on_shutdown handler that raises does not stop the shutdown", function()
      with_cluster({ workers = 2, logger = false }, function(c)
        local r = c:spawn_isolate(function(ctx)
          ctx:on_shutdown(function() error("on_shutdown failed on purpose") end)
          ctx:on_message(function(m) return m end)
        end)
        assert.equal(1, r:request(1, W.TIMEOUT))
      end)
    end)

    it("context:shutdown_cluster() makes cluster:run() return true, after on_shutdown handlers ran", function()
      local file = os.tmpname()
      local c = ic.single_node({ workers = 2 })
      c:spawn_isolate(on_shutdown_writer, { file = file, name = "watcher" })
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function() ctx:shutdown_cluster() end)
      end)
      -- without a shutdown, run(timeout) returns false at its timeout
      assert.is_false(c:run(0.05))
      assert.is_true(r:send("please shut down"))
      local elapsed, ok, ran = W.timed(c.run, c, 20)
      assert.is_true(ok, tostring(ran))
      assert.is_true(ran)
      if W.precise_clock then assert.is_true(elapsed < 10, "run took " .. elapsed) end
      assert.equal("on_shutdown ran in watcher", read_file(file))
      os.remove(file)
      assert.is_true(c:shutdown())
      assert.is_nil(c:receive())
      assert.has_error(function() c:spawn_isolate(echo_entry) end)
    end)

    it("10,000 idle isolates: all come up, and all stop in one shutdown", function()
      local N = 10000
      local c = ic.single_node({ workers = 2 })
      local t_spawn, ok, err = W.timed(function()
        for _ = 1, N do
          c:spawn_isolate(function(ctx)
            ctx:on_message(function(m) return m end)
            ctx:property("main"):send(1)
          end, { main = c.main })
        end
      end)
      assert.is_true(ok, tostring(err))
      local t_up, cok, msgs = W.timed(W.collect, c, N, 40)
      assert.is_true(cok, tostring(msgs))
      assert.equal(N, #msgs, "not every isolate came up")
      local stats = c:stats()
      assert.is_true(stats.isolates >= N, "stats().isolates = " .. stats.isolates)
      local t_down, sok, down = W.timed(c.shutdown, c, 10)
      print(("\n  10,000 isolates: spawn calls %.2f s, all up %.2f s later, shutdown %.2f s (stats: %d isolates)")
        :format(t_spawn, t_up, t_down, stats.isolates))
      -- The times are printed, not asserted: speed is bench/'s business (a
      -- loaded machine, a sanitizer or valgrind make any bound a coin toss).
      assert.is_true(sok, tostring(down))
      assert.is_true(down)
    end)
  end)

  describe("interrupts that user code cannot escape", function()
    it("a kill is not swallowed by a pcall in a loop", function()
      local c = ic.single_node({ workers = 1, logger = false })
      local r = c:spawn_isolate(function(ctx)
        ctx:on_message(function(main)
          main:send("looping")
          while true do pcall(function() for _ = 1, 1e5 do end end) end
        end)
      end)
      assert.is_true(r:send(c.main))
      assert.equal("looping", W.receive(c))
      assert.is_true(r:kill())
      assert.equal("isolate down", wait_down(r))
      assert.is_true(c:shutdown(5))
    end)

    it("code spinning in a coroutine of the handler's own can be killed and shut down", function()
      local c = ic.single_node({ workers = 1, logger = false })
      local spinner = c:spawn_isolate(function(ctx)
        ctx:on_message(function(main)
          main:send("spinning")
          coroutine.wrap(function() while true do end end)()
        end)
      end)
      assert.is_true(spinner:send(c.main))
      assert.equal("spinning", W.receive(c))
      assert.is_true(spinner:kill())
      assert.equal("isolate down", wait_down(spinner))
      local other = c:spawn_isolate(echo_entry)
      assert.equal(1, other:request(1, W.TIMEOUT))
      assert.is_true(c:shutdown(5))
    end)

    it("a handler switching between short-lived coroutines of its own is preempted and killed", function()
      -- The hook is aimed at whichever coroutine runs, while the monitor
      -- arms it from its own thread and the coroutines left behind are
      -- collected: the sanitizer builds would catch a hook set on a freed one.
      local c = ic.single_node({ workers = 1, logger = false, time_slice = 0.0005 })
      local spinner = c:spawn_isolate(function(ctx)
        ctx:on_message(function(main)
          main:send("spinning")
          local n = 0
          while true do
            local co = coroutine.wrap(function(a) coroutine.yield(a + 1) return a end)
            n = n + co(n) - n
            if n % 64 == 0 then collectgarbage("step") end
          end
        end)
      end)
      assert.is_true(spinner:send(c.main))
      assert.equal("spinning", W.receive(c))
      local other = c:spawn_isolate(echo_entry)
      for i = 1, 20 do assert.equal(i, other:request(i, W.TIMEOUT)) end -- it gets turns: the spinner is preempted
      assert.is_true(spinner:kill())
      assert.equal("isolate down", wait_down(spinner))
      assert.is_true(c:shutdown(5))
    end)

    it("coroutine.yield in a handler is refused; coroutines of its own work", function()
      with_cluster({ workers = 1 }, function(c)
        local r = c:spawn_isolate(function(ctx)
          ctx:on_message(function(m)
            if m == "yield" then coroutine.yield("x") end
            local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
            return gen() + gen() + gen()
          end)
        end)
        local err = error_of(r.request, r, "yield", W.TIMEOUT)
        assert.truthy(err:find("cannot suspend a handler", 1, true), err)
        assert.equal(6, r:request("sum", W.TIMEOUT))
      end)
    end)
  end)

  describe("preemption", function()
    -- Spins in the handler of its first message, a ref to tell when it starts.
    local function spinning_entry(ctx)
      ctx:on_message(function(main)
        main:send("spinning")
        while true do end
      end)
    end

    local function start_spinning(c, spin)
      assert.is_true(spin:send(c.main))
      assert.equal("spinning", W.receive(c), "never started spinning")
    end

    -- Runs fn(c, spinners) on a new cluster; whatever happens, kills the
    -- spinners listed and shuts the cluster down (briefly: a stuck spinner
    -- must not cost the suite the default 5 s shutdown timeout).
    local function with_spinners(opts, fn)
      local c = ic.single_node(opts)
      local spinners = {}
      local ok, err = pcall(fn, c, spinners)
      for _, s in ipairs(spinners) do s:kill() end
      local down = c:shutdown(2)
      if not ok then error(err, 0) end
      assert.is_true(down, "shutdown did not finish in time after the spinners were killed")
    end

    -- n requests to echo, each with a short timeout; fails at the first one
    -- that gets no answer.
    local function answers(echo, n)
      local elapsed, ok, err = W.timed(function()
        for i = 1, n do assert(echo:request(i, 1) == i) end
      end)
      assert.is_true(ok, tostring(err))
      if W.precise_clock then assert.is_true(elapsed < 3, n .. " requests took " .. elapsed) end
    end

    for _, opts in ipairs({ { workers = 1 }, { workers = 1, time_slice = 0.01 } }) do
      local label = opts.time_slice and "with time_slice = 0.01" or "default time slice"
      it(("(%s) an isolate spinning in a handler does not stop another one from answering on one worker")
        :format(label), function()
        with_spinners(opts, function(c, spinners)
          local echo = c:spawn_isolate(echo_entry)
          local spin = c:spawn_isolate(spinning_entry)
          spinners[1] = spin
          assert.equal("before", echo:request("before", W.TIMEOUT))
          start_spinning(c, spin)
          answers(echo, 20)
          -- a spinning isolate can be killed
          assert.is_true(spin:kill())
          assert.equal("isolate down", wait_down(spin))
          answers(echo, 5)
        end)
      end)
    end

    -- Regression: a handler preempted during boot (the entry function) or
    -- while a reply was delivered used to be resumed in the same turn, and
    -- since the monitor preempts once per turn it then held the worker.
    it("an isolate spinning in its entry function does not stop another one from answering on one worker",
      function()
        with_spinners({ workers = 1 }, function(c, spinners)
          local echo = c:spawn_isolate(echo_entry)
          assert.equal("before", echo:request("before", W.TIMEOUT))
          spinners[1] = c:spawn_isolate(function(ctx)
            ctx:property("main"):send("spinning")
            while true do end
          end, { main = c.main })
          assert.equal("spinning", W.receive(c))
          answers(echo, 20)
        end)
      end)

    -- The same through a reply: the handler resumes from the system queue.
    it("a handler spinning after a request's reply does not stop another one from answering on one worker",
      function()
        with_spinners({ workers = 1 }, function(c, spinners)
          local echo = c:spawn_isolate(echo_entry)
          local spin = c:spawn_isolate(function(ctx)
            ctx:on_message(function(m)
              m.echo:request("x")
              m.main:send("spinning")
              while true do end
            end)
          end)
          spinners[1] = spin
          assert.is_true(spin:send({ echo = echo, main = c.main }))
          assert.equal("spinning", W.receive(c))
          answers(echo, 20)
        end)
      end)

    it("cluster:shutdown(1) with a spinning isolate returns false within a few seconds", function()
      local c = ic.single_node({ workers = 1 })
      local spin = c:spawn_isolate(spinning_entry)
      local echo = c:spawn_isolate(echo_entry)
      start_spinning(c, spin)
      assert.equal("x", echo:request("x", W.TIMEOUT))
      local elapsed, ok, down = W.timed(c.shutdown, c, 1)
      assert.is_true(ok, tostring(down))
      assert.is_false(down)
      if W.precise_clock then
        assert.is_true(elapsed >= 0.9, "gave up too early: " .. elapsed)
        assert.is_true(elapsed < 5, "took " .. elapsed)
      end
      assert.is_nil(c:receive(1))
    end)

    it("rejects a time_slice that is not a positive number", function()
      assert.has_error(function() ic.single_node({ time_slice = 0 }) end)
      assert.has_error(function() ic.single_node({ time_slice = -1 }) end)
      assert.has_error(function() ic.single_node({ time_slice = "fast" }) end)
    end)
  end)

  describe("supervision", function()
    local c
    before_each(function() c = ic.single_node({ workers = 2 }) end)
    after_each(function()
      assert.is_true(c:shutdown())
      c = nil
    end)

    -- The ref the supervisor lists for path (one that differs from old, a
    -- new incarnation, when old is given), or nil; checked against
    -- lookup_isolate by the callers.
    local function supervised(sup, path, old)
      local r = W.wait_until(function()
        for _, child in ipairs(sup:request("children", W.TIMEOUT)) do
          if child.path == path and (old == nil or child.ref ~= old) then return child.ref end
        end
      end)
      if r then assert.equal(r, c:lookup_isolate(path)) end
      return r
    end

    local function children_paths(sup)
      local list = sup:request("children", W.TIMEOUT)
      local paths = {}
      for _, child in ipairs(list) do paths[#paths + 1] = child.path end
      table.sort(paths)
      return paths
    end

    it("a crashed permanent child is restarted at its path: a NEW ref that answers", function()
      local sup = supervisor.spawn(c, {
        intensity = 5, period = 5,
        children = { { path = "/sup1/worker", entry = worker_entry } },
      }, { path = "/sup1" })
      local old = supervised(sup, "/sup1/worker")
      assert.truthy(old, "the child never came up")
      assert.equal("ping", old:request("ping", W.TIMEOUT))
      assert.is_true(old:send("crash"))
      local new = supervised(sup, "/sup1/worker", old)
      assert.truthy(new, "the child was not restarted")
      assert.is_false(new == old)
      assert.equal("pong", new:request("pong", W.TIMEOUT))
      assert.equal("isolate down", wait_down(old))
      -- a permanent child that stops normally is restarted too (OTP semantics)
      assert.equal("stopping", new:request("stop", W.TIMEOUT))
      local third = supervised(sup, "/sup1/worker", new)
      assert.truthy(third, "the normally stopped permanent child was not restarted")
      assert.equal("again", third:request("again", W.TIMEOUT))
      -- request("children") lists { path, ref } of the running children
      local list = sup:request("children", W.TIMEOUT)
      assert.equal(1, #list)
      assert.equal("/sup1/worker", list[1].path)
      assert.equal(third, list[1].ref)
    end)

    it("transient: not restarted after a normal stop, restarted after a crash", function()
      local sup = supervisor.spawn(c, {
        children = {
          { path = "/t/normal", entry = worker_entry, restart = "transient" },
          { path = "/t/crash", entry = worker_entry, restart = "transient" },
        },
      })
      local normal = supervised(sup, "/t/normal")
      local crash = supervised(sup, "/t/crash")
      assert.truthy(normal and crash, "children never came up")
      assert.same({ "/t/crash", "/t/normal" }, children_paths(sup))
      assert.equal("stopping", normal:request("stop", W.TIMEOUT))
      assert.is_true(crash:send("crash"))
      local new = supervised(sup, "/t/crash", crash)
      assert.truthy(new, "the crashed transient child was not restarted")
      assert.equal("ok", new:request("ok", W.TIMEOUT))
      -- once the supervisor has dropped /t/normal from its list, it has
      -- handled its down event; a restart would have happened right there
      assert.truthy(W.wait_until(function()
        local p = children_paths(sup)
        return #p == 1 and p[1] == "/t/crash"
      end), "the supervisor still lists /t/normal")
      assert.is_nil(c:lookup_isolate("/t/normal"))
    end)

    it("temporary: never restarted, even after a crash", function()
      local sup = supervisor.spawn(c, {
        children = {
          { path = "/tmp/child", entry = worker_entry, restart = "temporary" },
          { path = "/tmp/other", entry = worker_entry, restart = "temporary" },
        },
      })
      local child = supervised(sup, "/tmp/child")
      assert.truthy(child, "the child never came up")
      assert.truthy(supervised(sup, "/tmp/other"), "the other child never came up")
      assert.is_true(child:send("crash"))
      assert.truthy(W.wait_until(function()
        local p = children_paths(sup)
        return #p == 1 and p[1] == "/tmp/other"
      end), "the supervisor still lists /tmp/child")
      assert.is_nil(c:lookup_isolate("/tmp/child"))
    end)

    it('too many restarts take the supervisor down ("restart intensity"), its children with it', function()
      spawn_watcher(c)
      local sup = supervisor.spawn(c, {
        intensity = 2, period = 10,
        children = {
          { path = "/int/good", entry = echo_entry },
          { path = "/int/bad", entry = function() error("always fails") end },
        },
      }, { path = "/int" })
      local reason = reason_of(c, sup)
      assert.matches("^error: ", reason)
      assert.truthy(contains(reason, "restart intensity"), reason)
      assert.truthy(contains(reason, "/int/bad"), reason)
      assert.truthy(W.wait_until(function()
        return c:lookup_isolate("/int/good") == nil and c:lookup_isolate("/int/bad") == nil
          and c:lookup_isolate("/int") == nil
      end), "the supervisor's children are still registered")
      local ok, why = sup:send("children")
      assert.is_false(ok)
      assert.equal("isolate down", why)
    end)

    it("a restarted child is linked to the supervisor: killing the supervisor stops it", function()
      spawn_watcher(c)
      local sup = supervisor.spawn(c, { children = { { path = "/k/w", entry = worker_entry } } })
      local old = supervised(sup, "/k/w")
      assert.truthy(old)
      assert.is_true(old:send("crash"))
      local new = supervised(sup, "/k/w", old)
      assert.truthy(new, "not restarted")
      assert.is_true(sup:kill())
      assert.equal("shutdown", reason_of(c, new))
      assert.is_nil(c:lookup_isolate("/k/w"))
    end)

    it("bad specs raise clear errors at the caller", function()
      local function bad(spec, text)
        local err = error_of(supervisor.spawn, c, spec)
        assert.truthy(contains(err, text), err)
      end
      bad({ children = { { entry = echo_entry, restart = "sometimes" } } },
        "children[1].restart must be permanent, transient or temporary")
      bad("nope", "supervisor spec must be a table")
      bad({}, "children")
      bad({ intensity = -1, children = {} }, "intensity")
      bad({ intensity = 1.5, children = {} }, "intensity")
      bad({ period = 0, children = {} }, "period")
      bad({ children = { { entry = 42 } } }, "children[1].entry")
      bad({ children = { { entry = echo_entry, path = "/dir/" } } }, "children[1].path")
      -- the error points at the caller's line, not inside the supervisor module
      local err = error_of(function()
        supervisor.spawn(c, { children = { { entry = echo_entry, restart = "sometimes" } } })
      end)
      assert.truthy(contains(err, "lifecycle_spec.lua"), err)
    end)
  end)

  describe("memory_limit", function()
    it('an isolate over its memory_limit goes down with a "memory" reason; others are unaffected', function()
      with_cluster({ workers = 2 }, function(c)
        spawn_watcher(c)
        local bystander = c:spawn_isolate(echo_entry)
        local limited_ok = c:spawn_isolate(function(ctx)
          ctx:on_message(function(n)
            local t = {}
            for i = 1, n do t[i] = i end
            return #t
          end)
        end, nil, { memory_limit = 2 * 1024 * 1024 })
        local hog = c:spawn_isolate(function(ctx)
          ctx:on_message(function()
            local t = {}
            for i = 1, 1e8 do t[i] = { i } end
            return #t
          end)
        end, nil, { memory_limit = 2 * 1024 * 1024 })
        -- a small job fits in the limit
        assert.equal(1000, limited_ok:request(1000, W.TIMEOUT))
        assert.is_true(hog:send("eat"))
        local reason = reason_of(c, hog, 10)
        assert.matches("^error: ", reason)
        assert.truthy(reason:find("memory"), reason)
        assert.equal("fine", bystander:request("fine", W.TIMEOUT))
        assert.equal(1000, limited_ok:request(1000, W.TIMEOUT))
      end)
    end)

    it("rejects a memory_limit that is not a number of bytes", function()
      with_cluster({ workers = 1 }, function(c)
        assert.has_error(function() c:spawn_isolate(echo_entry, nil, { memory_limit = "lots" }) end)
        assert.has_error(function() c:spawn_isolate(echo_entry, nil, { memory_limit = -1 }) end)
      end)
    end)
  end)

  -- "mailbox full" while an isolate is busy is covered in messaging_spec.lua
  -- ("a full mailbox refuses with false, \"mailbox full\"").
end)
