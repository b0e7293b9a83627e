-- The runtime every isolate runs, part one: what every isolate needs. It is
-- compiled into the C library and loaded into each new isolate state with
-- the `core` functions of that state. Everything else (waiting, timers,
-- events, the rest of the context) is in runtime_extras.lua, loaded the first
-- time an isolate uses any of it, so an isolate that only handles messages
-- stays small (see docs/design.md, "Memory per isolate").
--
-- Model: handlers run one at a time. The C scheduler resumes one coroutine,
-- the pump, with each message (a light userdata that core.run decodes as it
-- calls the handler) and each event. A message for an idle isolate runs its handler right inside the
-- pump: the fast path, with no bookkeeping. If that handler waits (request,
-- receive, sleep...) or runs out of its time slice, the pump itself becomes
-- the waiting "job": it yields to C, C asks `adopt` for a fresh pump, and the
-- old one, once resumed and finished, simply ends.

local core = ...

local K_USER, K_REQUEST, K_START = 1, 2, 13
local WAIT_NONE, WAIT_BLOCKED = 0, 2

-- (core's coroutine functions: the isolate's coroutine library, opened on
-- first use, has its own resume, wrap and yield, src/lhook.c)
local cocreate, coyield = core.cocreate, core.coyield
local xpcall, pcall, tostring, type, setmetatable = xpcall, pcall, tostring, type, setmetatable
local traceback, take, run, up, reply, children = core.traceback, core.take, core.run, core.up, core.reply,
  core.children

-- Every table, closure and constant here is built in each isolate, so this
-- part holds only what an isolate that boots and handles messages runs;
-- everything else waits in the extras, which get what they share with this
-- part as arguments (see `extras` below) and the state that both change in S.
local S = {
  current = false,    -- the job that waits or was preempted (managed by the extras)
  failed = false,     -- going down: nothing more runs
  queued = false,     -- the extras hold handler runs queued behind a waiting job
  entry_done = false, -- the entry function has returned
}
local handlers = {} -- message, up, down, shutdown...
local jobs = setmetatable({}, { __mode = "k" }) -- coroutine -> job record
core.set_jobs(jobs)
local self_ref = core.self()
local X -- the extras, once loaded
local extras -- loads them
local CONTEXT

local function fail(reason)
  if not S.failed then
    S.failed = true
    core.stop(reason)
  end
end

-- Error values get their traceback where they are raised.
-- An error value as text, also one whose __tostring raises or returns no
-- string: then the text names its type, and the value itself is still
-- what a requester gets.
local function error_text(e)
  local ok, text = pcall(tostring, e)
  if ok then return text end
  return "(error object is a " .. type(e) .. " value; its __tostring failed)"
end
S.error_text = error_text

local function on_error(e)
  -- traceback stops at a NUL byte: written \0, the reason keeps all of it
  return { err = e, trace = traceback((error_text(e):gsub("\0", "\\0")), 2) }
end

local function fail_with(r)
  fail("error: " .. (type(r) == "table" and r.trace or error_text(r)))
end

-- The end of a request handler: its first return value is the reply, its
-- error is raised at the requester. With reply_later the answer comes from
-- elsewhere, unless the handler failed before giving it.
-- An error that is not the table on_error makes was never captured: the
-- handler (or on_error itself) ran out of memory. The isolate goes down
-- with it ("error: not enough memory"), and C fails the request with that
-- reason, as every request still open when an isolate goes down.
local function done_reply(job, ok, r)
  if not ok and type(r) ~= "table" then return fail_with(r) end
  local sender, corr, deferred = job.reply_to, job.corr, job.deferred
  if deferred and (ok or deferred.used) then return end
  -- The handler's error answers a deferred request: its reply function
  -- then raises as after any answer.
  if deferred then deferred.used = true end
  -- reply raises for a value it cannot copy, and returns false, why when
  -- the message cannot be sent (out of memory): either way the requester
  -- gets an error rather than waiting for its timeout.
  if ok then
    local called, sent, why = pcall(reply, sender, corr, true, r)
    if not (called and sent) then
      reply(sender, corr, false, "cannot send the reply: " .. tostring(called and why or sent))
    end
  else
    -- r is on_error's record (a table raised past it, if any, as it is)
    local e = r
    if r.trace then e = r.err end
    local called, sent = pcall(reply, sender, corr, false, e)
    if not (called and sent) then reply(sender, corr, false, error_text(e)) end
  end
end

