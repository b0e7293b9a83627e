-- The soak test's workload (spec/soak_spec.lua): hundreds of worker isolates
-- send messages to each other at random while the main state spawns, stops,
-- kills and crashes them and a supervisor restarts some; the main state keeps
-- a ledger, so that at the end every message that `send` accepted is shown to
-- have been delivered exactly once to the isolate it was sent to, or counted
-- as a dead letter (cluster:stats().dead_letters), with nothing left over.
--
-- How the ledger stays exact while isolates die at random points: a worker
-- only goes down by a command of the main state, and its last act before it
-- goes (or, for a kill, before the main state kills it) is a final report of
-- every send it made and every message it got. A held or spinning worker
-- runs no timer and no other handler (a waiting handler defers them), so
-- nothing it does is missing from that report; messages still queued when it
-- goes down are the dead letters.
--
-- Every message carries (sender key, seq, target key): a receiver checks that
-- it is the target and that seqs from each sender strictly increase (so a
-- duplicate or a reordering per sender -> receiver is detected where it
-- happens); the main state checks that each delivery matches exactly one
-- accepted send, in bounded memory (only messages in flight are held).
--
-- Main state only: this module holds C functions (through the wait helpers);
-- only `worker` below is copied into isolates, and it captures nothing.
local ic = require("isolate_cluster")
local supervisor = require("isolate_cluster.supervisor")
local wait = require("support.wait")

local M = {}

