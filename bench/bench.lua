-- Benchmarks of isolate_cluster, each printed beside a C baseline measured
-- in the same run (bench_baseline, built with the project).
--
--   lua5.4 bench/bench.lua [--quick] [--workers N] [--baseline path/to/bench_baseline]
--                          [--only pingpong|reqrep|mpsc|spawns|spawns_lean|copy|parallel|many]
--                          [--n COUNT] [--callgrind] [--budget-mb MB]
--                          [--peers] [--peers-schedulers N]
--
-- Each benchmark runs in a fresh process (the script runs itself with --only).
--
-- --callgrind prints instructions per round trip (ping-pong, request/reply),
-- per message (fan-in) and per spawn instead: each benchmark runs twice
-- under `valgrind --tool=callgrind` with two counts, and the difference of
-- the two totals divided by the difference of the counts is the cost of
-- one more unit of work, start-up and shutdown cancelling out. Instruction
-- counts do not swing with the load on the machine as wall time does.
-- Under valgrind the threads take turns, so it runs with one worker unless
-- --workers says otherwise.
--
-- --only many (not part of the default run) spawns --n lean isolates (default
-- 1,000,000) that all stay alive at once, each answering one message, and
-- reports resident memory per isolate; it stops spawning early, and says
-- so, when the process would grow past --budget-mb of resident memory
-- (default 16384: a million lean isolates take about 12 GiB) or past what
-- the machine can spare (what is available less a quarter of its memory,
-- at least 2 GiB, for everything else; the many_isolates test's rule).
--
-- --peers runs the same workloads with the same counts in Erlang/OTP
-- (bench/peers/bench_erlang.erl, compiled into a temporary directory, one
-- fresh `erl +S 2 -noshell` VM per workload; --peers-schedulers sets +S)
-- and prints each Erlang figure on a line below ours, its ratio in the
-- same column as the C baseline's (above 1: ours is better). Without erl
-- on PATH it says so once and runs the rest.
--
-- With LUA_PATH/LUA_CPATH pointing at a build (see README). Figures depend on
-- the machine and its load; compare ratios between runs, not absolutes.
local ic = require("isolate_cluster")

local opts = { quick = false, workers = nil, baseline = nil, only = nil, n = nil, callgrind = false,
  budget_mb = 16384, peers = false, peers_schedulers = 2, peers_ebin = nil }
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--quick" then opts.quick = true
    elseif a == "--workers" then i = i + 1; opts.workers = tonumber(arg[i])
    elseif a == "--baseline" then i = i + 1; opts.baseline = arg[i]
    elseif a == "--only" then i = i + 1; opts.only = arg[i]
    elseif a == "--n" then i = i + 1; opts.n = tonumber(arg[i])
    elseif a == "--callgrind" then opts.callgrind = true
    elseif a == "--budget-mb" then i = i + 1; opts.budget_mb = tonumber(arg[i])
    elseif a == "--peers" then opts.peers = true
    elseif a == "--peers-schedulers" then i = i + 1; opts.peers_schedulers = math.tointeger(tonumber(arg[i]))
    -- (internal: the directory where the parent run compiled the Erlang module)
    elseif a == "--peers-ebin" then i = i + 1; opts.peers = true; opts.peers_ebin = arg[i]
    else error("unknown argument " .. a) end
    i = i + 1
  end
  if not opts.peers_schedulers or opts.peers_schedulers < 1 then error("--peers-schedulers takes a count") end
end
if not opts.baseline then
  for _, p in ipairs({ "build/bench_baseline", "build-rel/bench_baseline" }) do
    local f = io.open(p)
    if f then f:close(); opts.baseline = p; break end
  end
end

local scale = opts.quick and 0.01 or 1
local function count(n) return opts.n or math.max(10, math.floor(n * scale)) end

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

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- The Erlang peer's figures for one workload ({ name = number }, one fresh
-- VM), or nil and what it printed.
local peer_label = "Erlang"
local function peer(workload, n)
  if not opts.peers_ebin then return nil end
  local p = io.popen(string.format("erl +S %d -noshell -pa %s -run bench_erlang main %s %d 2>&1",
    opts.peers_schedulers, q(opts.peers_ebin), workload, n))
  local out = p:read("a")
  local ok = p:close()
  local figures = {}
  for k, v in out:gmatch("(%S+) (%S+)\n") do figures[k] = tonumber(v) end
  if not ok then return nil, (out:gsub("%s+$", "")) end
  return figures
end

