-- busted helper (--helper=spec/support/gcstress.lua): runs the suite with the
-- garbage collector of the main state stressed, so that clusters, refs and
-- every other userdata of isolate_cluster.core are finalized early and often,
-- while isolates still run and messages are still in flight.
--
-- Active only when IC_GC_STRESS is set; loaded without it, it does nothing.
--   IC_GC_STRESS=1 (or "incremental") — incremental mode, never resting:
--       pause 0 starts a new cycle as soon as one ends, and a tiny step size
--       makes the collector run a step after almost every allocation.
--   IC_GC_STRESS=generational — generational mode with minor collections
--       after 1% growth and a major one after 10%: objects that survive one
--       cycle get old and are traversed again only by major collections, the
--       other half of the collector's code.
-- In both modes a full collection also runs at the start and at the end of
-- each test, so a finalizer that runs too early or too late shows up in the
-- test that caused it.
--
-- Cost: the suite runs about 2-4 times slower than without the helper.
-- Only the main state is stressed; isolates have their own lua_States.

local mode = os.getenv("IC_GC_STRESS")
if mode == nil or mode == "" or mode == "0" then return end

local gc_mode
if mode == "generational" or mode == "gen" then
  gc_mode = "generational"
  collectgarbage("generational", 1, 10)
else
  gc_mode = "incremental"
  -- collectgarbage("incremental", pause, stepmul, stepsize): pause 0 — no rest
  -- between cycles; stepmul 200 — twice the default work per step; stepsize
  -- 2^4 = 16 bytes of allocation between steps (default 2^13).
  collectgarbage("incremental", 0, 200, 4)
end

-- Full collections around each test. busted's mediator stops delivering an
-- event when a subscriber returns a false second value, so return nil, true
-- to let the output handlers still see it.
local ok, busted = pcall(require, "busted")
if ok and type(busted) == "table" then
  local has_subscribe, subscribe = pcall(function() return busted.subscribe end)
  if has_subscribe and type(subscribe) == "function" then
    local function full_collect()
      collectgarbage("collect")
      collectgarbage("collect") -- a second pass frees what the first pass's finalizers released
      return nil, true
    end
    subscribe({ "test", "start" }, full_collect)
    subscribe({ "test", "end" }, full_collect)
  end
end

io.stderr:write(("gcstress: main-state GC stressed (%s mode)\n"):format(gc_mode))