--- The worker isolate's entry. properties: main (the main state's ref),
--- per_burst (sends per timer tick), interval (seconds between ticks).
function M.worker(ctx)
  local props = ctx:properties()
  local main, per_burst, interval = props.main, props.per_burst, props.interval
  local me = tostring(ctx.isolate_ref)
  local seq, bursts, timer = 0, 0, nil
  local sent, got, bad = {}, {}, {}
  local last = {} -- sender key -> last seq received from it
  local targets, keys = {}, {}
  local refused_down, refused_full = 0, 0

  local function report(final)
    local ok, why = main:send({ "report", me, sent, got, bad, refused_down, refused_full, final })
    if not ok then error("soak worker: the main state refused a report: " .. tostring(why)) end
    sent, got, bad = {}, {}, {}
    refused_down, refused_full = 0, 0
  end

  local function burst()
    bursts = bursts + 1
    if bursts % 16 == 1 or #targets == 0 then
      targets = ctx:lookup_isolates("/w/")
      for i = 1, #targets do keys[i] = tostring(targets[i]) end
      for i = #targets + 1, #keys do keys[i] = nil end
    end
    if #targets == 0 then return end
    for _ = 1, per_burst do
      local i = math.random(#targets)
      seq = seq + 1
      -- Sizes vary: most messages are small, some carry a nested table.
      local payload
      local r = math.random(10)
      if r == 1 then
        payload = { list = { 1, 2.5, "x", true }, text = string.rep("p", math.random(0, 300)) }
      elseif r == 2 then
        payload = string.rep("q", math.random(0, 2000))
      else
        payload = seq
      end
      local ok, why = targets[i]:send({ "m", me, seq, keys[i], payload })
      if ok then
        sent[#sent + 1] = keys[i]
        sent[#sent + 1] = seq
      elseif why == "isolate down" then
        refused_down = refused_down + 1
      elseif why == "mailbox full" then
        refused_full = refused_full + 1
      else
        bad[#bad + 1] = "send refused for an unexpected reason: " .. tostring(why)
      end
    end
    report(false)
  end

  local function control(cmd, cseq)
    got[#got + 1] = "main"
    got[#got + 1] = cseq
    if cmd == "go" then
      if not timer then timer = ctx:every(interval, burst) end
      report(false)
    elseif cmd == "quiet" then
      if timer then timer:cancel(); timer = nil end
      report(false)
      main:send({ "quiet", me })
    elseif cmd == "finish" then
      -- Drop the refs to isolates that went down, so that messages which
      -- raced into them are counted as dead letters now, not at shutdown.
      targets, keys = {}, {}
      collectgarbage()
      report("finish")
    elseif cmd == "hold" then
      report("hold")
      ctx:sleep(3600) -- until killed
    elseif cmd == "spin" then
      report("spin")
      local x = 0
      while true do x = x + 1 end -- until killed (preempted meanwhile)
    elseif cmd == "crash" then
      report("crash")
      error("soak: crash on command")
    elseif cmd == "stop" then
      report("stop")
      ctx:stop()
    else
      bad[#bad + 1] = "unknown command " .. tostring(cmd)
    end
  end

  ctx:on_message(function(m)
    local kind = m[1]
    if kind == "m" then
      local from, s = m[2], m[3]
      if m[4] ~= me then bad[#bad + 1] = ("misdelivered: %s#%d for %s reached %s"):format(from, s, m[4], me) end
      local l = last[from]
      if l and s <= l then bad[#bad + 1] = ("out of order or duplicate: %s#%d after #%d"):format(from, s, l) end
      last[from] = s
      got[#got + 1] = from
      got[#got + 1] = s
      if #got >= 256 then report(false) end
    elseif kind == "c" then
      control(m[2], m[3])
    end
  end)
  main:send({ "hello", me, ctx.isolate_ref })
end

local function count_keys(t)
  local n = 0
  for _ in next, t do n = n + 1 end
  return n
end

--- Runs the soak. cfg: workers (initial plain workers), supervised (children of
--- one supervisor), messages (accepted sends to reach), seconds (minimum run
--- time, 0 = until `messages`), deadline (seconds; the run fails past it),
--- per_burst, interval, chaos_every (seconds between faults), hold_s (how
--- long a held or spinning worker lives before it is killed). Returns the
--- figures table; raises on any inconsistency.
function M.run(cfg)
  local cluster = ic.single_node({ logger = false })
  local main = cluster.main
  local t_start = wait.now()
  local hard_deadline = t_start + cfg.deadline
  local props = { main = main, per_burst = cfg.per_burst, interval = cfg.interval }

  local f = { -- the figures
    accepted = 0, delivered = 0, refused_down = 0, refused_full = 0,
    spawned = 0, stopped = 0, killed = 0, crashed = 0, restarts_expected = 0,
    controls_accepted = 0, controls_refused = 0, reports = 0,
  }
  local pending = {}   -- "sender#seq" -> target key: accepted, not yet delivered
  local early = {}     -- "sender#seq" -> receiver key: delivered before its send was reported
  local n_pending, n_early = 0, 0
  local problems = {}
  -- key -> { key =, ref =, supervised =, state = }; state: new (said hello),
  -- going (sending), doomed (told to end), dead, quieting -> quiet (sends no
  -- more), finishing -> finished (reported all it got).
  local workers = {}
  local hellos, expected_hellos = 0, 0
  local ending = false
  local kills = {}     -- { w =, at = }: held or spinning workers to kill at `at`
  local cseq = 0

  local function problem(text)
    if #problems < 20 then problems[#problems + 1] = text end
  end

  local function control(w, cmd)
    cseq = cseq + 1
    -- Waits for room in a small mailbox that is full (it drains: its worker
    -- is not held, or the command would not be sent).
    local ok, why = w.ref:send({ "c", cmd, cseq }, 10)
    if ok then
      f.controls_accepted = f.controls_accepted + 1
      local k = "main#" .. cseq
      if early[k] then early[k] = nil; n_early = n_early - 1
      else pending[k] = w.key; n_pending = n_pending + 1 end
    else
      f.controls_refused = f.controls_refused + 1
      if why ~= "isolate down" then problem("control refused: " .. tostring(why)) end
    end
    return ok
  end

  local function on_report(m)
    local key, sent, got, bad = m[2], m[3], m[4], m[5]
    local w = workers[key]
    f.reports = f.reports + 1
    f.refused_down = f.refused_down + m[6]
    f.refused_full = f.refused_full + m[7]
    for i = 1, #bad do problem(key .. ": " .. bad[i]) end
    for i = 1, #sent, 2 do
      local k = key .. "#" .. sent[i + 1]
      f.accepted = f.accepted + 1
      local r = early[k]
      if r then
        early[k] = nil; n_early = n_early - 1
        if r ~= sent[i] then problem(k .. " sent to " .. sent[i] .. " but delivered to " .. r) end
      else
        pending[k] = sent[i]; n_pending = n_pending + 1
      end
    end
    for i = 1, #got, 2 do
      local k = got[i] .. "#" .. got[i + 1]
      f.delivered = f.delivered + 1
      local t = pending[k]
      if t then
        pending[k] = nil; n_pending = n_pending - 1
        if t ~= key then problem(k .. " sent to " .. t .. " but delivered to " .. key) end
      elseif early[k] then
        problem(k .. " delivered twice")
      else
        early[k] = key; n_early = n_early + 1
      end
    end
    local final = m[8]
    if final and w then
      if final == "hold" or final == "spin" then
        -- Killed a little later, so that messages pile up in its mailbox
        -- (and a small one fills up) meanwhile.
        kills[#kills + 1] = { w = w, at = wait.now() + cfg.hold_s }
      elseif final == "crash" then
        f.crashed = f.crashed + 1
      elseif final == "stop" then
        f.stopped = f.stopped + 1
      end
      if final ~= "finish" then
        w.state = "dead"
        if w.supervised then f.restarts_expected = f.restarts_expected + 1; expected_hellos = expected_hellos + 1 end
      else
        w.state = "finished"
      end
    end
  end

  local function handle(m)
    local kind = m[1]
    if kind == "report" then
      on_report(m)
    elseif kind == "hello" then
      hellos = hellos + 1
      local key, ref = m[2], m[3]
      local w = { key = key, ref = ref, state = "new", supervised = ref.path:sub(1, 5) == "/w/s-" }
      workers[key] = w
      if not ending then
        if control(w, "go") then w.state = "going" end
      end
    elseif kind == "quiet" then
      local w = workers[m[2]]
      if w then w.state = "quiet" end
    end
  end

  local function kill_due(all)
    local keep = {}
    for _, k in ipairs(kills) do
      if all or wait.now() >= k.at then
        if not k.w.ref:kill() then problem(k.w.key .. " was down before its kill") end
        f.killed = f.killed + 1
      else
        keep[#keep + 1] = k
      end
    end
    kills = keep
  end

  local function pump(timeout)
    kill_due(ending)
    local m = cluster:receive(timeout)
    if m == nil then return false end
    handle(m)
    -- Take what else is there without waiting.
    for _ = 1, 500 do
      m = cluster:receive(0)
      if m == nil then break end
      handle(m)
    end
    return true
  end

  local plain = 0 -- plain workers spawned and not doomed
  local function spawn_worker(opts)
    plain = plain + 1
    expected_hellos = expected_hellos + 1
    f.spawned = f.spawned + 1
    cluster:spawn_isolate(M.worker, props, opts or { path = "/w/" })
  end

  local function pick(pred)
    local list = {}
    for _, w in next, workers do
      if w.state == "going" and pred(w) then list[#list + 1] = w end
    end
    table.sort(list, function(a, b) return a.key < b.key end) -- next's order is not reproducible
    if #list == 0 then return nil end
    return list[math.random(#list)]
  end

  -- A fault: cmd to a random going worker that pred accepts; it is doomed
  -- from then on (its final report, then its end, are on the way).
  -- A plain worker that goes is replaced, so that the population holds
  -- through a long soak.
  local function doom(pred, cmd)
    return function()
      local w = pick(pred)
      if w and control(w, cmd) then
        w.state = "doomed"
        if not w.supervised then
          plain = plain - 1
          spawn_worker()
        end
      end
    end
  end
  -- Spawns one more, up to a quarter above the initial population.
  local function grow(opts)
    return function()
      if plain < cfg.workers * 1.25 then
        spawn_worker(opts)
      end
    end
  end
  local function any() return true end
  local function supervised(w) return w.supervised end

  local chaos_actions = {
    grow(),
    grow({ path = "/w/", mailbox = 8 }), -- small: some sends see "mailbox full"
    doom(function(w) return not w.supervised end, "stop"),
    doom(any, "hold"),
    doom(any, "spin"),
    doom(any, "crash"),
    -- The supervisor's children: killed or crashed, restarted at the same path.
    doom(supervised, "hold"),
    doom(supervised, "crash"),
  }

  -- The population.
  for _ = 1, cfg.workers do spawn_worker() end
  local children = {}
  for i = 1, cfg.supervised do
    children[i] = { path = "/w/s-" .. i, entry = M.worker, properties = props, restart = "permanent" }
    expected_hellos = expected_hellos + 1
  end
  supervisor.spawn(cluster, { intensity = 1000000, period = 1, children = children }, { path = "/sup" })

  local function past_deadline(what)
    if wait.now() > hard_deadline then
      error(("soak: past its deadline while %s (figures: %s)"):format(what, M.describe(f)), 0)
    end
  end

  -- Phase 1: traffic with faults mixed in.
  local next_chaos = wait.now() + cfg.chaos_every
  while f.accepted < cfg.messages or wait.now() - t_start < cfg.seconds do
    past_deadline("sending")
    pump(0.01)
    if wait.now() >= next_chaos then
      chaos_actions[math.random(#chaos_actions)]()
      next_chaos = wait.now() + cfg.chaos_every
    end
  end
  local t_traffic = wait.now() - t_start

  -- Phase 2: no new faults; the doomed finish dying (their final reports
  -- come in), the supervisor's restarts say hello (and get no "go").
  ending = true
  local function count_state(s)
    local n = 0
    for _, w in next, workers do if w.state == s then n = n + 1 end end
    return n
  end
  while count_state("doomed") > 0 or hellos < expected_hellos do
    past_deadline("waiting for the last faults to settle")
    pump(0.05)
  end
  -- Sends cmd to every worker pred accepts, then waits until none of them
  -- is left in state `waiting` (each leaves it by its answer).
  local function command_all(pred, cmd, waiting)
    for _, w in next, workers do
      if pred(w) then
        if control(w, cmd) then w.state = waiting else problem(w.key .. " refused " .. cmd) end
      end
    end
    while count_state(waiting) > 0 do
      past_deadline(cmd)
      pump(0.05)
    end
  end
  -- Quiet every sender, and wait until each says so (its sends are all
  -- reported then).
  command_all(function(w) return w.state == "going" end, "quiet", "quieting")
  -- Now nothing sends. Every live worker reports what it got (a message sent
  -- before "quiet" came back is in its mailbox before "finish").
  local live = count_state("quiet") + count_state("new")
  command_all(function(w) return w.state ~= "dead" end, "finish", "finishing")

  -- The ledger: what was accepted and not delivered must be exactly the dead
  -- letters. (A message that raced into an isolate going down is counted
  -- when the last ref to that isolate goes: so collect garbage meanwhile.)
  f.undelivered = n_pending
  workers = nil
  local dead
  wait.wait_until(function()
    collectgarbage()
    dead = cluster:stats().dead_letters
    return dead >= n_pending
  end, 30, 0.05)
  f.dead_letters = dead
  f.live_at_end = live
  f.seconds = wait.now() - t_start
  f.traffic_seconds = t_traffic
  f.delivered_before_reported = n_early
  local down = cluster:shutdown(10)
  if not down then problem("shutdown did not finish in time") end
  if n_early ~= 0 then problem(n_early .. " deliveries match no accepted send (duplicates or strays)") end
  if dead ~= n_pending then
    problem(("accepted - delivered = %d but dead_letters = %d"):format(n_pending, dead))
  end
  if f.accepted + f.controls_accepted ~= f.delivered + dead then
    problem("the counts do not add up")
  end
  if #problems > 0 then
    error("soak: " .. table.concat(problems, "\n  ") .. "\n(figures: " .. M.describe(f) .. ")", 0)
  end
  return f
end

function M.describe(f)
  local keys = {}
  for k in next, f do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = f[k]
    if math.type(v) == "float" then v = ("%.1f"):format(v) end
    parts[#parts + 1] = k .. "=" .. tostring(v)
  end
  return table.concat(parts, " ")
end

M.count_keys = count_keys

return M
