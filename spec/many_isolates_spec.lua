-- Many isolates at once: a cluster holds tens of thousands of lean isolates
-- alive together and every one of them answers (correctness only: every
-- answer comes, once, from the isolate asked; the resident memory each
-- costs is measured by `bench/bench.lua --only many`), and what one idle
-- isolate holds of Lua heap.
local ic = require("isolate_cluster")
local wait = require("support.wait")

local describe, it, assert, ipairs = describe, it, assert, ipairs
local _ENV = _G

-- Fewer under the sanitizers, valgrind and the GC stress run, which multiply
-- each isolate's memory and time. IC_MANY_ISOLATES sets the count instead:
-- the ctest entry many_isolates (the normal build only) runs this file with
-- CMake's IC_MANY_ISOLATES (see CMakeLists.txt), a million by default.
local slow = (os.getenv("IC_SANITIZE") or "") ~= "" or os.getenv("IC_VALGRIND") ~= nil
  or (os.getenv("IC_GC_STRESS") or "") ~= ""
local N = math.tointeger(tonumber(os.getenv("IC_MANY_ISOLATES") or "")) or (slow and 2000 or 20000)

-- A "Name:   N kB" line of a /proc file (Linux), or nil.
local function proc_kb(file, name)
  local f = io.open(file)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(name .. ":%s+(%d+)"))
end

describe("memory per isolate", function()
  -- Lua heap bytes of an idle echo isolate: what each of very many
  -- isolates costs. The bounds leave room for other Lua 5.4 releases; the
  -- runtime's own share is what they watch (it was 29.4 KB and 27.8 KB when
  -- coroutine and the runtime's context were loaded into every isolate,
  -- 22.9 KB and 21.3 KB while the pump was Lua code loaded into each, 12.2
  -- and 10.5 KB while string, and a lean isolate's base library, were
  -- opened at once; docs/design.md has what is in it now).
  it("an idle isolate holds less than 12 KB of Lua heap", function()
    -- collectgarbage("count") after full collections
    local c = ic.single_node({ workers = 1, logger = false })
    local r = c:spawn_isolate(function(ctx)
      ctx:on_message(function()
        collectgarbage()
        collectgarbage()
        return collectgarbage("count")
      end)
    end)
    local kb = r:request("count", 60)
    assert.is_true(c:shutdown(30))
    assert.is_true(kb < 12, ("%.2f KB"):format(kb))
  end)

  it("a lean idle isolate holds less than 10.5 KB of Lua heap", function()
    -- A global read would open its base library: the heap is read from
    -- outside (stats' memory, as of the end of its last turn, the little
    -- garbage of its boot included).
    local c = ic.single_node({ workers = 1, logger = false })
    local r = c:spawn_isolate(function(ctx)
      ctx:on_message(function() return true end)
    end, nil, { lean = true })
    assert.is_true(r:request("go", 60))
    local bytes = wait.wait_until(function()
      for _, row in ipairs(c:stats({ refs = true }).rows) do
        if row.ref == r and row.memory > 0 then return row.memory end
      end
    end, 30)
    assert.is_true(c:shutdown(30))
    assert.is_true(bytes < 10.5 * 1024, ("%d bytes"):format(bytes))
  end)
end)

describe("many isolates", function()
  it("keep " .. N .. " lean isolates alive at once, each answering one message", function()
    -- Memory: spawning goes in batches, and stops (failing) before the
    -- isolates still to come, at what each of the ones up so far costs,
    -- would take the process past what the machine can spare: what was
    -- available at the start less a quarter of its memory (at least 2 GiB)
    -- for everything else. A million lean isolates take gigabytes; this
    -- never drives the machine into swap or the OOM killer.
    local total, avail = proc_kb("/proc/meminfo", "MemTotal"), proc_kb("/proc/meminfo", "MemAvailable")
    local rss = function() return proc_kb("/proc/self/status", "VmRSS") end
    local budget -- KB of growth the process may reach, or nil where /proc has no say
    if total and avail and rss() then budget = avail - math.max(2 * 1024 * 1024, total // 4) end
    local c = ic.single_node({ workers = 2, logger = false })
    local entry = function(ctx)
      ctx:on_message(function(i, sender)
        if i == "up" then return true end -- (a request: answered by the return)
        sender:send({ i, ctx.isolate_ref })
      end)
    end
    local refs, o, batch = {}, { lean = true }, 10000
    local deadline = wait.now() + (slow and 600 or 900) -- a bound on a hang, not a timing assertion
    collectgarbage()
    local r0 = rss()
    local spawned = 0
    while spawned < N do
      for _ = 1, math.min(batch, N - spawned) do
        spawned = spawned + 1
        refs[spawned] = c:spawn_isolate(entry, nil, o)
      end
      -- Isolates boot in spawn order on the pool: this batch is up once
      -- its last one answers.
      assert.is_true(refs[spawned]:request("up", 600))
      if budget then
        local grown = rss() - r0
        local need = grown / spawned * N
        if need > budget then
          c:shutdown(600)
          error(("%d lean isolates at %.1f KB each (measured over the first %d) need %.1f GiB; "
            .. "this machine can spare %.1f GiB now: set IC_MANY_ISOLATES lower"):format(
            N, grown / spawned, spawned, need / 1048576, budget / 1048576))
        end
      end
      assert.is_true(wait.now() < deadline, "spawning did not finish before the deadline")
    end
    local per_kb = r0 and (rss() - r0) / N
    -- All of them up together (each has a message handler, so none ends on
    -- its own), then one message to each and its answer back.
    local st = c:stats({ rows = false })
    assert.is_true(st.isolates >= N)
    assert.is_true(st.spawned >= N)
    for i = 1, N do
      if not refs[i]:send(i) then error("isolate " .. i .. " refused its message") end
    end
    local seen, got, wrong = {}, 0, 0
    while got < N and wait.now() < deadline do
      local m = c:receive(1)
      if m then
        local i, from = m[1], m[2]
        if seen[i] or refs[i] ~= from then wrong = wrong + 1 end
        seen[i] = true
        got = got + 1
      end
    end
    assert.equal(N, got)
    assert.equal(0, wrong) -- every answer once, from the isolate asked
    assert.is_true(c:shutdown(600))
    if per_kb and N >= 100000 then
      print(("\n%d lean isolates alive at once, %.1f KB resident each"):format(N, per_kb))
    end
  end)
end)
