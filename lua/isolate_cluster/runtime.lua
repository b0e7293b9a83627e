-- The runtime every isolate runs. It is compiled into the C library and
-- loaded into each new isolate state with the `core` functions of that state;
-- it returns the dispatch function the C scheduler calls for every message,
-- reply, timer and event.
--
-- Model: handlers run one at a time, each in a coroutine (a "job"). A job that
-- waits (request, receive, sleep, lookup with a wait) yields back here; while
-- it waits, no other handler starts: ordinary messages stay in the mailbox
-- (receive takes the next one), and timer callbacks and up/down events are
-- queued here and run when the waiting handler has finished. Replies and
-- timers reach a waiting job through the isolate's system queue.

local core = ...

local K_USER, K_REQUEST, K_REPLY, K_REPLY_ERROR, K_TIMER = 1, 2, 3, 4, 5
local K_EVENTS, K_RESUME, K_SHUTDOWN, K_START = 10, 11, 12, 13
local WAIT_NONE, WAIT_RECEIVE, WAIT_BLOCKED, WAIT_PREEMPTED = 0, 1, 2, 3
local EVENT_UP = 1

local cocreate, coresume, coyield, corunning = coroutine.create, coroutine.resume, coroutine.yield,
  coroutine.running
local traceback = debug.traceback
local type, tostring, error, xpcall, pcall, select = type, tostring, error, xpcall, pcall, select
local fmt = string.format

local DONE, WAIT, TIMEOUT = {}, {}, {}
local CONTEXT -- the context handed to the entry function, made at the end

local self_ref = core.self()
local handlers = {}       -- message, up, down, shutdown
local current = nil       -- the job that waits or was preempted
-- A job is a handler run: { co, done, reply_to, corr, deferred, entry, kind,
-- token, timer }. Finished jobs are kept with their coroutine for reuse, so
-- a plain message costs no allocation here.
local jobs = setmetatable({}, { __mode = "k" }) -- coroutine -> job
core.set_jobs(jobs)
local pool, npool = {}, 0
local POOL_MAX = 16
local queue, qhead, qtail = {}, 1, 0 -- handler runs deferred while a job waits
local timers = {}         -- user timers: id -> { fn =, every =, handle = }
local next_timer, next_corr = 0, 0
local failed = false      -- this isolate is going down: run nothing more

local function fail(reason)
  if not failed then
    failed = true
    core.stop(reason)
  end
end

-- Error values get their traceback where they are raised.
local function on_error(e)
  return { err = e, trace = traceback(tostring(e), 2) }
end

local function body(fn, a, b, c, d)
  while true do
    local ok, r = xpcall(fn, on_error, a, b, c, d)
    fn, a, b, c, d = coyield(DONE, ok, r)
  end
end

local step

-- core.running tells the C side which Lua thread runs, so an interrupt or
-- preemption can be aimed at it.
local running = core.running

local function resume(job, ...)
  running(job.co)
  return step(job, coresume(job.co, ...))
end

-- What to do after a job's coroutine has yielded or finished.
step = function(job, resumed, tag, ok, r)
  running() -- back in the calling coroutine
  if not resumed then
    -- body never raises; only an interrupt (kill, shutdown) gets here.
    error(tag, 0)
  end
  if tag == DONE then
    if current == job then current = nil end
    job.done(job, ok, r)
    -- false, not nil: the fields keep their slots, reuse allocates nothing
    job.done, job.reply_to, job.corr, job.deferred = false, false, false, false
    if npool < POOL_MAX and not job.pump then
      npool = npool + 1
      pool[npool] = job
    end
  elseif tag == WAIT then
    current = job
    if job.entry then
      job.entry = false
      core.up() -- "up" also means: the entry function waits
    end
  else
    -- A yield with no values comes from the count hook: out of time slice.
    job.kind = "preempted"
    current = job
  end
end

local function start(fn, done, a, b, c, d, reply_to, corr, entry)
  local job
  if npool > 0 then
    job = pool[npool]
    pool[npool] = nil
    npool = npool - 1
  else
    job = { co = cocreate(body) }
    jobs[job.co] = job
  end
  job.done, job.reply_to, job.corr, job.entry = done, reply_to, corr, entry or false
  running(job.co)
  return step(job, coresume(job.co, fn, a, b, c, d))
