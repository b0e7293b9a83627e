-- Helpers for the multi-node specs, on top of support.nats (processes) and
-- the SPEC §5 API: the spec's own process is a node of the cluster (ic.node
-- in the busted process), the other nodes are node programs started with
-- support.nats.start_node.
--
--   local MN = require("support.multinode")
--   after_each(MN.cleanup)     -- shuts the spec's nodes down, then stops every process
--   local c = MN.node(srv, cluster_name, "spec")     -- ic.node{...}, tracked
--   local b = MN.start(srv, cluster_name, "b")       -- node program "echo", waits for "ready b"
--   local ev = MN.watch(c)                           -- events forwarded to c.main
--   local c, ev, b = MN.watched_pair(srv, "prefix")  -- both, and b seen up
--   ev:wait(function(e) return e.ev == "node_down" and e.name == "b" end, 15)
--
-- Everything here runs in the main state of the spec only.
local H = require("support.nats")
local W = require("support.wait")

local M = {}

local clusters = {}

--- The URL(s) to give a node: a server, a list of servers, or URL strings.
function M.urls(servers)
  if type(servers) == "string" then return servers end
  if servers.url then return servers.url end
  local list = {}
  for _, s in ipairs(servers) do list[#list + 1] = type(s) == "string" and s or s.url end
  return list
end

--- ic.node{ nats = servers, cluster = name, name = node_name, workers = 2, ... }
--- in this process; shut down by cleanup(). extra: more options (user,
--- password, secret, allow_code...).
function M.node(servers, cluster_name, node_name, extra)
  local ic = require("isolate_cluster")
  local opts = { nats = M.urls(servers), cluster = cluster_name, name = node_name, workers = 2 }
  for k, v in pairs(extra or {}) do opts[k] = v end
  local c = ic.node(opts)
  clusters[#clusters + 1] = c
  return c
end

--- The key=value arguments of a node program for these servers.
function M.args(servers, cluster_name, node_name, extra)
  local urls = M.urls(servers)
  local args = { nats = type(urls) == "table" and table.concat(urls, ",") or urls,
    cluster = cluster_name, name = node_name }
  for k, v in pairs(extra or {}) do args[k] = v end
  return args
end

--- Starts node program `script` (default "echo") as node `node_name` and
--- waits for its "ready <name>" line. Returns the process handle.
function M.start(servers, cluster_name, node_name, extra, script)
  local node = H.start_node({ script = script or "echo", args = M.args(servers, cluster_name, node_name, extra) })
  H.wait_output(node, "^ready " .. node_name:gsub("%p", "%%%0") .. "$")
  return node
end

--- The usual start of a test: a fresh cluster name from `prefix`, this
--- process as node "spec" (with my_extra options) and node program `script`
--- (default "echo") as node "b" with b_extra arguments. Returns once this
--- node knows b (its /ctl/b is visible here; b printing "ready" does not
--- mean that this node has heard of it yet): the spec's cluster, b's process
--- and the cluster name.
function M.pair(servers, prefix, b_extra, script, my_extra)
  local name = H.unique_name(prefix)
  local c = M.node(servers, name, "spec", my_extra)
  local b = M.start(servers, name, "b", b_extra, script)
  if not c:lookup_isolate("/ctl/b", 15) then
    error("node b is up but this node does not see it; b's output:\n" .. b:output(), 2)
  end
  return c, b, name
end

--- The start of a test that watches node events: a fresh cluster name from
--- `prefix`, this process as node "spec" (my_extra options) with a watcher
--- (M.watch), and node program `script` (default "echo") as node "b" (b_extra
--- arguments). Returns once the watcher has seen b come up: the spec's
--- cluster, the watcher's inbox, b's process and the cluster name.
function M.watched_pair(servers, prefix, b_extra, script, my_extra)
  local name = H.unique_name(prefix)
  local c = M.node(servers, name, "spec", my_extra)
  local ev = M.watch(c)
  local b = M.start(servers, name, "b", b_extra, script)
  if not ev:wait(M.node_up("b"), 15) then
    error("no node_up for b; got:\n" .. ev:dump() .. "\nb's output:\n" .. b:output(), 2)
  end
  return c, ev, b, name
end

--- M.pair with node program peer_basic as b (spec/support/nodes/peer_basic.lua:
--- /svc/echo, /svc/slow, /svc/props). Returns the spec's cluster, b's
--- process, b's /svc/echo and the cluster name.
function M.basic_pair(servers, prefix, b_extra, my_extra)
  local c, b, name = M.pair(servers, prefix, b_extra, "peer_basic", my_extra)
  local echo = c:lookup_isolate("/svc/echo", 15)
  if not echo then error("node b is up but its /svc/echo is not visible here; b's output:\n" .. b:output(), 2) end
  return c, b, echo, name
end

--- Shuts down every node this process made (bounded), then stops every
--- process the spec started (support.nats.cleanup) but those in the list
--- `keep` (a server shared by the file). For after_each and teardown.
function M.cleanup(keep)
  local errs = {}
  while #clusters > 0 do
    local c = table.remove(clusters)
    local ok, err = pcall(c.shutdown, c, 10)
    if not ok then errs[#errs + 1] = "shutdown: " .. tostring(err) end
  end
  local ok, err = pcall(H.cleanup, keep)
  if not ok then errs[#errs + 1] = tostring(err) end
  collectgarbage("collect")
  if #errs > 0 then error(table.concat(errs, "\n"), 2) end
end

--- Shuts down one of this process's nodes now (it then leaves the cluster
--- cleanly). Returns shutdown's result.
function M.shutdown(c)
  for i = #clusters, 1, -1 do
    if clusters[i] == c then table.remove(clusters, i) end
  end
  return c:shutdown(10)
end

-- An isolate that forwards every node and isolate event it sees to `main`:
-- { ev = "node_up", name = } / { ev = "node_down", name =, reason = } /
-- { ev = "up", ref =, path =, node = } / { ev = "down", ref =, path =, node =, reason = }.
local function watcher_entry(context)
  local main = context:property("main")
  context:on_node_up(function(name) main:send({ ev = "node_up", name = name, t = context:now() }) end)
  context:on_node_down(function(name, reason)
    main:send({ ev = "node_down", name = name, reason = reason, t = context:now() })
  end)
  context:on_isolate_up(function(ref)
    main:send({ ev = "up", ref = ref, path = ref.path, node = ref.node })
  end)
  context:on_isolate_down(function(ref, reason)
    main:send({ ev = "down", ref = ref, path = ref.path, node = ref.node, reason = reason })
  end)
  context:on_message(function() return "watching" end)
end

local Inbox = {}
Inbox.__index = Inbox

--- Waits up to timeout seconds for a message to cluster.main for which
--- pred(msg, sender) is true. Messages that do not match are kept, so a later
--- wait still finds them. Returns msg, sender, or nil on timeout.
function Inbox:wait(pred, timeout)
  for i, item in ipairs(self.kept) do
    if pred(item[1], item[2]) then
      table.remove(self.kept, i)
      return item[1], item[2]
    end
  end
  local skipped = {}
  local msg, sender = W.receive_match(self.cluster, pred, timeout or W.TIMEOUT, skipped)
  for _, item in ipairs(skipped) do self.kept[#self.kept + 1] = item end
  return msg, sender
end

--- Every kept message, as text (for a failure message).
function Inbox:dump()
  local lines = {}
  for _, item in ipairs(self.kept) do
    local m = item[1]
    if type(m) == "table" then
      local parts = {}
      for k, v in pairs(m) do parts[#parts + 1] = tostring(k) .. "=" .. tostring(v) end
      table.sort(parts)
      lines[#lines + 1] = "{" .. table.concat(parts, " ") .. "}"
    else
      lines[#lines + 1] = tostring(m)
    end
  end
  return table.concat(lines, "\n")
end

--- An inbox on cluster.main without a watcher (messages the spec expects).
function M.inbox(cluster)
  return setmetatable({ cluster = cluster, kept = {} }, Inbox)
end

--- Spawns a watcher isolate on `cluster` that forwards node and isolate
--- events to cluster.main, and waits until it listens. Returns an inbox.
function M.watch(cluster)
  local w = cluster:spawn_isolate(watcher_entry, { main = cluster.main })
  assert(w:request("ping", 10) == "watching")
  return M.inbox(cluster)
end

--- Spawns an isolate on `cluster` that monitors `target` and, when that
--- fires, monitors it again: cluster.main gets {monitor = 1, reason =,
--- same = <the ref given is target>} then {monitor = 2, reason =}. Returns
--- once the monitor is armed.
function M.monitor_twice(cluster, target)
  cluster:spawn_isolate(function(context)
    local main, t = context:property("main"), context:property("target")
    context:monitor(t, function(ref, reason)
      main:send({ monitor = 1, reason = reason, same = ref == t })
      context:monitor(t, function(_, again) main:send({ monitor = 2, reason = again }) end)
    end)
    context:on_message(function() return "armed" end)
  end, { main = cluster.main, target = target }):request("ready?", 10)
end

--- The two notices of monitor_twice, waited for (nil for one that did not come).
function M.monitor_notices(inbox, timeout)
  local first = inbox:wait(function(m) return type(m) == "table" and m.monitor == 1 end, timeout or 15)
  local second = first and inbox:wait(function(m) return type(m) == "table" and m.monitor == 2 end, timeout or 15)
  return first, second
end

--- Predicates for Inbox:wait.
function M.node_up(name)
  return function(e) return type(e) == "table" and e.ev == "node_up" and e.name == name end
end
function M.node_down(name)
  return function(e) return type(e) == "table" and e.ev == "node_down" and e.name == name end
end
function M.isolate_up(path)
  return function(e) return type(e) == "table" and e.ev == "up" and e.path == path end
end
function M.isolate_down(path)
  return function(e) return type(e) == "table" and e.ev == "down" and e.path == path end
end

--- Polls lookup_isolate(path) until it gives a ref for which pred(ref) is
--- true (default: any ref), within timeout seconds. Returns the ref or nil.
function M.lookup_until(cluster, path, pred, timeout)
  return W.wait_until(function()
    local ref = cluster:lookup_isolate(path)
    if ref and (pred == nil or pred(ref)) then return ref end
  end, timeout or 15, 0.05)
end

--- Polls /counter (spec/support/nodes/echo.lua) until stream `stream` has
--- seen at least n messages, within timeout seconds (default 30). Returns
--- its stats { count =, last =, dups =, gaps = }: the last ones it gave when
--- the deadline passed (so an assertion shows what did arrive), or nil when
--- it never answered.
function M.stream_stats(counter, stream, n, timeout)
  local last
  W.wait_until(function()
    local ok, s = pcall(counter.request, counter, { op = "stats", stream = stream }, 5)
    if ok then last = s end
    return ok and s.count >= n
  end, timeout or 30, 0.1)
  return last
end

--- The stats of a stream of n messages that arrived exactly once, in order.
function M.in_order(n)
  return { count = n, last = n, dups = 0, gaps = 0 }
end

--- Requests msg from ref until a request succeeds (each with a 2 s
--- timeout), within timeout seconds (default 30): for a link that is coming
--- back. Returns the reply, or nil.
function M.request_until(ref, msg, timeout)
  return W.wait_until(function()
    local ok, r = pcall(ref.request, ref, msg, 2)
    if ok then return r end
  end, timeout or 30, 0.1)
end

--- Asks node program `node_name` to shut down cleanly (its /ctl isolate)
--- and waits for its process to end. Returns the exit status.
function M.stop_node(cluster, proc, node_name)
  local ctl = cluster:lookup_isolate("/ctl/" .. node_name, 10)
  if not ctl then error("no /ctl/" .. node_name .. " to ask for a shutdown", 2) end
  local answer = ctl:request("shutdown", 10)
  if answer ~= "bye" then error("/ctl/" .. node_name .. " answered " .. tostring(answer), 2) end
  local status = proc:wait(30)
  assert(status ~= nil, "node " .. node_name .. " did not end after shutdown; its output:\n" .. proc:output())
  return status
end

--- True (and the file's specs reported as one pending test) in the TSan
--- build: libnats is not instrumented, so ThreadSanitizer cannot see the
--- synchronisation inside cnats's own threads. IC_TSAN_NATS=1 runs them
--- anyway. Pass busted's describe and pending (support code does not see
--- the spec file's environment):
---   if MN.skip_under_tsan(describe, pending) then return end
function M.skip_under_tsan(describe, pending)
  if (os.getenv("IC_SANITIZE") or ""):match("thread") and not os.getenv("IC_TSAN_NATS") then
    describe("multi-node clusters", function()
      pending("skipped under TSan (libnats is not instrumented); IC_TSAN_NATS=1 runs them")
    end)
    return true
  end
  return false
end

M.H = H
M.W = W
return M
