-- Benchmarks of isolate_cluster, each printed beside a C baseline measured
-- in the same run (bench_baseline, built with the project).
--
--   lua5.4 bench/bench.lua [--quick] [--workers N] [--baseline path/to/bench_baseline]
--                          [--only pingpong|mpsc|spawns|copy]
--
-- Each benchmark runs in a fresh process (the script runs itself with --only).
--
-- With LUA_PATH/LUA_CPATH pointing at a build (see README). Figures depend on
-- the machine and its load; compare ratios between runs, not absolutes.
local ic = require("isolate_cluster")

local opts = { quick = false, workers = nil, baseline = nil, only = nil }
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--quick" then opts.quick = true
    elseif a == "--workers" then i = i + 1; opts.workers = tonumber(arg[i])
    elseif a == "--baseline" then i = i + 1; opts.baseline = arg[i]
    elseif a == "--only" then i = i + 1; opts.only = arg[i]
    else error("unknown argument " .. a) end
    i = i + 1
  end
end
if not opts.baseline then
  for _, p in ipairs({ "build/bench_baseline", "build-rel/bench_baseline" }) do
    local f = io.open(p)
    if f then f:close(); opts.baseline = p; break end
  end
end

local scale = opts.quick and 0.01 or 1
local function count(n) return math.max(10, math.floor(n * scale)) end

local function baseline(name, n)
  if not opts.baseline then return nil end
  local p = io.popen(opts.baseline .. " " .. name .. " " .. n)
  local out = p:read("a")
  p:close()
  return tonumber(out)
end

local function report(name, value, unit, base, higher_is_better)
  local fmt = value < 100 and "%14.2f" or "%14.1f"
  local line = string.format("%-34s " .. fmt .. " %-14s", name, value, unit)
  if base then
    local ratio = higher_is_better and value / base or base / value
    line = line .. string.format(" C baseline " .. (base < 100 and "%12.2f" or "%12.1f") .. "  ratio %.2fx",
      base, ratio)
  end
  print(line)
end

local function cluster()
  return ic.single_node({ workers = opts.workers, logger = false })
end

-- Ping-pong: two isolates bounce one message; round trips per second.
local function pingpong(n)
  local c = cluster()
  c:spawn_isolate(function(ctx)
    ctx:on_message(function(msg, sender) sender:send(msg) end)
  end, nil, { path = "/pong" })
  local ping = c:spawn_isolate(function(ctx)
    local pong = ctx:lookup_isolate("/pong", 5)
    local count, report_to, t0 = 0, nil, nil
    ctx:on_message(function(msg, sender)
      if msg == "go" then
        report_to, t0 = sender, ctx:now()
        pong:send(0)
        return
      end
      count = count + 1
      if count == n then report_to:send(ctx:now() - t0) else pong:send(count) end
    end)
  end, nil, { path = "/ping" })
  ping:send("go")
  local dt = c:receive(600)
  c:shutdown()
  return n / dt
end

-- Two producers, one consumer: messages per second into one mailbox.
local function mpsc(n)
  local c = cluster()
  local consumer = c:spawn_isolate(function(ctx)
    local got, t0, report_to = 0, nil, nil
    ctx:on_message(function(msg, sender)
      if type(msg) == "table" then
        report_to, t0 = sender, ctx:now()
        return
      end
      got = got + 1
      if got == 2 * n then report_to:send(ctx:now() - t0) end
    end)
  end, nil, { mailbox = 4 * n + 10 })
  consumer:send({ start = true })
  local producer = function(ctx)
    local target, k = ctx:property("target"), ctx:property("n")
    ctx:on_message(function()
      for i = 1, k do
        while not target:send(i) do ctx:sleep(0.001) end
      end
    end)
  end
  local p1 = c:spawn_isolate(producer, { target = consumer, n = n })
  local p2 = c:spawn_isolate(producer, { target = consumer, n = n })
  p1:send("go")
  p2:send("go")
  local dt = c:receive(600)
  c:shutdown()
  return 2 * n / dt
