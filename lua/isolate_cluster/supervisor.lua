-- Supervisors in the style of Erlang/OTP: an isolate that starts child
-- isolates, watches them go down and restarts them according to their
-- restart policy, within a maximum restart intensity.
--
--   local supervisor = require("isolate_cluster.supervisor")
--   local sup = supervisor.spawn(cluster, {
--     intensity = 3, period = 5,            -- at most 3 restarts in 5 s
--     children = {
--       { path = "/db", entry = db_main, properties = { dsn = "..." },
--         restart = "permanent" },           -- or "transient", "temporary"
--     },
--   }, { path = "/sup" })
--
-- A child may also be a native isolate (a C handler) of a kind the C
-- program registered with ic_register_native: { native = "kind", path =,
-- properties =, restart = } instead of entry. Each start and restart calls
-- that kind's factory for a new isolate, with the child's properties.
--
-- Restart policies (as in OTP):
--   permanent  restarted whenever it goes down (except with reason "shutdown")
--   transient  restarted only when it fails: reason "error: ..." or "killed"
--   temporary  never restarted
-- More than `intensity` restarts within `period` seconds stop the supervisor
-- itself with reason "error: restart intensity exceeded ..."; its children,
-- linked to it, are shut down with it. A child is restarted at the same path,
-- so lookup_isolate(path) finds the new incarnation.
--
-- The supervisor answers requests: "children" returns a list of
-- { path =, ref = } for the children currently running.

local M = {}

local POLICIES = { permanent = true, transient = true, temporary = true }

local function supervisor_main(context)
  local spec = context:properties()
  local intensity = spec.intensity or 3
  local period = spec.period or 5
  local children = {}
  local restarts = {}

  local function start_child(i)
    local child = children[i]
    local opts = {}
    for k, v in pairs(child.spec.opts or {}) do opts[k] = v end
    opts.path = child.spec.path
    local entry = child.spec.entry or { native = child.spec.native }
    child.ref = context:spawn_isolate(entry, child.spec.properties, opts)
  end

  local function should_restart(policy, reason)
    if reason == "shutdown" or policy == "temporary" then return false end
    if policy == "transient" then return reason == "killed" or reason:sub(1, 6) == "error:" end
    return true
  end

  context:on_isolate_down(function(ref, reason)
    for i = 1, #children do
      local child = children[i]
      if child.ref == ref then
        child.ref = nil
        if not should_restart(child.spec.restart or "permanent", reason) then return end
        local now = context:now()
        local kept = {}
        for _, t in ipairs(restarts) do
          if now - t < period then kept[#kept + 1] = t end
        end
        kept[#kept + 1] = now
        restarts = kept
        if #restarts > intensity then
          context:stop(string.format(
            "error: restart intensity exceeded: more than %d restarts in %g s (last: %s went down: %s)",
            intensity, period, tostring(child.spec.path or ref), reason))
          return
        end
        start_child(i)
        return
      end
    end
  end)

  context:on_message(function(msg)
    if msg == "children" then
      local list = {}
      for _, child in ipairs(children) do
        if child.ref then list[#list + 1] = { path = child.spec.path, ref = child.ref } end
      end
      return list
    end
    error("supervisor: unknown request " .. tostring(msg))
  end)

  for i, child_spec in ipairs(spec.children) do
    children[i] = { spec = child_spec }
    start_child(i)
  end
end

-- Raises `<what>: unknown option "KEY"` for a key of t not in known (a
-- set), as every options table of isolate_cluster does.
local function check_keys(t, what, known)
  for k in next, t do
    if type(k) ~= "string" then
      error(("%s: unknown option %s (option names are strings)"):format(what, tostring(k)), 4)
    elseif not known[k] then
      error(("%s: unknown option %q"):format(what, k), 4)
    end
  end
end

local SPEC_KEYS = { intensity = true, period = true, children = true }
local CHILD_KEYS = { path = true, entry = true, native = true, properties = true, restart = true, opts = true }
local NATIVE_SPAWN_KEYS = { dedicated = true, detached = true, mailbox = true }
local SPAWN_KEYS = { dedicated = true, detached = true, mailbox = true, memory_limit = true, node = true }

--- Checks a supervisor spec; raises with a message naming the problem.
function M.check(spec)
  if type(spec) ~= "table" then error("supervisor spec must be a table", 3) end
  check_keys(spec, "supervisor spec", SPEC_KEYS)
  if type(spec.children) ~= "table" then error("supervisor spec needs a children list", 3) end
  if spec.intensity ~= nil and (math.type(spec.intensity) ~= "integer" or spec.intensity < 0) then
    error("supervisor spec: intensity must be an integer >= 0", 3)
  end
  if spec.period ~= nil and (type(spec.period) ~= "number" or not (spec.period > 0)) then -- NaN too
    error("supervisor spec: period must be a positive number of seconds", 3)
  end
  for i, c in ipairs(spec.children) do
    if type(c) ~= "table" then error(("supervisor spec: children[%d] must be a table"):format(i), 3) end
    check_keys(c, ("supervisor spec: children[%d]"):format(i), CHILD_KEYS)
    if c.opts ~= nil then
      if type(c.opts) ~= "table" then error(("supervisor spec: children[%d].opts must be a table"):format(i), 3) end
      -- the path is the child's own field; a native child runs on this
      -- node, with no Lua heap to limit
      check_keys(c.opts, ("supervisor spec: children[%d].opts"):format(i), c.native and NATIVE_SPAWN_KEYS or SPAWN_KEYS)
    end
    if c.native ~= nil then
      if c.entry ~= nil then
        error(("supervisor spec: children[%d] has both an entry and a native kind"):format(i), 3)
      end
      if type(c.native) ~= "string" or c.native == "" then
        error(("supervisor spec: children[%d].native must be the name of a registered native kind"):format(i), 3)
      end
    else
      local et = type(c.entry)
      if et ~= "function" and et ~= "string" then
        error(("supervisor spec: children[%d].entry must be a function or a module name"):format(i), 3)
      end
    end
    if c.restart ~= nil and not POLICIES[c.restart] then
      error(("supervisor spec: children[%d].restart must be permanent, transient or temporary"):format(i), 3)
    end
    if c.path ~= nil and (type(c.path) ~= "string" or c.path:sub(-1) == "/") then
      error(("supervisor spec: children[%d].path must be a full path like \"/name\""):format(i), 3)
    end
  end
end

--- Spawns a supervisor isolate from a cluster or an isolate's context and
--- returns its ref. opts are the supervisor's own spawn options (path...).
function M.spawn(spawner, spec, opts)
  M.check(spec)
  return spawner:spawn_isolate(supervisor_main, spec, opts)
end

return M
