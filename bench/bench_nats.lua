-- Cross-node benchmark of isolate_cluster over NATS, beside raw cnats figures
-- measured in the same run against the same nats-server (bench/nats_baseline.c):
--
--   messages/s   64-byte messages from this node's main state to an isolate
--                on another node (process), from the first send until a
--                request queued behind the last one is answered
--   round trip   request/reply of 64 bytes to an isolate on the other node:
--                median and p99
--
--   lua5.4 bench/bench_nats.lua [--quick] [--n N] [--rtt-n N] [--rounds R]
--                               [--baseline path/to/nats_baseline]
--
-- Each side is measured R times (default 5, 1 with --quick), alternating
-- raw and ours, and the median of each figure over the rounds is printed
-- (with the best beside it): on a shared machine single runs vary by a
-- factor of 2 or more, and interleaving exposes both sides to the same load.
-- Each round's own ratios (ours / raw, the same round) are printed too, with
-- their spread and the number of rounds that met each goal.
--
-- Starts its own nats-server on a free loopback port and the other node
-- (bench/nats_node.lua) through the spec harness (spec/support/nats.lua), and
-- stops both by pid at the end. Run from the repository root, with
-- LUA_PATH/LUA_CPATH pointing at a build (see README). Goals: at least 50% of
-- the raw throughput, at most 1.5x the raw round-trip time. Figures depend on
-- the machine and its load: compare ratios, not absolutes. Exits with 1 when
-- either side could not be measured.
package.path = "spec/?.lua;" .. package.path
local H = require("support.nats")

local opts = { quick = false, n = nil, rtt_n = nil, rounds = nil, baseline = nil }
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--quick" then opts.quick = true
    elseif a == "--n" then i = i + 1; opts.n = tonumber(arg[i])
    elseif a == "--rtt-n" then i = i + 1; opts.rtt_n = tonumber(arg[i])
    elseif a == "--rounds" then i = i + 1; opts.rounds = tonumber(arg[i])
    elseif a == "--baseline" then i = i + 1; opts.baseline = arg[i]
    else error("unknown argument " .. a) end
    i = i + 1
  end
end
if not opts.baseline then
  for _, p in ipairs({ "build/nats_baseline", "build-rel/nats_baseline" }) do
    local f = io.open(p)
    if f then f:close(); opts.baseline = p; break end
  end
end
local N = opts.n or (opts.quick and 2000 or 500000)
local RTT_N = opts.rtt_n or (opts.quick and 200 or 10000)
local ROUNDS = opts.rounds or (opts.quick and 1 or 5)
local MSG = string.rep("m", 62) -- 64 bytes of MessagePack: a str8 header (2 bytes) and 62 bytes