-- A line below one of ours: the peer's figure, and ours over it (above 1:
-- ours is better) in the column of the C baseline's ratio.
local function peer_report(label, value, unit, ours, higher_is_better)
  if not value then return end
  local fmt = value < 100 and "%14.2f" or "%14.1f"
  local line = string.format("  %-32s " .. fmt .. " %-14s", label, value, unit)
  if ours and value > 0 and ours > 0 then
    line = line .. string.format(" %-10s %12s  ratio %.2fx", "", "", higher_is_better and ours / value or value / ours)
  end
  print(line)
end

-- Runs workload in the peer and prints its figure key below ours, the line
-- called label (default "Erlang").
local function peer_row(workload, n, key, unit, ours, higher_is_better, label)
  if not opts.peers_ebin then return end
  local figures, err = peer(workload, n)
  if not figures or not figures[key] then
    print(string.format("  %-32s failed: %s", label or peer_label, err or "no figure"))
    return
  end
  peer_report(label or peer_label, figures[key], unit, ours, higher_is_better)
  return figures
end

local function cluster(workers)
  return ic.single_node({ workers = workers or opts.workers, logger = false })
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

-- Request/reply: one isolate asks another n times, one request at a time
-- (each a wait inside a handler); round trips per second.
local function reqrep(n)
  local c = cluster()
  c:spawn_isolate(function(ctx)
    ctx:on_message(function(msg) return msg end)
  end, nil, { path = "/server" })
  local client = c:spawn_isolate(function(ctx)
    local server = ctx:lookup_isolate("/server", 5)
    ctx:on_message(function(k, sender)
      local t0 = ctx:now()
      for i = 1, k do server:request(i, 60) end
      sender:send(ctx:now() - t0)
    end)
  end)
  client:send(n)
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
      if msg.start then
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
        while not target:send({ i, "x" }) do ctx:sleep(0.001) end
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

-- A "Name:   N kB" line of a /proc file (Linux), or nil.
local function proc_kb(file, name)
  local f = io.open(file)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(name .. ":%s+(%d+)"))
end

-- Spawn rate and memory per idle isolate (resident set growth).
local function rss_kb() return proc_kb("/proc/self/status", "VmRSS") end

local function spawns(n, lean)
  local c = cluster()
  local entry = function(ctx) ctx:on_message(function(m) return m end) end
  local o = lean and { lean = true } or nil
  collectgarbage()
  local r0 = rss_kb()
  local t0 = ic.now()
  for _ = 1, n do c:spawn_isolate(entry, nil, o) end
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

-- Many lean isolates alive at once, each answering one message. Spawns in
-- batches and stops early when the resident set would pass the budget.
local function mem_available_kb() return proc_kb("/proc/meminfo", "MemAvailable") end

