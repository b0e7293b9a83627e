-- Stress/soak: hundreds of isolates passing messages at random while
-- isolates are spawned, stopped, killed, crashed and restarted by a
-- supervisor; every accepted message is accounted for exactly (delivered once
-- to its receiver, or a dead letter). The workload and the ledger are in
-- spec/support/soak.lua.
--
-- Knobs (environment):
--   IC_SOAK_SECONDS=n   long mode: keep the traffic and the faults going for at
--                       least n seconds (and at least the message count)
--   IC_SOAK_MESSAGES=n  messages `send` must accept (default 100000, also
--                       under the sanitizers; 20000 with IC_VALGRIND set)
--   IC_SOAK_WORKERS=n   initial workers (default 200; 60 with IC_VALGRIND)
--   IC_SOAK_SEED=n      the main state's random seed (printed on failure)
local soak = require("support.soak")

local valgrind = os.getenv("IC_VALGRIND") ~= nil
local slow = (os.getenv("IC_SANITIZE") or "") ~= "" or valgrind
local function knob(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return assert(math.tointeger(tonumber(v)), name .. " must be an integer")
end

describe("soak", function()
  it("accounts for every accepted message under spawns, stops, kills, crashes and restarts", function()
    local seconds = knob("IC_SOAK_SECONDS", 0)
    local seed = knob("IC_SOAK_SEED", os.time())
    math.randomseed(seed)
    local cfg = {
      workers = knob("IC_SOAK_WORKERS", valgrind and 60 or 200),
      supervised = 8,
      messages = knob("IC_SOAK_MESSAGES", valgrind and 20000 or 100000),
      seconds = seconds,
      -- Generous: a bound on a hang, not a timing assertion.
      deadline = seconds + (slow and 600 or 240),
      per_burst = 8,
      interval = 0.02,
      chaos_every = 0.005,
      hold_s = 0.05,
    }
    local ok, f = pcall(soak.run, cfg)
    if not ok then error(tostring(f) .. "\n(seed " .. seed .. ")", 0) end
    io.stderr:write("\nsoak (seed " .. seed .. "): " .. soak.describe(f) .. "\n")
    assert.is_true(f.accepted >= cfg.messages)
    assert.are.equal(f.accepted + f.controls_accepted, f.delivered + f.dead_letters)
    -- The faults really happened, and some messages really were lost to them.
    assert.is_true(f.killed > 0 and f.crashed > 0 and f.stopped > 0 and f.restarts_expected > 0)
    assert.is_true(f.spawned > cfg.workers)
  end)
end)