local function percentile(sorted, p)
  local i = math.max(1, math.min(#sorted, math.floor(#sorted * p) + 1))
  return sorted[i]
end

-- One raw cnats figure: what = "pubsub" (N messages) or "rtt" (RTT_N round trips).
local function raw(url, what)
  if not opts.baseline then return nil, "no nats_baseline (build it, or pass --baseline)" end
  local r = {}
  local p = io.popen(("%s %s %s %d 2>&1"):format(opts.baseline, url, what, what == "pubsub" and N or RTT_N))
  local out = p:read("a")
  p:close()
  for k, v in out:gmatch("(%S+) (%S+)") do r[k] = tonumber(v) end
  if not r[what == "pubsub" and "pubsub_msgs_per_s" or "rtt_median_us"] then return nil, out end
  return r
end

-- Our two nodes, made once for every round: this process (bench-a) and
-- bench/nats_node.lua (bench-b, serving /sink and /echo).
local function ours_start(srv)
  local ok, ic = pcall(require, "isolate_cluster")
  if not ok then return nil, ic end
  local cname = H.unique_name("bench")
  local ok2, c = pcall(ic.node, { nats = srv.url, cluster = cname, name = "bench-a", logger = false })
  if not ok2 or not c then return nil, "ic.node: " .. tostring(c) end
  local node = H.start_node({ path = "bench/nats_node.lua",
    args = { nats = srv.url, cluster = cname, name = "bench-b", lifetime = "3600" } })
  local ok3, err = pcall(function()
    H.wait_output(node, "^ready bench%-b$", 30)
    local sink = assert(c:lookup_isolate("/sink", 15), "no /sink")
    local echo = assert(c:lookup_isolate("/echo", 15), "no /echo")
    for _ = 1, 20 do echo:request(MSG, 10) end -- warm up
    return { sink = sink, echo = echo }
  end)
  if not ok3 then
    c:shutdown(10)
    return nil, err
  end
  err.ic, err.c, err.sent = ic, c, 0
  return err
end

-- Throughput: N messages, from the first send until a request queued behind
-- the last one is answered (the sink counts every message since the start).
local function ours_msgs(o)
  local ic = o.ic
  local ok, r = pcall(function()
    local t0 = ic.now()
    for i = 1, N do
      local sent, why = o.sink:send(MSG, 30)
      if not sent then error("send " .. i .. " refused: " .. tostring(why)) end
    end
    o.sent = o.sent + N
    local got = o.sink:request("count", 120)
    local rate = N / (ic.now() - t0)
    assert(got == o.sent, ("sink got %s of %d"):format(tostring(got), o.sent))
    return { msgs_per_s = rate }
  end)
  if ok then return r end
  return nil, r
end

local function ours_rtt(o)
  collectgarbage() -- the throughput part's garbage is not this part's to collect
  local ic = o.ic
  local ok, r = pcall(function()
    local t = {}
    for i = 1, RTT_N do
      local s = ic.now()
      o.echo:request(MSG, 10)
      t[i] = (ic.now() - s) * 1e6
    end
    table.sort(t)
    return { rtt_median_us = percentile(t, 0.5), rtt_p99_us = percentile(t, 0.99) }
  end)
  if ok then return r end
  return nil, r
end

-- Both tables' keys into one.
local function merge(a, b)
  if not a or not b then return nil end
  for k, v in pairs(b) do a[k] = v end
  return a
end

local srv = H.start_server()
local ok, failure = pcall(function()
  print(("nats-server %s, %d messages, %d round trips, median of %d interleaved rounds"):format(srv.url, N, RTT_N,
    ROUNDS))
  -- Every round's figures, per key; then the median and the best of each.
  local function collect(into, r)
    if not r then return into end
    into = into or {}
    for k, v in pairs(r) do
      into[k] = into[k] or {}
      table.insert(into[k], v)
    end
    return into
  end
  local function summary(all)
    if not all then return nil, nil end
    local med, best = {}, {}
    for k, v in pairs(all) do
      table.sort(v)
      local n = #v
      med[k] = n % 2 == 1 and v[(n + 1) // 2] or (v[n // 2] + v[n // 2 + 1]) / 2
      best[k] = k:find("per_s", 1, true) and v[n] or v[1]
    end
    return med, best
  end
  local base_all, mine_all, berr, merr
  local ratios = { msgs = {}, rtt = {} } -- each round's ours / raw, same round
  local o, oerr = ours_start(srv)
  merr = oerr
  for round = 1, ROUNDS do
    -- Finely interleaved: each figure of ours right after the same raw one.
    local bp, e1 = raw(srv.url, "pubsub")
    local mp, e2 = nil, oerr
    if o then mp, e2 = ours_msgs(o) end
    local br, e3 = raw(srv.url, "rtt")
    local mr, e4 = nil, oerr
    if o then mr, e4 = ours_rtt(o) end
    local b, m = merge(bp, br), merge(mp, mr)
    e1, e2 = e1 or e3, e2 or e4
    base_all, mine_all = collect(base_all, b), collect(mine_all, m)
    berr, merr = berr or e1, merr or e2
    local rm, rr
    if b and m then
      rm, rr = m.msgs_per_s / b.pubsub_msgs_per_s, m.rtt_median_us / b.rtt_median_us
      table.insert(ratios.msgs, rm)
      table.insert(ratios.rtt, rr)
    end
    print(("round %d: raw %s msg/s, %s us median rtt; ours %s msg/s, %s us median rtt (x%s, x%s)"):format(round,
      b and ("%.0f"):format(b.pubsub_msgs_per_s) or "-", b and ("%.1f"):format(b.rtt_median_us) or "-",
      m and ("%.0f"):format(m.msgs_per_s) or "-", m and ("%.1f"):format(m.rtt_median_us) or "-",
      rm and ("%.2f"):format(rm) or "-", rr and ("%.2f"):format(rr) or "-"))
    if not m then print("  ours failed: " .. tostring(e2)) end
    if not b then print("  raw failed: " .. tostring(e1)) end
  end
  if o then o.c:shutdown(10) end
  local base, base_best = summary(base_all)
  local mine, mine_best = summary(mine_all)
  local function row(name, value, unit, ref, higher_better, goal)
    local line = ("%-30s %14s %-6s"):format(name, value and ("%.1f"):format(value) or "-", unit)
    if ref then
      line = line .. ("  raw cnats %12.1f"):format(ref)
      if value then
        local ratio = value / ref
        line = line .. ("  ratio %.2f (goal %s %.2f)"):format(ratio, higher_better and ">=" or "<=", goal)
      end
    end
    print(line)
  end
  row("cross-node messages/s", mine and mine.msgs_per_s, "msg/s", base and base.pubsub_msgs_per_s, true, 0.5)
  row("request round trip, median", mine and mine.rtt_median_us, "us", base and base.rtt_median_us, false, 1.5)
  row("request round trip, p99", mine and mine.rtt_p99_us, "us", base and base.rtt_p99_us, false, 1.5)
  if mine and base then
    print(("best of the rounds: ours %.0f msg/s, %.1f us median rtt; raw %.0f msg/s, %.1f us median rtt"):format(
      mine_best.msgs_per_s, mine_best.rtt_median_us, base_best.pubsub_msgs_per_s, base_best.rtt_median_us))
  end
  -- The spread of the rounds' own ratios, and in how many each goal held.
  local function spread(v, goal, higher_better)
    if #v == 0 then return "-" end
    table.sort(v)
    local met = 0
    for _, x in ipairs(v) do
      if (higher_better and x >= goal) or (not higher_better and x <= goal) then met = met + 1 end
    end
    local n = #v
    local med = n % 2 == 1 and v[(n + 1) // 2] or (v[n // 2] + v[n // 2 + 1]) / 2
    return ("median %.2f (%.2f - %.2f), goal met in %d of %d rounds"):format(med, v[1], v[n], met, n)
  end
  if #ratios.rtt > 0 then
    print("per-round ratio, messages/s:       " .. spread(ratios.msgs, 0.5, true))
    print("per-round ratio, round trip median: " .. spread(ratios.rtt, 1.5, false))
  end
  if not base then print("raw cnats: " .. tostring(berr)) end
  if not mine then print("isolate_cluster: " .. tostring(merr)) end
  return base ~= nil and mine ~= nil
end)
H.cleanup()
if not ok then error(failure, 0) end
-- A part that could not run fails the run (bench smoke tests rely on it).
if not failure then os.exit(1) end
