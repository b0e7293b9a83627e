-- The lifecycle rules of SPEC §3.6–§3.8 and §3.10, each with the case users
-- trip over: requests fail fast when their receiver goes down (killed,
-- crashed, out of memory, stopped, or queued when it died), a finished wait
-- or a cancelled timer holds nothing back, an isolate with nothing left to
-- run ends, shutdown keeps its deadline even with a thread stuck in C, and
-- Ctrl-C interrupts a main state blocked in the runtime. Also: the
-- preemption hook stays cheap under deep recursion inside a C call.
--
-- Entry functions are COPIED into the new isolate (bytecode + upvalues by
-- value): they never capture the cluster, busted's assert, or the wait
-- helpers. Bounds are generous (a loaded 2-core machine, sanitizers): a
-- fix turns minutes (or a wait for a timeout) into milliseconds, and the
-- specs only tell the two apart.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster, error_of = W.with_cluster, W.error_of

-- True once ref refuses messages (it is down).
local function wait_down(ref, timeout)
  return W.wait_until(function()
    local ok, why = ref:send("probe?")
    return not ok and why
  end, timeout)
end

-- Asks `target` from an isolate of its own; the outcome comes to main as
-- { err = <error text> } or { reply = <value> }.
local function isolate_requester(c, target, msg, timeout)
  c:spawn_isolate(function(ctx)
    local main, t = ctx:property("main"), ctx:property("target")
    local ok, r = pcall(t.request, t, ctx:property("msg"), ctx:property("timeout"))
    main:send(ok and { reply = r } or { err = tostring(r) })
  end, { main = c.main, target = target, msg = msg, timeout = timeout })
end

local function await_outcome(c, timeout)
  return W.receive_match(c, function(m)
    return type(m) == "table" and (m.err ~= nil or m.reply ~= nil)
  end, timeout)
end

local shell_quote, read_all = W.shell_quote, W.read_file

-- For a child that ends with a thread of its own still in a blocking call
-- (left running by a shutdown, by design): leak checking at its exit is
-- off, since what that thread holds is never freed.
local LEAVING_THREADS = "ASAN_OPTIONS=\"${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0\""

-- Starts `code` in a child lua5.4 in the background. Returns its pid and
-- the file its output goes to; the line "@@exit=N" is appended when it ends.
local function start_lua(code)
  local script, out, pidf = os.tmpname(), os.tmpname(), os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  local inner = table.concat({
    "LUA_PATH=" .. shell_quote(package.path), "LUA_CPATH=" .. shell_quote(package.cpath),
    "lua5.4", shell_quote(script), ">", shell_quote(out), "2>&1 </dev/null &",
    "echo $! >", shell_quote(pidf) .. ";", "wait $!;", "echo \"@@exit=$?\" >>", shell_quote(out),
  }, " ")
  assert(os.execute("sh -c " .. shell_quote(inner) .. " >/dev/null 2>&1 &"))
  local pid = W.wait_until(function()
    local p = io.open(pidf)
    local s = p and p:read("a")
    if p then p:close() end
    return s and tonumber(s:match("%d+"))
  end)
  assert(pid, "the child did not start")
  return pid, out
end

-- The state of the child's main thread ("S": asleep, e.g. blocked in a wait).
local function thread_state(pid)
  local s = read_all("/proc/" .. pid .. "/task/" .. pid .. "/stat")
  return s:match("^%d+ %b() (%a)")
end

-- Waits until the child's output contains `marker` and its main thread is
-- asleep (blocked in the call under test, not still on its way to it).
local function await_blocked(pid, out, marker)
  return W.wait_until(function()
    return read_all(out):find(marker, 1, true) and thread_state(pid) == "S"
  end, 20)
end

local function await_exit(out, timeout)
  return W.wait_until(function()
    local s = read_all(out)
    local code = s:match("@@exit=(%d+)")
    return code and { out = s, status = tonumber(code) }
  end, timeout)
end

-- A request left waiting for its whole timeout would take this long: the
-- specs below wait far less for the failure, so only a fast failure passes.
local LONG = 60

