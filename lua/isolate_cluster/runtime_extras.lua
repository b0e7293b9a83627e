-- The Lua part of the runtime every isolate runs: waiting, timers, up/down
-- events and the rest of the context. The pump, the fast path of messages
-- and requests, the context's on_message, property and properties and the
-- end of a handler are C (src/lpump.c); this chunk is loaded the first time
-- an isolate needs any of the rest, and never by one that only handles
-- messages.
--
-- While a handler waits, no other handler starts: ordinary messages stay in
-- the mailbox (receive takes the next one), and timer callbacks and up/down
-- events are queued here and run when the waiting handler has finished.
-- Replies and timers reach a waiting handler through the isolate's system
-- queue, which the C side delivers even while the isolate is blocked.

-- core: the full core table; the isolate's ref, its context and the
-- context's metatable.
local core, self_ref, CONTEXT, ctx_mt = ...
local cocreate, coresume, coyield, corunning, coisyieldable = core.cocreate, core.coresume, core.coyield,
  core.corunning, core.coisyieldable
local DONE = {} -- what a job's coroutine yields when its handler has finished
local function noop() end

local K_USER, K_REQUEST, K_REPLY, K_REPLY_ERROR, K_TIMER, K_DOWN = 1, 2, 3, 4, 5, 7
local K_EVENTS, K_RESUME, K_SHUTDOWN = 10, 11, 12
local WAIT_NONE, WAIT_RECEIVE, WAIT_BLOCKED, WAIT_PREEMPTED = 0, 1, 2, 3
local EVENT_UP, EVENT_NODE_UP, EVENT_NODE_DOWN = 1, 3, 4

local type, tostring, error, xpcall, setmetatable, getmetatable, next = type, tostring, error, xpcall,
  setmetatable, getmetatable, next
local fmt = string.format
local running, take, check_seconds = core.running, core.take, core.check_seconds
local fail, failed, on_error, fail_with, done_reply = core.fail, core.failed, core.on_error, core.fail_with,
  core.done_reply
local message_handler, pump_job = core.message_handler, core.pump_job

-- A job waits or was preempted (current), handler runs are queued behind
-- it (queued). The pump reads both from its C struct: set_current and
-- set_queued tell it.
local S = { current = false, queued = false }
local pump_current, pump_queued = core.set_current, core.set_queued
local function set_current(job)
  S.current = job
  pump_current(job ~= false)
end
local function set_queued(q)
  S.queued = q
  pump_queued(q)