end

-- Spawn rate and memory per idle isolate (resident set growth).
local function rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s+(%d+)"))
end

local function spawns(n)
  local c = cluster()
  local entry = function(ctx) ctx:on_message(function(m) return m end) end
  collectgarbage()
  local r0 = rss_kb()
  local t0 = ic.now()
  for _ = 1, n do c:spawn_isolate(entry) end
  -- Isolates boot in spawn order on the pool: once the last one answers,
  -- all of them have run their entry functions.
  local last = c:spawn_isolate(entry)
  last:request("ready", 600)
  local t1 = ic.now()
  local r1 = rss_kb()
  local ok = c:shutdown(60)
  local t2 = ic.now()
  return n / (t1 - t0), r0 and r1 and (r1 - r0) / n or nil, ok, t2 - t1
end

-- Copy: a 10,000-entry string -> number table from one isolate to another.
local function copy(n)
  local c = cluster()
  local sink = c:spawn_isolate(function(ctx)
    local got, want, report_to, t0 = 0, nil, nil, nil
    ctx:on_message(function(msg, sender)
      if msg.start then
        want, report_to, t0 = msg.n, sender, ctx:now()
        return
      end
      got = got + 1
      if got == want then report_to:send(ctx:now() - t0) end
    end)
  end, nil, { path = "/sink" })
  local source = c:spawn_isolate(function(ctx)
    local t = {}
    for i = 1, 10000 do t["key" .. i] = i * 0.5 end
    local sink = ctx:lookup_isolate("/sink", 5)
    ctx:on_message(function(k)
      for _ = 1, k do
        while not sink:send(t) do ctx:sleep(0.001) end
      end
    end)
  end)
  sink:send({ start = true, n = n })
  source:send(n)
  local dt = c:receive(600)
  c:shutdown()
  return dt / n * 1000
end

print(string.format("isolate_cluster %s benchmarks, %s workers%s", ic._VERSION,
  opts.workers or "default", opts.quick and " (quick: tiny counts, figures meaningless)" or ""))

-- Without --only, each benchmark runs in a process of its own, so none of
-- them inherits another's threads and allocator arenas (the memory figure
-- in particular would otherwise count memory an earlier one freed).
if opts.only == nil then
  local lua = arg[-1] or "lua5.4"
  local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
  local common = (opts.quick and " --quick" or "") ..
    (opts.workers and " --workers " .. opts.workers or "") ..
    (opts.baseline and " --baseline " .. q(opts.baseline) or "")
  for _, name in ipairs({ "pingpong", "mpsc", "spawns", "copy" }) do
    local p = io.popen(q(lua) .. " " .. q(arg[0]) .. " --only " .. name .. common)
    local out = p:read("a")
    local ok = p:close()
    io.write((out:gsub("^[^\n]*\n", ""))) -- each child's title line
    if not ok then error("benchmark " .. name .. " failed") end
  end
  return
end

local function wanted(name) return opts.only == name end

local n
if wanted("pingpong") then
  n = count(300000)
  report("ping-pong round trips/s", pingpong(n), "rt/s", baseline("pingpong", n), true)
end
if wanted("mpsc") then
  n = count(1000000)
  report("2 producers -> 1 consumer", mpsc(n), "msg/s", baseline("mpsc", n), true)
end
if wanted("spawns") then
  n = count(20000)
  local rate, per, down, shutdown_s = spawns(n)
  report("spawns/s (up and answering)", rate, "spawns/s")
  if per then report("resident memory per idle isolate", per, "KB") end
  report(string.format("shutdown of %d idle isolates", n), shutdown_s * 1000, down and "ms" or "ms (late!)")
end
if wanted("copy") then
  n = count(300)
  report("copy 10,000-entry table", copy(n), "ms/message", baseline("copy", n), false)
end