describe("lifecycle rules", function()
  describe("failing fast (§3.8)", function()
    -- The target takes the request, tells the killer, then spins (or waits);
    -- the killer kills it. The request must fail at once with the reason.
    local function killed_while_handling(how)
      return function(ctx)
        local killer = ctx:property("killer")
        ctx:on_message(function()
          killer:send(ctx.isolate_ref)
          if how == "spin" then
            while true do end
          else
            ctx:sleep(LONG)
          end
        end)
      end
    end

    local function killer_entry(ctx)
      ctx:on_message(function(victim) victim:kill() end)
    end

    for _, how in ipairs({ "spin", "sleep" }) do
      it(("a request whose receiver is killed while handling it (%s) fails at once: " ..
        '"isolate down: killed" (main state)'):format(how), function()
        with_cluster({ workers = 2 }, function(c)
          local killer = c:spawn_isolate(killer_entry)
          local target = c:spawn_isolate(killed_while_handling(how), { killer = killer })
          local t0 = W.now()
          local err = error_of(function() return target:request("work", LONG) end)
          assert.equal("isolate down: killed", err)
          assert.truthy(W.now() - t0 < LONG / 2, "the request waited for its timeout")
        end)
      end)

      it(("... and in an isolate (%s)"):format(how), function()
        with_cluster({ workers = 2 }, function(c)
          local killer = c:spawn_isolate(killer_entry)
          local target = c:spawn_isolate(killed_while_handling(how), { killer = killer })
          isolate_requester(c, target, "work", LONG)
          local out = await_outcome(c, LONG / 3)
          assert.truthy(out, "the requester got nothing in time")
          assert.equal("isolate down: killed", out.err)
        end)
      end)
    end

    it("requests still queued in the mailbox when the receiver dies fail at once with its reason", function()
      with_cluster({ workers = 3 }, function(c)
        -- The target blocks in C (opening a FIFO) until main releases it: a
        -- kill takes effect when that call returns, and meanwhile requests
        -- queue in its mailbox. A requester is "up" once its entry waits in
        -- request, that is once its request is queued.
        local fifo = os.tmpname()
        os.remove(fifo)
        assert(os.execute("mkfifo " .. W.shell_quote(fifo)))
        local watcher = c:spawn_isolate(function(ctx)
          local main = ctx:property("main")
          ctx:on_isolate_up(function(ref) main:send({ up = ref.path }) end)
          ctx:on_message(function() return "watching" end)
        end, { main = c.main })
        assert.equal("watching", watcher:request("ready?", W.TIMEOUT))
        local target = c:spawn_isolate(function(ctx)
          ctx:property("main"):send("in C")
          local f = io.open(ctx:property("fifo"), "r")
          if f then f:close() end
        end, { main = c.main, fifo = fifo })
        assert.equal("in C", W.receive_match(c, function(m) return m == "in C" end))
        local paths = { "/queued/1", "/queued/2", "/queued/3" }
        for _, path in ipairs(paths) do
          c:spawn_isolate(function(ctx)
            local main, t = ctx:property("main"), ctx:property("target")
            local ok, r = pcall(t.request, t, "queued", 60)
            main:send(ok and { reply = r } or { err = tostring(r) })
          end, { main = c.main, target = target }, { path = path })
        end
        local up = {}
        for _ = 1, #paths do
          local ev = W.receive_match(c, function(m) return type(m) == "table" and m.up end, 20)
          assert.truthy(ev, "a requester did not come up")
          up[#up + 1] = ev.up
        end
        assert.is_true(target:kill())
        -- Releases the target's call, and any open of it still to come: the
        -- kill may take the target between its "in C" and its open. Opened
        -- read-write (on Linux that never waits for a partner) and kept open
        -- until the requesters have their answers.
        local w = assert(io.open(fifo, "r+"))
        for _ = 1, #paths do
          local out = await_outcome(c, LONG / 3)
          assert.truthy(out, "a requester got nothing in time")
          assert.equal("isolate down: killed", out.err)
        end
        w:close()
        os.remove(fifo)
      end)
    end)

    it("a request whose receiver crashes before answering fails at once with the error", function()
      with_cluster({ workers = 2 }, function(c)
        local target = c:spawn_isolate(function(ctx)
          ctx:on_message(function()
            ctx:reply_later() -- the answer would come later...
            ctx:after(0, function() error("crashed on purpose") end) -- ...but it crashes first
          end)
        end)
        local err = error_of(function() return target:request("work", LONG) end)
        assert.matches("^isolate down: error: .*crashed on purpose", err)
      end)
    end)

    it("a request whose receiver stops before answering fails at once with its reason", function()
      with_cluster({ workers = 2 }, function(c)
        local target = c:spawn_isolate(function(ctx)
          ctx:on_message(function()
            ctx:reply_later()
            ctx:stop("gone fishing")
          end)
        end)
        isolate_requester(c, target, "work", LONG)
        local out = await_outcome(c, LONG / 3)
        assert.truthy(out, "the requester got nothing in time")
        assert.equal("isolate down: gone fishing", out.err)
      end)
    end)

    it("a request handler past memory_limit takes its isolate down, and the requester fails at once with " ..
      '"isolate down: error: ... not enough memory"', function()
      with_cluster({ workers = 2 }, function(c)
        local bystander = c:spawn_isolate(W.echo_entry)
        local hog = c:spawn_isolate(function(ctx)
          ctx:on_message(function()
            local t = {}
            for i = 1, 1e8 do t[i] = { i } end
            return #t
          end)
        end, nil, { memory_limit = 2 * 1024 * 1024 })
        local err = error_of(function() return hog:request("eat", LONG) end)
        assert.matches("^isolate down: error: .*not enough memory", err)
        assert.truthy(wait_down(hog), "the isolate stayed up after running out of memory")
        -- the same from an isolate
        local hog2 = c:spawn_isolate(function(ctx)
          ctx:on_message(function()
            local s = {}
            for i = 1, 1e8 do s[i] = ("x"):rep(64) .. i end
            return #s
          end)
        end, nil, { memory_limit = 2 * 1024 * 1024 })
        isolate_requester(c, hog2, "eat", LONG)
        local out = await_outcome(c, LONG / 3)
        assert.truthy(out, "the requester got nothing in time")
        assert.matches("^isolate down: error: .*not enough memory", out.err)
        assert.equal("fine", bystander:request("fine", W.TIMEOUT))
      end)
    end)
  end)

  describe("a finished wait or a cancelled timer holds nothing back (§3.8)", function()
    -- Each waits 15 s if it holds a drain back; a drain that is not held
    -- takes milliseconds. The bound between the two is generous.
    local HELD, BOUND = 15, 7

    local function drain_time(c)
      local took, ok, quiet = W.timed(c.drain, c, 2 * HELD)
      assert.is_true(ok)
      assert.is_true(quiet)
      return took
    end

    it("a finished request (its timeout no longer armed)", function()
      with_cluster({ workers = 2 }, function(c)
        local echo = c:spawn_isolate(W.echo_entry)
        c:spawn_isolate(function(ctx)
          local main, e = ctx:property("main"), ctx:property("echo")
          ctx:on_message(function() end) -- stays up, idle
          main:send({ reply = e:request("hi", ctx:property("held")) })
        end, { main = c.main, echo = echo, held = HELD })
        local out = await_outcome(c, W.TIMEOUT)
        assert.equal("hi", out and out.reply)
        assert.truthy(drain_time(c) < BOUND, "drain waited for the finished request's timeout")
      end)
    end)

    it("an answered receive(timeout)", function()
      with_cluster({ workers = 2 }, function(c)
        local r = c:spawn_isolate(function(ctx)
          local main = ctx:property("main")
          ctx:on_message(function() end)
          main:send({ reply = "waiting" })
          main:send({ reply = ctx:receive(ctx:property("held")) })
        end, { main = c.main, held = HELD })
        assert.equal("waiting", await_outcome(c, W.TIMEOUT).reply)
        assert.is_true(r:send("there you go"))
        assert.equal("there you go", await_outcome(c, W.TIMEOUT).reply)
        assert.truthy(drain_time(c) < BOUND, "drain waited for the answered receive's timeout")
      end)
    end)

    it("a cancelled after(s, f)", function()
      with_cluster({ workers = 2 }, function(c)
        c:spawn_isolate(function(ctx)
          ctx:on_message(function() end)
          local t = ctx:after(ctx:property("held"), function() end)
          t:cancel()
          ctx:property("main"):send({ reply = "cancelled" })
        end, { main = c.main, held = HELD })
        assert.equal("cancelled", await_outcome(c, W.TIMEOUT).reply)
        assert.truthy(drain_time(c) < BOUND, "drain waited for the cancelled timer")
      end)
    end)

    it("an after(s, f) still armed does hold a drain back (it is work to come)", function()
      with_cluster({ workers = 2 }, function(c)
        c:spawn_isolate(function(ctx)
          local main = ctx:property("main")
          ctx:on_message(function() end)
          ctx:after(1, function() main:send("fired") end)
          main:send({ reply = "armed" })
        end, { main = c.main })
        assert.equal("armed", await_outcome(c, W.TIMEOUT).reply)
        assert.is_true(c:drain(2 * HELD))
        assert.equal("fired", c:receive(0))
      end)
    end)

    it("a script that ends without shutdown exits without waiting for a finished request's timeout", function()
      -- The <close> drain waits up to 5 s for timers due before then: the
      -- request's timeout is due within them, and the close must not wait.
      -- `clock` is closed after the cluster (in reverse order): it times
      -- the cluster's close alone.
      local held = 4.5
      local out, status = W.run_lua(([[
        local ic = require("isolate_cluster")
        local start
        local clock <close> = setmetatable({}, { __close = function()
          print(("closed in %%.2f s"):format(ic.now() - start))
        end })
        local c <close> = ic.single_node({ workers = 2 })
        local echo = c:spawn_isolate(function(ctx) ctx:on_message(function(m) return m end) end)
        c:spawn_isolate(function(ctx)
          local e = ctx:property("echo")
          ctx:on_message(function() end)
          ctx:property("main"):send(e:request("done", %g))
        end, { main = c.main, echo = echo })
        print(c:receive(10))
        start = ic.now()
      ]]):format(held), 60)
      assert.equal(0, status, out)
      assert.truthy(out:find("done", 1, true), out)
      local closed = tonumber(out:match("closed in ([%d.]+) s"))
      assert.truthy(closed and closed < held - 1.5, out)
    end)

    it("a dropped cluster with an every(s, f) timer does not stall a later collectgarbage()", function()
      do
        local c = ic.single_node({ workers = 1 })
        c:spawn_isolate(function(ctx) ctx:every(0.01, function() end) end)
        local _ = c.main -- used, then dropped
      end
      local took = W.timed(collectgarbage)
      assert.truthy(took < 3, ("collectgarbage took %.1f s"):format(took))
    end)
  end)

  describe("ending (§3.7)", function()
    -- Forwards every down event to main as { down = ref, reason = }.
    local function spawn_watcher(c)
      local w = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:on_isolate_down(function(ref, reason) main:send({ down = ref, reason = reason }) end)
        ctx:on_message(function() return "watching" end)
      end, { main = c.main })
      assert.equal("watching", w:request("ready?", W.TIMEOUT))
      return w
    end

    local function reason_of(c, ref, timeout)
      local ev = W.receive_match(c, function(m)
        return type(m) == "table" and m.down ~= nil and m.down == ref
      end, timeout)
      assert.truthy(ev, "no down event for " .. tostring(ref))
      return ev.reason
    end

    it("20,000 one-shot task isolates end by themselves: the live count goes back to 0", function()
      with_cluster({ workers = 2 }, function(c)
        local task = function(ctx)
          local n = ctx:property("n")
          local sum = 0
          for i = 1, n do sum = sum + i end
        end
        for i = 1, 20000 do c:spawn_isolate(task, { n = i % 100 }) end
        assert.truthy(W.wait_until(function() return c:stats().isolates == 0 end, 120),
          ("%d isolates still live"):format(c:stats().isolates))
        assert.equal(20000, c:stats().spawned)
      end)
    end)

    it('a one-shot isolate goes down with reason "normal"', function()
      with_cluster({ workers = 2 }, function(c)
        spawn_watcher(c)
        local r = c:spawn_isolate(function() end)
        assert.equal("normal", reason_of(c, r))
      end)
    end)

    it("an isolate with only an on_message handler stays", function()
      with_cluster({ workers = 2 }, function(c)
        spawn_watcher(c)
        local stays = c:spawn_isolate(W.echo_entry)
        local ends = c:spawn_isolate(function() end)
        assert.equal("normal", reason_of(c, ends))
        -- the entry of `stays` has returned before it takes this request
        assert.equal("still here", stays:request("still here", W.TIMEOUT))
      end)
    end)

    it("an isolate that only registered on_isolate_down stays (and hears of others)", function()
      with_cluster({ workers = 2 }, function(c)
        local listener = c:spawn_isolate(function(ctx)
          local main = ctx:property("main")
          ctx:on_isolate_down(function(ref, reason) main:send({ down = ref, reason = reason }) end)
          main:send("listening")
        end, { main = c.main })
        assert.equal("listening", (W.receive(c)))
        local task = c:spawn_isolate(function() end)
        assert.equal("normal", reason_of(c, task))
        assert.is_true(listener:send("are you there?"))
      end)
    end)

    it("an isolate with a pending after(s, f) stays until it fires, then ends if nothing else", function()
      with_cluster({ workers = 2 }, function(c)
        spawn_watcher(c)
        local r = c:spawn_isolate(function(ctx)
          local main = ctx:property("main")
          ctx:after(0.05, function() main:send("fired") end)
        end, { main = c.main })
        assert.equal("fired", (W.receive(c)))
        assert.equal("normal", reason_of(c, r))
      end)
    end)

    it("an every(s, f) timer keeps it up until it is cancelled", function()
      with_cluster({ workers = 2 }, function(c)
        spawn_watcher(c)
        local r = c:spawn_isolate(function(ctx)
          local main, n = ctx:property("main"), 0
          ctx:every(0.01, function(t)
            n = n + 1
            if n == 3 then
              main:send("cancelling")
              t:cancel()
            end
          end)
        end, { main = c.main })
        assert.equal("cancelling", (W.receive(c)))
        assert.equal("normal", reason_of(c, r))
      end)
    end)

    it("an isolate whose handlers are all removed (nil) ends", function()
      with_cluster({ workers = 2 }, function(c)
        spawn_watcher(c)
        local r = c:spawn_isolate(function(ctx)
          ctx:on_shutdown(function() end)
          ctx:on_message(function(m)
            if m == "done" then
              ctx:on_shutdown(nil)
              ctx:on_message(nil)
            end
            return m
          end)
        end)
        assert.equal("ping", r:request("ping", W.TIMEOUT))
        assert.equal("done", r:request("done", W.TIMEOUT))
        assert.equal("normal", reason_of(c, r))
      end)
    end)

    it("a handler replaced inside a handler runs from the next message on, also in a batch", function()
      with_cluster({ workers = 2 }, function(c)
        local r = c:spawn_isolate(function(ctx)
          local main = ctx:property("main")
          local function second(m) main:send("second " .. m) end
          ctx:on_message(function(m)
            main:send("first " .. m)
            ctx:on_message(second)
          end)
        end, { main = c.main })
        -- sent together: the later ones may run in the same resume as the first
        for i = 1, 3 do assert.is_true(r:send(i)) end
        assert.equal("first 1", (W.receive(c)))
        assert.equal("second 2", (W.receive(c)))
        assert.equal("second 3", (W.receive(c)))
        r:kill()
      end)
    end)

    it("an on_shutdown handler keeps it up; a waiting entry too, until its wait ends", function()
      with_cluster({ workers = 2 }, function(c)
        spawn_watcher(c)
        local main = c.main
        local keeper = c:spawn_isolate(function(ctx) ctx:on_shutdown(function() end) end)
        local waiter = c:spawn_isolate(function(ctx)
          local got = ctx:receive(20)
          ctx:property("main"):send({ got = got })
        end, { main = main })
        assert.is_true(waiter:send("wake up"))
        assert.equal("wake up", W.receive_match(c, function(m) return type(m) == "table" and m.got end).got)
        assert.equal("normal", reason_of(c, waiter))
        assert.is_true(keeper:send("still up?"))
      end)
    end)

    it("a launcher that spawns workers and returns stays while they are up, then ends", function()
      with_cluster({ workers = 2 }, function(c)
        spawn_watcher(c)
        local launcher = c:spawn_isolate(function(ctx)
          for _ = 1, 3 do
            ctx:spawn_isolate(function(w)
              w:on_message(function() w:stop() end)
            end, nil, { path = "/launched/" })
          end
        end)
        local workers = W.wait_until(function()
          local l = c:lookup_isolates("/launched/")
          return #l == 3 and l
        end)
        assert.truthy(workers, "the workers did not come up")
        for _, w in ipairs(workers) do
          assert.is_true(launcher:send("probe"), "the launcher ended while its workers were up")
          assert.is_true(w:send("stop"))
          assert.equal("normal", reason_of(c, w))
        end
        assert.equal("normal", reason_of(c, launcher))
      end)
    end)

    it("messages queued for an isolate that ends are dead letters; queued requests fail with the reason", function()
      with_cluster({ workers = 2 }, function(c)
        local r = c:spawn_isolate(function(ctx)
          ctx:property("main"):send("in C")
          os.execute("sleep 1") -- meanwhile a request queues up
        end, { main = c.main })
        assert.equal("in C", (W.receive(c)))
        local err = error_of(function() return r:request("anyone?", LONG) end)
        assert.truthy(err == "isolate down: normal" or err:find("failed: isolate down", 1, true), err)
      end)
    end)
  end)

  describe("shutdown (§3.6)", function()
    it("returns false by its deadline (plus a small margin) while isolates are stuck in a blocking C call; " ..
      "the process still exits normally", function()
      local took, ran, out, status = W.timed(W.run_lua, [[
        local ic = require("isolate_cluster")
        local c = ic.single_node({ workers = 2 })
        local stuck = function(ctx)
          ctx:on_shutdown(function() end)
          ctx:property("main"):send("in C")
          os.execute("exec sleep 12 </dev/null >/dev/null 2>&1") -- holds no pipe of ours
        end
        c:spawn_isolate(stuck, { main = c.main })                        -- on a pool worker
        c:spawn_isolate(stuck, { main = c.main }, { dedicated = true })  -- on a thread of its own
        local free = c:spawn_isolate(function(ctx)
          ctx:on_shutdown(function() ctx:property("main"):send("free one shut down") end)
        end, { main = c.main })
        assert(c:receive(10) == "in C" and c:receive(10) == "in C")
        local t0 = ic.now()
        local ok = c:shutdown(0.5)
        print(("shutdown returned %s after %.2f s"):format(tostring(ok), ic.now() - t0))
        print(c:stats().isolates, "live")
      ]], 60, LEAVING_THREADS)
      assert.is_true(ran)
      assert.equal(0, status, out)
      assert.truthy(out:find("shutdown returned false", 1, true), out)
      local after = tonumber(out:match("after ([%d.]+) s"))
      assert.truthy(after and after < 4, out)
      assert.truthy(took < 10, ("the child ran %.1f s: it waited for the blocking call"):format(took))
    end)
  end)

  describe("a thread left running by shutdown", function()
    it("comes back from its call after the cluster is closed, lets go of everything, and ends", function()
      -- With leak checking on (sanitizer builds): once the thread has ended,
      -- nothing of the cluster is left.
      local out, status = W.run_lua([[
        local function threads()
          for line in io.lines("/proc/self/status") do
            local n = line:match("^Threads:%s+(%d+)")
            if n then return tonumber(n) end
          end
        end
        local ic = require("isolate_cluster")
        ic.single_node({ workers = 1 }):shutdown() -- threads a sanitizer starts once
        -- A joined thread can still be counted for a moment (the kernel
        -- wakes the joiner before it takes the thread off the process's
        -- list): the base is the least count seen over a short while.
        local base = threads()
        for _ = 1, 6 do
          os.execute("sleep 0.05")
          base = math.min(base, threads())
        end
        do
          local c = ic.single_node({ workers = 1 })
          c:spawn_isolate(function(ctx)
            ctx:property("main"):send("in C")
            os.execute("exec sleep 1 </dev/null >/dev/null 2>&1")
          end, { main = c.main })
          assert(c:receive(10) == "in C")
          print("shutdown in time:", c:shutdown(0.2))
          print("threads left:", threads() - base)
        end
        collectgarbage()
        collectgarbage()
        local deadline = ic.now() + 20
        while threads() > base and ic.now() < deadline do os.execute("sleep 0.05") end
        print("threads at the end:", threads() - base)
      ]], 60)
      assert.equal(0, status, out)
      assert.truthy(out:find("shutdown in time:	false", 1, true), out)
      assert.truthy((tonumber(out:match("threads left:%s+(%d+)")) or 0) >= 1, out)
      assert.truthy(out:find("threads at the end:	0", 1, true), out)
    end)
  end)

  describe("Ctrl-C in a plain lua5.4 main state (§3.10)", function()
    local prologue = [[
      local ic = require("isolate_cluster")
      local c = ic.single_node({ workers = 2 })
      local w = c:spawn_isolate(function(ctx)
        ctx:on_shutdown(function() print("on_shutdown ran") end)
        ctx:on_message(function() return "up" end)
      end, nil, { path = "/w" })
      assert(w:request("ready?") == "up")
      local silent = c:spawn_isolate(function(ctx) ctx:on_message(function() ctx:sleep(60) end) end)
      io.stdout:setvbuf("line")
    ]]
    local calls = {
      receive = "c:receive()",
      run = "c:run()",
      request = "silent:request('answer?', 60)",
      lookup = "c:lookup_isolate('/never', 60)",
    }
    for _, name in ipairs({ "receive", "run", "request", "lookup" }) do
      it(("interrupts a blocked %s: the script fails with \"interrupted!\" and on_shutdown handlers run")
        :format(name), function()
        local pid, out = start_lua(prologue .. ([[
          print("blocking")
          %s
          print("not interrupted")
        ]]):format(calls[name]))
        local blocked = await_blocked(pid, out, "blocking")
        if not blocked then os.execute("kill -KILL " .. pid) end
        assert.truthy(blocked, "the child did not block: " .. read_all(out))
        os.execute("kill -INT " .. pid)
        local done = await_exit(out, 20)
        if not done then os.execute("kill -KILL " .. pid) end
        assert.truthy(done, "Ctrl-C did not interrupt " .. name .. ": " .. read_all(out))
        assert.equal(1, done.status, done.out)
        assert.truthy(done.out:find("interrupted!", 1, true), done.out)
        assert.truthy(done.out:find("on_shutdown ran", 1, true), done.out)
        assert.falsy(done.out:find("not interrupted", 1, true), done.out)
      end)
    end

    it("a script that handles the first Ctrl-C can be interrupted again; a Ctrl-C during the final " ..
      "shutdown waits for its on_shutdown handlers", function()
      local pid, out = start_lua([[
        local ic = require("isolate_cluster")
        local c = ic.single_node({ workers = 2 })
        local w = c:spawn_isolate(function(ctx)
          ctx:on_shutdown(function()
            print("on_shutdown started")
            local t = ctx:now() + 1
            while ctx:now() < t do end -- still computing: shutdown gives it until the deadline
            print("on_shutdown done")
          end)
          ctx:on_message(function() return "up" end)
        end)
        assert(w:request("ready?") == "up")
        io.stdout:setvbuf("line")
        print("blocking")
        local ok, e = pcall(c.receive, c)
        print("caught: " .. tostring(e))
        print("blocking again")
        c:run()
        print("not interrupted")
      ]])
      local function cleanup_unless(v)
        if not v then os.execute("kill -KILL " .. pid) end
        return v
      end
      assert.truthy(cleanup_unless(await_blocked(pid, out, "blocking")), read_all(out))
      os.execute("kill -INT " .. pid)
      assert.truthy(cleanup_unless(await_blocked(pid, out, "blocking again")), read_all(out))
      assert.truthy(read_all(out):find("caught: interrupted!", 1, true), read_all(out))
      os.execute("kill -INT " .. pid)
      -- the script fails; closing its cluster runs the on_shutdown handler
      assert.truthy(cleanup_unless(W.wait_until(function()
        return read_all(out):find("on_shutdown started", 1, true)
      end, 20)), read_all(out))
      os.execute("kill -INT " .. pid)
      local done = cleanup_unless(await_exit(out, 20))
      assert.truthy(done, read_all(out))
      assert.truthy(done.out:find("on_shutdown done", 1, true), done.out)
      assert.falsy(done.out:find("not interrupted", 1, true), done.out)
    end)
  end)

  describe("printing", function()
    it("tostring(cluster) prints the node part as refs do (unsigned)", function()
      -- node parts are random: among a few dozen clusters some have the top bit set
      local high = 0
      for _ = 1, 48 do
        local c = ic.single_node({ workers = 1 })
        local node = tostring(c):match("node (%-?%d+)")
        local ref_node = tostring(c.main):match("(%-?%d+):%d+%)$")
        c:shutdown()
        assert.equal(ref_node, node)
        if tonumber(node) >= 2 ^ 31 then high = high + 1 end
      end
      assert.truthy(high > 0, "no node part with the top bit set: the check proved nothing")
    end)
  end)

  describe("the preemption hook", function()
    it('deep recursion in a Lua callback called from C (string.gsub) raises "stack overflow" promptly', function()
      -- Re-arming the hook used to walk the whole call stack every few
      -- instructions: minutes for what plain Lua does in milliseconds.
      with_cluster({ workers = 1 }, function(c)
        local r = c:spawn_isolate(function(ctx)
          ctx:on_message(function()
            local function f() return f() + 1 end
            local ok, e = pcall(string.gsub, "x", ".", function() return tostring(f()) end)
            return ok and "no error" or tostring(e)
          end)
        end)
        assert.matches("stack overflow", r:request("go", 20))
      end)
    end)
  end)
end)