end
local handlers = {} -- up, down, node_up, node_down, shutdown (the message handler is the pump's)
-- coroutine -> job record (the C pump's run appears here once it is asked
-- for, core.pump_job)
local jobs = setmetatable({}, { __mode = "k" })
core.set_jobs(jobs)

-- The record of the job that runs in co, if any.
local function job_of(co)
  return jobs[co] or pump_job(co)
end

-- The context's methods: the ones C serves itself, and the rest
-- below; from now on the context looks them up in this table.
local methods = {
  on_message = CONTEXT.on_message, property = CONTEXT.property, properties = CONTEXT.properties,
}
ctx_mt.__index = methods

local function check_self(ctx, name)
  if ctx ~= CONTEXT then error(("context:%s must be called with ':'"):format(name), 3) end
end

local WAIT, TIMEOUT = {}, {}
local pool, npool, POOL_MAX = {}, 0, 16
local queue, qhead, qtail = {}, 1, 0 -- handler runs deferred while a job waits
local timers = {}                    -- user timers: id -> { fn =, every =, handle = }
local monitors = {}                  -- armed monitors: id -> { fn =, ref = }
local next_timer, next_corr, next_monitor = 0, 0, 0

-- ---- jobs: handler runs in coroutines of their own -------------------------

local function body(fn, a, b, c, d)
  while true do
    local ok, r = xpcall(fn, on_error, a, b, c, d)
    fn, a, b, c, d = coyield(DONE, ok, r)
  end
end

local step

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
    if S.current == job then set_current(false) end
    job.done(job, ok, r)
    -- false, not nil: the fields keep their slots, reuse allocates nothing
    job.done, job.reply_to, job.corr, job.deferred = false, false, false, false
    if npool < POOL_MAX and not job.pump then
      npool = npool + 1
      pool[npool] = job
    end
  elseif tag == WAIT then
    set_current(job)
    if job.entry then
      job.entry = false
      core.up()
    end
  else
    -- A yield with no values comes from the hook: out of time slice.
    job.kind = "preempted"
    set_current(job)
  end
end

local function start(fn, done, a, b, c, d, reply_to, corr, on_shutdown)
  local job
  if npool > 0 then
    job = pool[npool]
    pool[npool] = nil
    npool = npool - 1
  else
    job = { co = cocreate(body), kind = false, token = false, timer = false, entry = false, on_shutdown = false }
    jobs[job.co] = job
  end
  job.done, job.reply_to, job.corr, job.on_shutdown = done, reply_to or false, corr or false, on_shutdown or false
  running(job.co)
  return step(job, coresume(job.co, fn, a, b, c, d))
end

local function done_plain(_, ok, r)
  if not ok then fail_with(r) end
end

local function done_shutdown(_, ok, r)
  if not ok then
    core.log("isolate_cluster: on_shutdown handler of " .. tostring(self_ref) .. " failed: "
      .. (type(r) == "table" and r.trace or core.error_text(r)))
  end
end

-- Runs fn after the waiting job (if any) has finished.
-- S.queued says whether the queue holds anything (the pump settles only
-- when it does or a job is current).
local function enqueue(fn, a, b, c)
  qtail = qtail + 1
  queue[qtail] = { fn, a, b, c }
  if not S.queued then set_queued(true) end
end

local function drain()
  while not S.current and not failed() and qhead <= qtail do
    local item = queue[qhead]
    queue[qhead] = nil
    qhead = qhead + 1
    start(item[1], done_plain, item[2], item[3], item[4])
  end
  if qhead > qtail then
    qhead, qtail = 1, 0
    if S.queued then set_queued(false) end
  end
end

-- A job waits: records what for, arms the timeout, yields (to step, or to C
-- when the job is a pump).
-- The job that may wait here, or an error (at `level`) saying why not.
local function waiting_job(what, level)
  local job = job_of(corunning())
  if not job or (job.pump and not job.active) then
    error(fmt("%s can only wait in a handler or entry function of this isolate, "
      .. "not inside a coroutine of its own", what), level + 1)
  end
  if not coisyieldable() then
    -- A finalizer, or a callback of a C function (table.sort's comparator,
    -- string.gsub's replacement): Lua cannot suspend through those.
    error(fmt("%s cannot wait inside a finalizer (__gc) or a callback of a C function", what), level + 1)
  end
  if failed() then
    -- context:stop was called: the isolate goes down when this handler
    -- returns, so a wait could never be woken.
    error(fmt("%s cannot wait: this isolate is stopping (context:stop was called)", what), level + 1)
  end
  if job.on_shutdown then
    -- The isolate stops as soon as its on_shutdown handler returns or
    -- waits: a wait there would end it silently, in the middle.
    error(fmt("%s cannot wait in an on_shutdown handler: the isolate stops when the handler returns", what),
      level + 1)
  end
  return job
end

-- (job: from waiting_job, when the caller has just asked it)
local function wait(kind, token, timeout, what, job)
  job = job or waiting_job(what, 3)
  job.kind, job.token, job.timer = kind, token, false
  if timeout then
    next_timer = next_timer + 1
    job.timer = next_timer
    core.timer(next_timer, timeout)
  end
  return coyield(WAIT)
end

-- The wait is over: its timeout, if it has one still armed, goes too (an
-- armed timer holds a drain back, and its isolate).
local function wake(job, ...)
  set_current(false)
  if job.timer then core.cancel_timer(job.timer) end
  job.kind, job.token, job.timer = false, false, false
  return resume(job, ...)
end

local function reply_function(sender, corr, state)
  state = state or {}
  return function(value)
    if state.used then error("this request has already been answered", 2) end
    -- Answered once the value is copied: a reply that raised (a value it
    -- cannot copy) answered nothing, so a second try still can.
    local sent, why = core.reply(sender, corr, true, value)
    state.used = true
    return sent, why
  end
end

-- ---- dispatch ----------------------------------------------------------------

local function mode()
  local cur = S.current
  if not cur then return WAIT_NONE end
  local k = cur.kind
  if k == "receive" then return WAIT_RECEIVE end
  if k == "preempted" then return WAIT_PREEMPTED end
  return WAIT_BLOCKED
end

local function check_events()
  local ev = core.events()
  for i = 1, #ev, 3 do
    local kind, ref, reason = ev[i], ev[i + 1], ev[i + 2]
    if kind == EVENT_UP then
      local cur = S.current
      if cur and cur.kind == "lookup" and ref.path == cur.token then wake(cur, ref) end
      if handlers.up then enqueue(handlers.up, ref) end
    elseif kind == EVENT_NODE_UP then
      -- a node event carries the node's name where an isolate event has a ref
      if handlers.node_up then enqueue(handlers.node_up, ref) end
    elseif kind == EVENT_NODE_DOWN then
      if handlers.node_down then enqueue(handlers.node_down, ref, reason) end
    elseif handlers.down then
      enqueue(handlers.down, ref, reason)
    end
  end
end

-- Everything the pump's fast path does not handle itself.
local function dispatch(kind, m)
  local value, sender, corr
  if m then value, sender, corr = take(m) end
  local cur = S.current
  if kind == K_USER or kind == K_REQUEST then
    local c = kind == K_REQUEST and corr or nil
    if cur and cur.kind == "receive" then
      wake(cur, value, sender, c and reply_function(sender, c) or nil)
    elseif message_handler() then
      if c then
        start(message_handler(), done_reply, value, sender, nil, nil, sender, c)
      else
        start(message_handler(), done_plain, value, sender)
      end
    elseif c then
      core.reply(sender, c, false, "isolate " .. tostring(self_ref) .. " has no message handler")
    end
  elseif kind == K_REPLY or kind == K_REPLY_ERROR then
    if cur and cur.kind == "reply" and cur.token == corr then
      wake(cur, kind == K_REPLY, value)
    end
    -- Otherwise a late reply to a request that timed out: dropped.
  elseif kind == K_TIMER then
    if cur and cur.timer == corr then
      cur.timer = false -- fired: nothing to cancel
      wake(cur, TIMEOUT)
    else
      local t = timers[corr]
      if t then
        if t.every then core.timer(corr, t.every, true) else timers[corr] = nil end
        enqueue(t.fn, t.handle)
      end
    end
  elseif kind == K_DOWN then
    -- A monitor fired (corr = its number; value = the reason): at most once,
    -- and not after a cancel.
    local mon = monitors[corr]
    if mon then
      monitors[corr] = nil
      enqueue(mon.fn, mon.ref, value)
    end
  elseif kind == K_EVENTS then
    check_events()
  elseif kind == K_RESUME then
    if cur and cur.kind == "preempted" then wake(cur) end
  elseif kind == K_SHUTDOWN then
    -- Runs to completion or to its first wait; the isolate stops after.
    if handlers.shutdown then start(handlers.shutdown, done_shutdown, nil, nil, nil, nil, nil, nil, true) end
  end
end

-- After each dispatch: run what was deferred, if nothing waits now.
local function settle()
  if qhead <= qtail and not failed() then drain() end
  local cur = S.current
  if not cur then return WAIT_NONE end
  return mode()
end

-- Nothing here is left to run (see the ending check of the pump, src/lpump.c).
local function idle()
  return not S.current and qhead > qtail and not handlers.up and not handlers.down
    and not handlers.node_up and not handlers.node_down
    and not handlers.shutdown and next(timers) == nil and next(monitors) == nil
end

-- C hands over the pump whose handler waits or was preempted (pjob, its
-- record): it is the current job now, and C makes a new pump. Returns the
-- wait mode.
local function adopt(pjob, preempted)
  pjob.adopted = true
  pjob.done = noop
  if preempted then pjob.kind = "preempted" end
  set_current(pjob)
  if pjob.entry then
    pjob.entry = false
    core.up() -- "up" also means: the entry function waits
  end
  return mode()
end

-- ---- the rest of the context ---------------------------------------------------

local Timer = {}
Timer.__index = Timer
function Timer:cancel()
  if getmetatable(self) ~= Timer then error("timer:cancel must be called with ':' on a timer", 2) end
  if timers[self.id] then
    timers[self.id] = nil
    core.cancel_timer(self.id)
  end
end

local function check_fn(fn, what)
  if type(fn) ~= "function" then error(fmt("%s expects a function, got %s", what, type(fn)), 3) end
end

-- Handlers are removed with nil.
local function check_handler(fn, what)
  if fn ~= nil and type(fn) ~= "function" then
    error(fmt("%s expects a function or nil, got %s", what, type(fn)), 3)
  end
end

function methods:on_isolate_up(fn, opts)
  check_self(self, "on_isolate_up")
  check_handler(fn, "on_isolate_up")
  if opts ~= nil then
    if type(opts) ~= "table" then error("on_isolate_up: opts must be a table", 2) end
    core.check_options(opts, "on_isolate_up", "existing")
    if opts.existing ~= nil and type(opts.existing) ~= "boolean" then
      error("on_isolate_up: opts.existing must be a boolean, got " .. type(opts.existing), 2)
    end
  end
  handlers.up = fn
  if fn == nil then return end
  local existing = core.subscribe(opts and opts.existing or false)
  if existing then
    for i = 1, #existing do enqueue(fn, existing[i]) end
  end
end

function methods:on_isolate_down(fn)
  check_self(self, "on_isolate_down")
  check_handler(fn, "on_isolate_down")
  handlers.down = fn
  if fn ~= nil then core.subscribe(false) end
end

local Monitor = {}
Monitor.__index = Monitor
-- Cancelling a monitor that fired (or was cancelled) does nothing.
function Monitor:cancel()
  if getmetatable(self) ~= Monitor then error("monitor:cancel must be called with ':' on a monitor", 2) end
  local mon = monitors[self.id]
  if mon then
    monitors[self.id] = nil
    core.demonitor(mon.ref, self.id)
  end
end

-- Watches one isolate: fn(ref, reason) runs once, as a handler of its own,
-- when it goes down; with reason "noproc" if it is down already.
function methods:monitor(ref, fn)
  check_self(self, "monitor")
  check_fn(fn, "monitor")
  next_monitor = next_monitor + 1
  local id = next_monitor
  core.monitor(ref, id) -- checks ref; a notice comes later, even for "noproc"
  monitors[id] = { fn = fn, ref = ref }
  return setmetatable({ id = id }, Monitor)
end

-- Nodes of a multi-node cluster coming up (fn(name)) and going down
-- (fn(name, reason)); never called in a single-node cluster.
function methods:on_node_up(fn)
  check_self(self, "on_node_up")
  check_handler(fn, "on_node_up")
  handlers.node_up = fn
  if fn ~= nil then core.subscribe(false) end
end

function methods:on_node_down(fn)
  check_self(self, "on_node_down")
  check_handler(fn, "on_node_down")
  handlers.node_down = fn
  if fn ~= nil then core.subscribe(false) end
end

function methods:on_shutdown(fn)
  check_self(self, "on_shutdown")
  check_handler(fn, "on_shutdown")
  handlers.shutdown = fn
end

function methods:spawn_isolate(entry, properties, opts)
  check_self(self, "spawn_isolate")
  return core.spawn(entry, properties, opts)
end

function methods:lookup_isolate(path, wait_s)
  check_self(self, "lookup_isolate")
  if wait_s ~= nil then check_seconds(wait_s, "lookup_isolate", "wait") end
  local ref, never = core.lookup(path) -- never: no isolate can hold that path
  if ref or never or not wait_s or wait_s <= 0 then return ref end
  waiting_job("context:lookup_isolate", 2) -- before subscribing to events for nothing
  core.subscribe(false)
  ref = core.lookup(path) -- it may have come up while subscribing
  if ref then return ref end
  local r = wait("lookup", path, wait_s, "context:lookup_isolate")
  if r == TIMEOUT then return core.lookup(path) end
  return r
end

-- Sends one message to many isolates, encoding it once.
function methods:send_all(refs, msg)
  check_self(self, "send_all")
  return core.send_all(refs, msg)
end

function methods:lookup_isolates(prefix)
  check_self(self, "lookup_isolates")
  return core.lookup_prefix(prefix)
end

function methods:receive(timeout_s)
  check_self(self, "receive")
  if timeout_s ~= nil then check_seconds(timeout_s, "receive", "timeout") end
  local msg, sender, reply = wait("receive", nil, timeout_s, "context:receive")
  if msg == TIMEOUT then return nil end
  return msg, sender, reply
end

function methods:sleep(seconds)
  check_self(self, "sleep")
  check_seconds(seconds, "sleep", "duration")
  wait("sleep", nil, seconds, "context:sleep")
end

local function add_timer(seconds, fn, every, name)
  check_seconds(seconds, name, every and "interval" or "delay", every)
  check_fn(fn, name)
  next_timer = next_timer + 1
  local t = setmetatable({ id = next_timer }, Timer)
  timers[next_timer] = { fn = fn, every = every and seconds or nil, handle = t }
  core.timer(next_timer, seconds, every)
  return t
end

function methods:after(seconds, fn)
  check_self(self, "after")
  return add_timer(seconds, fn, false, "after")
end

function methods:every(seconds, fn)
  check_self(self, "every")
  return add_timer(seconds, fn, true, "every")
end

-- Monotonic seconds (for measuring intervals; not wall-clock time).
function methods:now()
  return core.now()
end

function methods:stop(reason)
  check_self(self, "stop")
  fail(reason and tostring(reason) or "normal")
end

function methods:shutdown_cluster(timeout_s)
  check_self(self, "shutdown_cluster")
  core.shutdown_cluster(timeout_s)
end

-- Deferred reply: inside a request handler, returns a function that answers
-- the request later (from a timer, another handler...). The handler's own
-- return value is then ignored.
function methods:reply_later()
  check_self(self, "reply_later")
  local job = job_of(corunning())
  if not job or not job.corr then
    error("reply_later can only be called in a handler of a request", 2)
  end
  if job.deferred then error("reply_later was already called for this request", 2) end
  job.deferred = {}
  return reply_function(job.reply_to, job.corr, job.deferred)
end

-- ref:request inside an isolate: suspends only this isolate's handler.
-- up: the levels between request and its caller (1 when it is called
-- through the C function that loaded the extras, src/lpump.c), so that
-- its errors name the caller's line either way.
local function make_request(up)
  return function(ref, msg, timeout_s)
    if timeout_s == nil then timeout_s = 5 else check_seconds(timeout_s, "request", "timeout", true) end
    if rawequal(ref, self_ref) then
      -- Its own handler waits for the reply, so nothing could ever answer.
      -- (One ref per isolate in a state: another ref to this isolate is rare,
      -- and core.request refuses it the same way.)
      error(fmt("request to %s failed: an isolate cannot request itself (nothing answers while it waits)",
        tostring(ref)), 2 + up)
    end
    -- Before sending: a request that cannot wait must not leave its message
    -- behind to be answered to nobody.
    local job = waiting_job("request", 2 + up)
    next_corr = next_corr + 1
    local corr = next_corr
    local ok, why = core.request(ref, msg, corr)
    if not ok then error(fmt("request to %s failed: %s", tostring(ref), why), 2 + up) end
    local okr, value = wait("reply", corr, timeout_s, "request", job)
    if okr == TIMEOUT then
      error(fmt("timeout: no reply from %s within %g s", tostring(ref), timeout_s), 2 + up)
    end
    if okr then return value end
    error(value, 0)
  end
end
core.set_request(make_request(0))

-- ref:send(msg, wait_s) inside an isolate whose first try found the
-- mailbox full (src/lsend.c, send_waiting): the C side holds the encoded
-- message in `pending`; this looks for room again at growing intervals
-- (0.1 ms up to 5 ms), suspending only this handler in between, until the
-- message is taken, the receiver is down, the cluster shuts down or wait_s
-- has passed.
local SEND_PAUSE_MIN, SEND_PAUSE_MAX = 0.0001, 0.005
local now, post_pending = core.now, core.post_pending

local function send_wait(pending, ref, wait_s)
  local deadline = now() + wait_s
  local pause = SEND_PAUSE_MIN
  while true do
    local left = deadline - now()
    if left <= 0 then return false, "mailbox full" end
    wait("sleep", nil, pause < left and pause or left, "ref:send with wait_s")
    local ok, why = post_pending(pending, ref)
    if ok or why ~= "mailbox full" then return ok, why end
    if pause < SEND_PAUSE_MAX then pause = pause * 2 end
  end
end

return {
  dispatch = dispatch, settle = settle, adopt = adopt, request_first = make_request(1), send_wait = send_wait,
  idle = idle, methods = methods, DONE = DONE,
}
