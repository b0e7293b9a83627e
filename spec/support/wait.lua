-- Helpers for the isolate_cluster specs: waiting on conditions with generous
-- deadlines (never a bare sleep that hopes), collecting messages sent to the
-- main state, a monotonic clock, and running a child Lua process.
--
-- Everything here runs in the main state only. Do not capture this module (or
-- any of its functions) in an isolate entry function: it holds C functions
-- that cannot be copied into an isolate.
local M = {}

-- Deadlines for conditions that should hold "soon". Generous on purpose: the
-- suite must pass on a loaded 2-core machine.
M.TIMEOUT = 5

local has_system, system = pcall(require, "system") -- lua-system, a busted dependency

--- Seconds from a monotonic clock (lua-system); falls back to os.time(), with
--- a one-second granularity, when lua-system is missing.
function M.now()
  if has_system and system.monotime then return system.monotime() end
  return os.time()
end

--- True when M.now() is precise (sub-second); timing bounds are only asserted then.
M.precise_clock = has_system and system.monotime ~= nil

local function pause(seconds)
  if has_system and system.sleep then
    system.sleep(seconds)
  else
    local t = os.clock() + seconds
    repeat until os.clock() >= t
  end
end

--- Polls fn() until it returns a truthy value (returned, with its other
--- values) or timeout seconds pass (returns nil). interval: between polls.
function M.wait_until(fn, timeout, interval)
  local deadline = M.now() + (timeout or M.TIMEOUT)
  interval = interval or 0.005
  while true do
    local r = table.pack(fn())
    if r[1] then return table.unpack(r, 1, r.n) end
    if M.now() >= deadline then return nil end
    pause(interval)
  end
end

--- Next message to the main state within timeout: msg, sender, reply | nil.
function M.receive(cluster, timeout)
  return cluster:receive(timeout or M.TIMEOUT)
end

--- Receives messages until pred(msg, sender) is true, within one overall
--- deadline; returns that msg, sender, reply, or nil on timeout. Messages that
--- do not match are appended to `skipped` (a list of {msg, sender}) if given.
function M.receive_match(cluster, pred, timeout, skipped)
  local deadline = M.now() + (timeout or M.TIMEOUT)
  while true do
    local left = deadline - M.now()
    if left <= 0 then return nil end
    local msg, sender, reply = cluster:receive(left)
    if msg == nil and sender == nil then return nil end
    if pred(msg, sender) then return msg, sender, reply end
    if skipped then skipped[#skipped + 1] = { msg, sender } end
  end
end

--- Receives up to n messages within one overall deadline. Returns the list of
--- messages and the list of their senders (shorter than n on timeout).
function M.collect(cluster, n, timeout)
  local deadline = M.now() + (timeout or M.TIMEOUT)
  local msgs, senders = {}, {}
  while #msgs < n do
    local left = deadline - M.now()
    if left <= 0 then break end
    local msg, sender = cluster:receive(left)
    if msg == nil and sender == nil then break end
    msgs[#msgs + 1] = msg
    senders[#senders + 1] = sender
  end
  return msgs, senders
end

--- Receives for `seconds` and returns every message that came (to check that
--- nothing more arrives: the list should be empty).
function M.drain(cluster, seconds)
  local deadline = M.now() + seconds
  local msgs = {}
  while true do
    local left = deadline - M.now()
    if left <= 0 then return msgs end
    local msg, sender = cluster:receive(left)
    if msg == nil and sender == nil then return msgs end
    msgs[#msgs + 1] = msg
  end
end

--- Measures fn(...): returns elapsed seconds, then pcall's results.
function M.timed(fn, ...)
  local t0 = M.now()
  local r = table.pack(pcall(fn, ...))
  return M.now() - t0, table.unpack(r, 1, r.n)
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.shell_quote = shell_quote

--- The contents of a file, or "" when it cannot be read.
function M.read_file(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

--- Writes text to the file at path (replacing it).
function M.write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

--- Runs `code` as a script in a child lua5.4 with this process's package.path
--- and package.cpath. Returns its combined stdout+stderr, and its exit code.
--- The child is bounded by coreutils `timeout` (seconds, default 30) so a hang
--- is reported as exit code 124 instead of hanging the suite. `env`: more
--- shell variable assignments for the child, as one string (optional).
function M.run_lua(code, timeout, env)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  local cmd = table.concat({
    env or "",
    "LUA_PATH=" .. shell_quote(package.path),
    "LUA_CPATH=" .. shell_quote(package.cpath),
    "timeout", tostring(timeout or 30),
    "lua5.4", shell_quote(script), "2>&1;",
    "echo \"@@exit=$?\"",
  }, " ")
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  os.remove(script)
  local status = tonumber(out:match("@@exit=(%d+)%s*$"))
  out = out:gsub("@@exit=%d+%s*$", "")
  return out, status
end

--- The isolate-cluster host binary: $IC_HOST_BIN (ctest sets it), else
--- build/ or build-rel/ of this checkout; nil when none is built.
function M.host_binary()
  local env = os.getenv("IC_HOST_BIN")
  if env and env ~= "" then return env end
  for _, p in ipairs({ "build/isolate-cluster", "build-rel/isolate-cluster" }) do
    local f = io.open(p)
    if f then
      f:close()
      return p
    end
  end
end

--- Runs fn(cluster) on a new cluster and always shuts it down; fails if
--- fn fails or if shutdown does not report that every isolate stopped in time.
function M.with_cluster(opts, fn)
  local c = require("isolate_cluster").single_node(opts)
  local ok, err = pcall(fn, c)
  local down = c:shutdown()
  if not ok then error(err, 0) end
  if not down then error("shutdown did not finish in time", 2) end
end

--- The error fn(...) raises, as a string; fails if it raises none.
function M.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("expected an error", 2) end
  return tostring(err)
end

--- The error fn(...) raises, checked to contain `text` (plain); fails if it
--- raises none or another one.
function M.error_containing(text, fn, ...)
  local err = M.error_of(fn, ...)
  if not err:find(text, 1, true) then
    error(("expected an error containing %q, got %q"):format(text, err), 2)
  end
  return err
end

--- An entry function that answers every request with what it got.
function M.echo_entry(ctx)
  ctx:on_message(function(m) return m end)
end

return M