end

local function fail_with(r)
  fail("error: " .. (type(r) == "table" and r.trace or tostring(r)))
end

local function done_plain(_, ok, r)
  if not ok then fail_with(r) end
end

local function done_entry(_, ok, r)
  if not ok then return fail_with(r) end
  core.up()
end

-- Runs fn after the waiting job (if any) has finished.
local function enqueue(fn, a, b, c)
  qtail = qtail + 1
  queue[qtail] = { fn, a, b, c }
end

local function drain()
  while not current and not failed and qhead <= qtail do
    local item = queue[qhead]
    queue[qhead] = nil
    qhead = qhead + 1
    start(item[1], done_plain, item[2], item[3], item[4])
  end
  if qhead > qtail then qhead, qtail = 1, 0 end
end

-- The end of a request handler: its first return value is the reply, its
-- error is raised at the requester. With reply_later the answer comes from
-- elsewhere, unless the handler failed before giving it.
local function done_reply(job, ok, r)
  local sender, corr, deferred = job.reply_to, job.corr, job.deferred
  if deferred and (ok or deferred.used) then return end
  if ok then
    local sent, why = pcall(core.reply, sender, corr, true, r)
    if not sent then core.reply(sender, corr, false, "cannot send the reply: " .. tostring(why)) end
  else
    local e = r.err
    if not pcall(core.reply, sender, corr, false, e) then core.reply(sender, corr, false, tostring(e)) end
  end
end

-- A job that waits: records what for, arms the timeout, yields to step().
local function wait(kind, token, timeout, what)
  local co = corunning()
  local job = jobs[co]
  if not job or (job.pump and not job.active) then
    error(fmt("%s can only wait in a handler or entry function of this isolate, "
      .. "not inside a coroutine of its own", what), 3)
  end
  job.kind, job.token, job.timer = kind, token, false
  if timeout then
    next_timer = next_timer + 1
    job.timer = next_timer
    core.timer(next_timer, timeout)
  end
  return coyield(WAIT)
end

local function wake(job, ...)
  current = nil
  job.kind, job.token, job.timer = false, false, false
  return resume(job, ...)
end

local function reply_function(sender, corr, state)
  state = state or {}
  return function(value)
    if state.used then error("this request has already been answered", 2) end
    state.used = true
    return core.reply(sender, corr, true, value)
  end
end

local function handle_message(msg, sender, corr)
  local h = handlers.message
  if corr then
    if not h then
      core.reply(sender, corr, false, "isolate " .. tostring(self_ref) .. " has no message handler")
      return
    end
    start(h, done_reply, msg, sender, nil, nil, sender, corr)
  elseif h then
    start(h, done_plain, msg, sender)
  end
  -- With no handler a plain message is dropped, as in an event emitter
  -- without listeners.
end

local function check_events()
  local ev = core.events()
  for i = 1, #ev, 3 do
    local kind, ref, reason = ev[i], ev[i + 1], ev[i + 2]
    if kind == EVENT_UP then
      if current and current.kind == "lookup" and ref.path == current.token then
        wake(current, ref)
      end
      if handlers.up then enqueue(handlers.up, ref) end
    elseif handlers.down then
      enqueue(handlers.down, ref, reason)
    end
  end
end

local function mode()
  if not current then return WAIT_NONE end
  local k = current.kind
  if k == "receive" then return WAIT_RECEIVE end
  if k == "preempted" then return WAIT_PREEMPTED end
  return WAIT_BLOCKED
end

local function noop() end

local function done_shutdown(_, ok, r)
  if not ok then
    core.log("isolate_cluster: on_shutdown handler of " .. tostring(self_ref) .. " failed: "
      .. (type(r) == "table" and r.trace or tostring(r)))
  end
end