local function many(n)
  local c = cluster()
  local entry = function(ctx)
    -- (a request, "ready", is answered by the handler's return)
    ctx:on_message(function(i, sender) if i ~= "ready" then sender:send(i) end end)
  end
  local budget = opts.budget_mb * 1024
  local avail, total = mem_available_kb(), proc_kb("/proc/meminfo", "MemTotal")
  if avail and total then
    local spare = avail - math.max(2 * 1024 * 1024, total // 4)
    if spare < budget then budget = spare end
  end
  budget = budget * 0.95 -- the answers take some room after the spawns
  local refs, o, batch = {}, { lean = true }, 10000
  collectgarbage()
  local r0 = rss_kb()
  local t0 = ic.now()
  local spawned, stopped_early = 0, false
  while spawned < n do
    local k = math.min(batch, n - spawned)
    for _ = 1, k do
      spawned = spawned + 1
      refs[spawned] = c:spawn_isolate(entry, nil, o)
    end
    refs[spawned]:request("ready", 600) -- booted in spawn order: all of this batch are up
    local per = (rss_kb() - r0) / spawned
    if spawned < n and rss_kb() + per * math.min(batch, n - spawned) > budget then
      stopped_early = true
      break
    end
  end
  local t1 = ic.now()
  local r1 = rss_kb()
  for i = 1, spawned do refs[i]:send(i) end
  local got, sum = 0, 0
  while got < spawned do
    local v = c:receive(600)
    if not v then error("many: an isolate did not answer") end
    got, sum = got + 1, sum + v
  end
  assert(sum == spawned * (spawned + 1) // 2, "many: wrong answers")
  local t2 = ic.now()
  local live = c:stats({ rows = false }).isolates
  local ok = c:shutdown(600)
  return spawned, (r1 - r0) / spawned, spawned / (t1 - t0), t2 - t1, live, stopped_early, ok
end

-- Scaling: two isolates each run the same arithmetic loop, on one worker
-- and then on two; the speed-up of two workers over one, from the best of
-- three interleaved rounds of each (the C baseline does the same): on a
-- shared machine the best round is the one least disturbed by others.
local function parallel(k)
  local function run(workers)
    local c = cluster(workers)
    local entry = function(ctx)
      ctx:on_message(function(steps, sender)
        local x = 0.0
        for i = 1, steps do x = x + (i % 7) * 0.5 end
        sender:send(x)
      end)
    end
    local a, b = c:spawn_isolate(entry), c:spawn_isolate(entry)
    local t0 = ic.now()
    a:send(k)
    b:send(k)
    c:receive(600)
    c:receive(600)
    local dt = ic.now() - t0
    c:shutdown()
    return dt
  end
  local one, two = math.huge, math.huge
  for _ = 1, 3 do
    one = math.min(one, run(1))
    two = math.min(two, run(2))
  end
  return one / two
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

local lua = arg[-1] or "lua5.4"

-- --peers: find erl, compile the Erlang module once (the run without --only
-- passes the directory on to each benchmark's process) and name the peer.
local function sh_ok(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end
local peers_owned = false
if opts.peers and opts.callgrind then
  print("peers: --peers has no effect with --callgrind")
elseif opts.peers and not opts.peers_ebin then
  if not sh_ok("command -v erl >/dev/null 2>&1 && command -v erlc >/dev/null 2>&1") then
    print("peers: erl not found on PATH; the Erlang figures are left out")
  else
    local src = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/peers/bench_erlang.erl"
    local p = io.popen('mktemp -d "${TMPDIR:-/tmp}/ic-bench-erl.XXXXXX"')
    local dir = p:read("l")
    p:close()
    if dir and sh_ok("erlc -o " .. q(dir) .. " " .. q(src)) then
      opts.peers_ebin, peers_owned = dir, true
      p = io.popen("erl -noshell -eval 'io:put_chars(erlang:system_info(otp_release)), halt().' 2>&1")
      local release = p:read("a")
      p:close()
      print(string.format("peers: Erlang/OTP %s, erl +S %d, a fresh VM per workload, the same counts; each figure",
        release:match("^%d+") or "?", opts.peers_schedulers))
      print("       on a line below ours, its ratio ours over Erlang's (above 1: ours is better)")
    else
      if dir then os.execute("rm -rf " .. q(dir)) end
      print("peers: erlc could not compile " .. src .. "; the Erlang figures are left out")
    end
  end
end
local function peers_done()
  if peers_owned then os.execute("rm -rf " .. q(opts.peers_ebin)) end
end

-- Instructions of one run of benchmark name with count n (valgrind's total).
local function instructions(name, n, workers)
  local cmd = "valgrind --tool=callgrind --callgrind-out-file=/dev/null " .. q(lua) .. " " .. q(arg[0]) ..
    " --only " .. name .. " --n " .. n .. " --workers " .. workers .. " 2>&1"
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  local ir = out:match("Collected : (%d+)")
  if not ir then error("callgrind run failed:\n" .. out) end
  return tonumber(ir)
end

if opts.callgrind then
  local workers = opts.workers or 1
  print(string.format("instructions per unit of work (callgrind, %d worker%s, difference of two counts)",
    workers, workers == 1 and "" or "s"))
  local runs = {
    { "pingpong", "ping-pong", "round trip", 20000, 60000 },
    { "reqrep", "request/reply", "round trip", 10000, 30000 },
    { "mpsc", "fan-in 2 -> 1 {i, \"x\"}", "message", 10000, 30000 }, -- per producer
    { "spawns", "spawn (up, idle, shut down)", "isolate", 500, 1500 },
    { "spawns_lean", "lean spawn (up, idle, shut down)", "isolate", 500, 1500 },
  }
  for _, r in ipairs(runs) do
    local name, label, unit, n1, n2 = r[1], r[2], r[3], r[4], r[5]
    if opts.only == nil or opts.only == name then
      if opts.quick then n1, n2 = n1 // 100, n2 // 100 end
      local per_unit = name == "mpsc" and 2 or 1
      local i1, i2 = instructions(name, n1, workers), instructions(name, n2, workers)
      print(string.format("%-34s %14.0f instructions per %s", label, (i2 - i1) / ((n2 - n1) * per_unit), unit))
    end
  end
  return
end

-- Without --only, each benchmark runs in a process of its own, so none of
-- them inherits another's threads and allocator arenas (the memory figure
-- in particular would otherwise count memory an earlier one freed).
if opts.only == nil then
  local common = (opts.quick and " --quick" or "") ..
    (opts.workers and " --workers " .. opts.workers or "") ..
    (opts.baseline and " --baseline " .. q(opts.baseline) or "") ..
    (opts.peers_ebin and " --peers-ebin " .. q(opts.peers_ebin) .. " --peers-schedulers " .. opts.peers_schedulers
      or "")
  for _, name in ipairs({ "pingpong", "reqrep", "mpsc", "spawns", "spawns_lean", "copy", "parallel" }) do
    local p = io.popen(q(lua) .. " " .. q(arg[0]) .. " --only " .. name .. common)
    local out = p:read("a")
    local ok = p:close()
    io.write((out:gsub("^[^\n]*\n", ""))) -- each child's title line
    if not ok then
      peers_done()
      error("benchmark " .. name .. " failed")
    end
  end
  peers_done()
  return
end

local function wanted(name) return opts.only == name end

local n
if wanted("pingpong") then
  n = count(300000)
  local v = pingpong(n)
  report("ping-pong round trips/s", v, "rt/s", baseline("pingpong", n), true)
  peer_row("pingpong", n, "rate", "rt/s", v, true)
end
if wanted("reqrep") then
  n = count(200000)
  local v = reqrep(n)
  report("request/reply round trips/s", v, "rt/s", baseline("pingpong", n), true)
  peer_row("reqrep", n, "rate", "rt/s", v, true, peer_label .. " gen_server:call")
  peer_row("reqrep_ref", n, "rate", "rt/s", v, true, peer_label .. " send + receive on a ref")
end
if wanted("mpsc") then
  n = count(1000000)
  local v = mpsc(n)
  report("2 producers -> 1 consumer {i,\"x\"}", v, "msg/s", baseline("mpsc", n), true)
  peer_row("mpsc", n, "rate", "msg/s", v, true)
end
for _, lean in ipairs({ false, true }) do
  if wanted(lean and "spawns_lean" or "spawns") then
    n = count(20000)
    local rate, per, down, shutdown_s = spawns(n, lean)
    local kind = lean and "lean " or ""
    -- (Erlang's processes are compared with the standard isolates)
    local erl, err
    if not lean and opts.peers_ebin then erl, err = peer("spawns", n) end
    local function erl_line(key, unit, ours, higher_is_better, label)
      if erl and erl[key] then
        peer_report(label or peer_label, erl[key], unit, ours, higher_is_better)
      elseif err then
        print(string.format("  %-32s failed: %s", label or peer_label, err))
        err = nil
      end
    end
    report(kind .. "spawns/s (up and answering)", rate, "spawns/s")
    erl_line("rate", "spawns/s", rate, true)
    if per then
      report("resident memory per idle " .. kind .. "isolate", per, "KB")
      erl_line("rss_kb", "KB", per, false)
    end
    erl_line("process_kb", "KB", nil, false, peer_label .. " erlang:memory(processes)")
    report(string.format("shutdown of %d idle %sisolates", n, kind), shutdown_s * 1000, down and "ms" or "ms (late!)")
    erl_line("shutdown_ms", "ms", shutdown_s * 1000, false)
  end
end
if wanted("copy") then
  n = count(300)
  local v = copy(n)
  report("copy 10,000-entry table", v, "ms/message", baseline("copy", n), false)
  peer_row("copy", n, "ms", "ms/message", v, false, peer_label .. " (a map, binary keys)")
end
if wanted("many") then
  n = opts.n or (opts.quick and 10000 or 1000000)
  local spawned, per, rate, answer_s, live, early, ok = many(n)
  report(string.format("lean isolates alive at once%s", early and " (memory budget reached)" or ""), spawned,
    "isolates")
  report("resident memory per lean isolate", per, "KB")
  report("lean spawns/s (batches of 10,000)", rate, "spawns/s")
  report("one message to each, all answered", answer_s, "s")
  report("isolates up before shutdown", live, ok and "isolates" or "isolates (shutdown late!)")
end
if wanted("parallel") then
  n = count(20000000)
  local v = parallel(n)
  report("2 isolates computing, 2 workers/1", v, "x speed-up", baseline("parallel", n), true)
  peer_row("parallel", n, "speedup", "x speed-up", v, true, peer_label .. " 2 schedulers online/1")
end
peers_done()