local pump_job -- the record of the current pump

-- Ending (SPEC §3.7): once the entry function has returned, an isolate with
-- nothing left to run goes down with reason "normal": no message handler,
-- no up/down/shutdown handler, no timer, no waiting or queued handler run
-- (the extras know those), and no linked child still up (a launcher that
-- spawns workers and returns stays while they work). Checked after every
-- dispatch, so also when the last timer fires or is cancelled, a handler is
-- removed, or the last child goes down (C dispatches a check then).
local function pump_body(m, kind)
  local pjob = pump_job
  while true do
    if S.failed then
      -- going down: nothing more runs
    elseif kind == K_USER and not S.current then
      local h = handlers.message
      if h then
        pjob.active = true
        local ok, r = run(h, on_error, m) -- xpcall(h, on_error, take(m)) in one call
        pjob.active = false
        if not ok then fail_with(r) end
        if pjob.adopted then break end
      else
        take(m) -- dropped: without a handler a plain message is an emitter without listeners
      end
    elseif kind == K_REQUEST and not S.current then
      local h = handlers.message
      if not h then
        -- Without a handler a request is answered with an error.
        local _, sender, corr = take(m)
        reply(sender, corr, false, "isolate " .. tostring(self_ref) .. " has no message handler")
      else
        pjob.active = true
        local ok, r = run(h, on_error, m, pjob) -- sets pjob.reply_to, corr and deferred first
        pjob.active = false
        done_reply(pjob, ok, r)
        pjob.reply_to, pjob.corr, pjob.deferred = false, false, false
      end
      if pjob.adopted then break end
    elseif kind == K_START then
      pjob.active, pjob.entry = true, true
      local ok, r = xpcall(m, on_error, CONTEXT)
      pjob.active = false
      S.entry_done = true
      if not ok then
        fail_with(r)
      elseif pjob.entry then
        pjob.entry = false
        up() -- "up": the entry function has returned
      end
      if pjob.adopted then break end
    elseif X then
      -- Replies, timers, events, a preempted handler to resume, shutdown:
      -- each comes only after the extras were loaded; without them a
      -- shutdown has no handler to run.
      X.dispatch(kind, m)
    end
    local mode = WAIT_NONE
    if S.failed then
      mode = WAIT_BLOCKED
    elseif X and (S.current or S.queued) then
      -- (with no job current and nothing queued there is nothing to settle:
      -- the extras' settle would return WAIT_NONE)
      mode = X.settle()
    end
    -- (an isolate with a message handler has something left: checked here
    -- first, as after almost every message)
    if mode == WAIT_NONE and not handlers.message and S.entry_done and not S.failed
      and (not X or X.idle()) and not children() then
      fail("normal")
      mode = WAIT_BLOCKED
    end
    m, kind = coyield(mode)
  end
  -- Adopted: this coroutine waited as a job and has now finished; whoever
  -- resumed it sees DONE.
  return X.DONE, true
end

local function new_pump()
  local co = cocreate(pump_body)
  -- (eight fields, the size of its hash part: the extras add what a job
  -- that waits needs when they adopt it)
  pump_job = {
    co = co, pump = true, adopted = false, active = false, reply_to = false, corr = false, deferred = false,
    entry = false,
  }
  jobs[co] = pump_job
  return co
end

-- ---- the context -------------------------------------------------------------
-- C serves on_message, property and properties (core.context); the first
-- read of any other method loads the extras, which then serve the context's
-- methods from a table.

local ctx_mt
CONTEXT, ctx_mt = core.context(self_ref, handlers, function(k) return extras().methods[k] end)

extras = function()
  if not X then
    local chunk, full_core = core.load_extras()
    X = chunk(S, full_core, handlers, jobs, self_ref, CONTEXT, ctx_mt, fail, on_error, fail_with, done_reply,
      new_pump)
  end
  return X
end

-- Called by C when the pump yielded from inside a handler: to wait (the
-- handler called a waiting function), or preempted (the hook yielded
-- nothing). Returns the new pump and the wait mode.
local function adopt(preempted)
  return extras().adopt(pump_job, preempted)
end

-- ref:request inside an isolate (a tail call keeps error levels right).
core.set_request(function(ref, msg, timeout_s)
  return extras().request(ref, msg, timeout_s)
end)
-- ref:send(msg, wait_s) inside an isolate, once the mailbox was full, calls
-- extras().send_wait.
core.set_send_wait(extras)

return new_pump, adopt