-- Everything but a message for an idle isolate.
local function dispatch_other(kind, value, sender, corr)
  if kind == K_USER or kind == K_REQUEST then
    local c = kind == K_REQUEST and corr or nil
    if current and current.kind == "receive" then
      wake(current, value, sender, c and reply_function(sender, c) or nil)
    else
      handle_message(value, sender, c)
    end
  elseif kind == K_REPLY or kind == K_REPLY_ERROR then
    if current and current.kind == "reply" and current.token == corr then
      wake(current, kind == K_REPLY, value)
    end
    -- Otherwise a late reply to a request that timed out: dropped.
  elseif kind == K_TIMER then
    if current and current.timer == corr then
      wake(current, TIMEOUT)
    else
      local t = timers[corr]
      if t then
        if t.every then core.timer(corr, t.every) else timers[corr] = nil end
        enqueue(t.fn, t.handle)
      end
    end
  elseif kind == K_EVENTS then
    check_events()
  elseif kind == K_RESUME then
    if current and current.kind == "preempted" then wake(current) end
  elseif kind == K_SHUTDOWN then
    local h = handlers.shutdown
    -- Runs to completion or to its first wait; the isolate stops after.
    if h then start(h, done_shutdown) end
  elseif kind == K_START then
    start(value, done_entry, CONTEXT, nil, nil, nil, nil, nil, true)
  end
end

--[[ The pump.
The C scheduler resumes one coroutine, the pump, with each message (as a
light userdata that `take` decodes) and event. A message for an idle isolate
runs its handler right here, inside the pump, without any job bookkeeping:
the fast path. If that handler waits (or is preempted), the pump itself
becomes the waiting job: it yields to C, C asks `adopt` for a fresh pump,
and the old one, once resumed and finished, ends as a job does. ]]
local take = core.take
local pump_job = nil

local function new_job_record(co)
  return { co = co, pump = true, adopted = false, active = false, done = noop,
    reply_to = false, corr = false, deferred = false, kind = false, token = false,
    timer = false, entry = false }
end

local function pump_body(m, kind)
  local pjob = pump_job
  while true do
    if failed then
      -- going down: nothing more runs
    elseif kind == K_USER or kind == K_REQUEST then
      local value, sender, corr = take(m)
      local h = handlers.message
      if h and not current and qhead > qtail then
        if kind == K_REQUEST then
          pjob.reply_to, pjob.corr, pjob.deferred = sender, corr, false
          pjob.active = true
          local ok, r = xpcall(h, on_error, value, sender)
          pjob.active = false
          done_reply(pjob, ok, r)
          pjob.reply_to, pjob.corr, pjob.deferred = false, false, false
        else
          pjob.active = true
          local ok, r = xpcall(h, on_error, value, sender)
          pjob.active = false
          if not ok then fail_with(r) end
        end
        if pjob.adopted then break end
      else
        dispatch_other(kind, value, sender, kind == K_REQUEST and corr or nil)
      end
    elseif kind == K_START then
      dispatch_other(kind, m)
    else
      local value, sender, corr
      if m then value, sender, corr = take(m) end
      dispatch_other(kind, value, sender, corr)
    end
    if not failed then drain() end
    m, kind = coyield(failed and WAIT_BLOCKED or mode())
  end
  -- Adopted: this coroutine waited as a job and has now finished; it ends
  -- and whoever resumed it (step) sees DONE.
  return DONE, true
end

local function spawn_pump()
  local co = cocreate(pump_body)
  pump_job = new_job_record(co)
  jobs[co] = pump_job
  return co
end

-- Called by C when the pump yielded from inside a handler: waiting (the
-- handler called a waiting function) or preempted (no values).
local function adopt(preempted)
  local old = pump_job
  old.adopted = true
  old.done = noop
  if preempted then old.kind = "preempted" end
  current = old
  if old.entry then
    old.entry = false
    core.up()
  end
  return spawn_pump(), mode()
end

-- ---- the context handed to the entry function --------------------------------

local Timer = {}
Timer.__index = Timer
function Timer:cancel()
  timers[self.id] = nil
end

local function check_self(ctx, name)
  if ctx ~= CONTEXT then error(fmt("context:%s must be called with ':'", name), 3) end
end

local context = {}
context.__index = context

function context:property(key)
  check_self(self, "property")
  return self_ref:property(key)
end

function context:properties()
  check_self(self, "properties")
  return self_ref:properties()
end

local function check_fn(fn, what)
  if type(fn) ~= "function" then error(fmt("%s expects a function, got %s", what, type(fn)), 3) end
end

function context:on_message(fn)
  check_self(self, "on_message")
  check_fn(fn, "on_message")
  handlers.message = fn
end

function context:on_isolate_up(fn, opts)
  check_self(self, "on_isolate_up")
  check_fn(fn, "on_isolate_up")
  handlers.up = fn
  local existing = core.subscribe(opts and opts.existing or false)
  if existing then
    for i = 1, #existing do enqueue(fn, existing[i]) end
  end
end

function context:on_isolate_down(fn)
  check_self(self, "on_isolate_down")
  check_fn(fn, "on_isolate_down")
  handlers.down = fn
  core.subscribe(false)
end

function context:on_shutdown(fn)
  check_self(self, "on_shutdown")
  check_fn(fn, "on_shutdown")
  handlers.shutdown = fn
end

function context:spawn_isolate(entry, properties, opts)
  check_self(self, "spawn_isolate")
  return core.spawn(entry, properties, opts)
end

function context:lookup_isolate(path, wait_s)
  check_self(self, "lookup_isolate")
  local ref = core.lookup(path)
  if ref or not wait_s or wait_s <= 0 then return ref end
  core.subscribe(false)
  ref = core.lookup(path) -- it may have come up while subscribing
  if ref then return ref end
  local r = wait("lookup", path, wait_s, "context:lookup_isolate")
  if r == TIMEOUT then return core.lookup(path) end
  return r
end

function context:lookup_isolates(prefix)
  check_self(self, "lookup_isolates")
  return core.lookup_prefix(prefix)
end

function context:receive(timeout_s)
  check_self(self, "receive")
  if timeout_s ~= nil and type(timeout_s) ~= "number" then
    error("receive expects a timeout in seconds or nil", 2)
  end
  local msg, sender, reply = wait("receive", nil, timeout_s, "context:receive")
  if msg == TIMEOUT then return nil end
  return msg, sender, reply
end

function context:sleep(seconds)
  check_self(self, "sleep")
  if type(seconds) ~= "number" then error("sleep expects a number of seconds", 2) end
  wait("sleep", nil, seconds, "context:sleep")
end

local function add_timer(seconds, fn, every, name)
  if type(seconds) ~= "number" then error(name .. " expects a number of seconds", 3) end
  check_fn(fn, name)
  next_timer = next_timer + 1
  local t = setmetatable({ id = next_timer }, Timer)
  timers[next_timer] = { fn = fn, every = every and seconds or nil, handle = t }
  core.timer(next_timer, seconds)
  return t
end

function context:after(seconds, fn)
  check_self(self, "after")
  return add_timer(seconds, fn, false, "after")
end

function context:every(seconds, fn)
  check_self(self, "every")
  if type(seconds) == "number" and seconds <= 0 then error("every expects a positive interval", 2) end
  return add_timer(seconds, fn, true, "every")
end

-- Monotonic seconds (for measuring intervals; not wall-clock time).
function context:now()
  return core.now()
end

function context:stop(reason)
  check_self(self, "stop")
  fail(reason and tostring(reason) or "normal")
end

function context:shutdown_cluster(timeout_s)
  check_self(self, "shutdown_cluster")
  core.shutdown_cluster(timeout_s)
end

-- Deferred reply: inside a request handler, returns a function that answers
-- the request later (from a timer, another handler...). The handler's own
-- return value is then ignored.
function context:reply_later()
  check_self(self, "reply_later")
  local job = jobs[corunning()]
  if not job or not job.corr then
    error("reply_later can only be called in a handler of a request", 2)
  end
  if job.deferred then error("reply_later was already called for this request", 2) end
  job.deferred = {}
  return reply_function(job.reply_to, job.corr, job.deferred)
end

-- ref:request inside an isolate: suspends only this isolate's job.
local function request(ref, msg, timeout_s)
  if timeout_s == nil then timeout_s = 5 end
  if type(timeout_s) ~= "number" or timeout_s <= 0 then
    error("request timeout must be a positive number of seconds", 2)
  end
  next_corr = next_corr + 1
  local corr = next_corr
  local ok, why = core.request(ref, msg, corr)
  if not ok then error(fmt("request to %s failed: %s", tostring(ref), why), 2) end
  local okr, value = wait("reply", corr, timeout_s, "request")
  if okr == TIMEOUT then
    error(fmt("timeout: no reply from %s within %g s", tostring(ref), timeout_s), 2)
  end
  if okr then return value end
  error(value, 0)
end
core.set_request(request)

CONTEXT = setmetatable({ isolate_ref = self_ref }, context)

return spawn_pump, adopt
